#!/usr/bin/env python3
"""vlbench's own GPU benchmark (issue 7).

Builds Z-Image-Turbo (6.15B DiT + Flux-shaped VAE + Qwen3-4B) and Qwen3-VL-4B at their published
sizes with random bf16 weights directly on the GPU, saves them as real repo layouts (safetensors +
the tokenizer/processor of vlbench's tiny models, special-token ids rewired to that tokenizer), then
measures through the project's own code paths (`Models` / `Engine` / the experiment runner):

  load       cold `from_pretrained` of every part vs a cold raw read of the same .safetensors bytes
  generate   1024², 9 steps, guidance 0: text-only recipe (alpha 0, Qwen3-4B) and a VL recipe
             (768² reference + prompt, tokens full, ~600 caption tokens) through Engine.run, against
             plain diffusers `pipe(prompt_embeds=...)` with the SAME embeddings, interleaved
  extract    one Qwen3-VL forward with all hidden states for the 768² reference (+ its parts)
  sweep      vl_layer_by_token (10 recipes) × 2 seeds through run_experiment -> Engine.run in a fresh
             Models, wall vs Σ generation + the load it did; VL forwards counted
  memory     resident after load, peak during each generation
  compile    eager vs --compile per image; graphs built per caption length (32, 77, 200, 605, 64)
  firstuse   where the first VL forward / generation of a process spends its extra seconds
  offload    peak memory per --offload policy, cpu / sequential under 24 / 16 GiB memory-fraction caps

Writes every figure to OUT/gpu_bench.json (after each section, so a killed run keeps what it has)
and prints a table last. `--tiny-smoke` runs the same code on CPU with tiny models (64², 2 steps).

Run on the GPU machine beside ../shared/tools/gpu_baseline.py, in the same call, and compare ratios.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch

T_START = time.perf_counter()
R: dict = {"errors": {}}
OUT = Path(".")

# 23 tokens with the tiny tokenizer: 39 caption tokens text-only, 617 with a 768² reference (576 image tokens).
PROMPT = "A watercolor painting of a lighthouse on a rocky coast, soft morning light."
SWEEP_SEEDS = [0, 1]


# ---------------------------------------------------------------- helpers
def elapsed() -> float:
    return time.perf_counter() - T_START


def gib(x) -> float | None:
    return None if x is None else round(x / 2**30, 3)


def save_json() -> None:
    R["elapsed_s"] = round(elapsed(), 1)
    tmp = OUT / ".gpu_bench.json.tmp"
    tmp.write_text(json.dumps(R, indent=1, default=str))
    os.replace(tmp, OUT / "gpu_bench.json")


def log(msg: str) -> None:
    print(f"[{elapsed():7.1f}s] {msg}", flush=True)


def error(section: str) -> None:
    R["errors"][section] = traceback.format_exc()[-3000:]
    log(f"ERROR in {section}:\n{R['errors'][section]}")
    save_json()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def stats(ts: list[float]) -> dict:
    s = sorted(ts)
    return {"median": s[len(s) // 2], "min": s[0], "max": s[-1], "n": len(s), "all": ts}


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def build(device, dtype, fn):
    """Construct a module with its parameters born on `device` in `dtype` (no CPU init, no copy)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            m = fn()
    finally:
        torch.set_default_dtype(prev)
    return m.to(dtype).eval()


def nparams(m) -> float:
    return round(sum(p.numel() for p in m.parameters()) / 1e9, 4)


def free_cuda() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def drop_page_cache() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def read_raw(files: list[Path]) -> tuple[int, float]:
    """Read every byte of `files` once with plain Python (64 MiB readinto)."""
    buf = bytearray(64 << 20)
    mv = memoryview(buf)
    total = 0
    t = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(mv):
                total += n
    return total, time.perf_counter() - t


def safetensors_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors"))


