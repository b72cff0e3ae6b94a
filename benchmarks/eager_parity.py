"""Where vlbench's eager image departs from plain diffusers' on a GPU (issue 28: "compiled pixels match plain
compiled diffusers or the README says why"; perf28 measured eager vlbench vs plain diffusers at up to 6/255 on an
H100, each call deterministic on repeat, while the tiny models on the CPU are identical in fp32 and bf16).

One loaded pipeline (the models perf16.py/perf28.py built and saved: random weights at published sizes), one
caption, one seed; each variant differs from plain diffusers' call by ONE thing vlbench's `generate` does, so the
first variant that differs names the cause:

  plain                      pipe(prompt_embeds=[e], generator=cpu(seed), ...)
  plain_inference_mode       the same call under torch.inference_mode (generate_batch's decorator)
  plain_callback_identity    callback_on_step_end returning its tensors untouched
  plain_callback_isfinite    the callback vlbench installs: torch.isfinite(latents).all() per step, one sync last
  generate_batch             vlbench.engine.generate.generate_batch (no caption_attention context)
  generate                   vlbench.engine.generate.generate (what `vlbench generate` runs)

    python3 benchmarks/eager_parity.py --zimage /tmp/perf16/z-image-turbo-random --vl /tmp/perf16/qwen3-vl-4b-random \
        --out $OUT
Writes OUT/eager_parity.json (card, commit, command, each variant's pixel difference from `plain`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def diff(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a - b)
    return {"identical": bool(d.max() == 0), "max_abs": int(d.max()), "mean_abs": round(float(d.mean()), 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zimage", default=None)
    p.add_argument("--vl", default=None)
    p.add_argument("--build", action="store_true", help="build and save the published-size random models in THIS "
                   "process first (perf16.py's builder, as perf28.py does) instead of loading --zimage/--vl")
    p.add_argument("--compile", action="store_true", help="then the same variants on the compiled DiT "
                   "(Models.compile_dit, vlbench's way)")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/eager_parity"))
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--commit", default=None)
    p.add_argument("--reps", type=int, default=0, help="then time every variant REPS times, interleaved (one "
                   "repetition runs each variant once, in turn), and report each one's median and range against "
                   "plain's: which of vlbench's differences costs time")
    args = p.parse_args()
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))
    from vlbench.engine.generate import generate, generate_batch
    from vlbench.engine.models import Models
    from vlbench.modelspec import ModelSpec

    cuda = torch.cuda.is_available()
    if args.build:
        sys.path.insert(0, str(root / "benchmarks"))
        import perf16 as P

        from vlbench.engine.tiny import ensure_tiny_models

        work = Path("/tmp/eager_parity_models")
        P.OUT = work  # perf16's helpers write their own json there, not into the current folder
        tiny = ensure_tiny_models(work / "tiny")
        args.zimage, args.vl = str(work / "z-image-turbo-random"), str(work / "qwen3-vl-4b-random")
        P.build_and_save(argparse.Namespace(tiny_smoke=not cuda), "cuda" if cuda else "cpu", tiny, Path(args.zimage),
                         Path(args.vl))
    spec = ModelSpec(zimage=args.zimage, vl=args.vl, device="cuda" if cuda else "cpu", dtype="bf16" if cuda else "fp32")
    models = Models(spec)
    pipe = models.pipe
    dtype, device = pipe.transformer.dtype, pipe._execution_device
    g = torch.Generator().manual_seed(0)
    e = (torch.randn(args.rows, models.caption_width, generator=g) * 0.5).to(device, dtype)
    kw = dict(num_inference_steps=args.steps, width=args.size, height=args.size, guidance_scale=0.0, output_type="pil")

    def plain(**extra):
        return pipe(prompt_embeds=[e], generator=torch.Generator("cpu").manual_seed(0), **kw, **extra).images[0]

    def identity(_pipe, i, t, tensors):
        return tensors

    finite: list = []

    def isfinite(_pipe, i, t, tensors):
        finite.append(torch.isfinite(tensors["latents"]).all())
        if i + 1 == _pipe.num_timesteps:
            torch.stack(finite).tolist()
            finite.clear()
        return tensors

    def in_inference_mode():
        with torch.inference_mode():
            return plain()

    ours = dict(seed=0, steps=args.steps, width=args.size, height=args.size, guidance=0.0,
                budget=models.caption_budget)
    variants = {
        "plain": plain,
        "plain_inference_mode": in_inference_mode,
        "plain_callback_identity": lambda: plain(callback_on_step_end=identity),
        "plain_callback_isfinite": lambda: plain(callback_on_step_end=isfinite),
        "generate_batch": lambda: generate_batch(pipe, e, seeds=[0], **{k: v for k, v in ours.items() if k != "seed"})[0],
        "generate": lambda: generate(pipe, e, **ours),
    }
    images = {}
    for name, fn in variants.items():
        images[name] = pixels(fn())
        print(f"{name}: {diff(images[name], images['plain'])}", flush=True)
    repeat = {name: diff(pixels(fn()), images[name]) for name, fn in variants.items()}

    def timed(names) -> dict:
        """Seconds per call of each named variant over args.reps interleaved repetitions (CUDA synced around each
        call), with the median ratio to plain's and whether the two ranges overlap."""
        times: dict = {n: [] for n in names}
        for _ in range(args.reps):
            for n in names:
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                variants[n]()
                if cuda:
                    torch.cuda.synchronize()
                times[n].append(time.perf_counter() - t0)
        base = float(np.median(times["plain"]))
        out = {}
        for n, ts in times.items():
            med = float(np.median(ts))
            out[n] = {"median_s": round(med, 4), "min_s": round(min(ts), 4), "max_s": round(max(ts), 4),
                      "ratio_to_plain": round(med / base, 4),
                      "ranges_overlap_plain": bool(min(ts) <= max(times["plain"]) and min(times["plain"]) <= max(ts))}
            print(f"time {n}: {out[n]}", flush=True)
        return out

    timing = timed(list(variants)) if args.reps else {}
    compiled = {}
    if args.compile:
        models.compile_dit(**({} if cuda else {"backend": "eager"}))
        for name in ("plain", "plain_inference_mode", "plain_callback_isfinite", "generate_batch", "generate"):
            compiled[name] = pixels(variants[name]())
            print(f"compiled {name}: {diff(compiled[name], compiled['plain'])}", flush=True)
        # the first call on a compiled DiT is the one that compiles: plain's image once more, a warm call like all
        # the others, is what each variant is set against as well
        plain_warm = pixels(variants["plain"]())
        compiled_vs_warm = {name: diff(img, plain_warm) for name, img in compiled.items()}
        for name, d in compiled_vs_warm.items():
            print(f"compiled {name} vs plain's warm image: {d}", flush=True)
        compiled_repeat = {name: diff(pixels(variants[name]()), compiled[name]) for name in compiled}
        compiled_timing = timed(list(compiled)) if args.reps else {}
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                           text=True).stdout.strip()
    result = {
        "card": torch.cuda.get_device_name() if cuda else "cpu", "commit": commit,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
        "settings": {"size": args.size, "steps": args.steps, "caption_rows": args.rows, "seed": 0},
        "vs_plain": {name: diff(img, images["plain"]) for name, img in images.items()},
        "repeat_vs_first": repeat,
        "built_in_process": args.build,
    }
    if timing:
        result["timing_eager"] = {"reps": args.reps, "interleaved": True, "variants": timing}
    if compiled:
        result["compiled_vs_compiled_plain"] = {n: diff(img, compiled["plain"]) for n, img in compiled.items()}
        result["compiled_vs_compiled_plain_warm"] = compiled_vs_warm  # plain's image from its second call
        result["compiled_repeat_vs_first"] = compiled_repeat
        result["compiled_plain_vs_eager_plain"] = diff(compiled["plain"], images["plain"])
        if compiled_timing:
            result["timing_compiled"] = {"reps": args.reps, "interleaved": True, "variants": compiled_timing}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eager_parity.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["vs_plain"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
