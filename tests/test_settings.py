"""One rule engine, no flag text in the library, every command a config dataclass (issue #22).

* ``nextscale.settings`` holds the field-metadata rules; errors name the field, front ends render it.
* No module outside ``app/`` raises or warns with CLI flag text (``--seed``): the library speaks in
  field names (an AST walk over every raise / warning of a string).
* Every command's flags come from its dataclass: ``add_argument`` is called only by the generator.
* ``SamplingSettings`` is the one object between layers: the speed-ups are a nested frozen group, a
  call's keywords become one settings object, settings a pipeline cannot honour are refused.
"""

import argparse
import ast
import dataclasses
import pathlib
import re

import pytest
import torch

from nextscale.errors import FieldError
from nextscale.sampling import SamplingSettings, SpeedUps

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "nextscale"
FLAG = re.compile(r"--[A-Za-z]")


def _strings(node):
    """Every string constant inside ``node`` (f-string parts included)."""
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            yield n.value


def _messages(tree):
    """(line, text) of the strings given to raise statements and warnings.warn / warn calls."""
    for n in ast.walk(tree):
        if isinstance(n, ast.Raise) and n.exc is not None:
            for s in _strings(n.exc):
                yield n.lineno, s
        elif isinstance(n, ast.Call):
            f = n.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name == "warn":
                for a in n.args:
                    for s in _strings(a):
                        yield n.lineno, s


def _flag_text(paths):
    return [
        f"{p.relative_to(SRC)}:{line}: {s!r}"
        for p in paths
        for line, s in _messages(ast.parse(p.read_text()))
        if FLAG.search(s)
    ]


def _library(train: bool):
    for p in sorted(SRC.rglob("*.py")):
        rel = p.relative_to(SRC).parts
        if rel[0] == "app" or (rel[0] == "train") != train:
            continue
        yield p


def test_no_flag_text_in_library_messages():
    """Outside app/ a message names the field (``per_class``), never a flag (``--per-class``)."""
    assert _flag_text(_library(train=False)) == []


def test_no_flag_text_in_train_messages():
    assert _flag_text(_library(train=True)) == []


def test_add_argument_only_in_the_generator():
    """Every command's flags are generated from its config dataclass: one ``add_argument`` call in
    the whole package, inside ``nextscale.app.cli_args._add``."""
    calls = []
    for p in sorted(SRC.rglob("*.py")):
        tree = ast.parse(p.read_text())
        for fn in ast.walk(tree):
            for n in ast.walk(fn):
                if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "add_argument":
                    calls.append((str(p.relative_to(SRC)), fn.name if hasattr(fn, "name") else "<module>"))
    where = {c for c in calls if c[1] != "<module>"}
    assert where == {("app/cli_args.py", "_add")}, where


def _subparsers(p):
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_command_is_a_config_dataclass():
    """Each command (and study sub-command) parses into exactly the fields of its config class."""
    from typing import Any

    from nextscale.app.cli import _REGISTRY, _config_class, build_parser
    from nextscale.settings import Settings, field_type, type_hints

    parsers = _subparsers(build_parser())
    for name, (config, *_rest) in _REGISTRY.items():
        subs = (
            {k: (v[0], _subparsers(parsers[name])[k]) for k, v in config.items()}
            if isinstance(config, dict)
            else {name: (config, parsers[name])}
        )
        for cname, (cls, p) in subs.items():
            cls = _config_class(cls)
            assert dataclasses.is_dataclass(cls), cname
            dests = {a.dest for a in p._actions if a.dest not in ("help",)}
            want = set()
            for f in dataclasses.fields(cls):
                group = type_hints(cls)[f.name]
                if f.metadata.get("settings") is not None:  # changes to a settings object: its flags (or `only`)
                    names = set(f.metadata["settings"].flat_names())
                    want |= names & set(f.metadata["only"]) if f.metadata.get("only") is not None else names
                elif isinstance(group, type) and issubclass(group, Settings):  # a nested group: its scalar fields
                    want |= {n for o, g in group.flat_fields() for n in [g.name] if field_type(o, n)[0] is not Any}
                else:
                    want.add(f.name)
            assert dests - {"func", "_flags", "_config"} == want, (cname, sorted(dests ^ want))
            assert issubclass(cls, Settings) or cname.startswith("train"), cname


def test_rule_engine_names_the_field_and_front_ends_render_it():
    from nextscale.app.cli import build_parser
    from nextscale.app.cli_args import error_line

    with pytest.raises(FieldError) as e:
        SamplingSettings().replace(top_p=2.0)
    assert str(e.value).startswith("top_p must be in [0, 1]") and "--" not in str(e.value)
    args = build_parser().parse_args(["sample"])
    assert error_line(e.value, args).startswith("--top-p must be in [0, 1]")
    with pytest.raises(FieldError) as e:
        SamplingSettings().replace(guidance_scale=-1)
    assert error_line(e.value, args).startswith("--cfg must be >= 0")  # the reference alias is the flag


def test_speedups_are_a_nested_frozen_group_set_by_flat_names():
    st = SamplingSettings().replace(cfg=2.0, prune_ratio=0.5, kv_budget=[1, 2])
    assert st.guidance_scale == 2.0 and isinstance(st.speedups, SpeedUps)
    assert (st.speedups.prune_ratio, st.speedups.kv_budget) == (0.5, (1, 2))
    assert st.changed() == {"guidance_scale": 2.0, "prune_ratio": 0.5, "kv_budget": (1, 2)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.speedups.prune_ratio = 0.1
    assert SamplingSettings.from_dict(st.to_dict()) == st
    with pytest.raises(FieldError, match="give 'guidance_scale' or its reference name 'cfg', not both"):
        SamplingSettings().replace(cfg=1.0, guidance_scale=2.0)


def test_calls_take_every_setting_by_name_with_one_replace(tiny_pipe_dir):
    import inspect

    from nextscale.editing import NextScaleInpaintPipeline
    from nextscale.pipelines import NextScalePipeline

    for cls in (NextScalePipeline, NextScaleInpaintPipeline):
        params = inspect.signature(cls.__call__).parameters
        assert set(SamplingSettings.flat_names()) <= set(params), cls
    pipe = NextScalePipeline.from_pretrained(tiny_pipe_dir)
    a = pipe(class_labels=[1], seed=0, output_type="pt", top_k=5, guidance_cutoff=1).images
    b = pipe(
        class_labels=[1], seed=0, output_type="pt", settings=pipe.settings.replace(top_k=5, guidance_cutoff=1)
    ).images
    assert torch.equal(a, b)
    with pytest.raises(FieldError, match="unknown key 'top_kk'; did you mean 'top_k'"):
        pipe(class_labels=[1], top_kk=5)


def test_the_ar_baseline_refuses_what_it_cannot_honour():
    from nextscale.models.ar import ARConfig, ARTransformer
    from nextscale.sampling_ar import generate_ar

    m = ARTransformer(ARConfig(depth=1, embed_dim=32, num_heads=1, num_classes=10, side=2, vocab_size=16)).eval()
    for kw, name in ((dict(prune_ratio=0.5), "prune_ratio"), (dict(more_smooth=True), "more_smooth")):
        with pytest.raises(FieldError, match=f"^{name} is not supported by the raster AR baseline"):
            generate_ar(m, None, 1, [0], **kw)
    assert generate_ar(m, None, 1, [0], top_k=3).idx_BL.shape == (1, 4)
