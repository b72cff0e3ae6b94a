#!/usr/bin/env python3
"""GPU memory and time per image of every vlbench metric, at the published model sizes (issue 15).

Each metric model is built from its transformers (or torchvision) config class at the size of the
checkpoint vlbench names by default, with random weights born on the GPU — no download; speed and
memory do not depend on weight values (DESIGN.md §5) — and then measured through vlbench's own metric
code (`vlbench.metrics.models`, `.style`, `.vqa`), on Z-Image-sized outputs (1024², random pixels),
768² references and the evaluation set's prompts:

  family     published size built                          what is timed (per image)
  siglip     google/siglip2-base-patch16-224 (375 M)       image embedding; text embedding (64 tokens)
  clip       openai/clip-vit-large-patch14 (428 M)         image embedding; text embedding
  dino       facebook/dino-vits16 (22 M)                   CLS embedding (DreamBench preprocessing)
  dinov2     facebook/dinov2-base (87 M)                   pooler embedding
  vgg        VGG-19 features (torchvision, 20 M)           Gram matrices relu1_1 … relu5_1
  pickscore  yuvalkirstain/PickScore_v1 = CLIP-H/14 (986 M) image embedding; text embedding
  vqa        Qwen/Qwen3-VL-4B-Instruct (4.4 B), bf16        vqascore (1 image, ≤1024 tokens); content_leak (2 images)

For every family and dtype (the embedding models run in fp32 by default, --dtype bf16 halves them; the
judge runs in bf16): build seconds, parameters, resident GiB after the build, and at batch sizes 1 and
16 the median seconds per image over --reps timed calls after one warm-up, and the peak GiB above
the memory before the build. Tokenizers and processors are vlbench's tiny ones with the published
image sizes (a token id from them is a valid id of every published vocabulary); Qwen3-VL's processor
has the published patch 16 / merge 2 preprocessing.

Writes OUT/metrics_gpu.json after every family (a killed run keeps what it has) and prints a table.

    PYTHONPATH=src python3 benchmarks/metrics_gpu.py --tiny-smoke --out /tmp/mg   # CPU, tiny configs: checks the script
    PYTHONPATH=src python3 benchmarks/metrics_gpu.py --out $OUT                   # the GPU machine (a few minutes)

Needs torch, torchvision, transformers, numpy, PIL and vlbench's src/ importable; not diffusers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

R: dict = {"errors": {}, "families": {}}
OUT = Path(".")
T0 = time.perf_counter()
FAMILIES = ("siglip", "clip", "dino", "dinov2", "vgg", "pickscore", "vqa")


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def save() -> None:
    R["elapsed_s"] = round(time.perf_counter() - T0, 1)
    tmp = OUT / ".metrics_gpu.json.tmp"
    tmp.write_text(json.dumps(R, indent=1, default=str))
    os.replace(tmp, OUT / "metrics_gpu.json")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gib(x: float | None) -> float | None:
    return None if x is None else round(x / 2**30, 3)


def allocated() -> int:
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def born(device: torch.device, dtype: torch.dtype, fn):
    """Construct a module with its parameters born on `device` in `dtype` (no CPU init, no copy)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = fn()
    finally:
        torch.set_default_dtype(prev)
    return module.to(dtype).eval()


# ---------------------------------------------------------------- published configs
def published(family: str, tiny_vl_tokenizer=None):
    """A zero-argument builder of the family's model at the published size (random init)."""
    from transformers import (CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model, Qwen3VLForConditionalGeneration,
                              SiglipConfig, SiglipModel, ViTConfig, ViTModel)

    if family == "siglip":
        cfg = SiglipConfig(text_config=dict(vocab_size=256000, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=64),
                           vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                              num_attention_heads=12, image_size=224, patch_size=16))
        return lambda: SiglipModel(cfg)
    if family == "clip":
        cfg = CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12, max_position_embeddings=77),
                         vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                            num_attention_heads=16, image_size=224, patch_size=14), projection_dim=768)
        return lambda: CLIPModel(cfg)
    if family == "pickscore":  # CLIP ViT-H/14 (laion/CLIP-ViT-H-14-laion2B-s32B-b79K), which PickScore fine-tunes
        cfg = CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                                          num_hidden_layers=24, num_attention_heads=16, max_position_embeddings=77,
                                          hidden_act="gelu"),
                         vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                            num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu"),
                         projection_dim=1024)
        return lambda: CLIPModel(cfg)
    if family == "dino":
        cfg = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                        image_size=224, patch_size=16, qkv_bias=True)
        return lambda: ViTModel(cfg, add_pooling_layer=False)
    if family == "dinov2":
        cfg = Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                           image_size=518, patch_size=14)
        return lambda: Dinov2Model(cfg)
    if family == "vgg":
        from torchvision.models import vgg19

        from vlbench.metrics.style import vgg_from_state_dict

        return lambda: vgg_from_state_dict({f"features.{k}": v for k, v in vgg19(weights=None).features.state_dict().items()})
    if family == "vqa":
        sys.path.insert(0, str(Path(__file__).parent))
        from dual_batch import full_config  # the one definition of Qwen3-VL-4B's published sizes

        cfg = full_config(tiny_vl_tokenizer)
        return lambda: Qwen3VLForConditionalGeneration(cfg)
    raise ValueError(family)


