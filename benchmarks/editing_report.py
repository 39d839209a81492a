"""Zero-shot editing, measured (the VAR paper's third claim) on held-out MNIST digits with the default model.

    python benchmarks/editing_report.py --classifier classifier.safetensors --json editing.json

For the 500 held-out digits (``export_mnist(split="both")``'s val split, never seen in training):

* in-painting: the centre 16x16 of the 32x32 digit is regenerated (class-conditional on the true
  label), the rest kept;
* out-painting: the digit is shifted 8 px right (``outpaint=(8, 0, -8, 0)``) and the new 8-px strip
  on the left is generated;
* class editing: the lower half is regenerated as another class ((label + 1) mod 10).

Reported per task: PSNR in the *kept* region against the original canvas, next to the tokenizer's
own reconstruction PSNR in the same region (the best an editor that re-decodes can do: a kept
token is decoded, not copied), and the independent classifier's accuracy on the edited images
(the true label for in/out-painting, the target label for class editing). One seed, cfg 0 (the
default model's recommended setting), batch 50, CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from nextscale.data import export_mnist
from nextscale.editing import NextScaleInpaintPipeline
from nextscale.evaluation import mnist_classifier as mc


def psnr_in(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor) -> float:
    """PSNR over the kept pixels of all images (a, b: (B, 3, R, R) in [0, 1]; keep: (B, 1, R, R) bool)."""
    m = keep.expand_as(a).float()
    mse = ((a - b) ** 2 * m).sum() / m.sum().clamp(min=1)
    return float(10 * torch.log10(1.0 / mse.clamp(min=1e-12)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=None, help="an export_mnist(split='both') folder; default: a temp export")
    ap.add_argument("--classifier", default=None, help="MNIST classifier file (else one is trained, ~15 epochs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ed = NextScaleInpaintPipeline.from_pretrained(args.model, device="cpu")
    R = ed.resolution
    with tempfile.TemporaryDirectory(prefix="nextscale-edit-") as tmp:
        data = args.data or export_mnist(tmp, split="both", resolution=32, holdout_per_class=50)
        clf = (
            mc.load_classifier(args.classifier) if args.classifier else mc.train_classifier(os.path.join(data, "train"))
        )
        x_u8, y, _ = mc.load_split(os.path.join(data, "val"))  # (N, R, R, 3) uint8, (N,)
    x = torch.from_numpy(x_u8).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, R, R) in [0, 1]
    y = torch.as_tensor(y)
    centre = torch.zeros(1, 1, R, R)
    centre[..., R // 4 : 3 * R // 4, R // 4 : 3 * R // 4] = 1.0  # white = regenerate
    lower = torch.zeros(1, 1, R, R)
    lower[..., R // 2 :, :] = 1.0
    tasks = {
        "in-painting (centre 16x16)": dict(mask=centre, outpaint=None, label=lambda t: t, want=lambda t: t),
        "out-painting (8 px strip)": dict(
            mask=None, outpaint=(R // 4, 0, -R // 4, 0), label=lambda t: t, want=lambda t: t
        ),
        "class editing (lower half)": dict(
            mask=lower, outpaint=None, label=lambda t: (t + 1) % 10, want=lambda t: (t + 1) % 10
        ),
    }
    report = {"model": args.model, "n": int(len(y)), "seed": args.seed, "tasks": {}}
    gen = torch.Generator().manual_seed(args.seed)
    for name, t in tasks.items():
        edited, canvases, keeps, recon, t0 = [], [], [], [], time.perf_counter()
        for s in range(0, len(y), args.batch_size):
            xb, yb = x[s : s + args.batch_size], y[s : s + args.batch_size]
            mask = None if t["mask"] is None else t["mask"].expand(len(xb), -1, -1, -1)
            plan = ed.prepare(list(xb), mask, outpaint=t["outpaint"], batch_size=len(xb))
            out = ed(
                list(xb),
                mask,
                class_labels=t["label"](yb).tolist(),
                outpaint=t["outpaint"],
                generator=gen,
                guidance_scale=0.0,
                top_k=0,
                top_p=0.0,
                output_type="pt",
            )
            canvas = plan.image.add(1).div(2)  # the original, placed on the canvas
            with torch.no_grad():
                rec = ed.decode(ed.vqvae.idxBl_to_fhat(plan.input_indices))  # the tokenizer's reconstruction
            edited.append(out.images), canvases.append(canvas), keeps.append(plan.keep_pixels), recon.append(rec)
        e, c, k, r = (torch.cat(v) for v in (edited, canvases, keeps, recon))
        pred = torch.as_tensor(mc.predict(clf, e.permute(0, 2, 3, 1).numpy()))
        acc = float((pred == t["want"](y)).float().mean())
        base = torch.as_tensor(mc.predict(clf, c.permute(0, 2, 3, 1).numpy()))  # the unedited canvas, true label
        report["tasks"][name] = {
            "psnr_kept": psnr_in(e, c, k),
            "psnr_kept_tokenizer": psnr_in(r, c, k),
            "classifier_accuracy": acc,
            "classifier_accuracy_unedited": float((base == y).float().mean()),
            "seconds": time.perf_counter() - t0,
        }
        print(
            f"{name}: kept-region PSNR {report['tasks'][name]['psnr_kept']:.2f} dB (tokenizer reconstruction "
            f"{report['tasks'][name]['psnr_kept_tokenizer']:.2f} dB), classifier accuracy {100 * acc:.1f} %",
            file=sys.stderr,
        )
    lines = [
        "| task | PSNR, kept region | tokenizer reconstruction, same region | classifier accuracy | same, unedited "
        "canvas (true label) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in report["tasks"].items():
        lines.append(
            f"| {name} | {m['psnr_kept']:.2f} dB | {m['psnr_kept_tokenizer']:.2f} dB | "
            f"{100 * m['classifier_accuracy']:.1f} % "
            f"| {100 * m['classifier_accuracy_unedited']:.1f} % |"
        )
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
