"""The rule engine of every setting: a config field carries its help, reference alias and rules.

A field is declared with :func:`setting` (a ``dataclasses.field`` whose ``metadata`` holds):

* ``help``: what it does (a front end's help text; the default is appended from the field itself),
* ``alias``: the reference code's name of the setting (``cfg`` for ``guidance_scale``, ``bs`` ...),
* ``min`` / ``max`` (``min_open`` / ``max_open``: exclusive), ``choices``: the allowed values,
* ``must``: the rule in words when a range alone would read badly ("a decay in [0, 1)"),
* ``note``: what special values mean ("0 = off"), repeated in the error message,
* ``per_scale``: a number or a non-empty tuple of numbers (one per scale), each under the rules,
* ``path``: the value is a path of this kind (:mod:`nextscale.paths`: file, dir, entry, model, out_dir,
  out_file), checked by :func:`check_paths` when the config is validated (before any work), not on construction,
* ``needs``: the field only acts with that other field set (``prune_last`` needs ``prune_ratio``):
  :func:`check_needs` refuses it alone,
* ``group``: a front end's section; ``required`` / ``positional`` / ``hidden`` / ``parse``: how a
  front end asks for it (``nextscale.app.cli_args`` generates the CLI from these fields).

:func:`check_fields` checks every field of a config object (type, range, choices) and normalises it
(tuples, floats); errors are :class:`~nextscale.errors.FieldError` s naming the *field*
(``batch_size must be >= 1``), which a front end renders as its flag (``--batch-size``) or widget.
No front-end spelling (flags, widgets) lives here: the library speaks in field names.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import os
import typing
from dataclasses import field
from typing import Any, Dict, Mapping, Optional, Tuple

from nextscale.errors import FieldError, FieldName

__all__ = [
    "setting",
    "field_type",
    "type_hints",
    "check_value",
    "check_fields",
    "check_keys",
    "check_number",
    "check_paths",
    "check_needs",
    "fail",
    "Settings",
]


def setting(default: Any, help: str = "", *, alias: Optional[str] = None, group: Optional[str] = None, **rules) -> Any:
    """A config field with its help text, reference alias, group and rules (see the module doc).
    A mutable default (a list) is given as ``default_factory`` in ``rules``."""
    md = dict(help=help, **rules)
    factory = md.pop("default_factory", None)
    if alias:
        md["alias"] = alias
    if group:
        md["group"] = group
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


@functools.lru_cache(maxsize=None)
def type_hints(cls) -> Dict[str, Any]:
    """``typing.get_type_hints(cls)``, once per class (the annotations are strings)."""
    return typing.get_type_hints(cls)


def field_type(cls, name: str) -> Tuple[type, bool]:
    """(base type, optional) of field ``name``: ``Optional[int]`` -> (int, True); tuples -> (tuple, ...);
    ``Union[float, Tuple[float, ...]]`` (a per-scale value) -> (float, False)."""
    hint = type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = typing.get_origin(hint) is typing.Union and len(args) < len(typing.get_args(hint))
    base = args[0] if optional or typing.get_origin(hint) is typing.Union else hint
    return (typing.get_origin(base) or base), optional


def tuple_spec(cls, name: str) -> Tuple[type, Optional[int]]:
    """(element type, length or None for any) of a tuple field: ``Tuple[int, int]`` -> (int, 2)."""
    hint = type_hints(cls)[name]
    for h in (hint, *typing.get_args(hint)):
        if typing.get_origin(h) is tuple:
            a = typing.get_args(h)
            return (a[0] if a else int), (None if not a or a[-1] is Ellipsis else len(a))
    return int, None


def fail(name: str, *rest: str) -> FieldError:
    """``FieldError`` whose message starts with the field ``name``."""
    return FieldError(FieldName(name), *rest)


def _show(v) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
        return f"{v:,}"
    return f"{v:g}" if isinstance(v, float) else repr(v) if isinstance(v, str) else str(v)


def _unwrap(v):
    """A 0-d tensor -> its Python number (values may come from a model's outputs)."""
    if type(v).__module__ == "torch" and getattr(v, "ndim", None) == 0:
        return v.item()
    return v


def _is_int(v) -> bool:
    return not isinstance(v, bool) and type(v).__name__ != "bool_" and isinstance(v, numbers.Integral)


def _is_real(v) -> bool:
    return not isinstance(v, bool) and type(v).__name__ != "bool_" and isinstance(v, numbers.Real)


def check_number(
    value,
    name: str,
    lo: Optional[float] = None,
    hi: Optional[float] = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A finite real number (ints, numpy numbers, 0-d tensors; never bool or str) in ``lo``..``hi``
    (open ends with ``lo_open`` / ``hi_open``; None = unbounded). Raises ``FieldError`` naming ``name``."""
    v = _unwrap(value)
    if not _is_real(v):
        raise fail(name, f" must be a number, got {value!r} ({type(value).__name__})")
    v = float(v)
    if not math.isfinite(v):
        raise fail(name, f" must be a finite number, got {v}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise fail(name, f" must be {'>' if lo_open else '>='} {lo:g}, got {v:g}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise fail(name, f" must be {'<' if hi_open else '<='} {hi:g}, got {v:g}")
    return v


def check_value(cls, f: dataclasses.Field, v) -> Any:
    """``v`` checked against field ``f``'s type and rules; returns it normalised (tuples, floats)."""
    md, name = f.metadata, f.name
    kind, optional = field_type(cls, name)
    note = f" ({md['note']})" if md.get("note") else ""
    must = md.get("must")
    v = _unwrap(v)

    def bad(rule: str, typed: bool = False, shown=None):  # typed: a value of the wrong type, shown with its type
        got = f"{v!r} ({type(v).__name__})" if typed else _show(v if shown is None else shown)
        return fail(
            name, f" must be {must if must and not typed else rule}{note if typed or not must else ''}, got {got}"
        )

    def in_range(x):
        lo, hi = md.get("min"), md.get("max")
        if lo is not None and (x <= lo if md.get("min_open") else x < lo):
            raise bad(
                "a positive integer"
                if kind is int and lo == 1 and hi is None
                else f"{'>' if md.get('min_open') else '>='} {_show(lo)}",
                shown=x,
            )
        if hi is not None and (x >= hi if md.get("max_open") else x > hi):
            raise bad(f"{'<' if md.get('max_open') else '<='} {_show(hi)}", shown=x)
        return x

    if v is None:
        if optional or kind not in (bool, int, float, str, tuple):  # an object setting (a model) may be unset
            return None
        raise bad({bool: "true or false", int: "an integer", float: "a number"}.get(kind, "given"), True)
    if md.get("per_scale") and isinstance(v, (list, tuple)):  # one value per scale
        if not v:
            raise fail(name, " is an empty list; give one value, or one per scale")
        out = []
        for x in v:
            x = _unwrap(x)
            if not (_is_int(x) if kind is int else _is_real(x)) or not math.isfinite(float(x)):
                raise bad("a number or one number per scale", True)
            out.append(in_range(kind(x)))
        return tuple(out)
    if kind is bool:
        if type(v).__name__ == "bool_":
            v = bool(v)
        if not isinstance(v, bool):
            raise bad("true or false", True)
        return v
    if kind is str:
        if not isinstance(v, str):
            raise bad("a string", True)
    elif kind is tuple:
        elem, n = tuple_spec(cls, name)
        what = md.get("what") or ("a non-empty list of integers" if n is None else f"{n} integers")
        if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)) or not v:
            raise bad(what, True)
        if any(not _is_int(_unwrap(x)) for x in v) or (n is not None and len(v) != n):
            raise bad(what, True)
        v = tuple(int(_unwrap(x)) for x in v)
        if md.get("min") is not None and min(v) < md["min"]:
            raise bad(f">= {md['min']}" if n is not None else f"integers >= {md['min']}")
        return v
    elif kind is int:
        if not _is_int(v):
            raise bad("an integer", True)
        v = int(v)
    elif kind is float:
        if not _is_real(v):
            raise bad("a number", True)
        v = float(v)
        if not math.isfinite(v):
            raise bad("a finite number")
    else:  # another type (an object such as a model): the owner checks it
        return v
    if md.get("choices") is not None and v not in md["choices"]:
        raise bad("one of " + ", ".join(map(str, md["choices"])))
    return in_range(v)


