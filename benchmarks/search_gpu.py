#!/usr/bin/env python3
"""Issue 17's GPU benchmark: throughput of `vlbench search` (trials per hour, images per second) with
published-size random-weight models.

Builds Z-Image-Turbo's DiT + VAE and Qwen3-VL-4B at their published sizes with random bf16 weights on the GPU
(gpu_bench.py's configs and builder; the DiT's Linear weights N(0, 0.02²) as perf16.py draws them), and the two
metric models the search scores with, SigLIP 2 base (google/siglip2-base-patch16-224, 375 M) and DINO ViT-S/16
(facebook/dino-vits16, 22 M), at their published sizes (metrics_gpu.py's configs), saved as real repo layouts.
Qwen3-4B is not built: the space keeps alpha = 1 (pure Qwen3-VL), so no trial reads it. Then runs the command
itself in this process:

    vlbench search --space <written space> --image <512² reference> --prompt PROMPT --trials N ...

Space: layer in [-12, -2], intra_ratio in [0, 1] step 0.125, intra_policy in {attend, split}; alpha 1; objectives
siglip (max) and dino (max); NSGA-II, population 20, sampler seed 0. Each trial: 1 prompt × 1 reference × 1 seed
= 1 image at --size² (default 512), --steps steps (default 9), then its SigLIP and DINO scores.

Writes OUT/search_gpu.json: trials, images, wall seconds of the search (model loads and first-call warm-ups
included), trials/hour and images/s overall and in steady state (after the first trial), the per-trial seconds
(run + score), and the front's size. The search folder is OUT/search/ (trials/, trials.jsonl, pareto.json, …).

    PYTHONPATH=src python3 benchmarks/search_gpu.py --tiny --trials 3 --out /tmp/sg     # CPU, tiny models
    PYTHONPATH=src python3 benchmarks/search_gpu.py --trials 100 --out $OUT            # the GPU (~4–6 min)

Needs vlbench's dependencies (torch, transformers, diffusers, …) and Optuna (optuna, sqlalchemy, alembic, mako,
colorlog wheels); not Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench as gb  # noqa: E402  (sets HF offline env; torch)

import torch  # noqa: E402

PROMPT = gb.PROMPT
SPACE = """
name = "search_gpu"
description = "issue 17 throughput benchmark: pure Qwen3-VL, layer x intra mix"
seeds = [0]
objectives = ["siglip", "dino"]
[fixed]
alpha = 1.0
steps = {steps}
width = {size}
height = {size}
[space]
layer = {{ low = -12, high = -2 }}
intra_ratio = {{ low = 0.0, high = 1.0, step = 0.125 }}
intra_policy = ["attend", "split"]
[sampler]
kind = "nsga2"
population = 20
"""
SPACE_LAYERS = """
name = "search_gpu"
description = "issue 28 throughput benchmark: pure Qwen3-VL, layer only"
seeds = [0]
objectives = ["siglip", "dino"]
[fixed]
alpha = 1.0
tokens = "full"
steps = {steps}
width = {size}
height = {size}
[space]
layer = {{ low = -12, high = -2 }}
[sampler]
kind = "nsga2"
population = 20
"""


def log(t0: float, msg: str) -> None:
    print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)


def build_generation_models(device: str, tiny_dirs, zdir: Path, vldir: Path) -> dict:
    """Z-Image DiT + VAE (no text encoder) and Qwen3-VL-4B at published sizes, random bf16, saved."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    tok_z = AutoTokenizer.from_pretrained(tiny_dirs.zimage, subfolder="tokenizer")
    tok_vl = AutoTokenizer.from_pretrained(tiny_dirs.vl)
    vl_cfg, _te, dit_kw, vae_kw = gb.full_configs(tok_vl, tok_z)
    for d in (zdir, vldir):
        shutil.rmtree(d, ignore_errors=True)
    dit = gb.build(device, torch.bfloat16, lambda: ZImageTransformer2DModel(**dit_kw))
    with torch.no_grad():  # trained-model-like scale (perf16.realistic_init)
        for m in dit.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, 0.02)
                if m.bias is not None:
                    m.bias.zero_()
    vae = gb.build(device, torch.bfloat16, lambda: AutoencoderKL(**vae_kw))
    params = {"dit": gb.nparams(dit), "vae": gb.nparams(vae)}
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    ZImagePipeline(scheduler=sched, vae=vae, text_encoder=None, tokenizer=None, transformer=dit).save_pretrained(zdir)
    del dit, vae
    gb.free_cuda()
    vl = gb.build(device, torch.bfloat16, lambda: Qwen3VLForConditionalGeneration(vl_cfg))
    params["qwen3_vl"] = gb.nparams(vl)
    vl.save_pretrained(vldir)
    del vl
    gb.free_cuda()
    for f in Path(tiny_dirs.vl).iterdir():  # tokenizer, processor and chat template of the tiny build
        if f.name in gb.VL_WEIGHT_FILES or f.suffix == ".safetensors" or f.name.endswith(".index.json"):
            continue
        shutil.copy2(f, vldir / f.name)
    return params


