#!/usr/bin/env python3
"""Dual extraction: the two passes of a dual recipe as ONE batched Qwen3-VL call vs two calls.

A dual recipe (style pass: reference, no VL text; content pass: reference + prompt) needs two
forwards over different inputs. `extract_batch` runs both through one right-padded `model.model`
call (what `Engine.extractions` does when neither pass is cached and the batch fits in memory);
this script times that against two `extract` calls, interleaved, median of N after warm-up:

  end_to_end    extract_batch(vl, [(ref, None), (ref, prompt)])  vs  extract(...) twice
                (chat template, budget fit, processor, forward, stacking every layer)
  forward_only  forward_batch(vl, prepared)  vs  forward(vl, p) for each prepared input

It also records each pass's sequence length, the largest |batched - single| hidden-state
difference, and on CUDA the peak memory of each variant and the Engine's fit estimate.

  --tiny  (default) vlbench's tiny random Qwen3-VL on the CPU in fp32, caption budget 224
  --full  Qwen3-VL-4B at its published size with random bf16 weights, built on the GPU (as
          ../shared/tools/gpu_baseline.py does), caption budget 1504; processor and tokenizer are
          vlbench's tiny ones (same patch 16 / merge 2 preprocessing), special-token ids rewired

Both use a 768x768 reference and a 20-token prompt (with that tokenizer). Needs only torch,
transformers (with its tokenizers) and vlbench's src/ importable; diffusers is never imported.

    PYTHONPATH=src python3 benchmarks/dual_batch.py --tiny
    PYTHONPATH=src python3 benchmarks/dual_batch.py --full --out $OUT/dual_batch_gpu_full.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

# 20 tokens with vlbench's tiny Qwen tokenizer (checked at run time and recorded).
PROMPT = "A watercolor painting of a lighthouse on a rocky coast, soft light"
REFERENCE_SIZE = (768, 768)
BUDGET = {"tiny": 224, "full": 1504}  # caption budgets: tiny DiT axes_lens[0] 256, Z-Image-Turbo 1536, minus 32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stats(ts: list[float]) -> dict:
    s = sorted(ts)
    return {"median_s": s[len(s) // 2], "min_s": s[0], "max_s": s[-1], "n": len(s)}


def reference_image():
    """A deterministic 768x768 RGB image with structure (gradients and noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = REFERENCE_SIZE[1], REFERENCE_SIZE[0]
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 127 // (w + h))], -1).astype(np.int16)
    img += rng.integers(-30, 30, size=img.shape, dtype=np.int16)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def tiny_processor_dir(tmp: Path) -> Path:
    """vlbench's tiny Qwen3-VL (model + processor) written to `tmp`: transformers only, no diffusers."""
    from vlbench.engine.tiny import build_tiny_vl

    out = tmp / "qwen3-vl-tiny"
    build_tiny_vl(out)
    return out


def full_config(tokenizer):
    """Qwen3-VL-4B's published sizes, with the special-token ids of `tokenizer`."""
    from transformers import Qwen3VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t)
           for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    return Qwen3VLConfig(
        text_config=dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                          "mrope_section": [24, 20, 20], "mrope_interleaved": True},
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                           deepstack_visual_indexes=[5, 11, 17]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)


def load_vl(mode: str, tmp: Path, R: dict, tiny_dtype: torch.dtype = torch.float32):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from vlbench.engine.models import VLModel

    t0 = time.perf_counter()
    tiny_dir = tiny_processor_dir(tmp)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    if mode == "tiny":
        device, dtype = torch.device("cpu"), tiny_dtype
        model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dir, dtype=dtype).eval()
    else:
        if not torch.cuda.is_available():
            raise SystemExit("--full needs a CUDA GPU")
        device, dtype = torch.device("cuda"), torch.bfloat16
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):  # parameters born on the GPU in bf16: random weights, real sizes
                model = Qwen3VLForConditionalGeneration(full_config(processor.tokenizer))
        finally:
            torch.set_default_dtype(prev)
        model = model.to(dtype).eval()
    R["build_s"] = round(time.perf_counter() - t0, 2)
    R["params_B"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 4)
    return VLModel(model, processor, f"{mode} (random weights)", device, dtype)