def check_fields(obj) -> None:
    """Every field of the dataclass ``obj`` against its type and rules, normalised in place (frozen
    dataclasses too). A field holding another settings dataclass is checked by its own class."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            continue  # a nested group checked itself on construction
        object.__setattr__(obj, f.name, check_value(type(obj), f, v))


def check_paths(obj) -> None:
    """Every field of ``obj`` with a ``path`` rule is such a path (:func:`nextscale.paths.path_problem`);
    the error names the field and the user's path and gives the true reason. Nested groups too."""
    from nextscale.paths import path_problem

    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            check_paths(v)
        elif f.metadata.get("path") and isinstance(v, (str, os.PathLike)) and os.fspath(v) != "":
            why = path_problem(v, f.metadata["path"])
            if why:
                raise fail(f.name, f" {str(v)!r} {why}")


def _is_set(cls, name: str, value) -> bool:
    """A value that acts: not None, not False / 0 / empty, not the field's default."""
    f = {f.name: f for _, f in _all_fields(cls)}.get(name)
    default = (
        None if f is None else (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    )
    return value is not None and value is not False and value != 0 and value != () and value != default


def _all_fields(cls):
    if hasattr(cls, "flat_fields"):
        return cls.flat_fields()
    return tuple((cls, f) for f in dataclasses.fields(cls))


def check_needs(cls, given: Mapping[str, Any]) -> None:
    """A field given (in ``given``: name -> value, e.g. a front end's flags) whose ``needs`` field is not
    set there is refused: it would silently do nothing (``prune_last`` without ``prune_ratio``)."""
    for _, f in _all_fields(cls):
        need = f.metadata.get("needs")
        if need and f.name in given and given[f.name] is not None and not _is_set(cls, need, given.get(need)):
            raise FieldError(FieldName(f.name), " only acts together with ", FieldName(need), "; give both, or neither")


def check_keys(cls, keys, what: Optional[str] = None, reference: str = "the reference's") -> None:
    """Unknown keys of ``cls`` are an error with the closest field name (or the field whose reference
    alias the key is; ``reference`` names whose name it is)."""
    names = [f.name for f in dataclasses.fields(cls)]
    for k in keys:
        if k in names:
            continue
        ref = [f.name for f in dataclasses.fields(cls) if f.metadata.get("alias") == k]
        near = ref or difflib.get_close_matches(str(k), names, n=1)
        if ref:
            hint = f"that is {reference} name of {ref[0]!r}"
        else:
            hint = f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(sorted(names))}"
        raise FieldError(f"{what or cls.__name__}: unknown setting {k!r}; {hint}")


