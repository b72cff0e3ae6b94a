"""Generation through diffusers' Z-Image pipeline with precomputed `prompt_embeds`.

The sampler is diffusers' own; we pass embeddings, a CPU generator (so a seed reproduces on any
device) and a step callback for progress.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from vlbench.errors import CaptionTooLong, UserError


def check_caption(length: int, budget: int) -> None:
    """Refuse a caption the DiT cannot take: on a GPU it would be a device-side assert that kills CUDA."""
    if length > budget:
        raise CaptionTooLong(f"{length} tokens, over the DiT's caption budget of {budget}", field="conditioning",
                             fix="select fewer tokens (e.g. tokens text), lower max_image_tokens, or pool the image "
                                 "tokens (pool_image_tokens)")
    if length < 1:
        raise CaptionTooLong("the sequence is empty", field="conditioning", fix="select some tokens")


CAPTION_PAD = 32  # Z-Image pads captions (and image tokens) to a multiple of 32 inside the transformer


class CaptionBias:
    """The attention-logit biases (log w) the caption hook adds now; a schedule sets the next step's between steps."""

    def __init__(self, weights: torch.Tensor | None):
        self.set(weights)

    def set(self, weights: torch.Tensor | None) -> None:
        if weights is not None and bool((weights == 1).all()):
            weights = None
        if weights is not None and bool((weights <= 0).any()):
            raise ValueError("caption weights must be > 0 (a source of weight 0 is dropped, not masked)")
        self.rows = None if weights is None else weights.float().log()

    @property
    def active(self) -> bool:
        return self.rows is not None


@contextmanager
def caption_attention(transformer, weights: torch.Tensor | None,
                      later: tuple[torch.Tensor | None, ...] = ()) -> Iterator[CaptionBias]:
    """Weight how much the DiT attends to each caption row: an additive attention-logit bias log w on that row's
    key, in every joint (image + caption) block, for the conditional item (the batch's first).

    Z-Image's joint blocks see [image tokens; caption tokens], each padded to a multiple of 32, and take a
    [batch, L] key mask as their second argument; a forward pre-hook (a documented PyTorch hook) replaces it by
    the float mask holding the biases (-inf where the boolean mask hid a position). With no weights, or all 1,
    nothing is installed: the call is diffusers' own, bit for bit. `later`: the weights of a schedule's later
    captions (engine.generate swaps them in with the captions); the hook is installed when any is not all 1, and
    leaves the mask untouched (returns None) while the current caption's weights are all 1.
    """
    state = CaptionBias(weights)
    if not state.active and not any(CaptionBias(w).active for w in later):
        yield state
        return

    def hook(module, args):
        if state.rows is None:
            return None
        hidden, mask = args[0], args[1]
        n_caption = int(state.rows.shape[0])
        padded_caption = n_caption + (-n_caption) % CAPTION_PAD
        batch, length = hidden.shape[0], hidden.shape[1]
        float_mask = torch.zeros((batch, length), dtype=hidden.dtype, device=hidden.device)
        if mask is not None:
            float_mask = float_mask.masked_fill(~mask.bool(), float("-inf"))
        first_len = int(mask[0].sum()) if mask is not None else length
        start = first_len - padded_caption  # the conditional item's caption keys follow its padded image tokens
        float_mask[0, start:start + n_caption] += state.rows.to(hidden.device, hidden.dtype)
        return (hidden, float_mask, *args[2:])

    handles = [layer.register_forward_pre_hook(hook) for layer in transformer.layers]
    try:
        yield state
    finally:
        for handle in handles:
            handle.remove()


def check_size(width: int, height: int, pipe) -> None:
    """Refuse a size past the DiT's image positions (RoPE axes 1 and 2: one position per 16 pixels; 8192 px for
    Z-Image-Turbo): past them the CPU raises an IndexError and a GPU a device-side assert."""
    check_side(width, height, list(pipe.transformer.config.axes_lens), pipe.vae_scale_factor * 2)


def check_side(width: int, height: int, axes_lens: list[int], pixels_per_token: int) -> None:
    """`check_size` from the DiT's axes_lens and its pixels per image token (VAE downscale × patch 2)."""
    axes, per = axes_lens, pixels_per_token
    for field, value, limit in (("height", height, axes[1] * per), ("width", width, axes[2] * per)):
        if value > limit:
            raise UserError(f"over this DiT's largest image side of {limit} pixels", field=field, value=value,
                            fix=f"use at most {limit}")


@torch.inference_mode()
def generate(pipe, embeds: torch.Tensor, *, seed: int, steps: int, width: int, height: int, guidance: float,
             negative_embeds: torch.Tensor | None = None, budget: int,
             on_step: Callable[[int, int], None] | None = None, output_type: str = "pil",
             init_image=None, strength: float | None = None, caption_weights: torch.Tensor | None = None,
             schedule: list[tuple[int, torch.Tensor, torch.Tensor | None]] = (),
             vl_guidance: tuple[float, torch.Tensor] | None = None):
    """One image from `embeds` ([L, D]) with diffusers' Z-Image pipeline (txt2img, or img2img when
    `pipe` is a ZImageImg2ImgPipeline and `init_image`/`strength` are given). Returns a PIL image.
    `caption_weights` ([L]): attention weights of the caption rows (see caption_attention).
    `schedule`: (from step, embeds, caption weights) of later captions: from that step on (counted as the
    sampler runs them, 0 first) the DiT reads that caption with those weights; `embeds` conditions step 0."""
    later = {step: weights for step, _, weights in schedule}
    with caption_attention(pipe.transformer, caption_weights, tuple(later.values())) as bias:
        return generate_batch(pipe, embeds, seeds=[seed], steps=steps, width=width, height=height,
                              guidance=guidance, negative_embeds=negative_embeds, budget=budget, on_step=on_step,
                              output_type=output_type, init_image=init_image, strength=strength,
                              schedule=[(step, e) for step, e, _ in schedule],
                              on_swap=lambda step: bias.set(later[step]), vl_guidance=vl_guidance)[0]