def tiny(family: str, dirs):
    """The tiny twin (the same code path, CPU-sized)."""
    from transformers import AutoModel, AutoModelForImageTextToText, ViTModel

    from vlbench.metrics.style import load_vgg

    src = dirs.sources()[family]
    if family == "vgg":
        return lambda: load_vgg(src, torch.device("cpu"), torch.float32)
    if family == "vqa":
        return lambda: AutoModelForImageTextToText.from_pretrained(src)
    if family == "dino":
        return lambda: ViTModel.from_pretrained(src, add_pooling_layer=False)
    return lambda: AutoModel.from_pretrained(src)


def processor(family: str, dirs, full: bool):
    """The family's processor: vlbench's tiny tokenizers, the published image preprocessing."""
    from transformers import AutoImageProcessor, AutoProcessor, BitImageProcessor

    from vlbench.metrics.models import dino_processor

    src = dirs.sources()
    if family == "dino":
        return dino_processor()
    if family == "vgg":
        return None
    if family == "vqa":
        return AutoProcessor.from_pretrained(src["vqa"])
    if family == "dinov2":
        if full:
            return BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                     do_center_crop=True, image_mean=[0.485, 0.456, 0.406],
                                     image_std=[0.229, 0.224, 0.225], do_convert_rgb=True)
        return AutoImageProcessor.from_pretrained(src["dinov2"])
    proc = AutoProcessor.from_pretrained(src["pickscore_processor" if family == "pickscore" else family])
    if full:  # the published image size; the text side is the tiny tokenizer (ids valid in every vocabulary)
        ip = proc.image_processor
        if family == "siglip":
            ip.size = {"height": 224, "width": 224}
        else:
            ip.size, ip.crop_size = {"shortest_edge": 224}, {"height": 224, "width": 224}
    return proc


