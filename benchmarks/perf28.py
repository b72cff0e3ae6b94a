#!/usr/bin/env python3
"""Issue 28's GPU benchmark: the default path beside plain diffusers, caption buckets, --fast, --batch, a sweep's
images per hour and a cold `vlbench generate` — in one call, through the project's own code paths.

Builds Z-Image-Turbo's DiT + VAE and Qwen3-VL-4B at their published sizes with random bf16 weights (perf16.py's
builder: the DiT's Linear weights N(0, 0.02²), so fp8 does not overflow), saves them as real repo layouts, then:

  plain     default vlbench (`engine.generate`) vs plain diffusers `pipe(prompt_embeds=...)` on the same loaded
            pipeline, same embeddings (captions of 32 and 605 rows), same CPU generator, PIL output: eager,
            then compiled. Compiled twice: vlbench's --compile (`compile_repeated_blocks(fullgraph=True,
            dynamic=True)`) and diffusers' recommended call (`compile_repeated_blocks(fullgraph=True)`, the one
            ../shared/tools/gpu_baseline.py makes), each vs plain diffusers on the same graphs; >= 5 interleaved
            repetitions; ratios, ranges and pixel differences (vlbench compiled vs plain compiled included)
  fast      a --fast Models (fp8 + static graphs + caption buckets + the attention kernel it times at load):
            20 caption lengths at 1024², 9 steps: graphs built and first-call seconds per length, then seconds per
            image at each length; then s/image at 32 and 605 rows (5 reps) and the pixel drift from bf16 eager
  batch     --fast at 512², 9 steps: batch 1 vs batch N (generate_batch, N captions of one bucket): s/image,
            images/hour, and batched vs batch-1 pixels
  sweep     a 20-image `vlbench run`-style sweep (run_experiment, 10 layer configs × 2 seeds, a VL recipe at
            512², 9 steps): default eager batch 1 vs --fast --batch 8: images/hour (conditioning included)
  cold      a fresh `vlbench generate` process (1024², 9 steps, VL recipe): wall vs load + generation recorded,
            beside the same cold work with transformers and diffusers called directly (plain_diffusers_cold)

Writes OUT/perf28.json after every section (card, commit, command) and prints a table last. `--tiny-smoke` runs
every section on the CPU with the tiny models (64², 2 steps; fp8 is skipped: the fast sections use buckets +
static graphs with dynamo's eager backend). benchmarks/README.md has the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench as gb  # noqa: E402  (sets HF offline env; torch)
import perf16 as P  # noqa: E402

import torch  # noqa: E402

T0 = time.perf_counter()
R: dict = {"errors": {}}
OUT = Path(".")
PROMPT = gb.PROMPT
WIDTH = 2560  # Z-Image-Turbo's caption width (cap_feat_dim)


def elapsed() -> float:
    return time.perf_counter() - T0


def log(msg: str) -> None:
    print(f"[{elapsed():7.1f}s] {msg}", flush=True)


def save_json() -> None:
    R["elapsed_s"] = round(elapsed(), 1)
    tmp = OUT / ".perf28.json.tmp"
    tmp.write_text(json.dumps(R, indent=1, default=str))
    os.replace(tmp, OUT / "perf28.json")


def error(section: str) -> None:
    R["errors"][section] = traceback.format_exc()[-3000:]
    log(f"ERROR in {section}:\n{R['errors'][section]}")
    save_json()


def stats(ts: list[float]) -> dict:
    s = sorted(ts)
    return {"median": round(s[len(s) // 2], 4), "min": round(s[0], 4), "max": round(s[-1], 4), "n": len(s),
            "all": [round(t, 4) for t in ts]}


def timed(fn):
    gb.sync()
    t = time.perf_counter()
    out = fn()
    gb.sync()
    return time.perf_counter() - t, out


def ratio(a: dict, b: dict) -> dict:
    """a / b by medians, and whether the [min, max] ranges overlap."""
    return {"median_ratio": round(a["median"] / b["median"], 4),
            "ranges_overlap": not (a["min"] > b["max"] or b["min"] > a["max"])}


def commit(args) -> str:
    if args.commit:
        return args.commit
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def captions(args, device, lengths) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    width = args.width
    return {n: (torch.randn(n, width, generator=g) * 0.5).to(device, torch.bfloat16 if device == "cuda"
                                                               else torch.float32) for n in lengths}


def interleaved(fns: dict, reps: int) -> dict[str, dict]:
    """Each function once per round, `reps` rounds (after one warm-up round): seconds per call."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(timed(fn)[0])
    return {k: stats(v) for k, v in times.items()}


