#!/usr/bin/env python3
"""Sweep throughput on G GPUs through the Ray executor vs 1 GPU (issue 8). Target: ratio >= 0.95 * G.

Builds Z-Image-Turbo and Qwen3-VL-4B at their published sizes with random bf16 weights (gpu_bench.py's
build_and_save, the same repo layouts users load), then runs one sweep -- an experiment type's configs
(vl_layer_by_token: 10) x --seeds N seeds on one 768² reference, 1024², 9 steps -- three ways, each warm
(models loaded and kernels run once before the clock starts):

  local   the in-process Engine on one GPU (`vlbench run`'s default executor)
  ray1    the Ray executor with 1 actor (1 GPU): the executor's own overhead against local
  rayG    the Ray executor with G actors (one per GPU)

Throughput = images / (time of the last row - start of the run); the grid and report written after the
last row are timed apart. Ratios: rayG / ray1 (scaling) and rayG / local. Also checked: every rayG PNG is
byte-identical to local's (same seeds, same GPU type), rows are unique, and each actor's job count.
JSON goes to OUT/ray_throughput.json after every phase; a table is printed last.

  python3 benchmarks/ray_throughput.py --tiny-smoke            # CPU, tiny models, 2 CPU actors: tests the script
  python3 benchmarks/ray_throughput.py --out $OUT --seeds 4    # GPU machine, every visible GPU

Ray is not on the GPU machine's image and its wheel (~80 MB) is over the 64 MiB that travels: carry a slim
one (`--slim-wheel`, below, drops the Java jars and the dashboard's source maps: ~47 MB).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

T0 = time.perf_counter()
R: dict = {"errors": {}}
OUT = Path(".")


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def save_json() -> None:
    R["elapsed_s"] = round(time.perf_counter() - T0, 1)
    tmp = OUT / ".ray_throughput.json.tmp"
    tmp.write_text(json.dumps(R, indent=1, default=str))
    os.replace(tmp, OUT / "ray_throughput.json")


def free_cuda() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- one timed sweep
def sweep(name: str, args, engine, executor, exp, recipes, ref, out: Path, seeds: list[int], limit=None) -> dict:
    from vlbench.analysis.report import write_folder_report
    from vlbench.experiments.runner import run_experiment

    shutil.rmtree(out, ignore_errors=True)
    finished: list[float] = []
    before = {s.index: s.done for s in executor.slots} if executor is not None else {}
    t0 = time.perf_counter()
    summary = run_experiment(engine, exp, recipes, [ref], [args.prompt], out, seeds=seeds, limit=limit,
                             executor=executor, on_job_done=lambda job, row: finished.append(time.perf_counter()),
                             report=write_folder_report)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    last = (finished[-1] - t0) if finished else wall
    gen = [r["timings"].get("generation", 0.0) for r in rows if r["status"] == "done"]
    res = {"jobs": summary.jobs if limit is None else min(limit, summary.jobs), "done": summary.done,
           "failed": summary.failed, "failures": summary.failures[:5], "vl_forwards": summary.vl_forwards,
           "rows": len(rows), "unique_rows": len({r["key"] for r in rows}),
           "sweep_s": last, "wall_with_outputs_s": wall, "outputs_s": wall - last,
           "images_per_s": summary.done / last if last > 0 else None, "sum_generation_s": sum(gen),
           "mean_generation_s": sum(gen) / len(gen) if gen else None,
           "model_load_s": sum(r["timings"].get("model_load", 0.0) for r in rows)}
    if executor is not None:
        res["actors"] = [{"slot": s.index, "jobs": s.done - before.get(s.index, 0), "device": (s.info or {}).get("gpu") or
                          (s.info or {}).get("device")} for s in executor.slots]
        res["executor_stats"] = dict(executor.stats)
    log(f"{name}: {summary.done}/{res['jobs']} images in {last:.1f}s "
        f"({res['images_per_s'] or 0:.3f}/s; outputs {wall - last:.1f}s; VL forwards {summary.vl_forwards})")
    return res


def ray_phase(name: str, args, spec, exp, recipes, ref, workdir: Path, actors: int, seeds: list[int]) -> dict:
    from vlbench.executors.ray_connect import head_engine
    from vlbench.executors.ray_executor import RayExecutor

    P: dict = {"actors": actors}
    t0 = time.perf_counter()
    executor = RayExecutor.start(spec, actors=actors)
    P["start_actors_s"] = time.perf_counter() - t0
    try:
        # warm-up: one job per actor (models load, kernels compile), other seeds so nothing is shared with the clock
        P["warmup"] = sweep(f"{name} warm-up", args, head_engine(spec), executor, exp, recipes, ref,
                            workdir / f"{name}_warm", [10_000 + i for i in range(actors)], limit=actors)
        P["sweep"] = sweep(name, args, head_engine(spec), executor, exp, recipes, ref, workdir / name, seeds)
    finally:
        executor.close()
        free_cuda()
    return P


# ---------------------------------------------------------------- main
def main() -> int:
    global OUT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny-smoke", action="store_true", help="tiny models on CPU, 64², 2 steps, 2 CPU actors")
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/ray_throughput_out")
    p.add_argument("--workdir", default=None, help="models and sweep folders (default /tmp/vlbench-bench)")
    p.add_argument("--reuse-models", action="store_true", help="use the models already saved under --workdir")
    p.add_argument("--gpus", type=int, default=None, help="G (default: every visible GPU; --tiny-smoke: 2 CPU actors)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per config (default 4: 40 images for 10 configs)")
    p.add_argument("--experiment", default="vl_layer_by_token")
    p.add_argument("--prompt", default="A watercolor painting of a lighthouse on a rocky coast, soft morning light.")
    p.add_argument("--phases", default="local,ray1,rayG", help="comma list of local, ray1, rayG")
    p.add_argument("--slim-wheel", nargs=2, metavar=("RAY_WHEEL", "OUT_DIR"),
                   help="write a copy of a Ray wheel without its Java jars and dashboard source maps, then exit")
    args = p.parse_args()
    if args.slim_wheel:
        print(slim_wheel(Path(args.slim_wheel[0]), Path(args.slim_wheel[1])))
        return 0
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or ("/tmp/vlbench-bench-smoke" if args.tiny_smoke else "/tmp/vlbench-bench"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLBENCH_CACHE_DIR", str(workdir / "cache"))
    os.environ.setdefault("VLBENCH_DATA_DIR", str(workdir / "data"))  # the run history of the benchmark's own runs
    # Ray's workers start from the raylet with this environment: make every PYTHONPATH entry absolute
    os.environ["PYTHONPATH"] = os.pathsep.join(str(Path(x).resolve()) for x in
                                               [*os.environ.get("PYTHONPATH", "").split(os.pathsep), str(HERE.parent / "src")]
                                               if x)

    import gpu_bench  # noqa: E402 — the same builders as the GPU benchmark
    import torch
    import ray

    from vlbench.engine.engine import Engine, Reference
    from vlbench.engine.models import Models
    from vlbench.modelspec import ModelSpec
    from vlbench.engine.tiny import ensure_tiny_models
    from vlbench.experiments.spec import load_type

    if args.tiny_smoke:
        device, size, steps, ref_px, dtype = "cpu", 64, 2, 192, "fp32"
        G = args.gpus or 2
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU: use --tiny-smoke", file=sys.stderr)
            return 2
        device, size, steps, ref_px, dtype = "cuda", 1024, 9, 768, "bf16"
        G = args.gpus or torch.cuda.device_count()
    phases = args.phases.split(",")
    R.update(mode="tiny-smoke" if args.tiny_smoke else "full-size random bf16", G=G, phases=phases,
             settings={"experiment": args.experiment, "seeds": args.seeds, "size": size, "steps": steps,
                       "reference_px": ref_px, "prompt": args.prompt},
             env={"torch": torch.__version__, "ray": ray.__version__, "cpus": os.cpu_count(),
                  "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]})
    save_json()

    # models: full-size random weights (or tiny), saved as repo layouts every actor loads from
    zdir, vldir = workdir / "z-image-turbo-random", workdir / "qwen3-vl-4b-random"
    try:
        tiny_dirs = ensure_tiny_models(workdir / "tiny")
        if not (args.reuse_models and zdir.is_dir() and vldir.is_dir()):
            gpu_bench.OUT = OUT
            bargs = argparse.Namespace(tiny_smoke=args.tiny_smoke, skip_te_save=True)  # the sweep reads no Qwen3-4B
            t = time.perf_counter()
            gpu_bench.build_and_save(bargs, device, torch.bfloat16, tiny_dirs, zdir, vldir)
            R["build_save_s"] = time.perf_counter() - t
            R["build_save"] = gpu_bench.R.get("build_save")
            del bargs
            free_cuda()
        import numpy as np
        from PIL import Image

        ref_path = workdir / f"reference_{ref_px}.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (ref_px, ref_px, 3), dtype=np.uint8)).save(ref_path)
        ref = Reference.open(ref_path)
    except Exception:  # noqa: BLE001
        R["errors"]["build"] = traceback.format_exc()[-3000:]
        save_json()
        log(R["errors"]["build"])
        return 1
    spec = ModelSpec(zimage=str(zdir), vl=str(vldir), device=device, dtype=dtype)
    exp = load_type(args.experiment)
    recipes = exp.recipes(overrides={"width": size, "height": size, "steps": steps})
    seeds = list(range(args.seeds))
    R["images"] = len(recipes) * len(seeds)
    log(f"{len(recipes)} configs x {len(seeds)} seeds = {R['images']} images; G = {G}")

    if "local" in phases:
        try:
            engine = Engine(Models(spec))
            P = R["local"] = {}
            P["warmup"] = sweep("local warm-up", args, engine, None, exp, recipes, ref, workdir / "local_warm",
                                [10_000], limit=1)
            P["sweep"] = sweep("local", args, engine, None, exp, recipes, ref, workdir / "local", seeds)
            del engine
            free_cuda()
        except Exception:  # noqa: BLE001
            R["errors"]["local"] = traceback.format_exc()[-3000:]
            log(R["errors"]["local"])
        save_json()

    t = time.perf_counter()
    cpus = os.cpu_count() or 1
    ray.init(address="local", num_gpus=0 if device == "cpu" else torch.cuda.device_count(),
             num_cpus=max(cpus, G), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    R["ray_init_s"] = time.perf_counter() - t
    for name, actors in (("ray1", 1), ("rayG", G)):
        if name not in phases:
            continue
        try:
            R[name] = ray_phase(name, args, spec, exp, recipes, ref, workdir, actors, seeds)
        except Exception:  # noqa: BLE001
            R["errors"][name] = traceback.format_exc()[-3000:]
            log(R["errors"][name])
        save_json()
    ray.shutdown()

    # ratios and checks
    rate = {k: (R.get(k) or {}).get("sweep", {}).get("images_per_s") for k in ("local", "ray1", "rayG")}
    ratios = {}
    if rate["rayG"] and rate["ray1"]:
        ratios["rayG_over_ray1"] = rate["rayG"] / rate["ray1"]
    if rate["rayG"] and rate["local"]:
        ratios["rayG_over_local"] = rate["rayG"] / rate["local"]
    if rate["ray1"] and rate["local"]:
        ratios["ray1_over_local"] = rate["ray1"] / rate["local"]
    R["images_per_s"], R["ratios"] = rate, ratios
    R["target"] = 0.95 * G
    best = ratios.get("rayG_over_local") or ratios.get("rayG_over_ray1")
    R["meets_target"] = None if best is None else best >= 0.95 * G
    if "local" in R and "rayG" in R:
        R["rayG_pngs_identical_to_local"] = same_pngs(workdir / "local", workdir / "rayG")
    save_json()
    table()
    return 0 if not R["errors"] else 1


def same_pngs(a: Path, b: Path) -> dict:
    rows = [json.loads(x) for x in (a / "results.jsonl").read_text().splitlines() if x.strip()]
    same = sum((a / r["image"]).read_bytes() == (b / r["image"]).read_bytes()
               for r in rows if r["status"] == "done" and (b / r["image"]).is_file())
    return {"compared": len(rows), "identical": same}


def table() -> None:
    def f(x, p=3):
        return "-" if x is None else f"{x:.{p}f}"

    lines = [f"ray_throughput ({R.get('mode')}, G={R.get('G')}, {R.get('images')} images)"]
    for k in ("local", "ray1", "rayG"):
        s = (R.get(k) or {}).get("sweep")
        if s:
            per = " ".join(f"{a['slot']}:{a['jobs']}" for a in s.get("actors", []))
            lines.append(f"  {k:6s} {s['done']:4d} images  {f(s['sweep_s'], 1):>7s} s  {f(s['images_per_s'])} img/s  "
                         f"mean gen {f(s['mean_generation_s'])} s  VL fwd {s['vl_forwards']}"
                         + (f"  per actor {per}" if per else ""))
    for k, v in (R.get("ratios") or {}).items():
        lines.append(f"  {k:18s} {f(v)}   (target rayG >= {f(R.get('target'), 2)} x)")
    if "rayG_pngs_identical_to_local" in R:
        lines.append(f"  rayG PNGs identical to local: {R['rayG_pngs_identical_to_local']}")
    if R["errors"]:
        lines.append(f"  ERRORS in: {', '.join(R['errors'])}")
    print("\n".join(lines), flush=True)


# ---------------------------------------------------------------- a Ray wheel small enough to carry
def slim_wheel(src: Path, out_dir: Path) -> Path:
    """Copy a Ray wheel without ray/jars (Java workers) and the dashboard's *.map files; RECORD follows."""
    import zipfile

    drop = lambda name: name.startswith("ray/jars/") or (name.startswith("ray/dashboard/") and name.endswith(".map"))  # noqa: E731
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / src.name
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            if drop(item.filename):
                continue
            data = zin.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if not drop(line.split(b",", 1)[0].decode("utf-8", "replace")))
            zout.writestr(item, data)
    return dst


if __name__ == "__main__":
    sys.exit(main())
