#!/usr/bin/env python3
"""Issue 16's GPU benchmark: placement policies under memory caps, fp8, attention backends, batching, and the
first Qwen3-VL forward of a fresh process — all in one call, through the project's own code paths.

Builds Z-Image-Turbo's DiT + VAE and Qwen3-VL-4B at their published sizes with random bf16 weights on the GPU
(the DiT's Linear weights drawn at a realistic scale, N(0, 0.02²), so fp8 does not overflow), saves them as
real repo layouts (Qwen3-4B is not needed: every recipe here is alpha 1), then:

  policies   per --offload policy and --gpu-memory cap (none; cpu@24; group@16; group@12; sequential@16):
             from an empty GPU, a VL recipe (768² reference + prompt, ~617 caption tokens, 1024², 9 steps):
             first run (loads, warm-ups, extraction, generation), then warm images (conditioning cached, as in
             a sweep), then a new prompt (the encoders and the DiT trade places); peak allocated / reserved;
             images compared with policy none's at the same seed
  attention  diffusers' native attention backends (sdpa, flash, efficient, cuDNN) on the DiT: one image each
             (equal to the default's?) and the DiT forward at captions 32 and 605; which kernel sdpa picks
  batch      generate_batch with 2 and 4 seeds vs one call per seed at 512² and 768²: time per image, and
             whether the images are identical
  compile    eager vs --compile (bf16) at captions 32 and 605, then --quantize fp8 --compile: time per image,
             the DiT's resident memory, the pixel difference to compiled bf16 at the same seed
  firstvl    two fresh processes: Models(warm_up=False) with the first VL forward and the first generation
             under torch.profiler (tables written to firstvl_profile.txt), a first forward at a new shape; then
             the project's default (warm-up at load): load times and the first real forward / generation
  cli_sweep  `vlbench run --experiment vl_layer_by_token --seeds 0,1` in a fresh process (files in the page
             cache): wall vs Σ generation + load, with and without the child's imports (gpu_bench.py's code)

Writes OUT/perf16.json after every section and prints a table last. `--tiny-smoke` runs every section on the
CPU with the tiny models (64², 2 steps; fp8 and the caps are skipped, group is forced with a small budget).
Run beside ../shared/tools/gpu_baseline.py in the same call (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench as gb  # noqa: E402  (sets HF offline env; torch)
from gpu_bench import build, free_cuda, gib, safetensors_files, stats, sync, timed  # noqa: E402

import torch  # noqa: E402

T0 = time.perf_counter()
R: dict = {"errors": {}}
OUT = Path(".")
PROMPT = gb.PROMPT


def elapsed() -> float:
    return time.perf_counter() - T0


def log(msg: str) -> None:
    print(f"[{elapsed():7.1f}s] {msg}", flush=True)


def save_json() -> None:
    R["elapsed_s"] = round(elapsed(), 1)
    tmp = OUT / ".perf16.json.tmp"
    tmp.write_text(json.dumps(R, indent=1, default=str))
    os.replace(tmp, OUT / "perf16.json")


def error(section: str) -> None:
    R["errors"][section] = traceback.format_exc()[-3000:]
    log(f"ERROR in {section}:\n{R['errors'][section]}")
    save_json()


def med(d: dict, key: str):
    return (d.get(key) or {}).get("median")


def pixels(image):
    import numpy as np

    return np.asarray(image).astype(np.int16)


def diff(a, b) -> dict:
    import numpy as np

    if a.shape != b.shape:
        return {"shape": [list(a.shape), list(b.shape)]}
    d = np.abs(a - b)
    mse = float((d.astype(np.float64) ** 2).mean())
    return {"identical": bool(d.max() == 0), "max_abs": int(d.max()), "mean_abs": round(float(d.mean()), 4),
            "psnr_db": None if mse == 0 else round(10 * np.log10(255.0 ** 2 / mse), 2)}


# ---------------------------------------------------------------- environment, build + save
def environment(device: str) -> None:
    import diffusers
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "diffusers": diffusers.__version__,
           "device": device, "python": sys.version.split()[0]}
    try:
        import torchao

        env["torchao"] = torchao.__version__
    except Exception as exc:  # noqa: BLE001
        env["torchao"] = f"unavailable: {type(exc).__name__}: {exc}"[:200]
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["capability"] = list(torch.cuda.get_device_capability(0))
        env["gpu_total_GiB"] = gib(torch.cuda.get_device_properties(0).total_memory)
        env["cudnn"] = torch.backends.cudnn.version()
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            env["nvidia_smi"] = q.stdout.strip()
        except Exception as exc:  # noqa: BLE001
            env["nvidia_smi"] = f"unavailable: {exc}"
    import hashlib

    import vlbench

    src = Path(vlbench.__file__).parent
    h = hashlib.sha256()
    for f in sorted(src.rglob("*.py")):
        h.update(str(f.relative_to(src)).encode() + b"\0" + f.read_bytes())
    env["vlbench_src_sha256"] = h.hexdigest()[:16]
    R["env"] = env
    log(f"env: {env}")


@torch.no_grad()
def realistic_init(module: torch.nn.Module, std: float = 0.02) -> None:
    """Trained-model-like weights for the DiT's Linear layers (default init overflows fp8 over 30 blocks)."""
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            m.weight.normal_(0.0, std)
            if m.bias is not None:
                m.bias.zero_()


