"""CLI surface of the sampling features: speed-up flags, refiner, rejection sampling in sample-fid, classes."""

import json

from nextscale.app.cli import main


def test_sample_with_speedups_and_a_refiner(tmp_path, capsys):
    out = tmp_path / "s.png"
    assert (
        main(
            [
                "sample",
                "--class",
                "1",
                "2",
                "--cfg",
                "1",
                "--guidance-cutoff",
                "1",
                "--prune-ratio",
                "0.5",
                "--kv-budget",
                "2",
                "1",
                "--refiner",
                "default",
                "--refine-from-scale",
                "3",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert out.exists()
    assert main(["sample", "--refine-from-scale", "3", "--out", str(tmp_path / "t.png")]) == 2
    assert "--refine-from-scale only acts together with --refiner" in capsys.readouterr().err
    assert main(["sample", "--prune-ratio", "1", "--out", str(tmp_path / "t.png")]) == 2
    assert "--prune-ratio must be < 1" in capsys.readouterr().err and not (tmp_path / "t.png").exists()


def test_sample_fid_records_rejection_and_speedups(tmp_path):
    out = tmp_path / "fid"
    assert (
        main(
            [
                "sample-fid",
                "--model",
                "default",
                "--out",
                str(out),
                "--per-class",
                "1",
                "--num-classes",
                "2",
                "--candidates",
                "2",
                "--scorer",
                "default",
                "--guidance-cutoff",
                "1",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    meta = json.loads((out / "sample_fid.json").read_text())
    assert meta["candidates"] == 2 and meta["scorer"] == "default" and meta["speedups"] == {"guidance_cutoff": 1}
    assert len(list(out.glob("*.png"))) == 2


def test_classes_of_the_default_model(capsys):
    assert main(["classes"]) == 0
    assert capsys.readouterr().out.split() == [t for c in range(10) for t in (str(c), str(c))]
    assert main(["classes", "--grep", "x"]) == 2
    assert "no class of this model matches 'x'" in capsys.readouterr().err


def test_a_misspelt_class_name_names_the_flag(tmp_path, capsys):
    img = tmp_path / "in.png"
    assert main(["sample", "--class", "3", "--out", str(img), "--no-singles", "--device", "cpu"]) == 0
    capsys.readouterr()  # that run's progress bar
    for argv in (
        ["sample", "--class", "seven", "--out", str(tmp_path / "a.png")],
        ["edit", "--image", str(img), "--keep-scales", "2", "--class", "seven", "--out", str(tmp_path / "b.png")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("nextscale: error: --class: no class named 'seven'") and "\n" not in err
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()