@torch.inference_mode()
def generate_batch(pipe, embeds: torch.Tensor | list[torch.Tensor], *, seeds: list[int], steps: int, width: int,
                   height: int,
                   guidance: float, negative_embeds: torch.Tensor | None = None, budget: int,
                   on_step: Callable[[int, int], None] | None = None, output_type: str = "pil",
                   init_image=None, strength: float | None = None,
                   schedule: list[tuple[int, torch.Tensor]] = (),
                   on_swap: Callable[[int], None] | None = None,
                   vl_guidance: tuple[float, torch.Tensor] | None = None) -> list:
    """One image per seed from the same `embeds`, in ONE pipeline call (`num_images_per_prompt`): each sample
    draws its starting noise from its own CPU generator, `torch.Generator("cpu").manual_seed(seed)`, exactly
    as a single run does, so sample i starts where `generate(seed=seeds[i])` starts.

    `schedule`: (from step k, embeds) of later captions. ZImagePipeline re-reads its `prompt_embeds` list at
    every step of its denoising loop and takes a replacement from `callback_on_step_end` (with "prompt_embeds"
    in `callback_on_step_end_tensor_inputs`): the callback after step k-1 hands it the caption of step k.
    `on_swap(k)` runs at that moment (the caption weights change with the caption).

    `embeds` a list (issue 28's --batch): one caption per seed, in one call (`prompt_embeds` as a list; the
    DiT masks the shorter captions' padding, or caption buckets pad them to one bucket).

    `vl_guidance`: (scale, Qwen3-4B caption q) — issue 27's three-branch CFG (engine.guidance); None or scale 0:
    diffusers' own call, untouched."""
    captions = embeds if isinstance(embeds, list) else None
    if captions is not None and (len(captions) != len(seeds) or schedule):
        raise ValueError("a list of captions takes one seed per caption and no schedule")
    if captions is not None and vl_guidance is not None and vl_guidance[0] != 0:
        raise ValueError("a list of captions (--batch) takes no vl_guidance")
    for caption in captions or [embeds]:
        check_caption(caption.shape[0], budget)
    check_size(width, height, pipe)
    if negative_embeds is not None:
        check_caption(negative_embeds.shape[0], budget)
    for _, later in schedule:
        check_caption(later.shape[0], budget)
    dtype = pipe.transformer.dtype
    device = pipe._execution_device
    kwargs = {}
    if init_image is not None:
        # diffusers' own resize to the output size; the pipeline's processor does the rest
        kwargs["image"] = pipe.image_processor.resize(init_image, height=height, width=width)
        kwargs["strength"] = strength
    swaps = {step: [later.to(device=device, dtype=dtype)] * len(seeds) for step, later in schedule}

    def callback(_pipe, i, _t, tensors):
        latents = tensors.get("latents")
        if latents is not None and not bool(torch.isfinite(latents).all()):  # before the next step uses them
            raise FloatingPointError(f"the latents are not finite after denoising step {i + 1} of "
                                     f"{_pipe.num_timesteps}")
        if i + 1 in swaps:  # the caption of the next step
            tensors["prompt_embeds"] = swaps[i + 1]
            if on_swap is not None:
                on_swap(i + 1)
        if on_step is not None:
            on_step(i + 1, _pipe.num_timesteps)  # img2img runs fewer steps than `steps`
        return tensors

    kwargs["callback_on_step_end"] = callback
    if swaps:
        kwargs["callback_on_step_end_tensor_inputs"] = ["latents", "prompt_embeds"]
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    if len(seeds) > 1 and captions is None:
        kwargs["num_images_per_prompt"] = len(seeds)
    if vl_guidance is not None and vl_guidance[0] != 0:  # issue 27: the branches are batched by transformer hooks
        from vlbench.engine.guidance import vl_guidance as three_branch

        scale, text = vl_guidance
        check_caption(text.shape[0], budget)
        negative = negative_embeds.to(device=device, dtype=dtype) if guidance > 0 else None
        with three_branch(pipe.transformer, text.to(device=device, dtype=dtype), negative, guidance, scale):
            result = pipe(prompt_embeds=[embeds.to(device=device, dtype=dtype)], negative_prompt_embeds=None,
                          guidance_scale=0.0, num_inference_steps=steps, width=width, height=height,
                          generator=generators[0] if len(seeds) == 1 else generators, output_type=output_type,
                          **kwargs)
        return list(result.images)
    prompts = [e.to(device=device, dtype=dtype) for e in captions or [embeds]]
    result = pipe(
        prompt_embeds=prompts,
        negative_prompt_embeds=[negative_embeds.to(device=device, dtype=dtype)] * len(prompts) if guidance > 0
        else None,
        guidance_scale=guidance,
        num_inference_steps=steps,
        width=width,
        height=height,
        generator=generators[0] if len(seeds) == 1 else generators,
        output_type=output_type,
        **kwargs,
    )
    return list(result.images)