def build_and_save(args, device, tiny_dirs, zdir: Path, vldir: Path) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    tok_z = AutoTokenizer.from_pretrained(tiny_dirs.zimage, subfolder="tokenizer")
    tok_vl = AutoTokenizer.from_pretrained(tiny_dirs.vl)
    vl_cfg, _te_cfg, dit_kw, vae_kw = (gb.smoke_configs if args.tiny_smoke else gb.full_configs)(tok_vl, tok_z)
    for d in (zdir, vldir):
        shutil.rmtree(d, ignore_errors=True)
    zdir.parent.mkdir(parents=True, exist_ok=True)
    B = R.setdefault("build_save", {})
    t0 = time.perf_counter()
    dit = build(device, torch.bfloat16, lambda: ZImageTransformer2DModel(**dit_kw))
    realistic_init(dit)
    vae = build(device, torch.bfloat16, lambda: AutoencoderKL(**vae_kw))
    R["params_B"] = {"dit": gb.nparams(dit), "vae": gb.nparams(vae)}
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=sched, vae=vae, text_encoder=None, tokenizer=None, transformer=dit)
    pipe.save_pretrained(zdir)
    del pipe, dit, vae
    free_cuda()
    vl = build(device, torch.bfloat16, lambda: Qwen3VLForConditionalGeneration(vl_cfg))
    R["params_B"]["qwen3_vl"] = gb.nparams(vl)
    vl.save_pretrained(vldir)
    del vl
    free_cuda()
    for f in Path(tiny_dirs.vl).iterdir():
        if f.name in gb.VL_WEIGHT_FILES or f.suffix == ".safetensors" or f.name.endswith(".index.json"):
            continue
        shutil.copy2(f, vldir / f.name)
    os.sync()
    B["build_save_sync_s"] = time.perf_counter() - t0
    B["bytes"] = sum(f.stat().st_size for d in (zdir, vldir) for f in safetensors_files(d))
    log(f"built and saved {B['bytes'] / 1e9:.1f} GB in {B['build_save_sync_s']:.1f}s")
    save_json()


# ---------------------------------------------------------------- policies × caps
POLICIES = [("none", None), ("cpu", 24), ("group", 24), ("group", 16), ("group", 12), ("sequential", 16)]  # --policies picks


def _models_for(args, spec, policy: str, cap):
    from vlbench.engine.models import Models

    if args.tiny_smoke:  # CPU: no caps; group forced with a budget that streams most blocks (the wiring)
        models = Models(spec)
        if policy == "group":
            models.offload = "group"
            models.group_reserve = 0
            models.group_budget = 1_300_000  # bf16 tiny DiT: 0.69 MB outside the blocks, 0.72 MB of blocks
        elif policy != "none":
            models.offload = policy
        return models
    return Models(replace(spec, offload=policy, gpu_memory=cap))


def policies_section(args, spec, ref, recipe) -> None:
    from vlbench.engine.engine import Engine

    O = R.setdefault("policies", {})
    images: dict[int, object] = {}
    for policy, cap in POLICIES:
        key = f"{policy}@{cap}" if cap else policy
        if args.policies and key not in args.policies.split(","):
            continue
        if elapsed() > args.budget_s * 0.45:
            O[key] = {"skipped": f"out of time at {elapsed():.0f}s"}
            continue
        P = O.setdefault(key, {"policy": policy, "cap_GiB": cap})
        free_cuda()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        models = engine = None
        try:
            models = _models_for(args, spec, policy, cap)
            engine = Engine(models)
            first = recipe.replace(steps=1) if policy == "sequential" else recipe
            t, res = timed(lambda: engine.run(first, PROMPT, [ref]))
            P["first_run_s"] = t
            P["first_run_steps"] = first.steps
            P["first_run_timings"] = res.timings
            P["caption_tokens"] = int(res.conditioning.embeds.shape[0])
            P["load_seconds"] = dict(models.load_seconds)
            P["warm_up_seconds"] = dict(models.warm_up_seconds)
            reps = 1 if policy == "sequential" else args.reps
            times, gens = [], []
            for seed in range(1, reps + 1):
                t, res = timed(lambda: engine.run(recipe.replace(seed=seed), PROMPT, [ref]))
                times.append(t)
                gens.append(res.timings["generation"])
                if seed == 1:
                    if policy == "none":
                        images[1] = pixels(res.image)
                    elif 1 in images:
                        P["image_vs_none_seed1"] = diff(pixels(res.image), images[1])
            P["per_image_s"] = stats(times)
            P["generation_part_s"] = stats(gens)
            if policy != "sequential":
                n_moves = len(models.moves)
                t, _ = timed(lambda: engine.run(recipe, PROMPT + " At dusk.", [ref]))
                P["new_prompt_run_s"] = t
                P["new_prompt_moves"] = [[m[0], m[1], round(m[2], 3)] for m in models.moves[n_moves:]]
            P["moves"] = [[m[0], m[1], round(m[2], 3)] for m in models.moves]
            P["placement"] = models.placement()
            P["group_plan"] = models.group_plan
            if torch.cuda.is_available():
                P["peak_GiB"] = gib(torch.cuda.max_memory_allocated())
                P["peak_reserved_GiB"] = gib(torch.cuda.max_memory_reserved())
            P["ok"] = True
        except Exception:  # noqa: BLE001
            P["ok"] = False
            P["error"] = traceback.format_exc()[-2500:]
            log(f"policy {key}: ERROR {P['error'][-600:]}")
        finally:
            models = engine = res = None  # all of them: a failed run must not leave its models on the GPU (a
            free_cuda()                   # first version kept `engine`, and the next policy ran out of memory)
            if torch.cuda.is_available():
                torch.cuda.set_per_process_memory_fraction(1.0)
        base = med(O.get("none", {}), "per_image_s")
        if base and med(P, "per_image_s"):
            P["ratio_vs_none"] = round(med(P, "per_image_s") / base, 3)
        log(f"policy {key}: per image {med(P, 'per_image_s')}, peak {P.get('peak_GiB')} GiB, "
            f"ratio {P.get('ratio_vs_none')}, plan {json.dumps(P.get('group_plan'))[:200]}")
        save_json()