def fs_info(path: Path) -> dict:
    info: dict = {}
    try:
        st = os.statvfs(path)
        info["free_GB"] = round(st.f_bavail * st.f_frsize / 1e9, 1)
        info["total_GB"] = round(st.f_blocks * st.f_frsize / 1e9, 1)
    except OSError:
        pass
    try:
        info["fstype"] = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True,
                                        timeout=10).stdout.strip()
        info["df"] = subprocess.run(["df", "-h", str(path)], capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        pass
    return info


# ---------------------------------------------------------------- environment
def environment(device: str) -> None:
    import diffusers
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "diffusers": diffusers.__version__, "device": device}
    for name in ("accelerate", "safetensors", "huggingface_hub", "tokenizers"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            env[name] = None
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_total_GiB"] = gib(torch.cuda.get_device_properties(0).total_memory)
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            env["nvidia_smi"] = q.stdout.strip()
            env["driver"] = q.stdout.split(",")[1].strip() if q.stdout.count(",") >= 1 else None
        except Exception as exc:  # noqa: BLE001
            env["nvidia_smi"] = f"unavailable: {exc}"
    env["cpus"] = os.cpu_count()
    import hashlib

    import vlbench

    src = Path(vlbench.__file__).parent
    h = hashlib.sha256()
    for f in sorted(src.rglob("*.py")) + sorted(src.rglob("*.toml")):
        h.update(str(f.relative_to(src)).encode() + b"\0" + f.read_bytes())
    env["vlbench_src_sha256"] = h.hexdigest()[:16]  # which working tree ran (it is edited between runs)
    R["env"] = env
    log(f"env: {env}")


# ---------------------------------------------------------------- model configs
def full_configs(tok_vl, tok_z):
    from transformers import Qwen3Config

    from dual_batch import full_config  # one definition of Qwen3-VL-4B's published sizes (torch + transformers only)

    vl_cfg = full_config(tok_vl)
    te_cfg = Qwen3Config(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                         tie_word_embeddings=True, pad_token_id=tok_z.pad_token_id)
    dit_kw = dict(axes_lens=[1536, 512, 512])  # Z-Image-Turbo's config (dim 3840, 30 layers, cap_feat_dim 2560)
    vae_kw = dict(in_channels=3, out_channels=3, latent_channels=16,
                  down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                  block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
                  scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
                  sample_size=1024)
    return vl_cfg, te_cfg, dit_kw, vae_kw


def smoke_configs(tok_vl, tok_z):
    """Tiny sizes, same code path (mirrors vlbench.engine.tiny)."""
    from transformers import Qwen3Config, Qwen3VLConfig

    from vlbench.engine import tiny

    ids = {t: tok_vl.convert_tokens_to_ids(t) for t in
           ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    h = tiny.HIDDEN
    vl_cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok_vl), hidden_size=h, intermediate_size=128,
                         num_hidden_layers=tiny.VL_LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_interleaved": True,
                                          "mrope_section": [2, 3, 3]},
                         tie_word_embeddings=True, pad_token_id=tok_vl.pad_token_id),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=h, num_position_embeddings=64,
                           deepstack_visual_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    te_cfg = Qwen3Config(vocab_size=len(tok_z), hidden_size=h, intermediate_size=128,
                         num_hidden_layers=tiny.TEXT_ENCODER_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, max_position_embeddings=4096, pad_token_id=tok_z.pad_token_id)
    dit_kw = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2, n_refiner_layers=2,
                  n_heads=2, n_kv_heads=2, cap_feat_dim=h, axes_dims=[8, 12, 12], axes_lens=tiny.DIT_AXES_LENS)
    vae_kw = dict(in_channels=3, out_channels=3, latent_channels=16,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8,
                  scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
    return vl_cfg, te_cfg, dit_kw, vae_kw


# ---------------------------------------------------------------- build + save real repo layouts
VL_WEIGHT_FILES = ("config.json", "generation_config.json", "VLBENCH_TINY.json")


def build_and_save(args, device, dtype, tiny_dirs, zdir: Path, vldir: Path) -> bool:
    """Returns whether Qwen3-4B was saved (False: it must be attached from memory)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import AutoTokenizer, Qwen3Model, Qwen3VLForConditionalGeneration

    tok_z = AutoTokenizer.from_pretrained(tiny_dirs.zimage, subfolder="tokenizer")
    tok_vl = AutoTokenizer.from_pretrained(tiny_dirs.vl)
    cfgs = smoke_configs(tok_vl, tok_z) if args.tiny_smoke else full_configs(tok_vl, tok_z)
    vl_cfg, te_cfg, dit_kw, vae_kw = cfgs
    for d in (zdir, vldir):
        shutil.rmtree(d, ignore_errors=True)
    zdir.parent.mkdir(parents=True, exist_ok=True)
    fs = fs_info(zdir.parent)
    R["disk"] = fs
    log(f"disk for models: {fs}")
    B = R.setdefault("build_save", {})

    # Z-Image: DiT + VAE (+ Qwen3-4B unless the disk is short)
    t, (dit, vae) = timed(lambda: (build(device, dtype, lambda: ZImageTransformer2DModel(**dit_kw)),
                                   build(device, dtype, lambda: AutoencoderKL(**vae_kw))))
    B["build_dit_vae_s"] = t
    R["params_B"] = {"dit": nparams(dit), "vae": nparams(vae)}
    need_gb = 31 if not args.tiny_smoke else 0
    save_te = args.skip_te_save is False and fs.get("free_GB", 1e9) >= need_gb
    B["qwen3_4b_saved"] = save_te
    te = None
    t, te = timed(lambda: build(device, dtype, lambda: Qwen3Model(te_cfg)))
    B["build_te_s"] = t
    R["params_B"]["qwen3_4b"] = nparams(te)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=sched, vae=vae, text_encoder=te if save_te else None,
                          tokenizer=tok_z if save_te else None, transformer=dit)
    t0 = time.perf_counter()
    pipe.save_pretrained(zdir)
    B["save_zimage_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    os.sync()
    B["sync_zimage_s"] = time.perf_counter() - t0
    B["zimage_bytes"] = sum(f.stat().st_size for f in safetensors_files(zdir))
    if not save_te:
        args._te_in_memory = (te, tok_z)  # attached after load; Qwen3-4B's load is then not measured
    del pipe, dit, vae
    if save_te:
        del te
    free_cuda()
    log(f"Z-Image saved: {B['zimage_bytes'] / 1e9:.2f} GB in {B['save_zimage_s']:.1f}s + sync {B['sync_zimage_s']:.1f}s")

    # Qwen3-VL: weights + the tiny model's processor/tokenizer files
    t, vl = timed(lambda: build(device, dtype, lambda: Qwen3VLForConditionalGeneration(vl_cfg)))
    B["build_vl_s"] = t
    R["params_B"]["qwen3_vl"] = nparams(vl)
    t0 = time.perf_counter()
    vl.save_pretrained(vldir)
    B["save_vl_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    os.sync()
    B["sync_vl_s"] = time.perf_counter() - t0
    del vl
    free_cuda()
    copied = []
    for f in Path(tiny_dirs.vl).iterdir():
        if f.name in VL_WEIGHT_FILES or f.suffix == ".safetensors" or f.name.endswith(".index.json"):
            continue
        shutil.copy2(f, vldir / f.name)
        copied.append(f.name)
    B["vl_processor_files"] = sorted(copied)
    B["vl_bytes"] = sum(f.stat().st_size for f in safetensors_files(vldir))
    total = B["zimage_bytes"] + B["vl_bytes"]
    wr = B["save_zimage_s"] + B["sync_zimage_s"] + B["save_vl_s"] + B["sync_vl_s"]
    B["total_bytes"] = total
    B["write_GBps"] = total / 1e9 / wr if wr else None
    log(f"VL saved: {B['vl_bytes'] / 1e9:.2f} GB in {B['save_vl_s']:.1f}s + sync {B['sync_vl_s']:.1f}s")
    R["disk_after_save"] = fs_info(zdir.parent)
    save_json()
    return save_te


# ---------------------------------------------------------------- load: project vs raw read
def load_section(args, spec, zdir: Path, vldir: Path, te_saved: bool):
    from vlbench.engine.models import Models

    L = R.setdefault("load", {})
    groups = {
        "zimage": safetensors_files(zdir / "transformer") + safetensors_files(zdir / "vae"),
        "vl": safetensors_files(vldir),
        "text_encoder": safetensors_files(zdir / "text_encoder") if te_saved else [],
    }
    # cold raw read, part by part
    L["page_cache_dropped_raw"] = drop_page_cache()
    raw = {}
    for name, files in groups.items():
        if files:
            n, t = read_raw(files)
            raw[name] = {"bytes": n, "s": t, "GBps": n / 1e9 / t}
    L["raw_read_cold"] = raw
    L["raw_read_cold_total_s"] = sum(v["s"] for v in raw.values())
    log(f"raw read (cold={L['page_cache_dropped_raw']}): {json.dumps({k: round(v['s'], 2) for k, v in raw.items()})}")
    save_json()

    # cold project load: every part through vlbench's Models, as a user's first run does
    L["page_cache_dropped_load"] = drop_page_cache()
    models = Models(spec)
    t0 = time.perf_counter()
    models.pipe
    models.vl
    if te_saved:
        models.text_pipe
    sync()
    L["project_load_wall_s"] = time.perf_counter() - t0
    L["project_load_seconds"] = dict(models.load_seconds)
    L["ratio_load_over_raw"] = {k: models.load_seconds[k] / raw[k]["s"] for k in raw if k in models.load_seconds}
    L["ratio_total_load_over_raw"] = (sum(models.load_seconds[k] for k in raw if k in models.load_seconds)
                                      / L["raw_read_cold_total_s"])
    L["loaded_dtypes"] = {"dit": str(models.pipe.transformer.dtype), "vae": str(models.pipe.vae.dtype),
                          "vl": str(models.vl.model.dtype)}
    if not te_saved:  # attach the in-memory Qwen3-4B (its load is not measured)
        te, tok = args._te_in_memory
        models.pipe.register_modules(text_encoder=te, tokenizer=tok)
        models._text_encoder_loaded = True
    else:
        L["loaded_dtypes"]["qwen3_4b"] = str(models.text_pipe.text_encoder.dtype)
    log(f"project load: {json.dumps({k: round(v, 2) for k, v in models.load_seconds.items()})} "
        f"ratios {json.dumps({k: round(v, 2) for k, v in L['ratio_load_over_raw'].items()})}")
    if models.device.type == "cuda":
        R.setdefault("memory", {})["resident_all_GiB"] = gib(torch.cuda.memory_allocated())
        R["memory"]["reserved_after_load_GiB"] = gib(torch.cuda.memory_reserved())
    # warm raw read (page cache now holds the files), for context
    if elapsed() < args.budget_s * 0.45:
        n, t = read_raw([f for files in groups.values() for f in files])
        L["raw_read_warm_total"] = {"bytes": n, "s": t, "GBps": n / 1e9 / t}
    save_json()
    return models


# ---------------------------------------------------------------- generation: project vs plain diffusers
def generation_section(args, models, ref):
    import numpy as np

    from vlbench.engine.engine import Engine
    from vlbench.recipe import Recipe

    G = R.setdefault("generation", {})
    size, steps = args.size, args.steps
    gen_kw = dict(width=size, height=size, steps=steps, guidance=0.0)
    text_recipe = Recipe(alpha=0.0, **gen_kw)
    vl_recipe = Recipe(alpha=1.0, tokens="full", **gen_kw)
    engine = Engine(models)
    pipe = models.pipe

    # first calls: include the Qwen3-4B encode / the VL extraction (cold caches)
    t, res_text = timed(lambda: engine.run(text_recipe, PROMPT, []))
    G["project_text_first_s"] = t
    G["project_text_first_timings"] = res_text.timings
    t, res_vl = timed(lambda: engine.run(vl_recipe, PROMPT, [ref]))
    G["project_vl_first_s"] = t
    G["project_vl_first_timings"] = res_vl.timings
    emb_text = res_text.conditioning.embeds
    emb_vl = res_vl.conditioning.embeds
    G["caption_tokens"] = {"text": int(emb_text.shape[0]), "vl": int(emb_vl.shape[0])}
    G["vl_counts"] = res_vl.conditioning.extraction.counts()
    G["vl_image_sizes"] = res_vl.conditioning.extraction.image_sizes
    log(f"caption tokens: {G['caption_tokens']} vl roles {G['vl_counts']}")

    def plain(emb, output_type="pil"):
        return pipe(prompt_embeds=[emb], height=size, width=size, num_inference_steps=steps, guidance_scale=0.0,
                    generator=torch.Generator("cpu").manual_seed(0), output_type=output_type).images[0]

    # same seed, same embeddings: the project's image must be diffusers' image
    same = {}
    for name, res, emb in (("text", res_text, emb_text), ("vl", res_vl, emb_vl)):
        a = np.asarray(res.image)
        b = np.asarray(plain(emb))
        same[name] = bool(a.shape == b.shape and (a == b).all())
    G["project_equals_plain_same_seed"] = same
    save_json()

    runs = {"project_text": lambda: engine.run(text_recipe, PROMPT, []),
            "plain_text": lambda: plain(emb_text),
            "project_vl": lambda: engine.run(vl_recipe, PROMPT, [ref]),
            "plain_vl": lambda: plain(emb_vl)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    gen_part: dict[str, list[float]] = {"project_text": [], "project_vl": []}
    peaks: dict[str, int] = {}
    for rep in range(args.reps):  # interleaved, so drift hits every variant alike
        for name, fn in runs.items():
            if name.startswith("plain") and torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            t, out = timed(fn)
            times[name].append(t)
            if name.startswith("project"):
                gen_part[name].append(out.timings["generation"])
                if out.peak_memory_bytes is not None:
                    peaks[name] = max(peaks.get(name, 0), out.peak_memory_bytes)
            elif torch.cuda.is_available():
                peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated())
    for name, ts in times.items():
        G[f"{name}_s"] = stats(ts)
    for name, ts in gen_part.items():
        G[f"{name}_generation_part_s"] = stats(ts)
    med = {k: G[f"{k}_s"]["median"] for k in runs}
    G["ratio_project_over_plain_text"] = med["project_text"] / med["plain_text"]
    G["ratio_project_over_plain_vl"] = med["project_vl"] / med["plain_vl"]
    G["ratio_vl_over_text_project"] = med["project_vl"] / med["project_text"]
    G["ratio_vl_over_text_plain"] = med["plain_vl"] / med["plain_text"]
    G["ratio_of_ratios"] = G["ratio_vl_over_text_project"] / G["ratio_vl_over_text_plain"]
    if peaks:
        R.setdefault("memory", {})["peak_generation_GiB"] = {k: gib(v) for k, v in peaks.items()}
    log("generation medians: " + json.dumps({k: round(v, 3) for k, v in med.items()}))
    save_json()

    # plain diffusers with output_type="pt" (gpu_baseline.py's setting), for the tie to its figures
    if elapsed() < args.budget_s * 0.6:
        for name, emb in (("text", emb_text), ("vl", emb_vl)):
            ts = [timed(lambda: plain(emb, "pt"))[0] for _ in range(args.reps_pt + 1)][1:]
            G[f"plain_{name}_pt_s"] = stats(ts)
        save_json()

    # extraction: vlbench's extract() (processor + forward + stack of all layers), and its parts
    X = R.setdefault("extraction", {})
    from vlbench.engine.extract import extract

    vl = models.vl
    budget = models.caption_budget
    ts = [timed(lambda: extract(vl, [ref.image], PROMPT, budget))[0] for _ in range(args.reps + 1)][1:]
    X["extract_s"] = stats(ts)
    ex = extract(vl, [ref.image], PROMPT, budget)
    X["seq_len"] = len(ex.input_ids)
    X["hidden_states_shape"] = list(ex.hidden_states.shape)
    X["hidden_states_GiB"] = gib(ex.hidden_states.numel() * ex.hidden_states.element_size())
    proc = vl.processor
    rendered = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                           "text": PROMPT}]}],
                                        add_generation_prompt=True, tokenize=False)
    ts = [timed(lambda: proc(text=[rendered], images=[ref.image], return_tensors="pt"))[0] for _ in range(4)][1:]
    X["processor_s"] = stats(ts)
    inputs = {k: v.to(vl.device) for k, v in proc(text=[rendered], images=[ref.image], return_tensors="pt").items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(vl.dtype)

    @torch.inference_mode()
    def fwd():
        return vl.model.model(**inputs, output_hidden_states=True, use_cache=False, return_dict=True)

    ts = [timed(fwd)[0] for _ in range(args.reps + 1)][1:]
    X["raw_forward_s"] = stats(ts)
    log(f"extract median {X['extract_s']['median']:.3f}s (processor {X['processor_s']['median']:.3f}s, "
        f"forward {X['raw_forward_s']['median']:.3f}s), seq {X['seq_len']}")
    del ex, inputs, engine
    save_json()


# ---------------------------------------------------------------- compile: eager vs regional torch.compile
COMPILE_LENGTHS = [32, 77, 200, 605, 64]


def _recompile_log() -> list[str]:
    """Capture dynamo's recompile reasons (torch._logging's `recompiles` artifact) into a list."""
    import logging

    import torch._dynamo.guards  # noqa: F401 — creates the artifact logger

    torch._logging.set_logs(recompiles=True)
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage()[:600])

    for name in list(logging.Logger.manager.loggerDict):
        if name.endswith("__recompiles"):
            logging.getLogger(name).addHandler(Keep())
    return lines


def compile_section(args, models):
    """Per-image time eager vs `--compile` (the project's Models.compile_dit), and graphs built per caption length."""
    import numpy as np

    from vlbench.engine import models as models_mod
    from vlbench.engine.generate import generate

    K = R.setdefault("compile", {})
    pipe = models.pipe
    width, budget = models.caption_width, models.caption_budget
    lengths = COMPILE_LENGTHS if budget >= 605 else [32, 77, 200, 150, 64]  # tiny smoke: budget 224
    short, long_ = 32, lengths[3]
    K["caption_lengths"] = lengths
    gen_kw = dict(seed=0, steps=args.steps, width=args.size, height=args.size, guidance=0.0, budget=budget)
    g = torch.Generator("cpu").manual_seed(1234)
    embs = {L: (torch.randn(L, width, generator=g) * 0.5).to(models.device, models.dtype) for L in lengths}
    reps = max(2, min(3, args.reps))
    backend = {"backend": args.compile_backend} if args.compile_backend else {}

    def run(L):
        return generate(pipe, embs[L], **gen_kw)

    eager_img = {}
    for L in (short, long_):
        run(L)  # warm-up
        ts = []
        for _ in range(reps):
            t, img = timed(lambda: run(L))
            ts.append(t)
        eager_img[L] = np.asarray(img)
        K[f"eager_{L}_s"] = stats(ts)
    log(f"eager: {short} -> {K[f'eager_{short}_s']['median']:.3f}s, {long_} -> {K[f'eager_{long_}_s']['median']:.3f}s")
    save_json()
    reasons = _recompile_log()
    variants = [v for v in args.compile_variants.split(",") if v]
    for vi, variant in enumerate(variants):
        if vi > 0 and elapsed() > args.budget_s * 0.45:
            K[variant] = {"skipped": f"out of time at {elapsed():.0f}s"}
            continue
        options = {"dynamic": True} if variant == "dynamic" else {"dynamic": None} if variant == "auto" else {}
        options.update(backend)
        V = K.setdefault(variant, {"options": {**models_mod.COMPILE_OPTIONS, **options}})
        models.uncompile_dit()  # also torch._dynamo.reset(): every variant starts from no graphs
        reasons.clear()
        g0 = models_mod.compiled_graphs()
        t0 = time.perf_counter()
        models.compile_dit(**options)
        V["compile_call_s"] = time.perf_counter() - t0
        per_len = []
        for L in lengths:
            before, n_reasons = models_mod.compiled_graphs(), len(reasons)
            t, img = timed(lambda: run(L))
            per_len.append({"caption_tokens": L, "padded": -(-L // 32) * 32, "first_call_s": t,
                            "new_graphs": models_mod.compiled_graphs() - before,
                            "recompiles_logged": len(reasons) - n_reasons})
            if L in eager_img:
                a = np.asarray(img).astype(np.int16)
                V[f"max_abs_pixel_diff_vs_eager_{L}"] = int(np.abs(a - eager_img[L]).max())
                V[f"mean_abs_pixel_diff_vs_eager_{L}"] = float(np.abs(a - eager_img[L]).mean())
            log(f"compile {variant}: caption {L}: first call {t:.2f}s, new graphs {per_len[-1]['new_graphs']}")
            save_json()
        V["per_length"] = per_len
        V["graphs_total"] = models_mod.compiled_graphs() - g0
        V["graphs_after_first_two_lengths"] = sum(p["new_graphs"] for p in per_len[2:])
        V["recompile_reasons"] = reasons[:12]
        for L in (short, long_):
            ts = [timed(lambda: run(L))[0] for _ in range(reps)]
            V[f"compiled_{L}_s"] = stats(ts)
            V[f"speedup_{L}"] = K[f"eager_{L}_s"]["median"] / V[f"compiled_{L}_s"]["median"]
        V["graphs_during_timed_reps"] = models_mod.compiled_graphs() - g0 - V["graphs_total"]
        log(f"compile {variant}: {short} -> {V[f'compiled_{short}_s']['median']:.3f}s ({V[f'speedup_{short}']:.2f}x), "
            f"{long_} -> {V[f'compiled_{long_}_s']['median']:.3f}s ({V[f'speedup_{long_}']:.2f}x), "
            f"graphs {V['graphs_total']}")
        save_json()
    models.uncompile_dit()
    torch._logging.set_logs()


# ---------------------------------------------------------------- first use of the VL in a process
def firstuse_section(args, spec, ref):
    """Where the first extraction's extra seconds go: a fresh Models, then prepare (CPU), the vision tower alone,
    the full forward (twice), extract, and the first generations, each synchronised. The CUDA kernels it warms
    stay warm for the rest of the process (the sweep that follows)."""
    from vlbench.engine import extract as ex_mod
    from vlbench.engine.generate import generate
    from vlbench.engine.models import Models

    F = R.setdefault("first_use_in_process", {})
    models = Models(spec)
    t, _ = timed(lambda: models.pipe)
    F["load_zimage_s"] = t
    t, vl = timed(lambda: models.vl)
    F["load_vl_s"] = t
    budget = models.caption_budget
    t, prep = timed(lambda: ex_mod.prepare(vl, [ref.image], PROMPT, budget))
    F["prepare_first_s"] = t
    F["prepare_second_s"] = timed(lambda: ex_mod.prepare(vl, [ref.image], PROMPT, budget))[0]
    inputs = ex_mod._to_device(vl, prep.inputs)
    with torch.inference_mode():
        try:
            F["vision_tower_first_s"] = timed(lambda: vl.model.model.visual(inputs["pixel_values"],
                                                                            grid_thw=inputs["image_grid_thw"]))[0]
            F["vision_tower_second_s"] = timed(lambda: vl.model.model.visual(inputs["pixel_values"],
                                                                             grid_thw=inputs["image_grid_thw"]))[0]
        except Exception as exc:  # noqa: BLE001
            F["vision_tower_error"] = repr(exc)[:300]
    F["forward_first_s"] = timed(lambda: ex_mod.forward(vl, prep))[0]
    F["forward_second_s"] = timed(lambda: ex_mod.forward(vl, prep))[0]
    t, ex = timed(lambda: ex_mod.extract(vl, [ref.image], PROMPT, budget))
    F["extract_after_warm_s"] = t
    emb = ex.hidden_states[-2]
    kw = dict(seed=0, steps=args.steps, width=args.size, height=args.size, guidance=0.0, budget=budget)
    F["generate_first_s"] = timed(lambda: generate(models.pipe, emb, **kw))[0]
    F["generate_second_s"] = timed(lambda: generate(models.pipe, emb, **kw))[0]
    del models, vl, prep, inputs, ex, emb
    free_cuda()
    log(f"first use: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in F.items()})}")
    save_json()


# ---------------------------------------------------------------- offload policies under memory caps
def offload_section(args, spec, ref):
    """Peak GPU memory of a recipe that uses all three models (alpha 0.5: Qwen3-4B + Qwen3-VL, 768² reference),
    from an empty GPU through load, both encoders and generation, per policy; cpu and sequential run under
    torch.cuda.set_per_process_memory_fraction caps (24 and 16 GiB)."""
    from dataclasses import replace

    O = R.setdefault("offload", {})
    total = torch.cuda.get_device_properties(0).total_memory
    O["card_total_GiB"] = gib(total)
    plan = [("none", None, args.steps), ("cpu", 24, args.steps), ("sequential", 16, args.offload_steps)]
    need_s = {"none": 25, "cpu": 30, "sequential": 45}  # about what each takes on an H200 (page cache warm)
    for policy, cap_gib, steps in plan:
        if elapsed() + need_s[policy] > args.budget_s:
            O[policy] = {"skipped": f"out of time at {elapsed():.0f}s"}
            continue
        P = O.setdefault(policy, {"cap_GiB": cap_gib, "steps": steps})
        free_cuda()
        P["allocated_before_GiB"] = gib(torch.cuda.memory_allocated())
        if cap_gib is not None:
            torch.cuda.set_per_process_memory_fraction(cap_gib * 2**30 / total)
        torch.cuda.reset_peak_memory_stats()
        try:
            _offload_runs(P, replace(spec, offload=policy), ref, steps, args.size)
            P["ok_under_cap"] = True if cap_gib is not None else None
        except Exception:  # noqa: BLE001
            P["error"] = traceback.format_exc()[-2500:]
            P["ok_under_cap"] = False if cap_gib is not None else None
            log(f"offload {policy}: ERROR {P['error'][-400:]}")
        finally:
            free_cuda()
            torch.cuda.set_per_process_memory_fraction(1.0)
        P["allocated_after_GiB"] = gib(torch.cuda.memory_allocated())
        log(f"offload {policy} (cap {cap_gib} GiB, {steps} steps): peak {P.get('peak_GiB')} GiB, "
            f"first {P.get('first_run_s', 0):.1f}s, second {P.get('second_run_s', 0):.2f}s, moves {P.get('moves')}")
        save_json()


def _offload_runs(P: dict, spec, ref, steps: int, size: int) -> None:
    from vlbench.engine.engine import Engine
    from vlbench.engine.models import Models
    from vlbench.recipe import Recipe

    recipe = Recipe(alpha=0.5, tokens="full", width=size, height=size, steps=steps, guidance=0.0)
    models = Models(spec)
    engine = Engine(models)
    t, res = timed(lambda: engine.run(recipe, PROMPT, [ref]))
    P["first_run_s"] = t  # loads, both encoders, generation
    P["first_run_timings"] = res.timings
    P["caption_tokens"] = int(res.conditioning.embeds.shape[0])
    P["peak_first_run_GiB"] = gib(torch.cuda.max_memory_allocated())
    P["peak_reserved_first_run_GiB"] = gib(torch.cuda.max_memory_reserved())
    torch.cuda.reset_peak_memory_stats()
    t, res = timed(lambda: engine.run(recipe.replace(seed=1), PROMPT, [ref]))
    P["second_run_s"] = t  # conditioning cached: generation (+ placement checks)
    P["second_run_timings"] = res.timings
    P["peak_second_run_GiB"] = gib(torch.cuda.max_memory_allocated())
    n_moves = len(models.moves)
    t, res = timed(lambda: engine.run(recipe, PROMPT + " At dusk.", [ref]))
    P["third_run_new_prompt_s"] = t  # both encoders again: the offload policies move them back and forth
    P["third_run_timings"] = res.timings
    P["third_run_moves"] = [list(m) for m in models.moves[n_moves:]]
    P["peak_second_run_GiB"] = max(P["peak_second_run_GiB"], gib(torch.cuda.max_memory_allocated()))
    P["resident_after_GiB"] = gib(torch.cuda.memory_allocated())
    P["load_seconds"] = dict(models.load_seconds)
    P["moves"] = [list(m) for m in models.moves]
    P["placement"] = models.placement()
    P["peak_GiB"] = max(P["peak_first_run_GiB"], P["peak_second_run_GiB"])


# ---------------------------------------------------------------- sweep through the experiment runner
def sweep_section(args, spec, ref, workdir: Path):
    from vlbench.engine.engine import Engine
    from vlbench.engine.models import Models
    from vlbench.experiments import load_type, run_experiment
    from vlbench.analysis.report import write_folder_report
    from vlbench.experiments.runner import write_outputs

    S = R.setdefault("sweep", {})
    exp = load_type("vl_layer_by_token")
    recipes = exp.recipes(overrides={"width": args.size, "height": args.size, "steps": args.steps})
    S["recipes"] = [n.name for n in recipes]
    S["seeds"] = SWEEP_SEEDS
    out = workdir / "sweep"
    shutil.rmtree(out, ignore_errors=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    models = Models(spec)  # fresh process state: the sweep loads what it needs (VL + DiT + VAE)
    engine = Engine(models)
    summary = run_experiment(engine, exp, recipes, [ref], [PROMPT], out, seeds=SWEEP_SEEDS, report=write_folder_report)
    sync()
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    gen = [r["timings"].get("generation", 0.0) for r in rows if r["status"] == "done"]
    load = sum(models.load_seconds.values())
    S.update(wall_s=wall, jobs=summary.jobs, done=summary.done, failed=summary.failed, failures=summary.failures,
             vl_forwards=summary.vl_forwards, engine_vl_forwards=engine.vl_forwards,
             sum_generation_s=sum(gen), load_seconds=dict(models.load_seconds), load_s=load,
             sum_extraction_s=sum(r["timings"].get("extraction", 0.0) for r in rows),
             per_job=[{"name": r["name"], "seed": r["seed"], "caption_tokens": r["caption_tokens"],
                       "generation": r["timings"].get("generation"), "extraction": r["timings"].get("extraction"),
                       "peak_GiB": gib(r["peak_memory_bytes"])} for r in rows])
    S["ratio_wall_over_gen_plus_load"] = wall / (sum(gen) + load) if gen else None
    cold = R.get("load", {}).get("project_load_seconds", {})
    if cold:
        cold_load = cold.get("vl", 0) + cold.get("zimage", 0)
        S["ratio_wall_minus_own_load_plus_cold_load"] = (wall - load + cold_load) / (sum(gen) + cold_load)
    S["overhead_s"] = wall - load - sum(gen)
    S["page_cache"] = "warm (the files were read by the load section)"
    t0 = time.perf_counter()
    write_outputs(out, exp)
    write_folder_report(out)
    S["write_outputs_again_s"] = time.perf_counter() - t0
    if models.device.type == "cuda":
        S["resident_vl_dit_vae_GiB"] = gib(torch.cuda.memory_allocated())
        S["peak_GiB"] = gib(torch.cuda.max_memory_allocated())
    log(f"sweep: {summary.done}/{summary.jobs} done, wall {wall:.1f}s, Σgen {sum(gen):.1f}s, load {load:.1f}s, "
        f"VL forwards {summary.vl_forwards}")
    save_json()


# ---------------------------------------------------------------- fresh-process sweep through the CLI
def cli_sweep_section(args, zdir: Path, vldir: Path, ref_path: Path, workdir: Path, cold: bool = True,
                      extra_argv: tuple[str, ...] = ()):
    """`vlbench run --experiment vl_layer_by_token` in a fresh process. cold: page cache dropped first (weights AND
    the libraries' own files come from disk: a first run after boot); warm: files cached (a later run)."""
    name = "cli_sweep" if cold else "cli_sweep_warm"
    C = R.setdefault(name, {})
    out = workdir / name.replace("_", "-")
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, VLBENCH_DATA_DIR=str(workdir / "data"), VLBENCH_CONFIG_DIR=str(workdir / "config"))
    argv = ["run", "--experiment", "vl_layer_by_token", "--image", str(ref_path),
            "--prompt", PROMPT, "--seeds", ",".join(map(str, SWEEP_SEEDS)), "--output-dir", str(out),
            "--zimage", str(zdir), "--vl", str(vldir), *extra_argv]
    if args.tiny_smoke:
        argv += ["--steps", str(args.steps), "--width", str(args.size), "--height", str(args.size),
                 "--device", "cpu", "--dtype", "bf16"]
    cmd = [sys.executable, "-c", CLI_RUNNER, json.dumps(argv)]
    C["argv"] = argv
    C["page_cache_dropped"] = drop_page_cache() if cold else False
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.budget_s)
    wall = time.perf_counter() - t0
    C["rc"] = proc.returncode
    C["stdout_tail"] = (proc.stdout + proc.stderr)[-1500:]
    marks = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("VLBENCH_IMPORTS_S ")]
    C["child_imports_torch_transformers_diffusers_s"] = float(marks[0]) if marks else None
    for mark, key in (("VLBENCH_MAIN_START_S", "child_main_start_s"), ("VLBENCH_MAIN_DONE_S", "child_main_done_s")):
        found = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith(mark + " ")]
        C[key] = float(found[0]) if found else None
    if C["child_main_done_s"] is not None:  # after cli.main returned: interpreter teardown, CUDA context, exit
        C["child_exit_s"] = wall - C["child_main_done_s"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    info = json.loads((out / "run.json").read_text())
    inv = info["invocations"][-1]
    gen = [r["timings"].get("generation", 0.0) for r in rows if r["status"] == "done"]
    load = sum(inv.get("model_load_seconds", {}).values())
    C.update(process_wall_s=wall, done=inv.get("done"), failed=inv.get("failed"), vl_forwards=inv.get("vl_forwards"),
             model_load_seconds=inv.get("model_load_seconds"), load_s=load, sum_generation_s=sum(gen),
             first_job_timings=rows[0]["timings"] if rows else None,
             peak_GiB=max((gib(r["peak_memory_bytes"]) or 0) for r in rows) if rows else None)
    # the fixed cost of starting Python with the libraries the command imports (page cache now warm)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, transformers, diffusers, PIL, rich; import vlbench.cli; "
                    "import vlbench.engine.engine, vlbench.experiments.runner; torch.zeros(1, device='" +
                    ("cpu" if args.tiny_smoke else "cuda") + "')"], env=env, check=True, timeout=300)
    C["python_imports_and_cuda_init_s"] = time.perf_counter() - t0
    imports = C["child_imports_torch_transformers_diffusers_s"] or C["python_imports_and_cuda_init_s"]
    C["ratio_process_wall_over_gen_plus_load"] = wall / (sum(gen) + load) if gen else None
    C["ratio_wall_minus_imports_over_gen_plus_load"] = (wall - imports) / (sum(gen) + load) if gen else None
    C["overhead_beyond_imports_load_gen_s"] = wall - imports - load - sum(gen)
    if rows:  # Engine.run's "extraction" of the first job also holds both lazy model loads
        C["first_job_extraction_beyond_load_s"] = rows[0]["timings"].get("extraction", 0.0) - load
        C["first_job_generation_s"] = rows[0]["timings"].get("generation")
    if rows:  # the run's own timeline: gaps between jobs, and what follows the last job
        done_rows = sorted((r for r in rows if r.get("started_at") and r.get("finished_at")),
                           key=lambda r: r["started_at"])
        gaps = [b["started_at"] - a["finished_at"] for a, b in zip(done_rows, done_rows[1:])]
        jobs = [r["finished_at"] - r["started_at"] - sum(r["timings"].values()) for r in done_rows]
        last = max(r["finished_at"] for r in done_rows)
        C["timeline"] = {"sum_gaps_between_jobs_s": sum(gaps), "max_gap_s": max(gaps, default=0.0),
                         "sum_job_wall_beyond_timings_s": sum(jobs),
                         "after_last_job": {name: os.stat(out / name).st_mtime - last
                                            for name in ("grid.png", "report.html", "run.json") if (out / name).exists()}}
    C["png_grid_report_etc_s"] = C["overhead_beyond_imports_load_gen_s"] - sum(
        r["timings"].get("extraction", 0.0) for r in rows) + load
    log(f"{name}: rc {proc.returncode}, {C['done']} done, wall {wall:.1f}s, Σgen {sum(gen):.1f}s, load {load:.1f}s, "
        f"imports {imports:.1f}s, VL forwards {C['vl_forwards']}")
    save_json()