# ---------------------------------------------------------------- plain: the default path vs plain diffusers
def plain_section(args, models) -> dict:
    from vlbench.engine.generate import generate

    pipe = models.pipe
    S = R.setdefault("plain", {})
    embeds = captions(args, models.device, args.lengths)
    images: dict = {}

    def plain(e, seed=0):
        return pipe(prompt_embeds=[e], guidance_scale=0.0, num_inference_steps=args.steps, width=args.size,
                    height=args.size, generator=torch.Generator("cpu").manual_seed(seed), output_type="pil").images[0]

    def ours(e, seed=0):
        return generate(pipe, e, seed=seed, steps=args.steps, width=args.size, height=args.size, guidance=0.0,
                        budget=models.caption_budget)

    def measure(label: str) -> None:
        V = S.setdefault(label, {})
        for n, e in embeds.items():
            t0 = time.perf_counter()
            a, b = ours(e), plain(e)
            V[f"first_calls_{n}_s"] = round(time.perf_counter() - t0, 2)
            images[(label, n, "vlbench")], images[(label, n, "plain")] = P.pixels(a), P.pixels(b)
            V[f"pixels_{n}_vs_plain"] = P.diff(images[(label, n, "vlbench")], images[(label, n, "plain")])
            # where a difference comes from: the same call twice (determinism), and plain diffusers under
            # torch.inference_mode as engine.generate runs (diffusers' __call__ runs under no_grad)
            V[f"pixels_{n}_vlbench_repeat"] = P.diff(P.pixels(ours(e)), images[(label, n, "vlbench")])
            V[f"pixels_{n}_plain_repeat"] = P.diff(P.pixels(plain(e)), images[(label, n, "plain")])
            with torch.inference_mode():
                V[f"pixels_{n}_plain_inference_mode_vs_vlbench"] = P.diff(P.pixels(plain(e)),
                                                                          images[(label, n, "vlbench")])
            t = interleaved({"vlbench": lambda: ours(e), "plain": lambda: plain(e)}, args.reps)
            V[f"seconds_{n}"] = t
            V[f"ratio_{n}"] = ratio(t["vlbench"], t["plain"])
            log(f"plain/{label} {n} rows: vlbench {t['vlbench']['median']:.3f} s, plain {t['plain']['median']:.3f}"
                f" s, ratio {V[f'ratio_{n}']['median_ratio']}; pixels {V[f'pixels_{n}_vs_plain']}")
            save_json()

    measure("eager")
    if elapsed() > args.budget_s * 0.35:
        S["compiled"] = {"skipped": f"out of time at {elapsed():.0f}s"}
        return images
    from torch import _dynamo

    from vlbench.engine.models import compiled_graphs

    extra = {"backend": "eager"} if args.tiny_smoke else {}
    for label, options in (("compiled_vlbench", {}), ("compiled_diffusers_way", {"dynamic": None})):
        if elapsed() > args.budget_s * 0.45:
            S[label] = {"skipped": f"out of time at {elapsed():.0f}s"}
            continue
        models.uncompile_dit()
        _dynamo.reset()
        g0 = compiled_graphs()
        models.compile_dit(**options, **extra)
        S.setdefault(label, {})["options"] = {"fullgraph": True, "dynamic": True, **options}
        measure(label)
        S[label]["graphs"] = compiled_graphs() - g0
    for n in embeds:
        if ("compiled_vlbench", n, "vlbench") in images and ("compiled_diffusers_way", n, "plain") in images:
            S[f"vlbench_compile_vs_plain_compile_pixels_{n}"] = P.diff(images[("compiled_vlbench", n, "vlbench")],
                                                                       images[("compiled_diffusers_way", n, "plain")])
    models.uncompile_dit()
    _dynamo.reset()
    save_json()
    return images