# ---------------------------------------------------------------- attention, batch, compile, fp8
def _sdp_choice(q, k, v, causal=False):
    try:
        choice = torch._fused_sdp_choice(q, k, v, is_causal=causal)
        names = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}
        return names.get(int(choice), str(choice))
    except Exception as exc:  # noqa: BLE001
        return f"unavailable: {type(exc).__name__}"


def attention_section(args, models) -> None:
    from vlbench.engine.generate import generate

    A = R.setdefault("attention", {})
    pipe = models.pipe
    tr = pipe.transformer
    dev, dt = models.device, models.dtype
    width, budget = models.caption_width, models.caption_budget
    image_tokens = (args.size // 16) ** 2
    heads = tr.config.n_heads
    hd = tr.config.dim // heads
    for L in (32, 605 if budget >= 605 else 150):
        q = torch.randn(1, heads, image_tokens + L, hd, device=dev, dtype=dt)
        A[f"sdpa_picks_dit_{L}"] = _sdp_choice(q, q, q)
    g = torch.Generator("cpu").manual_seed(7)
    embs = {L: (torch.randn(L, width, generator=g) * 0.5).to(dev, dt) for L in (32, 605 if budget >= 605 else 150)}
    lat = [torch.randn(16, 1, args.size // 8, args.size // 8, generator=g).to(dev, dt)]
    tt = torch.tensor([0.5], device=dev, dtype=dt)
    backends = ["native", "_native_flash", "_native_efficient", "_native_cudnn"] if dev.type == "cuda" else \
        ["native", "_native_math"]
    ref_img = None
    kw = dict(seed=0, steps=args.steps, width=args.size, height=args.size, guidance=0.0, budget=budget)
    for name in backends:
        B = A.setdefault(name, {})
        try:
            tr.set_attention_backend(name)
            t, img = timed(lambda: generate(pipe, embs[32], **kw))
            B["first_image_32_s"] = t
            if ref_img is None:
                ref_img = pixels(img)
            else:
                B["image_vs_native_32"] = diff(pixels(img), ref_img)
            with torch.inference_mode():
                for L, emb in embs.items():
                    fwd = lambda: tr(lat, tt, [emb], return_dict=False)  # noqa: E731
                    fwd()
                    B[f"dit_forward_{L}_s"] = stats([timed(fwd)[0] for _ in range(args.reps + 2)])
        except Exception as exc:  # noqa: BLE001
            B["error"] = f"{type(exc).__name__}: {exc}"[:600]
        log(f"attention {name}: {json.dumps({k: (v.get('median') if isinstance(v, dict) and 'median' in v else v) for k, v in B.items()})[:300]}")
    tr.set_attention_backend("native")
    save_json()


def batch_section(args, models) -> None:
    from vlbench.engine.generate import generate, generate_batch

    Bt = R.setdefault("batch", {})
    pipe = models.pipe
    g = torch.Generator("cpu").manual_seed(11)
    emb = (torch.randn(39, models.caption_width, generator=g) * 0.5).to(models.device, models.dtype)
    seeds = [0, 1, 2, 3]
    sizes = (512, 768) if not args.tiny_smoke else (64, 96)
    for size in sizes:
        S = Bt.setdefault(str(size), {})
        kw = dict(steps=args.steps, width=size, height=size, guidance=0.0, budget=models.caption_budget)
        singles = lambda: [generate(pipe, emb, seed=s, **kw) for s in seeds]  # noqa: E731
        b2 = lambda: generate_batch(pipe, emb, seeds=seeds[:2], **kw) + generate_batch(pipe, emb, seeds=seeds[2:], **kw)  # noqa: E731
        b4 = lambda: generate_batch(pipe, emb, seeds=seeds, **kw)  # noqa: E731
        outs = {}
        for name, fn in (("batch1", singles), ("batch2", b2), ("batch4", b4)):
            fn()  # warm-up (a new shape)
        times = {n: [] for n in ("batch1", "batch2", "batch4")}
        for _ in range(max(1, args.reps - 1)):
            for name, fn in (("batch1", singles), ("batch2", b2), ("batch4", b4)):
                t, imgs = timed(fn)
                times[name].append(t / len(seeds))
                outs[name] = [pixels(i) for i in imgs]
        for name, ts in times.items():
            S[f"{name}_per_image_s"] = stats(ts)
        for name in ("batch2", "batch4"):
            S[f"{name}_speedup"] = round(med(S, "batch1_per_image_s") / med(S, f"{name}_per_image_s"), 3)
            S[f"{name}_vs_single"] = [diff(a, b) for a, b in zip(outs[name], outs["batch1"])]
        log(f"batch {size}: " + ", ".join(f"{n} {med(S, f'{n}_per_image_s'):.3f}s/img" for n in times)
            + f"; identical b2 {[d.get('identical') for d in S['batch2_vs_single']]}"
            + f" b4 {[d.get('identical') for d in S['batch4_vs_single']]}")
        save_json()


def compile_section(args, spec) -> None:
    """Eager vs --compile (bf16), then --quantize fp8 --compile, captions 32 and 605; attention and batch run on the
    eager models first."""
    import numpy as np

    from vlbench.engine import models as models_mod
    from vlbench.engine.generate import generate
    from vlbench.engine.models import Models

    K = R.setdefault("compile", {})
    free_cuda()
    cuda = torch.cuda.is_available()
    a0 = torch.cuda.memory_allocated() if cuda else 0
    models = Models(spec)
    t, pipe = timed(lambda: models.pipe)
    K["bf16_load_zimage_s"] = t
    if cuda:
        K["bf16_dit_vae_resident_GiB"] = gib(torch.cuda.memory_allocated() - a0)
    budget, width = models.caption_budget, models.caption_width
    lengths = (32, 605) if budget >= 605 else (32, 150)
    g = torch.Generator("cpu").manual_seed(1234)
    embs = {L: (torch.randn(L, width, generator=g) * 0.5).to(models.device, models.dtype) for L in lengths}
    kw = dict(seed=0, steps=args.steps, width=args.size, height=args.size, guidance=0.0, budget=budget)
    reps = max(2, args.reps)

    def run(p, L, output_type="pil"):
        return generate(p, embs[L], output_type=output_type, **kw)

    eager_img = {}
    for L in lengths:
        run(pipe, L)
        ts = []
        for _ in range(reps):
            t, img = timed(lambda: run(pipe, L))
            ts.append(t)
        eager_img[L] = pixels(img)
        K[f"eager_{L}_s"] = stats(ts)
    log(f"eager: {json.dumps({L: round(med(K, f'eager_{L}_s'), 3) for L in lengths})}")
    save_json()
    for name, fn in (("attention", attention_section), ("batch", batch_section)):
        if args.fp8_only or args.compile_only:
            continue
        if elapsed() > args.budget_s * (0.62 if name == "attention" else 0.66):
            R[name] = {"skipped": f"out of time at {elapsed():.0f}s"}
            continue
        try:
            fn(args, models)
        except Exception:  # noqa: BLE001
            error(name)
    backend = {"backend": "eager"} if args.tiny_smoke else {}
    variants = [("bf16", spec, {}), ("fp8", replace(spec, quantize="fp8", compile=True), {}),
                ("fp8_auto_dynamic", replace(spec, quantize="fp8", compile=True), {"dynamic": None}),
                ("fp8_static", replace(spec, quantize="fp8", compile=True), {"dynamic": False}),
                ("fp8_torchao_inductor", replace(spec, quantize="fp8", compile=True), {})]
    bf16_img = {}
    for vname, vspec, options in variants:
        if vname == "fp8_auto_dynamic" and not K.get("fp8", {}).get("error"):
            continue  # only when the project's fp8 path failed: dynamo's automatic dynamic shapes instead
        if vname == "fp8_static" and (not args.fp8_variants or args.tiny_smoke):
            continue  # one static graph per caption length (the project compiles one dynamic graph)
        if vname == "fp8_torchao_inductor":  # last: torchao's recommended inductor settings are process-wide
            if not (args.fp8_torchao_inductor or args.fp8_variants) or args.tiny_smoke:
                continue
            from torchao.quantization.utils import recommended_inductor_config_setter

            recommended_inductor_config_setter()
        if vname == "bf16" and args.fp8_only:
            continue  # compiled bf16 measured in an earlier call (its JSON); fp8 compared with eager here
        saved_options = dict(models_mod.COMPILE_OPTIONS)
        models_mod.COMPILE_OPTIONS.update(options)
        if elapsed() > args.budget_s * 0.72:
            K[vname] = {"skipped": f"out of time at {elapsed():.0f}s"}
            continue
        V = K.setdefault(vname, {})
        try:
            if vname == "bf16":
                t0 = time.perf_counter()
                models.compile_dit(**backend)
                p = pipe
            else:
                if args.tiny_smoke:
                    V["skipped"] = "fp8 needs a CUDA card with fp8 matmuls"
                    continue
                models = pipe = p = None
                free_cuda()
                import torch._dynamo as dynamo

                dynamo.reset()  # each variant compiles its own graphs (dynamo would reuse the last one's)
                a0 = torch.cuda.memory_allocated()
                models = Models(vspec)
                t0 = time.perf_counter()
                p = models.pipe  # loads, quantizes, compiles, warms up (a first compiled call at 256²)
                V["load_quantize_compile_warm_s"] = time.perf_counter() - t0
                V["load_seconds"] = dict(models.load_seconds)
                V["dit_vae_resident_GiB"] = gib(torch.cuda.memory_allocated() - a0)
            for L in lengths:
                t, _ = timed(lambda: run(p, L))
                V[f"first_call_{L}_s"] = t
            V["compile_plus_first_calls_s"] = time.perf_counter() - t0
            for L in lengths:
                ts = []
                for _ in range(reps):
                    t, img = timed(lambda: run(p, L))
                    ts.append(t)
                tag = "bf16" if vname == "bf16" else "fp8"
                V[f"{tag}_compiled_{L}_s"] = stats(ts)
                V[f"speedup_vs_eager_{L}"] = round(med(K, f"eager_{L}_s") / med(V, f"{tag}_compiled_{L}_s"), 3)
                V[f"image_vs_eager_{L}"] = diff(pixels(img), eager_img[L])
                if vname == "bf16":
                    bf16_img[L] = pixels(img)
                else:
                    V[f"image_vs_compiled_bf16_{L}"] = diff(pixels(img), bf16_img[L]) if L in bf16_img else None
                    eager = med(K, f"eager_{L}_s")
                    V[f"fp8_compiled_over_eager_bf16_{L}"] = round(med(V, f"fp8_compiled_{L}_s") / eager, 3)
                    bf = K.get("bf16", {})
                    if med(bf, f"bf16_compiled_{L}_s"):
                        V[f"speedup_vs_compiled_bf16_{L}"] = round(
                            med(bf, f"bf16_compiled_{L}_s") / med(V, f"fp8_compiled_{L}_s"), 3)
                    arr = run(p, L, output_type="np")
                    V[f"nonfinite_pixels_{L}"] = int((~np.isfinite(np.asarray(arr))).sum())
            log(f"compile {vname}: {json.dumps({k: (v.get('median') if isinstance(v, dict) and 'median' in v else v) for k, v in V.items() if not k.startswith('image')}, default=str)[:400]}")
        except Exception:  # noqa: BLE001
            V["error"] = traceback.format_exc()[-2500:]
            log(f"compile {vname}: ERROR {V['error'][-800:]}")
        finally:
            models_mod.COMPILE_OPTIONS.clear()
            models_mod.COMPILE_OPTIONS.update(saved_options)
        save_json()
    del models
    free_cuda()


# ---------------------------------------------------------------- issue 12: attend's attention-logit bias
def bias_section(args, spec) -> None:
    """The cost of attend weights (an additive bias on the caption keys of the DiT's joint blocks): time per image
    with and without a bias on each native attention backend (eager), then under --compile: first calls, and the
    graphs compiled when the weights change (same length), when the caption length changes, and back to none."""
    from vlbench.engine.generate import generate
    from vlbench.engine.models import Models, compiled_graphs

    B = R.setdefault("bias", {})
    free_cuda()
    models = Models(spec)
    pipe = models.pipe
    tr = pipe.transformer
    budget, width = models.caption_budget, models.caption_width
    n_text, total = 32, (605 if budget >= 605 else 150)
    g = torch.Generator("cpu").manual_seed(99)
    emb = (torch.randn(total, width, generator=g) * 0.5).to(models.device, models.dtype)
    short = emb[: total // 2]

    def weights(r, n=total):  # an intra mix at ratio r: text rows 1, image rows r/(1-r)
        return torch.cat([torch.ones(n_text), torch.full((n - n_text,), r / (1 - r))])

    kw = dict(seed=0, steps=args.steps, width=args.size, height=args.size, guidance=0.0, budget=budget)
    reps = max(2, args.reps)

    def timing(e, w):
        generate(pipe, e, caption_weights=w, **kw)
        return stats([timed(lambda: generate(pipe, e, caption_weights=w, **kw))[0] for _ in range(reps)])

    backends = ["native", "_native_efficient", "_native_cudnn", "_native_flash"] if models.device.type == "cuda" \
        else ["native"]
    for name in backends:
        E = B.setdefault(f"eager_{name}", {})
        try:
            tr.set_attention_backend(name)
            E["none_s"] = timing(emb, None)
            E["bias_r0.3_s"] = timing(emb, weights(0.3))
            E["bias_over_none"] = round(med(E, "bias_r0.3_s") / med(E, "none_s"), 3)
            a = pixels(generate(pipe, emb, caption_weights=weights(0.3), **kw))
            b = pixels(generate(pipe, emb, caption_weights=weights(0.31), **kw))
            c = pixels(generate(pipe, emb, caption_weights=weights(0.7), **kw))
            E["pixels_r0.3_vs_r0.31"], E["pixels_r0.3_vs_r0.7"] = diff(a, b), diff(a, c)
        except Exception as exc:  # noqa: BLE001 — e.g. a kernel that takes no mask
            E["error"] = f"{type(exc).__name__}: {exc}"[:600]
        log(f"bias eager {name}: {json.dumps({k: (v.get('median') if isinstance(v, dict) and 'median' in v else v) for k, v in E.items() if not k.startswith('pixels')}, default=str)[:300]}")
        save_json()
    tr.set_attention_backend("native")
    if elapsed() > args.budget_s * 0.8:
        B["compiled"] = {"skipped": f"out of time at {elapsed():.0f}s"}
        return
    C = B.setdefault("compiled", {})
    try:
        backend = {"backend": "eager"} if args.tiny_smoke else {}
        models.compile_dit(**backend)
        steps = [("none", emb, None), ("bias_r0.3", emb, weights(0.3)), ("bias_r0.7_same_length", emb, weights(0.7)),
                 ("bias_r0.3_other_length", short, weights(0.3, short.shape[0])), ("none_again", emb, None)]
        for label, e, w in steps:
            g0 = compiled_graphs()
            t, _ = timed(lambda: generate(pipe, e, caption_weights=w, **kw))
            C[f"{label}_first_call_s"] = t
            C[f"{label}_new_graphs"] = compiled_graphs() - g0
        C["none_s"] = timing(emb, None)
        C["bias_r0.3_s"] = timing(emb, weights(0.3))
        C["bias_over_none"] = round(med(C, "bias_r0.3_s") / med(C, "none_s"), 3)
    except Exception:  # noqa: BLE001
        C["error"] = traceback.format_exc()[-2500:]
    log(f"bias compiled: {json.dumps({k: (v.get('median') if isinstance(v, dict) and 'median' in v else v) for k, v in C.items()}, default=str)[:500]}")
    save_json()
    del models, pipe, tr
    free_cuda()


# ---------------------------------------------------------------- the first VL forward of a fresh process
def firstvl_section(args, workdir: Path, ref_path: Path) -> None:
    F = R.setdefault("firstvl", {})
    for warm in (0, 1):
        key = "warm_up_at_load" if warm else "no_warm_up"
        if elapsed() > args.budget_s * 0.85:
            F[key] = {"skipped": f"out of time at {elapsed():.0f}s"}
            continue
        out_json = workdir / f"firstvl_{warm}.json"
        out_json.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--child-firstvl", str(warm), "--workdir", str(workdir), "--out", str(OUT)]
        if args.tiny_smoke:
            cmd.append("--tiny-smoke")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        F[key] = json.loads(out_json.read_text()) if out_json.exists() else {
            "error": (proc.stdout + proc.stderr)[-2500:]}
        F[key]["process_wall_s"] = time.perf_counter() - t0
        if proc.returncode:
            F[key]["rc"] = proc.returncode
            F[key]["tail"] = (proc.stdout + proc.stderr)[-1500:]
        log(f"firstvl {key}: {json.dumps({k: v for k, v in F[key].items() if k != 'tail'}, default=str)[:700]}")
        save_json()


def firstvl_child(args, warm: bool, workdir: Path) -> None:
    """A fresh process: the first VL forward and the first generation, profiled (warm=False), or the project's
    default load with its warm-ups and the first real forward / generation after it (warm=True)."""
    t_imp = time.perf_counter()
    from vlbench.engine.engine import Reference
    from vlbench.engine.extract import forward, prepare
    from vlbench.engine.generate import generate
    from vlbench.engine.models import Models
    from vlbench.modelspec import ModelSpec

    C: dict = {"vlbench_imports_s": time.perf_counter() - t_imp}
    device = "cpu" if args.tiny_smoke else "cuda"
    ref_px = 192 if args.tiny_smoke else 768
    spec = ModelSpec(zimage=str(workdir / "z-image-turbo-random"), vl=str(workdir / "qwen3-vl-4b-random"),
                     device=device, dtype="bf16")
    ref = Reference.open(workdir / f"reference_{ref_px}.png")
    t, _ = timed(lambda: torch.zeros(1, device=device))
    C["cuda_init_s"] = t
    models = Models(spec, warm_up=warm)
    t, vl = timed(lambda: models.vl)
    C["load_vl_s"] = t
    C["warm_up_seconds"] = dict(models.warm_up_seconds)
    budget = 1504 if not args.tiny_smoke else 224
    t, prep = timed(lambda: prepare(vl, [ref.image], PROMPT, budget))
    C["prepare_first_s"] = t
    C["prepare_second_s"] = timed(lambda: prepare(vl, [ref.image], PROMPT, budget))[0]
    C["seq_len"] = len(prep.input_ids)
    prof_lines = []
    if not warm:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=acts, with_stack=True, record_shapes=False) as prof:
            t, _ = timed(lambda: forward(vl, prep))
        C["forward_first_profiled_s"] = t
        ka = prof.key_averages()
        prof_lines.append(f"== first Qwen3-VL forward ({t:.3f} s, profiled), top ops by self CPU time ==")
        prof_lines.append(ka.table(sort_by="self_cpu_time_total", row_limit=35, max_name_column_width=70))
        prof_lines.append("== by total CPU time ==")
        prof_lines.append(ka.table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=70))
        try:
            ks = prof.key_averages(group_by_stack_n=6)
            prof_lines.append("== by self CPU time, grouped by the top 6 Python frames ==")
            prof_lines.append(ks.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=70,
                                       max_src_column_width=120))
        except Exception as exc:  # noqa: BLE001
            prof_lines.append(f"(stack grouping failed: {exc})")
        try:
            trace = workdir / "firstvl_trace.json"
            prof.export_chrome_trace(str(trace))
            import gzip

            data = gzip.compress(trace.read_bytes())
            if len(data) < 14 * 2**20:
                (Path(args.out) / "firstvl_trace.json.gz").write_bytes(data)
            C["trace_gz_bytes"] = len(data)
        except Exception as exc:  # noqa: BLE001
            C["trace_error"] = repr(exc)[:300]
    else:
        C["forward_first_s"] = timed(lambda: forward(vl, prep))[0]
    C["forward_second_s"] = timed(lambda: forward(vl, prep))[0]
    C["forward_third_s"] = timed(lambda: forward(vl, prep))[0]
    # a new shape: a smaller reference and another text (new sequence lengths everywhere)
    from PIL import Image

    small = Image.fromarray(__import__("numpy").asarray(ref.image)[: ref_px * 2 // 3, : ref_px * 2 // 3].copy())
    prep2 = prepare(vl, [small], "Another text, of another length, for new shapes.", budget)
    C["seq_len_new_shape"] = len(prep2.input_ids)
    C["forward_new_shape_first_s"] = timed(lambda: forward(vl, prep2))[0]
    C["forward_new_shape_second_s"] = timed(lambda: forward(vl, prep2))[0]
    if device == "cuda":
        hd = vl.model.config.text_config.head_dim
        nh = vl.model.config.text_config.num_attention_heads
        q = torch.randn(1, nh, C["seq_len"], hd, device="cuda", dtype=torch.bfloat16)
        C["sdpa_picks_vl_text_causal"] = _sdp_choice(q, q, q, causal=True)
    t, pipe = timed(lambda: models.pipe)
    C["load_zimage_s"] = t
    C["warm_up_seconds"] = dict(models.warm_up_seconds)
    emb = (torch.randn(617 if not args.tiny_smoke else 100, models.caption_width) * 0.5).to(models.device,
                                                                                             models.dtype)
    size, steps = (64, 2) if args.tiny_smoke else (1024, 9)
    kw = dict(seed=0, steps=steps, width=size, height=size, guidance=0.0, budget=models.caption_budget)
    if not warm:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=acts, record_shapes=False) as prof:
            t, _ = timed(lambda: generate(pipe, emb, **kw))
        C["generate_first_profiled_s"] = t
        prof_lines.append(f"== first generation ({t:.3f} s, profiled), top ops by self CPU time ==")
        prof_lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25,
                                                    max_name_column_width=70))
    else:
        C["generate_first_s"] = timed(lambda: generate(pipe, emb, **kw))[0]
    C["generate_second_s"] = timed(lambda: generate(pipe, emb, **kw))[0]
    C["load_seconds"] = dict(models.load_seconds)
    if prof_lines:
        (Path(args.out) / "firstvl_profile.txt").write_text("\n".join(prof_lines) + "\n")
    (workdir / f"firstvl_{int(warm)}.json").write_text(json.dumps(C, indent=1, default=str))