class Settings:
    """What every settings dataclass shares: checked on construction, ``replace`` (one copy with
    changes, unknown keys refused), ``to_dict`` / ``from_dict``. A field holding a nested settings
    group (e.g. ``SamplingSettings.speedups``) takes its fields' names flat in ``replace``."""

    def __post_init__(self):
        check_fields(self)
        self.check_more()

    def check_more(self) -> None:
        """Rules between fields (a subclass's)."""

    def validate(self) -> None:
        """Every rule that needs the machine (paths exist / are writable, files are what they should be),
        on top of the construction's: a command calls it before any work, folder or download."""
        check_paths(self)
        self.check_io()

    def check_io(self) -> None:
        """More rules on files and this machine (a subclass's): read the weights' header, the memory ..."""

    @classmethod
    def groups(cls) -> Dict[str, type]:
        """Nested settings groups: field name -> its dataclass."""
        out = {}
        for f in dataclasses.fields(cls):
            t = type_hints(cls)[f.name]
            if isinstance(t, type) and dataclasses.is_dataclass(t):
                out[f.name] = t
        return out

    @classmethod
    def flat_names(cls) -> Tuple[str, ...]:
        """Every setting's name, nested groups' fields in place of the group."""
        out = []
        for f in dataclasses.fields(cls):
            g = cls.groups().get(f.name)
            out += list(g.flat_names()) if g is not None else [f.name]
        return tuple(out)

    @classmethod
    def flat_fields(cls) -> Tuple[Tuple[type, dataclasses.Field], ...]:
        """(owning class, field) of every setting, nested groups' fields in place of the group."""
        out = []
        for f in dataclasses.fields(cls):
            g = cls.groups().get(f.name)
            out += list(g.flat_fields()) if g is not None else [(cls, f)]
        return tuple(out)

    @classmethod
    def resolve_keys(cls, changes: Mapping[str, Any], what: Optional[str] = None) -> Dict[str, Any]:
        """Reference aliases -> field names; unknown keys raise naming the closest."""
        alias = {f.metadata["alias"]: f.name for _, f in cls.flat_fields() if f.metadata.get("alias")}
        names = set(cls.flat_names())
        out = {}
        for k, v in changes.items():
            k2 = k if k in names else alias.get(k, k)
            if k2 not in names:
                near = difflib.get_close_matches(str(k), sorted(names), n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(sorted(names))}"
                raise FieldError(f"{what or cls.__name__}: unknown key {k!r}; {hint}")
            if k2 in out:
                ref = k if k != k2 else next(a for a, n in alias.items() if n == k2)
                raise FieldError(f"give {k2!r} or its reference name {ref!r}, not both")
            out[k2] = v
        return out

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied in one step (None values keep the current setting; nested
        groups' fields by their own names; reference aliases such as ``cfg`` accepted)."""
        changes = {k: v for k, v in type(self).resolve_keys(changes).items() if v is not None}
        own = {f.name for f in dataclasses.fields(self)}
        top = {k: v for k, v in changes.items() if k in own}
        for g, gcls in type(self).groups().items():
            sub = {k: v for k, v in changes.items() if k in set(gcls.flat_names())}
            if sub:
                top[g] = getattr(self, g).replace(**sub)
        return dataclasses.replace(self, **top) if top else self

    def to_dict(self) -> Dict[str, Any]:
        """Plain values (nested groups as dicts; an object setting such as a model by its type name)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Settings):
                v = v.to_dict()
            elif v is not None and not isinstance(v, (bool, int, float, str, tuple, list, dict)):
                v = type(v).__name__
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """A settings object from a mapping (nested groups as mappings or flat); unknown keys are errors."""
        flat: Dict[str, Any] = {}
        for k, v in d.items():
            if k in cls.groups() and isinstance(v, Mapping):
                flat.update(v)
            else:
                flat[k] = v
        return cls().replace(**flat)