# ---------------------------------------------------------------- fast: buckets, fp8, attention
def fast_models(args, spec):
    """A --fast Models. On the CPU (--tiny-smoke) fp8 cannot run: buckets + static graphs (dynamo's eager backend)
    and the attention timing, through the same Models methods."""
    from dataclasses import replace

    from vlbench.engine.models import FAST_COMPILE_OPTIONS, Models

    if not args.tiny_smoke:
        return Models(replace(spec, fast=True))
    models = Models(spec)
    models._fast(models.pipe.transformer)
    from torch import _dynamo

    _dynamo.config.recompile_limit = 128
    models.compile_dit(**FAST_COMPILE_OPTIONS, backend="eager")
    models.fast_settings["compile"] = "static graphs per caption bucket, dynamo's eager backend (CPU smoke: no fp8)"
    return models


def fast_section(args, spec, eager_images: dict) -> None:
    from vlbench.engine.generate import generate
    from vlbench.engine.models import compiled_graphs

    S = R.setdefault("fast", {})
    g0 = compiled_graphs()
    t0 = time.perf_counter()
    models = fast_models(args, spec)
    pipe = models.pipe
    S["load_s"] = round(time.perf_counter() - t0, 2)
    S["settings"] = models.fast_settings
    buckets = pipe.transformer._vlbench_buckets

    def run(e, seed=0):
        return generate(pipe, e, seed=seed, steps=args.steps, width=args.size, height=args.size, guidance=0.0,
                        budget=models.caption_budget)

    # 20 caption lengths, each twice: the first call (compiles when its bucket is new), then the steady image
    lengths = args.sweep_lengths
    embeds = captions(args, models.device, lengths)
    rows = []
    for n in lengths:
        if elapsed() > args.budget_s * 0.72:
            rows.append({"length": n, "skipped": f"out of time at {elapsed():.0f}s"})
            continue
        before = compiled_graphs()
        first, _ = timed(lambda: run(embeds[n]))
        second, _ = timed(lambda: run(embeds[n]))
        rows.append({"length": n, "bucket": buckets.bucket(n), "graphs_built": compiled_graphs() - before,
                     "first_s": round(first, 3), "steady_s": round(second, 3)})
        log(f"fast sweep: {rows[-1]}")
        S["sweep_20_lengths"] = rows
        save_json()
    done = [r for r in rows if "steady_s" in r]
    S["sweep_summary"] = {"lengths": len(done), "buckets_used": len({r["bucket"] for r in done}),
                          "graphs_total": compiled_graphs() - g0,
                          "graphs_in_sweep": sum(r["graphs_built"] for r in done),
                          "steady_s_median": stats([r["steady_s"] for r in done])["median"] if done else None,
                          "bucket_lengths": buckets.lengths}
    save_json()
    # steady state at 32 and 605 rows, and the drift from bf16 eager (same embeddings and seed as plain_section)
    base = captions(args, models.device, args.lengths)
    for n, e in base.items():
        if elapsed() > args.budget_s * 0.76:
            S[f"seconds_{n}"] = {"skipped": f"out of time at {elapsed():.0f}s"}
            continue
        image = run(e)
        t = [timed(lambda: run(e))[0] for _ in range(args.reps)]
        S[f"seconds_{n}"] = stats(t)
        if ("eager", n, "vlbench") in eager_images:
            S[f"pixels_{n}_vs_bf16_eager"] = P.diff(P.pixels(image), eager_images[("eager", n, "vlbench")])
        log(f"fast {n} rows: {S[f'seconds_{n}']['median']:.3f} s/image; drift {S.get(f'pixels_{n}_vs_bf16_eager')}")
        save_json()
    try:
        profile_section(args, models, run, base[args.lengths[-1]])
    except Exception:  # noqa: BLE001
        error("fast_profile")
    batch_section(args, models)
    return models