# ---------------------------------------------------------------- fresh-process sweep through the CLI
def cli_sweep_section(args, zdir, vldir, ref_path, workdir) -> None:
    """gpu_bench's fresh-process CLI sweep (files in the page cache); with --no-diagnostics unless
    --cli-diagnostics: the embedding-diagnostics pass after the sweep loads Qwen3-4B and is not the sweep."""
    gb.OUT = workdir  # gpu_bench's own JSON goes beside the models, not into OUT
    extra = () if args.cli_diagnostics else ("--no-diagnostics",)
    gb.cli_sweep_section(args, zdir, vldir, ref_path, workdir, cold=False, extra_argv=extra)
    R["cli_sweep"] = dict(gb.R.get("cli_sweep_warm", {}), diagnostics=bool(args.cli_diagnostics))
    save_json()


# ---------------------------------------------------------------- table
def table() -> None:
    env = R.get("env", {})

    def f(x, p=3):
        return "-" if x is None else (f"{x:.{p}f}" if isinstance(x, float) else str(x))

    rows = [("card", f"{env.get('gpu', env.get('device'))} cc {env.get('capability')}"),
            ("versions", f"torch {env.get('torch')} diffusers {env.get('diffusers')} torchao {env.get('torchao')}")]
    for key, P in (R.get("policies") or {}).items():
        if "skipped" in P:
            rows.append((f"policy {key}", P["skipped"]))
            continue
        plan = P.get("group_plan") or {}
        rows.append((f"policy {key}", f"{f(med(P, 'per_image_s'))} s/img (x{f(P.get('ratio_vs_none'))}) peak "
                     f"{P.get('peak_GiB')} GiB (reserved {P.get('peak_reserved_GiB')}) first {f(P.get('first_run_s'), 1)}s"
                     + (f" streamed {len(plan.get('streamed', []))}/{plan.get('blocks')}" if plan else "")
                     + (f" new prompt {f(P.get('new_prompt_run_s'), 2)}s" if P.get("new_prompt_run_s") else "")
                     + (" same image" if (P.get("image_vs_none_seed1") or {}).get("identical") else "")
                     + (" ERROR" if P.get("error") else "")))
    K = R.get("compile", {})
    for L in (32, 605, 150):
        if med(K, f"eager_{L}_s"):
            bf, f8 = K.get("bf16", {}), K.get("fp8", {})
            rows.append((f"caption {L}: eager / bf16 compiled / fp8 compiled",
                         f"{f(med(K, f'eager_{L}_s'))} / {f(med(bf, f'bf16_compiled_{L}_s'))} / "
                         f"{f(med(f8, f'fp8_compiled_{L}_s'))} (fp8 x{f(f8.get(f'speedup_vs_compiled_bf16_{L}'))} "
                         f"of compiled bf16)"))
    if K.get("fp8"):
        f8 = K["fp8"]
        rows.append(("fp8 DiT+VAE resident GiB (bf16)", f"{f8.get('dit_vae_resident_GiB')} "
                                                          f"({K.get('bf16_dit_vae_resident_GiB')})"))
        rows.append(("fp8 vs compiled bf16 pixels 32", str(f8.get("image_vs_compiled_bf16_32"))))
        if f8.get("error") or f8.get("skipped"):
            rows.append(("fp8", (f8.get("skipped") or f8.get("error", ""))[-200:]))
    A = R.get("attention", {})
    for name, B in A.items():
        if isinstance(B, dict):
            rows.append((f"attention {name}", " ".join(f"{k.split('_')[2]}:{f(med(B, k), 4)}" for k in B
                                                       if k.startswith("dit_forward")) +
                         f" same={(B.get('image_vs_native_32') or {}).get('identical', '-')}" +
                         (f" ERR {B['error'][:60]}" if B.get("error") else "")))
        else:
            rows.append((f"attention {name}", str(B)))
    for size, S in (R.get("batch") or {}).items():
        if isinstance(S, dict) and "batch1_per_image_s" in S:
            rows.append((f"batch {size}² s/img 1/2/4", f"{f(med(S, 'batch1_per_image_s'))} / "
                         f"{f(med(S, 'batch2_per_image_s'))} / {f(med(S, 'batch4_per_image_s'))} identical "
                         f"{[d.get('identical') for d in S.get('batch4_vs_single', [])]}"))
    for key, C in (R.get("firstvl") or {}).items():
        rows.append((f"firstvl {key}", ", ".join(f"{k} {f(v)}" for k, v in C.items()
                                                   if isinstance(v, float) and k.endswith("_s"))[:300]))
    C = R.get("cli_sweep") or {}
    if C:
        rows.append(("CLI sweep wall / Σgen / load / imports",
                     f"{f(C.get('process_wall_s'), 1)} / {f(C.get('sum_generation_s'), 1)} / {f(C.get('load_s'), 1)}"
                     f" / {f(C.get('child_imports_torch_transformers_diffusers_s'), 1)} -> ratio "
                     f"{f(C.get('ratio_wall_minus_imports_over_gen_plus_load'))} without imports, "
                     f"{f(C.get('ratio_process_wall_over_gen_plus_load'))} with"))
    rows.append(("errors", ", ".join(R["errors"]) or "none"))
    w = max(len(a) for a, _ in rows)
    print("\n" + "=" * 80)
    for a, b in rows:
        print(f"{a:<{w}}  {b}")
    print("=" * 80, flush=True)