def difference(batched: torch.Tensor, single: torch.Tensor) -> dict:
    """How far a batched item's hidden states are from its single forward's, in absolute and relative terms.

    bf16 keeps 8 significant bits (relative rounding 2**-9 = 0.002): a different kernel or GEMM shape
    (padding mask vs is_causal, batch 2 vs 1) rounds differently, and through 36 random-weight layers
    that shows as an absolute difference of a few ulps of the largest activations. Judge it relatively.
    """
    b, s = batched.float(), single.float()
    d = b - s
    rel = (d.flatten(1).norm(dim=1) / s.flatten(1).norm(dim=1).clamp_min(1e-30)).tolist()  # per layer
    cos = torch.nn.functional.cosine_similarity(b[-2], s[-2], dim=-1)  # per position, layer -2
    return {"max_abs": float(d.abs().max()), "max_abs_single": float(s.abs().max()),
            "rel_fro_per_layer_max": max(rel), "rel_fro_layer_-2": rel[-2],
            "min_cosine_layer_-2": float(cos.min()), "bit_exact": bool(torch.equal(b, s))}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} CPUs, torch threads {torch.get_num_threads()})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help="tiny models on the CPU (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="Qwen3-VL-4B sizes, random bf16 weights, on CUDA")
    ap.set_defaults(mode="tiny")
    ap.add_argument("-n", type=int, default=None, help="timed repetitions per variant (default 30 tiny, 20 full)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tiny-dtype", choices=("fp32", "bf16"), default="fp32", help="--tiny's dtype (default fp32)")
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the fp32 copy that gives the bf16 rounding scale (needs ~18 GB more on --full)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/dual_batch_cpu_tiny.json or dual_batch_gpu_full.json)")
    args = ap.parse_args()
    n = args.n or (30 if args.mode == "tiny" else 20)
    out = args.out or ROOT / "benchmarks" / "results" / (
        "dual_batch_cpu_tiny.json" if args.mode == "tiny" else "dual_batch_gpu_full.json")

    import transformers

    from vlbench.engine.extract import (batch_memory_bytes, extract, extract_batch, forward, forward_batch,
                                        prepare)

    R: dict = {"benchmark": "dual_batch", "mode": args.mode, "torch": torch.__version__,
               "transformers": transformers.__version__, "python": platform.python_version(),
               "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    with tempfile.TemporaryDirectory() as tmp:
        vl = load_vl(args.mode, Path(tmp), R, torch.bfloat16 if args.tiny_dtype == "bf16" else torch.float32)
    device = vl.device
    R.update(device=str(device), device_name=device_name(device), dtype=str(vl.dtype).removeprefix("torch."))
    budget = BUDGET[args.mode]
    ref = reference_image()
    prompt_tokens = len(vl.processor.tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    items = [([ref], None), ([ref], PROMPT)]  # a dual recipe's style pass (no text) and content pass (prompt)
    preps = [prepare(vl, imgs, text, budget) for imgs, text in items]
    R["inputs"] = {"reference": list(REFERENCE_SIZE), "prompt": PROMPT, "prompt_tokens": prompt_tokens,
                   "caption_budget": budget, "sequence_lengths": [p.length for p in preps],
                   "image_tokens": [int(p.inputs["image_grid_thw"].prod(-1).sum()) // vl.processor.image_processor.merge_size**2
                                    for p in preps],
                   "hidden_layers": vl.num_hidden_layers + 1, "hidden_size": vl.hidden_size,
                   "warmup": args.warmup, "n": n}
    print(f"{R['device_name']}: {args.mode}, {R['dtype']}, lengths {R['inputs']['sequence_lengths']}, "
          f"prompt {prompt_tokens} tokens", flush=True)

    # Equivalence on this device and dtype: batched vs single, per pass.
    batched, singles = extract_batch(vl, items, budget), [extract(vl, i, t, budget) for i, t in items]
    R["equivalence"] = [difference(b.hidden_states, s.hidden_states) for b, s in zip(batched, singles)]
    R["same_ids_roles_sizes"] = all(b.input_ids == s.input_ids and b.roles == s.roles and
                                    b.image_sizes == s.image_sizes for b, s in zip(batched, singles))
    if vl.dtype != torch.float32 and not args.no_floor:
        # The scale to judge it by: the same single forwards with the same weights in fp32 vs this dtype.
        import copy

        from vlbench.engine.models import VLModel

        fp32 = VLModel(copy.deepcopy(vl.model).float(), vl.processor, vl.source, device, torch.float32)
        R["floor_single_vs_fp32"] = [difference(s.hidden_states, extract(fp32, i, t, budget).hidden_states)
                                     for s, (i, t) in zip(singles, items)]
        del fp32
        if device.type == "cuda":
            torch.cuda.empty_cache()
    del batched, singles
    for i, e in enumerate(R["equivalence"]):
        floor = R.get("floor_single_vs_fp32", [{}] * 2)[i].get("rel_fro_layer_-2")
        print(f"pass {i}: batched vs single: max |diff| {e['max_abs']:.3g} (max |h| {e['max_abs_single']:.3g}), "
              f"relative {e['rel_fro_layer_-2']:.2e} at layer -2, min cosine {e['min_cosine_layer_-2']:.6f}"
              + (f"; {R['dtype']} vs fp32 of the single forward: {floor:.2e}" if floor is not None else ""), flush=True)

    variants = {
        "end_to_end": {"batched": lambda: extract_batch(vl, items, budget),
                       "two_calls": lambda: [extract(vl, i, t, budget) for i, t in items]},
        "forward_only": {"batched": lambda: forward_batch(vl, preps),
                         "two_calls": lambda: [forward(vl, p) for p in preps]},
    }
    for section, fns in variants.items():
        for fn in fns.values():
            for _ in range(args.warmup):
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(n):  # interleaved, so drift hits both alike
            for name, fn in fns.items():
                sync(device)
                t0 = time.perf_counter()
                result = fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
                del result
        S = {k: stats(v) for k, v in times.items()}
        S["speedup_median"] = S["two_calls"]["median_s"] / S["batched"]["median_s"]
        R[section] = S
        print(f"{section:13s} batched {S['batched']['median_s'] * 1e3:8.2f} ms   two calls "
              f"{S['two_calls']['median_s'] * 1e3:8.2f} ms   speedup x{S['speedup_median']:.2f}", flush=True)

    if hasattr(os, "getloadavg"):  # other work on the machine slows both variants alike (they interleave)
        R["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        for name, fn in variants["forward_only"].items():
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            result = fn()
            sync(device)
            R.setdefault("peak_extra_GiB", {})[name] = round((torch.cuda.max_memory_allocated(device) - base) / 2**30, 3)
            del result
        free, total = torch.cuda.mem_get_info(device)
        R["memory"] = {"estimate_GiB": round(batch_memory_bytes(vl, preps) / 2**30, 3),
                       "free_GiB": round(free / 2**30, 2), "total_GiB": round(total / 2**30, 2),
                       "resident_GiB": round(torch.cuda.memory_allocated(device) / 2**30, 2)}
        print(f"peak extra over the weights: {R['peak_extra_GiB']}; Engine's estimate "
              f"{R['memory']['estimate_GiB']} GiB of {R['memory']['free_GiB']} GiB free", flush=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(R, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
