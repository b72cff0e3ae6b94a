"""Generation through diffusers' Z-Image pipeline with precomputed `prompt_embeds`.

The sampler is diffusers' own; we pass embeddings, a CPU generator (so a seed reproduces on any
device) and a step callback for progress.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Callable

import torch

from vlbench.errors import CaptionTooLong


def check_caption(length: int, budget: int) -> None:
    """Refuse a caption the DiT cannot take: on a GPU it would be a device-side assert that kills CUDA."""
    if length > budget:
        raise CaptionTooLong(
            f"conditioning: {length} tokens, over the DiT's caption budget of {budget}; "
            "select fewer tokens (e.g. --tokens text), lower --max-image-tokens, or pool the image tokens"
        )
    if length < 1:
        raise CaptionTooLong("conditioning: the sequence is empty; select some tokens")


@torch.inference_mode()
def generate(pipe, embeds: torch.Tensor, *, seed: int, steps: int, width: int, height: int, guidance: float,
             negative_embeds: torch.Tensor | None = None, budget: int,
             on_step: Callable[[int, int], None] | None = None, output_type: str = "pil",
             init_image=None, strength: float | None = None):
    """One image from `embeds` ([L, D]) with diffusers' Z-Image pipeline (txt2img, or img2img when
    `pipe` is a ZImageImg2ImgPipeline and `init_image`/`strength` are given). Returns a PIL image."""
    return generate_batch(pipe, embeds, seeds=[seed], steps=steps, width=width, height=height, guidance=guidance,
                          negative_embeds=negative_embeds, budget=budget, on_step=on_step, output_type=output_type,
                          init_image=init_image, strength=strength)[0]


@torch.inference_mode()
def generate_batch(pipe, embeds: torch.Tensor, *, seeds: list[int], steps: int, width: int, height: int,
                   guidance: float, negative_embeds: torch.Tensor | None = None, budget: int,
                   on_step: Callable[[int, int], None] | None = None, output_type: str = "pil",
                   init_image=None, strength: float | None = None) -> list:
    """One image per seed from the same `embeds`, in ONE pipeline call (`num_images_per_prompt`): each sample
    draws its starting noise from its own CPU generator, `torch.Generator("cpu").manual_seed(seed)`, exactly
    as a single run does, so sample i starts where `generate(seed=seeds[i])` starts."""
    check_caption(embeds.shape[0], budget)
    if negative_embeds is not None:
        check_caption(negative_embeds.shape[0], budget)
    dtype = pipe.transformer.dtype
    device = pipe._execution_device
    kwargs = {}
    if init_image is not None:
        # diffusers' own resize to the output size; the pipeline's processor does the rest
        kwargs["image"] = pipe.image_processor.resize(init_image, height=height, width=width)
        kwargs["strength"] = strength
    if on_step is not None:
        def callback(_pipe, i, _t, tensors):
            on_step(i + 1, _pipe.num_timesteps)  # img2img runs fewer steps than `steps`
            return tensors

        kwargs["callback_on_step_end"] = callback
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    if len(seeds) > 1:
        kwargs["num_images_per_prompt"] = len(seeds)
    result = pipe(
        prompt_embeds=[embeds.to(device=device, dtype=dtype)],
        negative_prompt_embeds=[negative_embeds.to(device=device, dtype=dtype)] if guidance > 0 else None,
        guidance_scale=guidance,
        num_inference_steps=steps,
        width=width,
        height=height,
        generator=generators[0] if len(seeds) == 1 else generators,
        output_type=output_type,
        **kwargs,
    )
    return list(result.images)


def save_png(image, path: str | Path, metadata: dict) -> Path:
    """Write a PNG with `metadata` as JSON in its text chunk, atomically (never a half-written file)."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("vlbench", json.dumps(metadata, sort_keys=True, default=str))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # unique per writer thread
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:  # a failed save (disk full, Ctrl-C) leaves neither a partial PNG nor a temp file
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_png_metadata(path: str | Path) -> dict:
    from PIL import Image

    with Image.open(path) as img:
        return json.loads(img.text.get("vlbench", "{}"))