# ---------------------------------------------------------------- main
def main() -> int:
    global OUT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny-smoke", action="store_true", help="tiny models on CPU, 64², 2 steps (tests the script)")
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/perf16_out")
    p.add_argument("--workdir", default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=470.0, help="sections past fractions of this are skipped")
    p.add_argument("--sections", default="policies,compile,firstvl,cli_sweep")
    p.add_argument("--policies", default=None, help="comma list of policy@cap keys to run (default all)")
    p.add_argument("--fp8-only", action="store_true", help="compile section: eager + fp8 only (no attention, "
                   "batch, compiled bf16)")
    p.add_argument("--compile-only", action="store_true", help="compile section: eager, compiled bf16 and fp8 in "
                   "one call (no attention or batch sections)")
    p.add_argument("--fp8-variants", action="store_true", help="compile section: also fp8 with one static "
                   "graph per caption length, and with torchao's inductor settings")
    p.add_argument("--fp8-torchao-inductor", action="store_true", help="compile section: one more fp8 variant "
                   "with torchao's recommended (process-wide) inductor settings, measured last")
    p.add_argument("--cli-diagnostics", action="store_true", help="keep the embedding-diagnostics pass in the "
                   "CLI sweep (it loads Qwen3-4B after the sweep)")
    p.add_argument("--child-firstvl", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or ("/tmp/perf16-smoke" if args.tiny_smoke else "/tmp/perf16"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLBENCH_CACHE_DIR", str(workdir / "cache"))
    if args.tiny_smoke:
        device, args.size, args.steps, ref_px = "cpu", 64, 2, 192
        args.reps = args.reps or 2
        args.budget_s = 3000.0
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU: use --tiny-smoke", file=sys.stderr)
            return 2
        device, args.size, args.steps, ref_px = "cuda", 1024, 9, 768
        args.reps = args.reps or 3
    args.budget_s = float(args.budget_s)
    if args.child_firstvl is not None:
        firstvl_child(args, bool(args.child_firstvl), workdir)
        return 0
    sections = [x for x in args.sections.split(",") if x]  # run in this order
    R["sections"] = sections
    R["argv"] = sys.argv[1:]
    R["settings"] = {"size": args.size, "steps": args.steps, "reference_px": ref_px, "reps": args.reps,
                     "prompt": PROMPT, "recipe": "alpha 1, tokens full (Qwen3-VL only)",
                     "dit_init": "Linear weights N(0, 0.02^2), biases 0 (realistic scale; random otherwise)"}
    environment(device)
    save_json()

    from vlbench.engine.engine import Reference
    from vlbench.recipe import Recipe
    from vlbench.engine.tiny import ensure_tiny_models
    from vlbench.modelspec import ModelSpec

    zdir, vldir = workdir / "z-image-turbo-random", workdir / "qwen3-vl-4b-random"
    try:
        # the tiny models (tokenizers) from VLBENCH_CACHE_DIR (default WORKDIR/cache): built once, shared with the tests
        tiny_dirs = ensure_tiny_models()
        import numpy as np
        from PIL import Image

        ref_path = workdir / f"reference_{ref_px}.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (ref_px, ref_px, 3), dtype=np.uint8)).save(ref_path)
        ref = Reference.open(ref_path)
        build_and_save(args, device, tiny_dirs, zdir, vldir)
    except Exception:  # noqa: BLE001
        error("build_save")
        table()
        return 1
    spec = ModelSpec(zimage=str(zdir), vl=str(vldir), device=device, dtype="bf16")
    recipe = Recipe(alpha=1.0, tokens="full", width=args.size, height=args.size, steps=args.steps, guidance=0.0)
    runs = {"policies": lambda: policies_section(args, spec, ref, recipe),
            "compile": lambda: compile_section(args, spec),
            "firstvl": lambda: firstvl_section(args, workdir, ref_path),
            "cli_sweep": lambda: cli_sweep_section(args, zdir, vldir, ref_path, workdir),
            "bias": lambda: bias_section(args, spec)}
    for name in sections:
        fn = runs[name]
        if name == "cli_sweep" and elapsed() > args.budget_s * 0.9:
            R[name] = {"skipped": f"out of time at {elapsed():.0f}s"}
            continue
        try:
            fn()
        except Exception:  # noqa: BLE001
            error(name)
        free_cuda()
    save_json()
    table()
    return 0 if not R["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