# `vlbench run …` itself, in a fresh process (imports timed apart).
CLI_RUNNER = """
import time
t0 = time.perf_counter()
import json, sys
import torch, transformers, diffusers
print('VLBENCH_IMPORTS_S', time.perf_counter() - t0, flush=True)
argv = json.loads(sys.argv[1])
from vlbench import cli
print('VLBENCH_MAIN_START_S', time.perf_counter() - t0, flush=True)
code = cli.main(argv)
print('VLBENCH_MAIN_DONE_S', time.perf_counter() - t0, flush=True)
getattr(cli, 'exit_now', sys.exit)(code)  # as the `vlbench` script ends (cli.entry)
"""


# ---------------------------------------------------------------- first-use costs, in a fresh process
def probe_child(args, zdir: Path, vldir: Path, ref_path: Path, out_json: Path) -> None:
    """Fresh process: load everything, then time first vs later calls of each stage, and the PNG write."""
    from vlbench.engine.encode import encode_text
    from vlbench.engine.engine import Reference
    from vlbench.engine.extract import extract
    from vlbench.engine.generate import generate
    from vlbench.pngs import save_png
    from vlbench.engine.models import Models
    from vlbench.modelspec import ModelSpec

    P: dict = {}
    device = "cpu" if args.tiny_smoke else "cuda"
    t, models = timed(lambda: Models(ModelSpec(zimage=str(zdir), vl=str(vldir), device=device, dtype="bf16")))
    models.pipe, models.vl, models.text_pipe
    P["load_seconds"] = dict(models.load_seconds)
    ref = Reference.open(ref_path)
    vl, budget = models.vl, models.caption_budget
    proc = vl.processor
    rendered = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                           "text": PROMPT}]}],
                                        add_generation_prompt=True, tokenize=False)
    P["processor_calls_s"] = [timed(lambda: proc(text=[rendered], images=[ref.image], return_tensors="pt"))[0]
                              for _ in range(3)]
    inputs = {k: v.to(vl.device) for k, v in proc(text=[rendered], images=[ref.image], return_tensors="pt").items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(vl.dtype)
    with torch.inference_mode():
        P["vl_forward_calls_s"] = [timed(lambda: vl.model.model(**inputs, output_hidden_states=True, use_cache=False,
                                                                return_dict=True))[0] for _ in range(3)]
    P["extract_calls_s"] = [timed(lambda: extract(vl, [ref.image], PROMPT, budget))[0] for _ in range(3)]
    P["encode_text_calls_s"] = [timed(lambda: encode_text(models.text_pipe, PROMPT))[0] for _ in range(3)]
    emb = encode_text(models.text_pipe, PROMPT).embeds
    kw = dict(seed=0, steps=args.steps, width=args.size, height=args.size, guidance=0.0, budget=budget)
    gens = []
    for _ in range(3):
        t, image = timed(lambda: generate(models.pipe, emb, **kw))
        gens.append(t)
    P["generate_calls_s"] = gens
    pngs = []
    for i in range(3):
        t, _ = timed(lambda: save_png(image, out_json.parent / f"probe_{i}.png", {"probe": i}))
        pngs.append(t)
    P["save_png_1024_noise_s"] = pngs
    P["png_bytes"] = (out_json.parent / "probe_0.png").stat().st_size
    out_json.write_text(json.dumps(P, indent=1))


def probe_section(args, workdir: Path, ref_path: Path):
    out_json = workdir / "probe.json"
    out_json.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--probe-child", "--workdir", str(workdir), "--out", str(workdir / "probe-out")]
    if args.tiny_smoke:
        cmd.append("--tiny-smoke")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.budget_s)
    R["first_use_probe"] = json.loads(out_json.read_text()) if out_json.exists() else {
        "error": (proc.stdout + proc.stderr)[-2000:]}
    R["first_use_probe"]["process_wall_s"] = time.perf_counter() - t0
    log(f"probe: {json.dumps(R['first_use_probe'], default=str)[:600]}")
    save_json()


