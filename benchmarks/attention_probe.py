#!/usr/bin/env python3
"""Attention-weighted image tokens (issue 17): what reading one layer's VL-text -> image attention costs.

Times, interleaved, median of N after warm-up, over one prepared (768x768 reference + 20-token prompt) input:

  default   extract.forward(vl, prep)                      — what every recipe without image_attention runs
  probed    extract.forward(vl, prep, attention_layer=L)   — the same forward with the AttentionProbe hook on
                                                             decoder layer L (the image rows' layer -2: L = N-2)

and records the default forward's hooks (none of vlbench's), the probed/default time ratio, and on CUDA the
peak memory of each (the probe adds one layer's [heads, prompt rows, keys] fp32 scores). The weights' sum is
checked (1 within fp32 rounding).

  --tiny  (default) vlbench's tiny random Qwen3-VL on the CPU in fp32, caption budget 224
  --full  Qwen3-VL-4B at its published size with random bf16 weights on the GPU (benchmarks/dual_batch.py's
          builder), caption budget 1504

    PYTHONPATH=src python3 benchmarks/attention_probe.py --tiny
    PYTHONPATH=src python3 benchmarks/attention_probe.py --full --out $OUT/attention_probe_gpu_full.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT / "src", ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from dual_batch import BUDGET, PROMPT, load_vl, reference_image, stats, sync  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help="tiny model on the CPU (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="Qwen3-VL-4B sizes, random bf16 weights, on the GPU")
    ap.set_defaults(mode="tiny")
    ap.add_argument("-n", type=int, default=None, help="timed repetitions per variant (default 30 tiny, 20 full)")
    ap.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = ap.parse_args()
    n = args.n or (30 if args.mode == "tiny" else 20)

    from vlbench.engine.extract import AttentionProbe, forward, prepare

    R: dict = {"mode": args.mode, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        vl = load_vl(args.mode, Path(tmp), R)
    prep = prepare(vl, [reference_image()], PROMPT, BUDGET[args.mode])
    layers = vl.model.model.language_model.layers
    layer = len(layers) - 2  # the default image layer -2 is produced by decoder layer N-2
    R.update(sequence=prep.length, image_tokens=prep.roles.count("image"), prompt_tokens=prep.roles.count("prompt"),
             decoder_layers=len(layers), attention_layer=layer)

    probes_seen: list[int] = []

    def count(module, args):
        probes_seen.append(sum(isinstance(getattr(h, "__self__", None), AttentionProbe)
                               for h in module.self_attn._forward_hooks.values()))

    handles = [lay.register_forward_pre_hook(count) for lay in layers]
    forward(vl, prep)
    R["default_forward_probes"] = sum(probes_seen)
    for h in handles:
        h.remove()

    variants = {"default": lambda: forward(vl, prep), "probed": lambda: forward(vl, prep, layer)}
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(n):
        for name, fn in variants.items():
            sync(vl.device)
            t0 = time.perf_counter()
            fn()
            sync(vl.device)
            times[name].append(time.perf_counter() - t0)
    R["timings"] = {k: stats(v) for k, v in times.items()}
    R["probed_over_default"] = round(R["timings"]["probed"]["median_s"] / R["timings"]["default"]["median_s"], 3)
    if vl.device.type == "cuda":
        for name, fn in variants.items():
            torch.cuda.reset_peak_memory_stats(vl.device)
            fn()
            R.setdefault("peak_memory_bytes", {})[name] = torch.cuda.max_memory_allocated(vl.device)
    ex = forward(vl, prep, layer)
    R["weights_sum"] = float(ex.image_attention.sum())
    assert abs(R["weights_sum"] - 1) < 1e-3, R["weights_sum"]
    text = json.dumps(R, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
