"""CLI flags generated from config dataclasses, and errors rewritten from field names to flags.

Every command is a config dataclass (``nextscale.app.commands``, the training configs, the library's
``SampleFidConfig`` ...); :func:`add_config_args` is the only place that calls ``add_argument``. A
field ``batch_size`` becomes ``--batch-size``; type, choices, help and default come from the field
(``nextscale.settings`` metadata), so nothing is written twice. Booleans that default to False are
switches (``--hflip``); the others get a ``--x / --no-x`` pair. A field holding a settings group
(``recipe: StudyRecipe``) gets one flag per field of the group; a field whose metadata names
``settings=SamplingSettings`` collects the sampling flags given (None = not given: the model's or
the protocol's value) into a dict of changes. The sampling settings' reference aliases are their
flags (``guidance_scale``'s alias ``cfg`` -> ``--cfg``, with ``--guidance-scale`` as a second
spelling). The parsed values map back by name (:func:`config_from_args`). A
:class:`~nextscale.errors.FieldError` (or a message that starts with a field name) coming back from
the library is printed with the flag instead (:func:`error_line`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
from typing import Any, Dict, Iterable, List, Optional

from nextscale.errors import FieldError, FieldName
from nextscale.settings import Settings, field_type, tuple_spec, type_hints

__all__ = [
    "Parser",
    "flag_of",
    "flag_names",
    "add_config_args",
    "config_from_args",
    "error_line",
    "EXTRA_FLAGS",
    "apply_precision",
]

#: More CLI spellings of settings (kept working for old command lines): field name -> flags.
EXTRA_FLAGS: Dict[str, List[str]] = {"more_smooth": ["--smooth"]}


class Parser(argparse.ArgumentParser):
    """argparse's own usage errors: one line too, exit 2; an unknown flag is answered with the closest one."""

    def error(self, message):
        if message.startswith("unrecognized arguments: "):
            known = [o for a in self._actions for o in a.option_strings]
            for sp in (a for a in self._actions if isinstance(a, argparse._SubParsersAction)):
                known += [o for c in sp.choices.values() for a in c._actions for o in a.option_strings]
            given = message.split()[2].split("=")[0]
            near = difflib.get_close_matches(given, known, n=1)
            if near and near[0] == given:  # a flag of another command
                message += f" ({given} is not a flag of this command; see its -h)"
            else:
                message += f" (did you mean {near[0]}?)" if near else ""
        self.exit(2, f"{self.prog}: error: {message}\n")