# ---------------------------------------------------------------- table
def table() -> None:
    g, L, S, X, M, C, W, F = (R.get(k, {}) for k in ("generation", "load", "sweep", "extraction", "memory", "cli_sweep",
                                                     "cli_sweep_warm", "first_use_probe"))
    env = R.get("env", {})

    def f(x, p=3):
        return "-" if x is None else (f"{x:.{p}f}" if isinstance(x, float) else str(x))

    def med(d, k):
        return (d.get(k) or {}).get("median")

    rows = [
        ("card", f"{env.get('gpu', env.get('device'))} driver {env.get('driver')}"),
        ("versions", f"torch {env.get('torch')} transformers {env.get('transformers')} diffusers {env.get('diffusers')}"),
        ("caption tokens text / vl", f"{(g.get('caption_tokens') or {}).get('text')} / {(g.get('caption_tokens') or {}).get('vl')}"),
        ("project text-only s/img", f(med(g, "project_text_s"))),
        ("plain diffusers text s/img", f(med(g, "plain_text_s"))),
        ("  ratio project/plain text", f(g.get("ratio_project_over_plain_text"))),
        ("project VL s/img", f(med(g, "project_vl_s"))),
        ("plain diffusers VL s/img", f(med(g, "plain_vl_s"))),
        ("  ratio project/plain VL", f(g.get("ratio_project_over_plain_vl"))),
        ("  (VL/text) project ÷ plain", f(g.get("ratio_of_ratios"))),
        ("plain pt text / vl", f"{f(med(g, 'plain_text_pt_s'))} / {f(med(g, 'plain_vl_pt_s'))}"),
        ("project == plain (same seed)", str(g.get("project_equals_plain_same_seed"))),
        ("extraction s (proc / fwd)", f"{f(med(X, 'extract_s'))} ({f(med(X, 'processor_s'))} / {f(med(X, 'raw_forward_s'))})"),
        ("raw read cold total s", f(L.get("raw_read_cold_total_s"), 2)),
        ("project load s", str({k: round(v, 2) for k, v in (L.get("project_load_seconds") or {}).items()})),
        ("  ratio load/raw", f(L.get("ratio_total_load_over_raw"))),
        ("page cache dropped", f"{L.get('page_cache_dropped_raw')}/{L.get('page_cache_dropped_load')}"),
        ("sweep wall / Σgen / load s", f"{f(S.get('wall_s'), 1)} / {f(S.get('sum_generation_s'), 1)} / {f(S.get('load_s'), 1)}"),
        ("  ratio wall/(Σgen+load)", f(S.get("ratio_wall_over_gen_plus_load"))),
        ("  sweep VL forwards", str(S.get("vl_forwards"))),
        ("resident all GiB", f(M.get("resident_all_GiB"), 2)),
        ("peak generating GiB", str(M.get("peak_generation_GiB"))),
        ("sweep resident / peak GiB", f"{f(S.get('resident_vl_dit_vae_GiB'), 2)} / {f(S.get('peak_GiB'), 2)}"),
        ("CLI sweep wall / Σgen / load s", f"{f(C.get('process_wall_s'), 1)} / {f(C.get('sum_generation_s'), 1)} / "
                                          f"{f(C.get('load_s'), 1)} (imports+init {f(C.get('python_imports_and_cuda_init_s'), 1)})"),
        ("  ratio wall/(Σgen+load)", f"{f(C.get('ratio_process_wall_over_gen_plus_load'))} "
                                     f"(without imports {f(C.get('ratio_wall_minus_imports_over_gen_plus_load'))})"),
        ("  CLI VL forwards", str(C.get("vl_forwards"))),
        ("CLI sweep warm wall / Σgen / load s", f"{f(W.get('process_wall_s'), 1)} / {f(W.get('sum_generation_s'), 1)} / "
                                               f"{f(W.get('load_s'), 1)} (child imports "
                                               f"{f(W.get('child_imports_torch_transformers_diffusers_s'), 1)})"),
        ("  ratio wall/(Σgen+load)", f"{f(W.get('ratio_process_wall_over_gen_plus_load'))} "
                                     f"(without imports {f(W.get('ratio_wall_minus_imports_over_gen_plus_load'))})"),
        ("first-use: extract / encode / gen s", " | ".join(
            "/".join(f"{x:.3f}" for x in F.get(k, [])) for k in ("extract_calls_s", "encode_text_calls_s",
                                                                  "generate_calls_s"))),
        ("first-use: proc / VL fwd / png s", " | ".join(
            "/".join(f"{x:.3f}" for x in F.get(k, [])) for k in ("processor_calls_s", "vl_forward_calls_s",
                                                                  "save_png_1024_noise_s"))),
    ]
    K, O = R.get("compile", {}), R.get("offload", {})
    lengths = K.get("caption_lengths") or COMPILE_LENGTHS
    short, long_ = 32, lengths[3]
    if K:
        rows.append((f"eager s/img caption {short} / {long_}", f"{f(med(K, f'eager_{short}_s'))} / {f(med(K, f'eager_{long_}_s'))}"))
    for variant in ("dynamic", "auto"):
        V = K.get(variant) or {}
        if "per_length" in V:
            rows.append((f"compiled[{variant}] s/img {short} / {long_}",
                         f"{f(med(V, f'compiled_{short}_s'))} / {f(med(V, f'compiled_{long_}_s'))} "
                         f"(x{f(V.get(f'speedup_{short}'), 2)} / x{f(V.get(f'speedup_{long_}'), 2)})"))
            rows.append((f"  graphs per length {lengths}", " ".join(str(p["new_graphs"]) for p in V["per_length"])
                         + f" (after first two: {V.get('graphs_after_first_two_lengths')})"))
            rows.append(("  first call s per length", " ".join(f"{p['first_call_s']:.1f}" for p in V["per_length"])))
        elif V:
            rows.append((f"compiled[{variant}]", str(V.get("skipped") or V)[:80]))
    for policy in ("none", "cpu", "sequential"):
        P = O.get(policy) if isinstance(O, dict) else None
        if P:
            rows.append((f"offload {policy} (cap {P.get('cap_GiB')} GiB) peak GiB",
                         f"{P.get('peak_GiB')} ok={P.get('ok_under_cap')} first {f(P.get('first_run_s'), 1)}s "
                         f"second {f(P.get('second_run_s'), 2)}s ({P.get('steps')} steps)"
                         + (" ERROR" if P.get("error") else "") + (f" {P['skipped']}" if P.get("skipped") else "")))
    FU = R.get("first_use_in_process") or {}
    if FU:
        rows.append(("in-process first use: prep/vis/fwd s", " / ".join(
            f"{FU.get(a, 0):.3f}>{FU.get(b, 0):.3f}" for a, b in (("prepare_first_s", "prepare_second_s"),
                                                                  ("vision_tower_first_s", "vision_tower_second_s"),
                                                                  ("forward_first_s", "forward_second_s")))))
        rows.append(("  generate first > second s", f"{FU.get('generate_first_s', 0):.3f} > "
                                                     f"{FU.get('generate_second_s', 0):.3f}"))
    for policy in ("cpu", "sequential"):
        P = O.get(policy) if isinstance(O, dict) else None
        if P and "third_run_moves" in P:
            rows.append((f"  {policy}: new prompt run s / moves", f"{f(P.get('third_run_new_prompt_s'), 2)} "
                         + str([(m[0], m[1], round(m[2], 2)) for m in P["third_run_moves"]])))
    rows.append(("errors", ", ".join(R["errors"]) or "none"))
    w = max(len(a) for a, _ in rows)
    print("\n" + "=" * 72)
    for a, b in rows:
        print(f"{a:<{w}}  {b}")
    print("=" * 72, flush=True)