def build_metric_models(device: str, tiny_metrics, root: Path) -> dict[str, str]:
    """SigLIP 2 base and DINO ViT-S/16 at published sizes (random fp32), saved with their processors."""
    from transformers import AutoProcessor

    from metrics_gpu import born, published

    out = {}
    for family in ("siglip", "dino"):
        d = root / f"{family}-published-random"
        shutil.rmtree(d, ignore_errors=True)
        model = born(torch.device(device), torch.float32, published(family))
        model.save_pretrained(d)
        if family == "siglip":  # the tiny tokenizer (its ids are valid in the 256k vocabulary), 224² images
            proc = AutoProcessor.from_pretrained(tiny_metrics.sources()["siglip"])
            proc.image_processor.size = {"height": 224, "width": 224}
            proc.save_pretrained(d)
        del model
        gb.free_cuda()
        out[family] = str(d)
    return out


def completion_rate(folder: Path, vlbench_args: str) -> dict:
    """Trials/hour from Optuna's completion times (the study in the search folder): the whole search from its first
    completion, and in steady state — after the first batch (--batch N: the first N trials; they carry the models'
    first calls and the fast graphs' compiles) — so loads and compiles do not count against the rate."""
    import optuna

    from vlbench.search.runner import STUDY, study_storage

    done = sorted(t.datetime_complete for t in optuna.load_study(study_name=STUDY, storage=study_storage(folder))
                  .get_trials(deepcopy=False) if t.datetime_complete is not None)
    flags = vlbench_args.split()
    batch = int(flags[flags.index("--batch") + 1]) if "--batch" in flags else 1
    out = {"completed_at_s": [round((t - done[0]).total_seconds(), 3) for t in done]}
    if len(done) > batch + 1:
        span = (done[-1] - done[batch - 1]).total_seconds()
        out["steady_after_first_batch"] = {"trials": len(done) - batch, "seconds": round(span, 3),
                                           "trials_per_hour": round((len(done) - batch) / span * 3600, 1)
                                           if span > 0 else None}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="the tiny random models on the CPU (64², 2 steps): checks "
                                                       "the script")
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--size", type=int, default=None, help="image side (default 512; --tiny: 64)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 9; --tiny: 2)")
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/search_gpu_out")
    p.add_argument("--workdir", default=None)
    p.add_argument("--space-kind", choices=("intra", "layers"), default="intra",
                   help="intra: layer x intra_ratio x intra_policy (issue 17's; weighted attend mixes run alone under "
                        "--batch); layers: layer in [-12, -2] only, alpha 1, tokens full (every trial batches: "
                        "one caption bucket)")
    p.add_argument("--vlbench-args", default="", help="more flags for `vlbench search`, e.g. \"--fast --batch 8\" "
                                                      "(issue 28)")
    args = p.parse_args()
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or ("/tmp/search-gpu-tiny" if args.tiny else "/tmp/search-gpu"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLBENCH_CACHE_DIR", str(workdir / "cache"))
    os.environ.setdefault("VLBENCH_DATA_DIR", str(workdir / "data"))  # the benchmark's own run store
    os.environ.setdefault("VLBENCH_CONFIG_DIR", str(workdir / "config"))
    if args.tiny:
        device, size, steps, ref_px = "cpu", args.size or 64, args.steps or 2, 96
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU: use --tiny", file=sys.stderr)
            return 2
        device, size, steps, ref_px = "cuda", args.size or 512, args.steps or 9, 512
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).parent).stdout.strip()
    R: dict = {"card": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "commit": git or "unknown",
               "command": " ".join(["python3", "benchmarks/search_gpu.py", *map(shlex.quote, sys.argv[1:])]),
               "argv": sys.argv[1:], "device": device, "settings": {
        "size": size, "steps": steps, "reference_px": ref_px, "prompt": PROMPT, "images_per_trial": 1,
        "space": "layer [-12,-2] x intra_ratio [0,1] step 0.125 x intra_policy {attend, split}; alpha 1"
                 if args.space_kind == "intra" else "layer [-12,-2]; alpha 1, tokens full",
        "vlbench_args": args.vlbench_args,
        "objectives": ["siglip", "dino"], "sampler": "nsga2, population 20, seed 0",
        "models": "tiny random" if args.tiny else "published sizes, random weights (DiT/VAE/Qwen3-VL bf16, "
                                                   "SigLIP 2 base + DINO ViT-S/16 fp32)"},
         "environment": {"python": platform.python_version(), "torch": torch.__version__,
                         "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None}}

    def save() -> None:
        (out / "search_gpu.json").write_text(json.dumps(R, indent=1))

    try:
        import numpy as np
        from PIL import Image

        from vlbench.engine.tiny import ensure_tiny_models
        from vlbench.metrics.tiny import ensure_tiny_metric_models

        tiny_dirs = ensure_tiny_models()
        ref = workdir / f"reference_{ref_px}.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (ref_px, ref_px, 3), dtype=np.uint8)).save(ref)
        tiny_metrics = ensure_tiny_metric_models(vl=tiny_dirs.vl)
        if args.tiny:
            models = ["--tiny", "--device", "cpu"]
        else:
            zdir, vldir = workdir / "z-image-turbo-random", workdir / "qwen3-vl-4b-random"
            b0 = time.perf_counter()
            R["params_B"] = build_generation_models(device, tiny_dirs, zdir, vldir)
            metric_dirs = build_metric_models(device, tiny_metrics, workdir)
            os.sync()
            R["build_save_s"] = round(time.perf_counter() - b0, 2)
            log(t0, f"built and saved the models in {R['build_save_s']} s")
            models = ["--zimage", str(zdir), "--vl", str(vldir), "--device", "cuda", "--dtype", "bf16",
                      "--siglip", metric_dirs["siglip"], "--dino", metric_dirs["dino"]]
        save()
        space = workdir / "space.toml"
        space.write_text((SPACE if args.space_kind == "intra" else SPACE_LAYERS).format(steps=steps, size=size))
        folder = out / "search"
        shutil.rmtree(folder, ignore_errors=True)
        from vlbench.cli import main as vlbench

        s0 = time.perf_counter()
        rc = vlbench(["search", "--space", str(space), "--image", str(ref), "--prompt", PROMPT, "--output-dir",
                      str(folder), "--trials", str(args.trials), "--no-store", *models, *args.vlbench_args.split()])
        wall = time.perf_counter() - s0
        R["exit_code"] = rc
        info = json.loads((folder / "search.json").read_text())["invocations"][-1]
        trials = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
        per_trial = [t["seconds"] for t in trials if t.get("seconds") is not None]
        pareto = json.loads((folder / "pareto.json").read_text())
        seconds = info["seconds"]
        steady = seconds - (per_trial[0] if per_trial else 0.0)
        R.update({
            "trials": info["ran"], "complete": info["complete"], "refused": info["refused"], "failed": info["failed"],
            "images": info["images"], "search_seconds": seconds, "command_wall_seconds": round(wall, 2),
            "trials_per_hour": round(info["ran"] / seconds * 3600, 1),
            "images_per_second": round(info["images"] / seconds, 4),
            "steady_trials_per_hour": round((info["ran"] - 1) / steady * 3600, 1) if steady > 0 else None,
            "steady_images_per_second": round((info["images"] - 1) / steady, 4) if steady > 0 else None,
            "first_trial_seconds": per_trial[0] if per_trial else None,
            "trial_seconds_median": float(np.median(per_trial[1:])) if len(per_trial) > 1 else None,
            "trial_seconds": per_trial, "front": len(pareto["front"]),
            **completion_rate(folder, args.vlbench_args),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None})
        save()
        log(t0, f"{R['trials']} trials, {R['images']} images in {seconds:.1f} s: {R['trials_per_hour']} trials/hour, "
                f"{R['images_per_second']} images/s (steady: {R['steady_trials_per_hour']} trials/hour, "
                f"{R['steady_images_per_second']} images/s); front {R['front']}")
        return 0 if rc == 0 else 1
    except Exception:  # noqa: BLE001 — the JSON keeps what was measured
        R["error"] = traceback.format_exc()
        save()
        print(R["error"], file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
