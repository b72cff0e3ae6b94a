#!/usr/bin/env python3
"""Issue 23's GPU benchmark: an attend ratio as a share, in Z-Image-Turbo's DiT at its published size.

Builds the DiT (dim 3840, 30 joint blocks, 2 context-refiner blocks, cap_feat_dim 2560) and the VAE with random bf16
weights (the DiT's Linear weights N(0, 0.02²), as perf16.py), and a caption of two sources: `--text` rows ("text",
base) and `--image` rows ("image", other) of random hidden states with different statistics (a 1024² reference
gives ~1000 image rows against ~20 text rows). Through the project's own code (engine.blend.share_weights,
engine.generate.generate / caption_attention / ShareProbe):

  curve     d(r) = |latents(r) − latents(0)| / |latents(1) − latents(0)| at r in 0.001 … 0.999 (r = 0: the text
            rows alone, r = 1: the image rows alone), two seeds, with the bias in the context refiner and the joint
            blocks (`refiner+joint`, the default) and in the joint blocks only (`joint`): the mechanism, not image
            quality (random weights)
  realised  the realised share (ShareProbe on the first, middle and last joint block) at r = 0.1 … 0.9, both scopes
  cost      time per image eager: no bias, bias refiner+joint, bias joint, bias + probe; then compiled
            (compile_repeated_blocks, as --compile): no bias, bias refiner+joint, bias joint

Writes OUT/share_gpu.json after every section. `--tiny-smoke` runs every section on the CPU with the tiny models
(64², 2 steps, few rows, the compiled section with backend "eager"): the wiring, not the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

R: dict = {"errors": {}}
OUT = Path(".")
RATIOS = (0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999)
SHARES = (0.1, 0.3, 0.5, 0.7, 0.9)
SCOPES = ("refiner+joint", "joint")


def log(msg: str) -> None:
    print(f"[share_gpu] {msg}", flush=True)


def save() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "share_gpu.json").write_text(json.dumps(R, indent=1, default=str))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def median(xs):
    s = sorted(xs)
    return s[len(s) // 2]


def build_pipe(args):
    """(pipe, device): published sizes with random weights on the GPU, or the tiny models on the CPU."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    if args.tiny_smoke:
        from vlbench.engine.tiny import ensure_tiny_models

        root = Path(os.environ.get("VLBENCH_CACHE_DIR") or Path.home() / ".cache" / "vlbench") / "tiny"
        dirs = ensure_tiny_models(root)
        pipe = ZImagePipeline.from_pretrained(dirs.zimage, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe, torch.device("cpu")
    device = torch.device("cuda")
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:
            dit = ZImageTransformer2DModel(axes_lens=[1536, 512, 512])  # Z-Image-Turbo's config
            vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                                block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
                                scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                                use_post_quant_conv=False, sample_size=1024)
    finally:
        torch.set_default_dtype(prev)
    with torch.no_grad():
        for m in dit.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, 0.02)
                if m.bias is not None:
                    m.bias.zero_()
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=sched, vae=vae, text_encoder=None, tokenizer=None, transformer=dit)
    pipe.set_progress_bar_config(disable=True)
    R["dit_params_B"] = round(sum(p.numel() for p in dit.parameters()) / 1e9, 3)
    return pipe, device


def caption(pipe, args):
    """(text rows, image rows): two sources of random hidden states with different statistics."""
    width = pipe.transformer.config.cap_feat_dim
    g = torch.Generator("cpu").manual_seed(7)
    text = torch.randn(args.text, width, generator=g) * 0.6
    image = torch.randn(args.image, width, generator=g) * 1.4 + 0.3 * torch.randn(1, width, generator=g)
    return text, image


def weights_for(r, n_text, n_image):
    from vlbench.engine.blend import share_weights

    wb, wo = share_weights(r, n_text, n_image)
    return torch.cat([torch.full((n_text,), wb), torch.full((n_image,), wo)])


def latents(pipe, args, embeds, weights, seed, scope, probe=None):
    from vlbench.engine.generate import generate

    dtype = pipe.transformer.dtype
    out = generate(pipe, embeds.to(dtype), seed=seed, steps=args.steps, width=args.size, height=args.size,
                   guidance=0.0, budget=args.budget, output_type="latent", caption_weights=weights,
                   attend_scope=scope, probe=probe)
    return out.float().cpu()


def curve_section(pipe, args, text, image) -> None:
    C = R.setdefault("curve", {})
    both = torch.cat([text, image])
    for seed in args.seeds:
        ends = (latents(pipe, args, text, None, seed, "joint"), latents(pipe, args, image, None, seed, "joint"))
        full = float((ends[1] - ends[0]).norm())
        for scope in SCOPES:
            d = {}
            for r in RATIOS:
                lat = latents(pipe, args, both, weights_for(r, len(text), len(image)), seed, scope)
                d[str(r)] = round(float((lat - ends[0]).norm()) / full, 4)
            C.setdefault(scope, {})[f"seed{seed}"] = d
            vals = list(d.values())
            C[scope].setdefault("monotone", {})[f"seed{seed}"] = all(b >= a for a, b in zip(vals, vals[1:]))
            log(f"curve {scope} seed {seed}: {d}")
            save()