def profile_section(args, models, run, embeds) -> None:
    """Where a --fast image's time goes: torch.profiler over one image (top ops by self device time, written to
    OUT/perf28_profile.txt) and how often the host waited for the device (synchronize calls)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = models.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run(embeds)
        gb.sync()
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    (OUT / "perf28_profile.txt").write_text(events.table(sort_by=key, row_limit=40))
    top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:15]
    total = sum(getattr(e, key) for e in events)
    R["fast"]["profile"] = {
        "file": "perf28_profile.txt", "sort": key, "total_ms": round(total / 1000, 1),
        "host_syncs": sum(e.count for e in events if "Synchronize" in e.key),
        "top_ms": [[e.key[:80], round(getattr(e, key) / 1000, 2), e.count] for e in top]}
    log(f"fast profile: {R['fast']['profile']['host_syncs']} synchronize calls; top {R['fast']['profile']['top_ms'][:5]}")
    save_json()


def batch_section(args, models) -> None:
    from vlbench.engine.generate import generate_batch

    S = R.setdefault("batch", {})
    if elapsed() > args.budget_s * 0.8:
        S["skipped"] = f"out of time at {elapsed():.0f}s"
        return
    size, n = args.batch_size_px, args.batch
    lengths = [40 + 3 * i for i in range(n)]  # one bucket (64), N different captions
    embeds = captions(args, models.device, lengths)
    e = list(embeds.values())
    seeds = list(range(n))
    kw = dict(steps=args.steps, width=size, height=size, guidance=0.0, budget=models.caption_budget)

    def one(i):
        return generate_batch(models.pipe, e[i], seeds=[seeds[i]], **kw)[0]

    def all_at_once():
        return generate_batch(models.pipe, e, seeds=seeds, **kw)

    singles = [one(i) for i in range(n)]  # compiles batch 1 at this size
    batched = all_at_once()  # compiles batch N
    t1 = [timed(lambda: [one(i) for i in range(n)])[0] / n for _ in range(max(2, args.reps // 2))]
    tn = [timed(all_at_once)[0] / n for _ in range(max(2, args.reps // 2))]
    S.update({"size": size, "batch": n, "batch1_s_per_image": stats(t1), "batchN_s_per_image": stats(tn)})
    S["images_per_hour"] = {"batch1": round(3600 / S["batch1_s_per_image"]["median"]),
                            "batchN": round(3600 / S["batchN_s_per_image"]["median"])}
    diffs = [P.diff(P.pixels(a), P.pixels(b)) for a, b in zip(batched, singles)]
    S["batched_vs_batch1_pixels"] = {"max_abs": max(d.get("max_abs", 0) for d in diffs),
                                     "mean_abs": round(sum(d.get("mean_abs", 0) for d in diffs) / len(diffs), 4),
                                     "identical": sum(bool(d.get("identical")) for d in diffs)}
    log(f"batch: {S['images_per_hour']} images/hour at {size}²; batched vs batch 1 {S['batched_vs_batch1_pixels']}")
    save_json()


# ---------------------------------------------------------------- sweep: images/hour through run_experiment
SWEEP_TYPE = """name = "perf28_sweep"
description = "issue 28: 10 layer configs of one extraction"
question = "images per hour"
[base]
alpha = 1.0
tokens = "full"
""" + "".join(f'\n[[configs]]\nname = "l{k}"\nlayer = {k}\n' for k in range(-2, -12, -1))


def sweep_section(args, engines: dict, ref, workdir: Path) -> None:
    from vlbench.analysis.report import write_folder_report
    from vlbench.experiments.runner import LocalExecutor, run_experiment
    from vlbench.experiments.spec import load_type

    S = R.setdefault("sweep", {})
    path = workdir / "perf28_sweep.toml"
    path.write_text(SWEEP_TYPE)
    experiment = load_type(path)
    for label, (engine, batch) in engines.items():
        if elapsed() > args.budget_s * 0.88:
            S[label] = {"skipped": f"out of time at {elapsed():.0f}s"}
            continue
        recipes = experiment.recipes(overrides={"width": args.batch_size_px, "height": args.batch_size_px,
                                                "steps": args.steps})
        out = workdir / f"sweep_{label}"
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        engine._extractions.clear()  # the extraction is part of a sweep's cost
        t, summary = timed(lambda: run_experiment(engine, experiment, recipes, [ref], [PROMPT], out, seeds=[0, 1],
                                                  executor=LocalExecutor(batch=batch), report=write_folder_report))
        rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
        S[label] = {"images": summary.done, "batch": batch, "wall_s": round(t, 2),
                    "images_per_hour": round(3600 * summary.done / t) if t else None,
                    "generation_s_sum": round(sum(r["timings"].get("generation", 0) for r in rows), 2)}
        log(f"sweep {label}: {S[label]}")
        save_json()
    if "images_per_hour" in S.get("default", {}):  # each engine's images/hour over the default's (eager, batch 1)
        S["speedup"] = {k: round(v["images_per_hour"] / S["default"]["images_per_hour"], 3) for k, v in S.items()
                        if isinstance(v, dict) and v.get("images_per_hour") and k != "default"}


# ---------------------------------------------------------------- cold: a fresh vlbench generate
def cold_section(args, zdir: Path, vldir: Path, ref_path: Path, workdir: Path) -> None:
    S = R.setdefault("cold", {})
    data = workdir / "cold_data"
    import shutil

    shutil.rmtree(data, ignore_errors=True)
    env = {**os.environ, "VLBENCH_DATA_DIR": str(data), "VLBENCH_CONFIG_DIR": str(workdir / "cold_config")}
    models = ["--tiny", "--device", "cpu"] if args.tiny_smoke else ["--zimage", str(zdir), "--vl", str(vldir)]
    cmd = [sys.executable, "-m", "vlbench", "generate", *models, "--image", str(ref_path), "--prompt", PROMPT,
           "--width", str(args.size), "--height", str(args.size), "--steps", str(args.steps),
           "--out", str(workdir / "cold.png")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    S["wall_s"] = round(time.perf_counter() - t0, 2)
    S["rc"] = proc.returncode
    if proc.returncode != 0:
        S["stderr"] = proc.stderr[-2000:]
        return
    from vlbench.store import Store

    os.environ["VLBENCH_DATA_DIR"] = str(data)
    try:
        with Store() as store:
            rows = store.history()
        timings = rows[0].timings if rows else {}
    finally:
        os.environ.pop("VLBENCH_DATA_DIR", None)
    S["timings"] = timings
    accounted = sum(v for k, v in timings.items() if k != "batch_generation")
    S["accounted_s"] = round(accounted, 2)
    S["wall_minus_accounted_s"] = round(S["wall_s"] - accounted, 2)
    log(f"cold generate: {S}")
    save_json()
    cold_plain(args, S, zdir, vldir, ref_path, workdir)
    if not args.tiny_smoke:
        cold_breakdown(S)


COLD_PLAIN = r"""
import json, sys, time
t = {}
t0 = time.perf_counter()
zdir, vldir, ref, prompt, size, steps, device, out = sys.argv[1:9]
import torch
from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
from diffusers import ZImagePipeline
from PIL import Image
t["imports"] = time.perf_counter() - t0
dtype = torch.bfloat16 if device == "cuda" else torch.float32
t1 = time.perf_counter()
vl = Qwen3VLForConditionalGeneration.from_pretrained(vldir, dtype=dtype).to(device)
proc = AutoProcessor.from_pretrained(vldir)
pipe = ZImagePipeline.from_pretrained(zdir, dtype=dtype, text_encoder=None, tokenizer=None).to(device)
t["model_load"] = time.perf_counter() - t1
t1 = time.perf_counter()
msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
text = proc.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)
inputs = proc(text=[text], images=[Image.open(ref).convert("RGB")], return_tensors="pt").to(device)
with torch.inference_mode():
    e = vl(**inputs, output_hidden_states=True).hidden_states[-2][0]
