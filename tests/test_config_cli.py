"""The training configs are the single source of the training flags (issue #14, item 4).

Each field of ``VARTrainConfig`` / ``TokenizerTrainConfig`` (``nextscale.train.config``) has exactly
one flag, generated from it with its help and default; the flag maps back into the same field;
library errors name the field and the CLI prints the flag instead. The sampling flags come from
``nextscale.sampling.SamplingSettings`` the same way. ``cli.py`` stays a thin layer.
"""

import argparse
import dataclasses
import functools
from pathlib import Path

import pytest

from nextscale.app.cli import build_parser, main
from nextscale.app.cli_args import config_from_args, flag_names
from nextscale.errors import FieldError, NextScaleError
from nextscale.train.config import T2ITrainConfig, TokenizerTrainConfig, VARTrainConfig, field_type

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "train": (VARTrainConfig, []),
    "train-tokenizer": (TokenizerTrainConfig, ["--data", "d"]),
    "train-t2i": (T2ITrainConfig, ["--data", "d"]),
}


def _sub(name: str) -> argparse.ArgumentParser:
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _actions(name):
    return {a.dest: a for a in _sub(name)._actions if a.dest not in ("help",)}


@functools.lru_cache(maxsize=None)
def _parser():
    return build_parser()


def _parse(cmd, argv):
    return _parser().parse_args([cmd, *COMMANDS[cmd][1], *argv])