def flag_of(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def flag_names(f: dataclasses.Field, extra: Iterable[str] = (), alias_flag: bool = False) -> List[str]:
    """The option strings of field ``f``: its flag first (the one error messages name), then other
    spellings. ``alias_flag``: the reference alias is the flag (``--cfg``) and the name a second one."""
    first = f.metadata.get("flag")
    if first is None and alias_flag and f.metadata.get("alias"):
        first = flag_of(f.metadata["alias"])
    names = [first or flag_of(f.name)]
    for n in (*f.metadata.get("flags", ()), flag_of(f.name), *EXTRA_FLAGS.get(f.name, ()), *extra):
        if n not in names:
            names.append(n)
    return names


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _help(f: dataclasses.Field, default, names=()) -> str:
    """The help text of ``f``: its own, [reference alias], (note), default; other fields' names
    (``base_lr``) written as flags (``--base-lr``)."""
    md = f.metadata
    h = md.get("help", "")
    if md.get("alias") and md["alias"] != f.name:
        h += f" [{md['alias']}]"
    if md.get("note") and md["note"] not in h:
        h += f" ({md['note']})"
    h = re.sub(r"\b[a-z0-9]+(?:_[a-z0-9]+)+\b", lambda m: flag_of(m.group()) if m.group() in names else m.group(), h)
    if isinstance(default, bool):
        h += "; default on" if default else ""
    elif default is not None and default != "":
        h += f"; default {default:g}" if isinstance(default, float) else f"; default {default}"
    return h.replace("%", "%%")


class _PerScale(argparse.Action):
    """One number, or one per scale (``--cfg 1 1.5 2``): stored as a float or a tuple."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values[0] if len(values) == 1 else tuple(values))


def _register(p: argparse.ArgumentParser, flags: Dict[str, str]) -> None:
    """Remember field -> flag on the parser (several configs may feed one command)."""
    p.set_defaults(_flags={**(p.get_default("_flags") or {}), **flags})


def _settings_field(f: dataclasses.Field):
    return f.metadata.get("settings")


def _group_type(cls, f: dataclasses.Field):
    t = type_hints(cls).get(f.name)
    return t if isinstance(t, type) and issubclass(t, Settings) else None


def add_config_args(
    p: argparse.ArgumentParser,
    cls,
    *,
    only: Optional[Iterable[str]] = None,
    defaults: Optional[Dict[str, Any]] = None,
    helps: Optional[Dict[str, str]] = None,
    groups: bool = True,
    alias_flags: bool = False,
    group_title: Optional[str] = None,
) -> None:
    """One flag (or positional) per field of dataclass ``cls`` (or of the fields in ``only``), in
    argument groups (``cls.GROUPS`` order, from ``metadata["group"]``) when ``groups``. ``defaults`` /
    ``helps``: a command's own default / help text where it differs (e.g. sampling flags that default
    to the model's recommended value)."""
    defaults, helps = defaults or {}, helps or {}
    fields = [f for f in dataclasses.fields(cls) if only is None or f.name in only]
    order = list(getattr(cls, "GROUPS", ()))
    made: Dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    flags: Dict[str, str] = {}
    for f in sorted(fields, key=lambda f: order.index(f.metadata["group"]) if f.metadata.get("group") in order else 0):
        sub = _settings_field(f)
        group_cls = _group_type(cls, f)
        if sub is not None:  # a dict of changes to a settings object: every flag defaults to None
            from nextscale.pipelines import RECOMMENDABLE
            from nextscale.sampling import SamplingSettings

            sub_only = f.metadata.get("only")
            # one spelling of a setting in every command (--cfg): the flags of the base class's field, so a
            # subclass (T2ISettings, whose guidance alias is the reference's cfg_list) is asked the same way
            base = {x.name: x for _, x in SamplingSettings.flat_fields()}
            for owner, g in sub.flat_fields():
                if sub_only is not None and g.name not in sub_only:
                    continue
                # from_model: every flag not given is the model's value (a class and a text model differ)
                d = None if g.name in RECOMMENDABLE or f.metadata.get("from_model") else _default(g)
                if d is None:
                    h = _help(g, None) + f"; default: {f.metadata.get('default_from', 'the model')}'s value"
                else:
                    h = _help(g, d)
                names = flag_names(base.get(g.name, g), alias_flag=True)
                _add(p, owner, g, d, h, alias_flags=True, flags=flags, names=names)
            continue
        if group_cls is not None:  # a nested settings group: its fields' flags, defaults from this default
            base = _default(f)
            gp = p.add_argument_group(f.metadata.get("help") or f.name) if groups else p
            for owner, g in group_cls.flat_fields():
                d = getattr(base.flat(), g.name) if hasattr(base, "flat") else getattr(base, g.name)
                if g.metadata.get("hidden_cli") or not isinstance(d, (bool, int, float, str, tuple, type(None))):
                    continue
                if field_type(owner, g.name)[0] not in (bool, int, float, str, tuple):
                    continue
                # a reference alias is the flag here too (--cfg, as in sample), the field's name a second spelling
                _add(gp, owner, g, d, _help(g, d), alias_flags=True, flags=flags)
            continue
        title = (f.metadata.get("group") if groups else None) or group_title
        if title and title not in made:
            made[title] = p.add_argument_group(title)
        g = made.get(title, p)
        default = defaults.get(f.name, _default(f))
        _add(g, cls, f, default, helps.get(f.name, _help(f, default, names)), alias_flags=alias_flags, flags=flags)
    _register(p, flags)


def _add(
    p, cls, f: dataclasses.Field, default, help: str, alias_flags: bool, flags: Dict[str, str], names=None
) -> None:
    """The one ``add_argument`` call: field ``f`` of ``cls`` as a flag (or a positional argument)."""
    md = f.metadata
    kind, optional = field_type(cls, f.name)
    kw: Dict[str, Any] = dict(default=default, help=argparse.SUPPRESS if md.get("hidden") else help)
    if md.get("metavar"):
        kw["metavar"] = md["metavar"]
    if kind is bool:
        kw["action"] = "store_true" if default is False or md.get("switch") else argparse.BooleanOptionalAction
    elif kind is tuple:
        elem, n = tuple_spec(cls, f.name)
        kw["type"], kw["nargs"] = elem, ("+" if n is None else n)
    elif md.get("per_scale"):
        kw["type"], kw["nargs"], kw["action"] = kind, "+", _PerScale
    else:
        kw["type"] = md.get("parse") or (kind if kind in (int, float, str) else str)
        if md.get("nargs"):
            kw["nargs"] = md["nargs"]
        if md.get("choices"):
            kw["choices"] = list(md["choices"])
    if md.get("positional"):
        if not md.get("required"):
            kw["nargs"] = "?"
        p.add_argument(f.name, **kw)
        flags[f.name] = f.name.upper()
        return
    if md.get("required"):
        kw["required"] = True
    names = names or flag_names(f, alias_flag=alias_flags)
    p.add_argument(*names, dest=f.name, **kw)
    flags[f.name] = names[0]


def _group_values(cls, f, args) -> Optional[Any]:
    group_cls = _group_type(cls, f)
    base = _default(f)
    given = {n: getattr(args, n) for n in group_cls.flat_names() if hasattr(args, n)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    return base.replace(**given)


def config_from_args(cls, args: argparse.Namespace, **override):
    """``cls(**values)`` from the parsed flags of its fields (plus ``override``)."""
    values: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        sub = _settings_field(f)
        if sub is not None:
            values[f.name] = {
                n: tuple(getattr(args, n)) if isinstance(getattr(args, n), list) else getattr(args, n)
                for n in sub.flat_names()
                if getattr(args, n, None) is not None
            }
        elif _group_type(cls, f) is not None:
            values[f.name] = _group_values(cls, f, args)
        elif hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    values.update(override)
    return cls(**{k: tuple(v) if isinstance(v, list) and k != "class_labels" else v for k, v in values.items()})


def error_line(e: BaseException, args: Optional[argparse.Namespace]) -> str:
    """The first line of ``e``'s message, with field names written as the command's flags."""
    flags = getattr(args, "_flags", None) or {}
    if isinstance(e, FieldError):
        msg = e.render(lambda n: flags.get(n) or flag_of(n))
    else:
        msg = str(e)
        m = re.match(r"(\w+)\b", msg)  # "top_k must be >= 0" -> "--top-k must be >= 0"
        if m and m.group(1) in flags:
            msg = flags[m.group(1)] + msg[m.end() :]
    msg = msg.strip()
    return msg.splitlines()[0] if msg else type(e).__name__


def device_dtype(device: Optional[str], dtype: Optional[str]):
    """(device string, torch dtype) from the device / dtype settings (bf16 on GPU, fp32 on CPU by default).
    ``auto`` resolves here (``nextscale.accel.precision``); ``int8`` loads float32 weights (``apply_precision``
    then swaps in the int8 linears)."""
    import torch

    from nextscale.accel.precision import check_precision
    from nextscale.validate import check_device

    dev = str(check_device(device, "device")) if device else ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype in ("auto", "int8"):
        try:
            dtype = check_precision(dtype, dev)
        except FieldError as e:  # precision is the library's name of this setting; the CLI calls it dtype
            raise FieldError(*[FieldName("dtype") if p == "precision" else p for p in e.parts]) from None
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}.get(
        dtype or "", None
    )
    if dt is None:
        dt = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    return dev, dt


def apply_precision(pipe, dtype: Optional[str]):
    """After loading with ``device_dtype``'s dtype: ``int8`` swaps in the int8 transformer linears (a pipeline
    without them refuses, naming the setting). Returns ``pipe``."""
    if dtype != "int8":
        return pipe
    if not hasattr(pipe, "set_precision"):
        raise FieldError(FieldName("dtype"), f" int8 is not supported by {type(pipe).__name__}; use fp32 or bf16")
    return pipe.set_precision("int8")


def single_names(ids: List[int], names: List[str]) -> List[str]:
    """File-name suffixes of single images: _000_class207_golden-retriever (the name only when it is not the id)."""
    return [
        f"_{i:03d}_class{c}" + ("" if n == str(c) else "_" + re.sub(r"[^\w-]+", "-", n).strip("-")[:40])
        for i, (c, n) in enumerate(zip(ids, names))
    ]