t["extraction"] = time.perf_counter() - t1
t1 = time.perf_counter()
image = pipe(prompt_embeds=[e], num_inference_steps=int(steps), width=int(size), height=int(size),
             guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(0)).images[0]
t["generation"] = time.perf_counter() - t1
image.save(out)
t["total_in_process"] = time.perf_counter() - t0
print(json.dumps({k: round(v, 2) for k, v in t.items()}))
"""


def cold_plain(args, S: dict, zdir: Path, vldir: Path, ref_path: Path, workdir: Path) -> None:
    """The same cold work with transformers and diffusers called directly (imports, both models loaded, one VL
    forward on the reference and prompt, one image): the floor a fresh process pays on this machine, beside
    `vlbench generate`'s wall."""
    device = "cpu" if args.tiny_smoke else "cuda"
    cmd = [sys.executable, "-c", COLD_PLAIN, str(zdir), str(vldir), str(ref_path), PROMPT, str(args.size),
           str(args.steps), device, str(workdir / "cold_plain.png")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    P = S.setdefault("plain_diffusers_cold", {})
    P["wall_s"] = round(time.perf_counter() - t0, 2)
    P["rc"] = proc.returncode
    if proc.returncode != 0:
        P["stderr"] = proc.stderr[-2000:]
        return
    P["timings"] = json.loads(proc.stdout.strip().splitlines()[-1])
    if S.get("wall_s"):
        S["vlbench_wall_minus_plain_wall_s"] = round(S["wall_s"] - P["wall_s"], 2)
    log(f"cold plain diffusers: {P}")
    save_json()


COLD_CHILD = r"""
import json, time
t = {}
t0 = time.perf_counter()
import torch
t["import_torch"] = time.perf_counter() - t0
t1 = time.perf_counter()
torch.cuda.init(); torch.zeros(1, device="cuda").sum().item()
t["cuda_start"] = time.perf_counter() - t1
t1 = time.perf_counter()
import transformers  # noqa: F401
from transformers import Qwen3VLForConditionalGeneration  # noqa: F401
t["import_transformers"] = time.perf_counter() - t1
t1 = time.perf_counter()
from diffusers import ZImagePipeline  # noqa: F401
t["import_diffusers"] = time.perf_counter() - t1
t1 = time.perf_counter()
import vlbench.cli.generate, vlbench.engine.engine, vlbench.engine.models  # noqa: F401,E401
t["import_vlbench"] = time.perf_counter() - t1
t["total"] = time.perf_counter() - t0
print(json.dumps({k: round(v, 2) for k, v in t.items()}))
"""


def cold_breakdown(S: dict) -> None:
    """Where a fresh process's time goes before the engine's own timings start: imports (torch, transformers,
    diffusers, vlbench) and the CUDA start, each in a fresh interpreter (page cache warm), twice."""
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", COLD_CHILD], capture_output=True, text=True, timeout=120)
        if proc.returncode == 0:
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:
            S["breakdown_error"] = proc.stderr[-1500:]
    if runs:
        S["process_start_breakdown_s"] = runs
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=False)
        S["bare_interpreter_s"] = round(time.perf_counter() - t0, 2)
        log(f"cold breakdown: {runs}")
        save_json()