# ---------------------------------------------------------------- measuring
def measure(fn, images: int, reps: int) -> dict:
    """Median seconds per image of `fn()` (which scores `images` images) over `reps` calls after a warm-up."""
    fn()
    sync()
    ts = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return {"s_per_image": ts[len(ts) // 2] / images, "s_per_call_all": ts, "images_per_call": images}


def family_section(family: str, dtype: torch.dtype, args, dirs, data) -> dict:
    from vlbench.engine.models import VLModel
    from vlbench.metrics import models as M
    from vlbench.metrics import style, vqa

    device = torch.device(args.device)
    free()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    before = allocated()
    tok = processor("vqa", dirs, args.full).tokenizer if family == "vqa" else None
    builder = published(family, tok) if args.full else tiny(family, dirs)
    t = time.perf_counter()
    model = born(device, dtype, builder) if args.full else builder().to(device=device, dtype=dtype).eval()
    sync()
    out: dict = {"dtype": str(dtype).replace("torch.", ""), "build_s": round(time.perf_counter() - t, 2),
                 "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                 "resident_GiB": gib(allocated() - before), "batches": {}}
    proc = processor(family, dirs, args.full)
    loaded = M.Loaded(family, "random", model, proc)
    vl = VLModel(model, proc, "random", device, dtype) if family == "vqa" else None
    for b in args.batch_sizes:
        imgs, refs, prompts = data["images"][:b], data["refs"][:b], data["prompts"][:b]
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        parts: dict = {}
        try:
            if family == "vgg":
                parts["grams"] = measure(lambda: style.grams(model, imgs), b, args.reps)
            elif family == "vqa":
                parts["vqascore"] = measure(lambda: vqa.vqascore(vl, imgs, prompts), b, args.reps)
                parts["content_leak"] = measure(lambda: vqa.content_leak(vl, refs, imgs), b, args.reps)
            else:
                parts["image_embedding"] = measure(lambda: M.image_embeds(loaded, imgs), b, args.reps)
                if family in ("siglip", "clip", "pickscore"):
                    parts["text_embedding"] = measure(lambda: M.text_embeds(loaded, prompts), b, args.reps)
        except torch.cuda.OutOfMemoryError as exc:  # pragma: no cover - GPU only
            parts["error"] = f"out of memory: {exc}"[:300]
        peak = torch.cuda.max_memory_allocated() - before if torch.cuda.is_available() else None
        out["batches"][str(b)] = {**{k: round(v["s_per_image"], 5) if isinstance(v, dict) else v
                                     for k, v in parts.items()},
                                  "peak_GiB": gib(peak), "raw": parts}
        log(f"{family} {out['dtype']} batch {b}: " + ", ".join(
            f"{k} {v['s_per_image'] * 1000:.2f} ms/img" for k, v in parts.items() if isinstance(v, dict))
            + (f"; peak {gib(peak)} GiB" if peak is not None else ""))
    model = loaded = vl = None  # noqa: F841 - drop the last references before the next family builds
    free()
    return out


def environment() -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.version.cuda, "device": "cpu"}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        env["gpu_total_GiB"] = gib(torch.cuda.get_device_properties(0).total_memory)
    return env


def table() -> None:
    print(f"\n{'family':10} {'dtype':9} {'params M':>9} {'resident':>9} " + " ".join(
        f"{'b' + b + ' ms/img':>22} {'peak':>7}" for b in map(str, R["settings"]["batch_sizes"])))
    for key, r in R["families"].items():
        family = key.split(":")[0]
        cells = []
        for b in map(str, R["settings"]["batch_sizes"]):
            x = r["batches"].get(b, {})
            ms = " + ".join(f"{x[k] * 1000:.1f}" for k in x if k not in ("peak_GiB", "raw", "error"))
            cells.append(f"{ms:>22} {x.get('peak_GiB') if x.get('peak_GiB') is not None else '—':>7}")
        print(f"{family:10} {r['dtype']:9} {r['params_M']:9} {r['resident_GiB'] if r['resident_GiB'] is not None else '—':>9} "
              + " ".join(cells))


def main() -> int:
    global OUT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny-smoke", action="store_true", help="tiny twins on the CPU (checks the script)")
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/metrics_gpu_out")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--dtypes", default="fp32,bf16", help="for the embedding models; the Qwen3-VL judge is bf16 only")
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--reps", type=int, default=None, help="timed calls per measurement (default 5; smoke 1)")
    args = p.parse_args()
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    args.full = not args.tiny_smoke
    if args.full and not torch.cuda.is_available():
        print("no CUDA GPU: use --tiny-smoke", file=sys.stderr)
        return 2
    args.device = "cuda" if args.full else "cpu"
    args.reps = args.reps or (5 if args.full else 1)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    R["mode"] = "published sizes, random weights" if args.full else "tiny-smoke (CPU; timings meaningless)"
    R["settings"] = {"batch_sizes": args.batch_sizes, "reps": args.reps, "output_px": 1024 if args.full else 64,
                     "reference_px": 768 if args.full else 48}
    R["environment"] = environment()
    save()
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    import numpy as np
    from PIL import Image

    from vlbench.evalsets import prompt_groups
    from vlbench.metrics.tiny import ensure_tiny_metric_models

    from vlbench.engine.tiny import build_tiny_vl

    cache = OUT / "cache"
    vl_dir = cache / "qwen3-vl-tiny"  # its processor and tokenizer; built alone: the GPU machine has no diffusers
    if not (vl_dir / "config.json").is_file():
        build_tiny_vl(vl_dir)
    dirs = ensure_tiny_metric_models(cache / "metrics", vl=vl_dir)
    rng = np.random.default_rng(0)
    n = max(args.batch_sizes)
    px, ref_px = R["settings"]["output_px"], R["settings"]["reference_px"]
    prompts = [q for g in prompt_groups().values() for q in g]
    data = {"images": [Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8)) for _ in range(n)],
            "refs": [Image.fromarray(rng.integers(0, 256, (ref_px, ref_px, 3), dtype=np.uint8)) for _ in range(n)],
            "prompts": (prompts * (n // len(prompts) + 1))[:n]}
    for family in args.families.split(","):
        for name in (["bf16"] if family == "vqa" and args.full else args.dtypes.split(",")):
            key = f"{family}:{name}"
            try:
                R["families"][key] = family_section(family, dtypes[name], args, dirs, data)
            except Exception:  # noqa: BLE001 - record and go on with the next family
                R["errors"][key] = traceback.format_exc()[-3000:]
                log(f"ERROR in {key}:\n{R['errors'][key]}")
                free()
            save()
    table()
    print(f"\nwrote {OUT / 'metrics_gpu.json'}")
    return 1 if R["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
