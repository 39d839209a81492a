"""``nextscale info`` of a class-conditional model (the text-to-image one: :mod:`nextscale.app.cli_t2i`)."""

from __future__ import annotations

__all__ = ["info", "print_info"]


def info(c) -> int:
    """A class-conditional model (a released variant not downloaded yet: from its preset, no download)."""
    from nextscale.hub import released_info

    known = released_info(c.model, c.variant)  # a released variant not downloaded yet: from its preset, no download
    if known is not None:
        return print_info(known, known.pop("labels"), c.json)

    from nextscale.pipelines import load_pipeline
    from nextscale.safeload import check_finite

    pipe = load_pipeline(c.model, variant=c.variant)
    for part, m in (("transformer", pipe.var), ("tokenizer", pipe.vqvae)):  # never describe a NaN model as one
        check_finite(m, f"{c.model} ({part})")
    n_var = sum(p.numel() for p in pipe.var.parameters())
    n_vae = sum(p.numel() for p in pipe.vqvae.parameters())
    info = {
        "resolution": pipe.resolution,
        "num_classes": pipe.num_classes,
        "patch_nums": list(pipe.patch_nums),
        "tokens": pipe.var.L,
        "var": pipe.var.config.to_dict(),
        "vqvae": pipe.vqvae.config.to_dict(),
        "var_parameters": n_var,
        "vqvae_parameters": n_vae,
        "has_class_names": pipe.labels is not None,
    }
    return print_info(info, pipe.labels, c.json)


def print_info(info: dict, labels, as_json: bool) -> int:
    """``nextscale info``'s output of a class-conditional model's description (``info``: what ``--json`` prints)."""
    import json

    from nextscale.accel.precision import cpu_capabilities, fast_precisions, precision_advice
    from nextscale.configs import VARConfig, VQVAEConfig

    cpu = cpu_capabilities()
    info["cpu"] = {"kind": cpu.describe(), "fast_precisions": list(fast_precisions(cpu))}
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    v, q = VARConfig.from_dict(info["var"]), VQVAEConfig.from_dict(info["vqvae"])
    aln = "shared" if v.shared_aln else "per-block"
    n_var, n_vae = info["var_parameters"], info["vqvae_parameters"]
    print(f"VAR d{v.depth}: width {v.width}, {v.heads} heads, {aln} AdaLN, {n_var / 1e6:.1f}M parameters")
    print(f"tokenizer: V={q.vocab_size}, Cvae={q.z_channels}, ch={q.ch}, {n_vae / 1e6:.1f}M parameters")
    R = info["resolution"]
    print(f"images: {R}x{R}; scales {tuple(info['patch_nums'])} ({info['tokens']} tokens)")
    names = f" e.g. {', '.join(labels[:5])}" if labels else ""
    print(f"classes: {info['num_classes']}{names}")
    if info.get("note"):
        print(f"note: {info['note']}")
    print(f"this machine: {cpu.describe()}; {precision_advice(cpu)} (--dtype)")
    return 0