def _config_default(cls, f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_every_field_has_a_flag_with_help(cmd):
    cls, _ = COMMANDS[cmd]
    acts = _actions(cmd)
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
        assert f.name in acts, f"{cls.__name__}.{f.name} has no flag in `nextscale {cmd}`"
        a = acts[f.name]
        assert a.help and a.help != argparse.SUPPRESS, f.name
        assert flag_names(f)[0] in a.option_strings
    # and no hand-written flag besides them: the command is its config
    assert set(acts) - {"func", "_flags"} == {f.name for f in dataclasses.fields(cls)}


def _other_value(cls, f):
    """A valid value other than the default, as (argv after the flag, expected field value)."""
    kind, optional = field_type(cls, f.name)
    d = _config_default(cls, f)
    special = {
        "grad_accum": (["2"], 2),
        "schedule": (["cos"], "cos"),
        "preset": (["tiny"], "tiny"),
        "device": (["cpu"], "cpu"),
        "patch_nums": (["1", "2", "4"], (1, 2, 4)),
        "ch_mult": (["1", "2"], (1, 2)),
    }
    if f.name in special:
        return special[f.name]
    if kind is bool:
        return None
    if f.metadata.get("choices"):
        v = next(c for c in f.metadata["choices"] if c != d)
        return [v], v
    if kind is int:
        v = (d if d is not None else 1) + 2
        return [str(v)], v
    if kind is float:
        v = (d if d is not None else 0.0) + 0.25
        return [repr(v)], v
    return ["some/path"], "some/path"


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_each_flag_round_trips_into_its_field(cmd):
    cls, _ = COMMANDS[cmd]
    for f in dataclasses.fields(cls):
        flags = flag_names(f)
        if field_type(cls, f.name)[0] is bool:
            d = _config_default(cls, f)
            cases = [([flags[0]], True)] + ([] if d is False else [([f"--no-{flags[0][2:]}"], False)])
        else:
            argv, want = _other_value(cls, f)
            cases = [([fl, *argv], want) for fl in flags]  # every spelling (old names kept as aliases)
        base = config_from_args(cls, _parse(cmd, []))
        for argv, want in cases:
            tc = config_from_args(cls, _parse(cmd, argv))
            assert getattr(tc, f.name) == want, (argv, getattr(tc, f.name), want)
            assert (
                dataclasses.replace(tc, **{f.name: getattr(base, f.name)}) == base
            )  # that flag changed that field only


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_cli_defaults_are_the_dataclass_defaults(cmd):
    cls, extra = COMMANDS[cmd]
    acts = _actions(cmd)
    for f in dataclasses.fields(cls):
        assert acts[f.name].default == _config_default(cls, f), f.name
    base = dict(data="d") if extra else {}
    assert config_from_args(cls, _parse(cmd, [])) == cls(**base)


def test_old_flag_spellings_still_work():
    assert config_from_args(VARTrainConfig, _parse("train", ["--keep", "7", "--no-progress"])).keep_last == 7
    tc = config_from_args(TokenizerTrainConfig, _parse("train-tokenizer", ["--out", "r1", "--no-adaptive-weight"]))
    assert (tc.run_dir, tc.adaptive_weight) == ("r1", False)
    assert config_from_args(TokenizerTrainConfig, _parse("train-tokenizer", ["--run-dir", "r2"])).run_dir == "r2"


def test_configs_live_in_one_module_and_the_loop_config_derives_from_their_base():
    """One home per config (no re-exports from the loop or the objectives); the loop's LoopConfig is
    TrainConfigBase plus what a command derives, so each loop setting is declared once."""
    import torch

    import nextscale.train.loop as loop
    import nextscale.train.tokenizer as tok
    import nextscale.train.var as var
    from nextscale.train.config import LoopConfig, TrainConfigBase

    assert issubclass(VARTrainConfig, TrainConfigBase) and issubclass(TokenizerTrainConfig, TrainConfigBase)
    assert not {"TrainConfigBase", "LoopConfig"} & set(loop.__all__) and not hasattr(loop, "TrainConfigBase")
    assert "VARTrainConfig" not in var.__all__ and "TokenizerTrainConfig" not in tok.__all__
    assert issubclass(LoopConfig, TrainConfigBase)
    base = {f.name for f in dataclasses.fields(TrainConfigBase)}
    own = {f.name for f in dataclasses.fields(LoopConfig)} - base
    assert own == {"run_dir", "max_steps", "fsdp", "eval_batch_size"}, own
    tc = VARTrainConfig(batch_size=8, grad_accum=2, ema=0.5, keep_last=2, amp="bf16")
    lc = tc.loop_config("r", 7, torch.device("cpu"))
    assert all(getattr(lc, n) == getattr(tc, n) for n in base - {"device", "workers"}), lc
    assert (lc.run_dir, lc.max_steps, lc.device, lc.workers, lc.fsdp) == ("r", 7, "cpu", 0, False)
    assert TokenizerTrainConfig().batch_size == 32 and VARTrainConfig().batch_size == 768  # defaults per command
    with pytest.raises(FieldError, match="^max_steps must be a positive integer"):
        LoopConfig(run_dir="r", max_steps=0, batch_size=4)
    with pytest.raises(FieldError, match="^batch_size 6 is not divisible by grad_accum 4"):
        LoopConfig(run_dir="r", max_steps=1, batch_size=6, grad_accum=4)


def test_unknown_keys_get_a_suggestion(capsys):
    with pytest.raises(FieldError, match=r"unknown setting 'batchsize'; did you mean 'batch_size'\?"):
        VARTrainConfig.from_dict({"batchsize": 8})
    with pytest.raises(FieldError, match="did you mean 'lr_end'"):
        VARTrainConfig().replace(lr_ed=0.1)
    with pytest.raises(FieldError, match="'tblr'.*reference trainer's name of 'base_lr'"):
        VARTrainConfig.from_dict({"tblr": 1e-4})
    with pytest.raises(FieldError, match="did you mean 'disc_weight'"):
        TokenizerTrainConfig.from_dict({"disc_wieght": 0.1})
    assert VARTrainConfig.from_dict(VARTrainConfig(batch_size=8).to_dict()) == VARTrainConfig(batch_size=8)
    with pytest.raises(SystemExit) as e:  # on the command line: argparse refuses, with the closest flag
        main(["train", "--batch-sise", "4"])
    assert e.value.code == 2
    assert "did you mean --batch-size?" in capsys.readouterr().err


BAD = [  # (config, field values, library message, CLI flags, CLI message)
    (
        VARTrainConfig,
        dict(batch_size=0),
        "batch_size must be a positive integer, got 0",
        ["--batch-size", "0"],
        "--batch-size must be a positive integer, got 0",
    ),
    (
        VARTrainConfig,
        dict(batch_size=5, grad_accum=2),
        "batch_size 5 is not divisible by grad_accum 2",
        ["--batch-size", "5", "--grad-accum", "2"],
        "--batch-size 5 is not divisible by --grad-accum 2",
    ),
    (
        VARTrainConfig,
        dict(keep_last=0),
        "keep_last must be a positive integer",
        ["--keep", "0"],
        "--keep-last must be a positive integer",
    ),
    (
        VARTrainConfig,
        dict(lr=float("nan")),
        "lr must be a finite number",
        ["--lr", "nan"],
        "--lr must be a finite number",
    ),
    (
        VARTrainConfig,
        dict(label_smooth=1.0),
        "label_smooth must be in [0, 1)",
        ["--label-smooth", "1"],
        "--label-smooth must be in [0, 1)",
    ),
    (
        VARTrainConfig,
        dict(schedule="wobbly"),
        "schedule: unknown lr schedule 'wobbly'",
        ["--schedule", "wobbly"],
        "--schedule: unknown lr schedule 'wobbly'",
    ),
    (
        VARTrainConfig,
        dict(sample_every=-2),
        "sample_every must be >= -1 (0 = at the end only, -1 = never)",
        ["--sample-every", "-2"],
        "--sample-every must be >= -1",
    ),
    (
        TokenizerTrainConfig,
        dict(dead_threshold=float("inf")),
        "dead_threshold must be a finite number",
        ["--dead-threshold", "inf"],
        "--dead-threshold must be a finite number",
    ),
    (
        TokenizerTrainConfig,
        dict(disc_layers=0),
        "disc_layers must be a positive integer",
        ["--disc-layers", "0"],
        "--disc-layers must be a positive integer",
    ),
    (
        TokenizerTrainConfig,
        dict(seed=-1),
        "seed must be in [0, 2**63)",
        ["--seed", "-1"],
        "--seed must be in [0, 2**63)",
    ),
]


@pytest.mark.parametrize("cls,kw,lib,argv,cli", BAD, ids=[" ".join(b[3]) for b in BAD])
def test_bad_value_names_the_field_in_the_library_and_the_flag_in_the_cli(
    cls, kw, lib, argv, cli, tmp_path, capsys, monkeypatch
):
    base = dict(data="d") if cls is TokenizerTrainConfig else {}
    with pytest.raises(FieldError) as e:
        cls(**base, **kw)
    assert lib in str(e.value) and "--" not in str(e.value), str(e.value)
    monkeypatch.chdir(tmp_path)
    cmd = "train" if cls is VARTrainConfig else "train-tokenizer"
    assert main([cmd, "--data", str(tmp_path), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nextscale: error: ") and cli in err[0], err
    assert list(tmp_path.iterdir()) == []  # refused before any folder


def test_machine_checks_name_the_field_too(tmp_path):
    with pytest.raises(FieldError, match="^device 'tpu' is not a device"):
        VARTrainConfig(data="d", device="tpu").validate()
    with pytest.raises(FieldError, match="pass exactly one of data DIR .* or cache DIR"):
        VARTrainConfig().validate()
    with pytest.raises(FieldError, match="^lpips_weights '.*nope' not found"):
        TokenizerTrainConfig(data=str(tmp_path), lpips_weights=str(tmp_path / "nope")).validate()
    with pytest.raises(NextScaleError, match="^batch_size must be an integer, got 4.0 \\(float\\)"):
        VARTrainConfig(batch_size=4.0)


def test_reference_names_in_the_docs_table_are_the_aliases():
    table = (ROOT / "docs" / "training.md").read_text()
    for f in dataclasses.fields(VARTrainConfig):
        alias = f.metadata.get("alias")
        if alias and alias not in (f.name, "data_path", "depth"):
            assert f"`--{alias}`" in table or f"`--{alias} " in table, (alias, f.name)
            assert f"`{flag_names(f)[0]}`" in table or f"`{flag_names(f)[0]} " in table, f.name


def test_sampling_flags_come_from_sampling_settings():
    from nextscale.sampling import SamplingSettings

    for cmd in ("sample", "edit"):
        acts = _actions(cmd)
        for owner, f in SamplingSettings.flat_fields():  # the speed-ups' nested group: its fields, flat
            assert f.name in acts and acts[f.name].help, (cmd, f.name)
            # None: the model's value (a class model and a text-to-image model recommend their own)
            assert acts[f.name].default is None, (cmd, f.name)
            assert "the model's value" in acts[f.name].help, (cmd, f.name)
    a = build_parser().parse_args(["sample", "--more-smooth", "--cfg", "2", "--top-k", "5"])
    assert (a.more_smooth, a.guidance_scale, a.top_k) == (True, 2.0, 5)
    assert set(_actions("sample-fid")) >= {"guidance_scale", "top_k", "top_p"}


def test_cli_stays_thin():
    # measured on the ruff-formatted file (line length 120); the old 400-line cap was met by 200-character lines
    n = len((ROOT / "src" / "nextscale" / "app" / "cli.py").read_text().splitlines())
    assert n <= 620, (
        f"src/nextscale/app/cli.py has {n} lines; keep it a thin layer (library code belongs in the library)"
    )


def test_run_building_errors_name_fields_too():
    from nextscale.configs import get_preset
    from nextscale.train.tokenizer import _check_fits_latent

    with pytest.raises(FieldError) as e:
        _check_fits_latent((1, 2, 99), get_preset("mnist").vqvae)
    assert str(e.value).startswith("patch_nums 1 2 99 does not fit") and "--" not in str(e.value)
    assert e.value.render(lambda n: "--" + n.replace("_", "-")).endswith(
        "e.g. --patch-nums 1 2 4 6 8 (a larger resolution needs a larger preset)"
    )