def table() -> None:
    lines = ["", "issue 28 benchmark (" + str(R.get("card")) + ", commit " + str(R.get("commit")) + ")"]
    pl = R.get("plain", {})
    for label in ("eager", "compiled_vlbench", "compiled_diffusers_way"):
        for n in R.get("settings", {}).get("lengths", []):
            t = pl.get(label, {}).get(f"seconds_{n}")
            if t:
                lines.append(f"  {label:24s} {n:4d} rows: vlbench {t['vlbench']['median']:.3f} s  plain "
                             f"{t['plain']['median']:.3f} s  ratio {pl[label][f'ratio_{n}']}")
    f = R.get("fast", {})
    for n in R.get("settings", {}).get("lengths", []):
        if "median" in f.get(f"seconds_{n}", {}):
            lines.append(f"  fast {n:4d} rows: {f[f'seconds_{n}']['median']:.3f} s/image")
    if "sweep_summary" in f:
        lines.append(f"  buckets over 20 lengths: {f['sweep_summary']}")
    if "images_per_hour" in R.get("batch", {}):
        lines.append(f"  batch: {R['batch']['images_per_hour']} images/hour")
    for k, v in R.get("sweep", {}).items():
        lines.append(f"  sweep {k}: {v}")
    if R.get("cold"):
        lines.append(f"  cold generate: {R['cold'].get('wall_s')} s wall, {R['cold'].get('accounted_s')} s load + "
                     "generation + conditioning")
        pc = R["cold"].get("plain_diffusers_cold") or {}
        if pc.get("timings"):
            lines.append(f"  cold, transformers + diffusers direct: {pc['wall_s']} s wall "
                         f"(imports {pc['timings']['imports']} s)")
    lines.append(f"  errors: {list(R['errors'])}")
    print("\n".join(lines), flush=True)