# ---------------------------------------------------------------- main
def main() -> int:
    global OUT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny-smoke", action="store_true", help="tiny models on CPU, 64x64, 2 steps (tests the script)")
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/gpu_bench_out")
    p.add_argument("--workdir", default=None, help="where the models are saved (default /tmp/vlbench-bench)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per variant (after one warm-up)")
    p.add_argument("--reps-pt", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=400.0, help="skip optional parts past fractions of this (seconds)")
    p.add_argument("--skip-te-save", action="store_true", help="keep Qwen3-4B in memory instead of saving it")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--sections", default="load,generation,sweep",
                   help="comma list of load, generation, compile, firstuse, offload, sweep, cli_sweep, cli_sweep_warm, probe "
                        "(models are always built and saved)")
    p.add_argument("--compile-variants", default="dynamic,auto",
                   help="compile section: dynamic = the project's --compile (dynamic=True), auto = dynamo's automatic "
                        "dynamic shapes (dynamic=None); later variants are skipped when short of time")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; the smoke uses "
                   "eager: dynamo's graphs and recompiles without code generation)")
    p.add_argument("--offload-steps", type=int, default=2, help="steps for the sequential-offload run (slow)")
    p.add_argument("--probe-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or ("/tmp/vlbench-bench-smoke" if args.tiny_smoke else "/tmp/vlbench-bench"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLBENCH_CACHE_DIR", str(workdir / "cache"))
    if args.tiny_smoke:
        device, args.size, args.steps, ref_px = "cpu", 64, 2, 192
        args.reps = args.reps or 2
        args.reps_pt = 1
        args.compile_backend = args.compile_backend or "eager"
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU: use --tiny-smoke", file=sys.stderr)
            return 2
        device, args.size, args.steps, ref_px = "cuda", 1024, 9, 768
        args.reps = args.reps or 5
    dtype = torch.bfloat16
    if args.probe_child:  # reuses the models the parent saved under --workdir
        probe_child(args, workdir / "z-image-turbo-random", workdir / "qwen3-vl-4b-random",
                    workdir / f"reference_{ref_px}.png", workdir / "probe.json")
        return 0
    sections = set(args.sections.split(","))
    R["sections"] = sorted(sections)
    R["mode"] = "tiny-smoke" if args.tiny_smoke else "full-size random bf16"
    R["settings"] = {"size": args.size, "steps": args.steps, "guidance": 0.0, "reference_px": ref_px,
                     "reps": args.reps, "prompt": PROMPT,
                     "compile_in_other_sections": False}
    environment(device)
    save_json()

    from vlbench.engine.engine import Reference
    from vlbench.modelspec import ModelSpec
    from vlbench.engine.tiny import ensure_tiny_models

    try:
        # the tiny models (tokenizers) from VLBENCH_CACHE_DIR (default WORKDIR/cache): built once, shared with the tests;
        # tiny_build_s is the time to find or build them
        t, tiny_dirs = timed(lambda: ensure_tiny_models())
        R["tiny_build_s"] = t
        import numpy as np
        from PIL import Image

        ref_path = workdir / f"reference_{ref_px}.png"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (ref_px, ref_px, 3), dtype=np.uint8)).save(ref_path)
        ref = Reference.open(ref_path)
        zdir, vldir = workdir / "z-image-turbo-random", workdir / "qwen3-vl-4b-random"
        te_saved = build_and_save(args, device, dtype, tiny_dirs, zdir, vldir)
        spec = ModelSpec(zimage=str(zdir), vl=str(vldir), device=device, dtype="bf16")
        R["caption_budget"] = None
    except Exception:  # noqa: BLE001
        error("build_save")
        table()
        return 1

    models = None
    if "load" in sections:
        try:
            models = load_section(args, spec, zdir, vldir, te_saved)
            R["caption_budget"] = models.caption_budget
        except Exception:  # noqa: BLE001
            error("load")
    if models is not None and "generation" in sections:
        try:
            generation_section(args, models, ref)
        except Exception:  # noqa: BLE001
            error("generation")
    if "compile" in sections:
        try:
            if models is None:
                from vlbench.engine.models import Models

                models = Models(spec)
            compile_section(args, models)
        except Exception:  # noqa: BLE001
            error("compile")
    if models is not None and hasattr(args, "_te_in_memory"):
        del args._te_in_memory
    del models
    free_cuda()
    if "firstuse" in sections:
        try:
            firstuse_section(args, spec, ref)
        except Exception:  # noqa: BLE001
            error("firstuse")
    if "sweep" in sections:
        if args.skip_sweep or elapsed() > args.budget_s - 60:
            R["sweep"] = {"skipped": "--skip-sweep" if args.skip_sweep else f"out of time at {elapsed():.0f}s"}
        else:
            try:
                sweep_section(args, spec, ref, workdir)
            except Exception:  # noqa: BLE001
                error("sweep")
    if "offload" in sections:
        if args.tiny_smoke:
            R["offload"] = {"skipped": "needs CUDA (memory caps); on CPU the policies change nothing"}
        else:
            try:
                offload_section(args, spec, ref)
            except Exception:  # noqa: BLE001
                error("offload")
    for name, fn in (("cli_sweep", lambda: cli_sweep_section(args, zdir, vldir, ref_path, workdir)),
                     ("cli_sweep_warm", lambda: cli_sweep_section(args, zdir, vldir, ref_path, workdir, cold=False)),
                     ("probe", lambda: probe_section(args, workdir, ref_path))):
        if name in sections:
            try:
                fn()
            except Exception:  # noqa: BLE001
                error(name)
    save_json()
    table()
    return 0 if not R["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
