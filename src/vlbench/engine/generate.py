"""Generation through diffusers' Z-Image pipeline with precomputed `prompt_embeds`.

The sampler is diffusers' own; we pass embeddings, a CPU generator (so a seed reproduces on any
device) and a step callback for progress.
"""

from __future__ import annotations

from typing import Callable

import torch

from vlbench.errors import CaptionTooLong, UserError


def check_caption(length: int, budget: int) -> None:
    """Refuse a caption the DiT cannot take: on a GPU it would be a device-side assert that kills CUDA."""
    if length > budget:
        raise CaptionTooLong(f"{length} tokens, over the DiT's caption budget of {budget}", field="conditioning",
                             fix="select fewer tokens (e.g. tokens text), lower max_image_tokens, or pool the image "
                                 "tokens")
    if length < 1:
        raise CaptionTooLong("the sequence is empty", field="conditioning", fix="select some tokens")


def check_size(width: int, height: int, pipe) -> None:
    """Refuse a size past the DiT's image positions (RoPE axes 1 and 2: one position per 16 pixels; 8192 px for
    Z-Image-Turbo): past them the CPU raises an IndexError and a GPU a device-side assert."""
    axes = list(pipe.transformer.config.axes_lens)
    per = pipe.vae_scale_factor * 2  # pixels per image token (VAE downscale × patch 2)
    for field, value, limit in (("height", height, axes[1] * per), ("width", width, axes[2] * per)):
        if value > limit:
            raise UserError(f"over this DiT's largest image side of {limit} pixels", field=field, value=value,
                            fix=f"use at most {limit}")


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
    check_size(width, height, pipe)
    if negative_embeds is not None:
        check_caption(negative_embeds.shape[0], budget)
    dtype = pipe.transformer.dtype
    device = pipe._execution_device
    kwargs = {}
    if init_image is not None:
        # diffusers' own resize to the output size; the pipeline's processor does the rest
        kwargs["image"] = pipe.image_processor.resize(init_image, height=height, width=width)
        kwargs["strength"] = strength
    def callback(_pipe, i, _t, tensors):
        latents = tensors.get("latents")
        if latents is not None and not bool(torch.isfinite(latents).all()):  # before the next step uses them
            raise FloatingPointError(f"the latents are not finite after denoising step {i + 1} of "
                                     f"{_pipe.num_timesteps}")
        if on_step is not None:
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