def main() -> int:
    global OUT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny-smoke", action="store_true", help="tiny models on CPU, 64², 2 steps (tests the script)")
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/perf28_out")
    p.add_argument("--workdir", default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--batch", type=int, default=8, help="batch size of the batch and sweep sections (default 8)")
    p.add_argument("--budget-s", type=float, default=520.0, help="sections past fractions of this are skipped")
    p.add_argument("--sections", default="plain,fast,sweep,cold")
    p.add_argument("--commit", default=os.environ.get("VLBENCH_COMMIT"), help="the commit measured (default: git)")
    args = p.parse_args()
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or ("/tmp/perf28-smoke" if args.tiny_smoke else "/tmp/perf28"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLBENCH_CACHE_DIR", str(workdir / "cache"))
    P.OUT = workdir  # perf16's helpers write their own json there, not into OUT
    if args.tiny_smoke:
        device, args.size, args.steps, ref_px, args.batch_size_px = "cpu", 64, 2, 192, 64
        args.reps, args.batch, args.budget_s = args.reps or 2, min(args.batch, 3), 1e9
        args.lengths, args.sweep_lengths = [32, 150], [3, 40, 100, 150, 200]  # CPU time: 5 lengths, 5 buckets
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU: use --tiny-smoke", file=sys.stderr)
            return 2
        device, args.size, args.steps, ref_px, args.batch_size_px = "cuda", 1024, 9, 768, 512
        args.reps = args.reps or 5
        args.lengths = [32, 605]
        args.sweep_lengths = [8 + 31 * i for i in range(20)]  # 8 .. 597 rows: buckets 32 .. 768
    sections = [x for x in args.sections.split(",") if x]
    R.update(argv=sys.argv[1:], command=" ".join([Path(sys.executable).name, *sys.argv]), commit=commit(args),
             sections=sections)
    R["settings"] = {"size": args.size, "steps": args.steps, "reps": args.reps, "lengths": args.lengths,
                     "sweep_lengths": args.sweep_lengths, "batch": args.batch, "batch_size_px": args.batch_size_px,
                     "dit_init": "Linear weights N(0, 0.02^2), biases 0 (perf16.py)"}
    P.environment(device)
    R["env"] = P.R.get("env")
    R["card"] = (R["env"] or {}).get("gpu", "cpu")
    save_json()

    from vlbench.engine.engine import Engine, Reference
    from vlbench.engine.models import Models
    from vlbench.engine.tiny import ensure_tiny_models
    from vlbench.modelspec import ModelSpec

    zdir, vldir = workdir / "z-image-turbo-random", workdir / "qwen3-vl-4b-random"
    try:
        tiny_dirs = ensure_tiny_models(Path(os.environ["VLBENCH_CACHE_DIR"]) / "tiny")  # where --tiny finds them
        import numpy as np
        from PIL import Image

        ref_path = workdir / f"reference_{ref_px}.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (ref_px, ref_px, 3), dtype=np.uint8)).save(ref_path)
        ref = Reference.open(ref_path)
        P.build_and_save(args, device, tiny_dirs, zdir, vldir)
        R["build_save"], R["params_B"] = P.R.get("build_save"), P.R.get("params_B")
    except Exception:  # noqa: BLE001
        error("build_save")
        table()
        return 1
    spec = ModelSpec(zimage=str(zdir), vl=str(vldir), device=device, dtype="bf16" if device == "cuda" else "fp32")
    base = Models(spec)
    args.width = base.caption_width
    eager_images: dict = {}
    fast = None
    if "plain" in sections:
        try:
            eager_images = plain_section(args, base)
        except Exception:  # noqa: BLE001
            error("plain")
    if "fast" in sections:
        try:
            fast = fast_section(args, spec, eager_images)
        except Exception:  # noqa: BLE001
            error("fast")
    if "sweep" in sections:
        try:
            if fast is None and "fast" not in sections:  # the sweep alone: a --fast Models without the fast section
                fast = fast_models(args, spec)
            default = Engine(base)
            engines = {"default": (default, 1), "batch": (default, args.batch)}
            if fast is not None:
                fast_engine = Engine(fast)
                # the first --fast sweep compiles its graphs inside the sweep; the second reuses them (steady state)
                engines["fast_batch"] = (fast_engine, args.batch)
                if args.tiny_smoke:  # the warm sweep is fast_batch's code path again; its figure is a GPU's
                    R.setdefault("sweep", {})["fast_batch_warm"] = {"skipped": "--tiny-smoke: fast_batch's path again"}
                else:
                    engines["fast_batch_warm"] = (fast_engine, args.batch)
            sweep_section(args, engines, ref, workdir)
        except Exception:  # noqa: BLE001
            error("sweep")
    del base, fast
    gb.free_cuda()
    if "cold" in sections and elapsed() > args.budget_s * 0.93:
        R["cold"] = {"skipped": f"out of time at {elapsed():.0f}s"}
    elif "cold" in sections:
        try:
            cold_section(args, zdir, vldir, ref_path, workdir)
        except Exception:  # noqa: BLE001
            error("cold")
    save_json()
    table()
    return 0 if not R["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