def realised_section(pipe, args, text, image) -> None:
    from vlbench.engine.generate import ShareProbe

    S = R.setdefault("realised", {})
    both = torch.cat([text, image])
    n = len(both)
    per_token = pipe.vae_scale_factor * 2
    sides = torch.cat([torch.zeros(len(text), dtype=torch.long), torch.ones(len(image), dtype=torch.long)])
    for scope in SCOPES:
        out = {}
        for r in SHARES:
            probe = ShareProbe(pipe.transformer, n, (args.size // per_token) ** 2)
            latents(pipe, args, both, weights_for(r, len(text), len(image)), args.seeds[0], scope, probe)
            out[str(r)] = round(probe.shares(sides), 4)
        S[scope] = out
        log(f"realised {scope}: {out}")
        save()
    S["natural_share"] = round(len(image) / n, 4)


def cost_section(pipe, args, text, image) -> None:
    from vlbench.engine.generate import ShareProbe

    K = R.setdefault("cost", {})
    both = torch.cat([text, image])
    w = weights_for(0.3, len(text), len(image))
    per_token = pipe.vae_scale_factor * 2

    def probe():
        return ShareProbe(pipe.transformer, len(both), (args.size // per_token) ** 2)

    arms = {"none": lambda: latents(pipe, args, both, None, 0, "joint"),
            "bias_refiner+joint": lambda: latents(pipe, args, both, w, 0, "refiner+joint"),
            "bias_joint": lambda: latents(pipe, args, both, w, 0, "joint"),
            "bias_refiner+joint_probe": lambda: latents(pipe, args, both, w, 0, "refiner+joint", probe())}
    E = K.setdefault("eager", {})
    for name, fn in arms.items():
        fn()  # warm-up
        E[name + "_s"] = median([timed(fn)[0] for _ in range(args.reps)])
    for name in arms:
        if name != "none":
            E[name + "_over_none"] = round(E[name + "_s"] / E["none_s"], 3)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        arms["bias_refiner+joint_probe"]()
        E["peak_allocated_probe_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
        arms["bias_refiner+joint"]()
        E["peak_allocated_bias_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    log(f"cost eager: {E}")
    save()
    C = K.setdefault("compiled", {})
    try:
        from vlbench.engine.models import COMPILE_OPTIONS

        options = {**COMPILE_OPTIONS, **({"backend": "eager"} if args.tiny_smoke else {})}
        pipe.transformer.compile_repeated_blocks(**options)
        for name in ("none", "bias_refiner+joint", "bias_joint"):
            C[name + "_first_call_s"] = timed(arms[name])[0]
            C[name + "_s"] = median([timed(arms[name])[0] for _ in range(args.reps)])
        for name in ("bias_refiner+joint", "bias_joint"):
            C[name + "_over_none"] = round(C[name + "_s"] / C["none_s"], 3)
    except Exception:  # noqa: BLE001
        C["error"] = traceback.format_exc()[-2000:]
    log(f"cost compiled: {C}")
    save()


def main(argv=None) -> int:
    global OUT
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/share_gpu", help="folder for share_gpu.json")
    p.add_argument("--tiny-smoke", action="store_true", help="CPU, tiny models: the wiring, not the numbers")
    p.add_argument("--sections", default="curve,realised,cost")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--reps", type=int, default=None)
    args = p.parse_args(argv)
    OUT = Path(args.out)
    small = args.tiny_smoke
    args.steps = args.steps or (2 if small else 9)
    args.size = args.size or (64 if small else 1024)
    args.reps = args.reps or (1 if small else 3)
    args.text, args.image = (8, 40) if small else (20, 1024)
    args.budget = 1504 if not small else 512
    args.seeds = (0, 1)
    R["args"] = {k: v for k, v in vars(args).items()}
    if not small and not torch.cuda.is_available():
        print("no CUDA device: use --tiny-smoke on a CPU", file=sys.stderr)
        return 2
    pipe, device = build_pipe(args)
    pipe.to(device)
    R["device"] = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    text, image = caption(pipe, args)
    sections = {"curve": curve_section, "realised": realised_section, "cost": cost_section}
    for name in args.sections.split(","):
        try:
            sections[name](pipe, args, text, image)
        except Exception:  # noqa: BLE001
            R["errors"][name] = traceback.format_exc()[-3000:]
            log(f"{name} failed:\n{R['errors'][name]}")
        save()
    log(f"wrote {OUT / 'share_gpu.json'}")
    return 1 if R["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
