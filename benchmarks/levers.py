#!/usr/bin/env python3
"""issue 27's levers (docs/levers.md): what each costs in the DiT, beside the default, through vlbench's own
engine.generate.generate (the call Engine.run makes).

Variants, interleaved, median of N after one warm-up each, one image per call, output_type "latent" (the VAE decode
is the same in every variant and left out):

  default          guidance 0: diffusers' own call, one DiT item per step
  vl_guidance      guidance 0, vl_guidance 2: two items per step ([c; q]) in one transformer call
  cfg              guidance 2 + negative: diffusers' own CFG, two items per step
  cfg_vl_guidance  guidance 2 + negative, vl_guidance 2: three items per step ([c; q; neg])
  grid             guidance 0, image_positions grid (the caption's image rows on their patch grid)
  vl_blocks        guidance 0, vl_blocks 0-0.333: the image rows' keys masked (-inf) in every block but the first
                   third of the joint blocks (a float key mask in every block instead of none)

The caption c is `--text-rows` text rows + an R x C image block (the VL's image tokens of a 512² reference by
default, 16 x 16 = 256), q `--text-rows` rows, the negative 16 rows: random embeddings (speed does not depend on
their values). vl_system is not timed here: it adds its tokens to the VL's input (one forward, ~0.1 s at 610
tokens on an H200, DESIGN §6) and the caption's length only where the selection keeps template rows.

  --tiny-smoke  the tiny DiT on the CPU, fp32, 64², 2 steps, 2 reps: checks the script, timings meaningless
  (default)     Z-Image-Turbo's DiT at its published size (dim 3840, 30 layers) with random bf16 weights, built on
                the GPU, 1024², 9 steps, 5 reps

    PYTHONPATH=src python3 benchmarks/levers.py --tiny-smoke
    PYTHONPATH=src python3 benchmarks/levers.py --out $OUT/levers_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(device, dtype, fn):
    """A module with its parameters born on `device` in `dtype` (no CPU init, no copy)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = fn()
    finally:
        torch.set_default_dtype(prev)
    return module.to(dtype).eval()


def pipeline(smoke: bool, device: torch.device, dtype: torch.dtype):
    """ZImagePipeline over a DiT + VAE (no text encoder: captions are given as embeddings)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    from vlbench.engine import tiny

    if smoke:
        dit_kw = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2,
                      n_refiner_layers=2, n_heads=2, n_kv_heads=2, cap_feat_dim=tiny.HIDDEN, axes_dims=[8, 12, 12],
                      axes_lens=tiny.DIT_AXES_LENS)
        channels = (8, 16, 16, 16)
    else:
        dit_kw = dict(axes_lens=[1536, 512, 512])  # Z-Image-Turbo: dim 3840, 30 layers, cap_feat_dim 2560
        channels = (128, 256, 512, 512)
    transformer = build(device, dtype, lambda: ZImageTransformer2DModel(**dit_kw))
    vae = build(device, dtype, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=channels, layers_per_block=1 if smoke else 2,
        norm_num_groups=8 if smoke else 32, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
        use_post_quant_conv=False))
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=None,
                          tokenizer=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny-smoke", action="store_true", help="tiny DiT on the CPU: checks the script")
    ap.add_argument("-n", type=int, default=None, help="timed repetitions per variant (default 5; smoke 2)")
    ap.add_argument("--text-rows", type=int, default=None, help="text rows of the caption (default 32; smoke 8)")
    ap.add_argument("--grid", default=None, help="the caption's image block R,C (default 16,16; smoke 2,2)")
    ap.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = ap.parse_args()
    smoke = args.tiny_smoke
    if not smoke and not torch.cuda.is_available():
        print("no CUDA GPU: use --tiny-smoke", file=sys.stderr)
        return 2
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    n = args.n or (2 if smoke else 5)
    size, steps = (64, 2) if smoke else (1024, 9)
    text_rows = args.text_rows or (8 if smoke else 32)
    rows, cols = (int(v) for v in (args.grid or ("2,2" if smoke else "16,16")).split(","))

    from vlbench.engine.blocks import masked, resolve
    from vlbench.engine.generate import generate

    R: dict = {"mode": "tiny-smoke" if smoke else "published size, random bf16", "torch": torch.__version__,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "size": size,
               "steps": steps, "reps": n}
    t0 = time.perf_counter()
    pipe = pipeline(smoke, device, dtype)
    sync(device)
    R["build_s"] = time.perf_counter() - t0
    width = pipe.transformer.config.cap_feat_dim
    budget = int(pipe.transformer.config.axes_lens[0]) - 32
    g = torch.Generator("cpu").manual_seed(0)
    caption = torch.randn(text_rows + rows * cols, width, generator=g)
    text = torch.randn(text_rows, width, generator=g)
    negative = torch.randn(16, width, generator=g)
    R.update(caption_rows=int(caption.shape[0]), text_rows=text_rows, image_grid=[rows, cols], negative_rows=16)
    common = dict(seed=0, steps=steps, width=size, height=size, budget=budget, output_type="latent")
    variants = {
        "default": dict(guidance=0.0),
        "vl_guidance": dict(guidance=0.0, vl_guidance=(2.0, text)),
        "cfg": dict(guidance=2.0, negative_embeds=negative),
        "cfg_vl_guidance": dict(guidance=2.0, negative_embeds=negative, vl_guidance=(2.0, text)),
        "grid": dict(guidance=0.0, caption_grids=[(text_rows, (rows, cols))]),
        "vl_blocks": dict(guidance=0.0, hide=(torch.arange(caption.shape[0]) >= text_rows,
                                              masked(resolve("0-0.333", pipe.transformer), pipe.transformer))),
    }
    items: dict[str, list[int]] = {}
    for name, kw in variants.items():  # warm-up, and count the DiT items each step runs
        seen: list[int] = []
        # a forward hook sees the arguments as the pre-hooks left them (vl_guidance's branches appended)
        handle = pipe.transformer.register_forward_hook(lambda m, a, out: seen.append(len(a[0])))
        generate(pipe, caption, **common, **kw)
        handle.remove()
        items[name] = seen
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, int] = {}
    for _ in range(n):
        for name, kw in variants.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t = time.perf_counter()
            generate(pipe, caption, **common, **kw)
            sync(device)
            times[name].append(time.perf_counter() - t)
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0), int(torch.cuda.max_memory_allocated(device)))
    base = statistics.median(times["default"])
    base_cfg = statistics.median(times["cfg"])
    R["variants"] = {}
    for name in variants:
        med = statistics.median(times[name])
        R["variants"][name] = {
            "median_s": med, "times_s": times[name], "dit_items_per_step": sorted(set(items[name])),
            "ratio_to_default": med / base, "ratio_to_cfg": med / base_cfg,
            "peak_gib": peaks[name] / 2**30 if name in peaks else None}
    print(f"{'variant':<18}{'items/step':>11}{'median s':>10}{'x default':>10}{'x cfg':>8}{'peak GiB':>10}")
    for name, v in R["variants"].items():
        peak = f"{v['peak_gib']:.2f}" if v["peak_gib"] is not None else "-"
        print(f"{name:<18}{','.join(map(str, v['dit_items_per_step'])):>11}{v['median_s']:>10.3f}"
              f"{v['ratio_to_default']:>10.2f}{v['ratio_to_cfg']:>8.2f}{peak:>10}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(R, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
