"""issue 27, lever 2: separate guidance on the VL condition, as a three-branch CFG around diffusers' own sampler.

ZImagePipeline combines two branches as `pred = pos + g·(pos − neg)` (0 neutral). With a VL caption c, Qwen3-4B's
caption of the prompt q (the text-only branch) and the negative n, vlbench adds a VL term in the same convention:

    pred = P(c) + g·(P(c) − P(n)) + g_vl·(P(c) − P(q))
         = P(c) + g·(P(q) − P(n)) + (g + g_vl)·(P(c) − P(q))

so the text direction (q against n) has scale g and the VL direction (c against q) g + g_vl: g_vl is the VL's
guidance beyond the text guidance, and g_vl = 0 is diffusers' own CFG. At g = 0 (Turbo) the negative branch is not
run: pred = P(c) + g_vl·(P(c) − P(q)), two branches.

How: the pipeline runs with guidance_scale 0 (one branch, its own sampler, scheduler and callbacks untouched); two
documented PyTorch hooks on the transformer batch the branches into its one call — a forward pre-hook appends the
text-only (and negative) items to the latents, timesteps and captions, a forward hook combines the outputs back to
one prediction per sample. No transformer or sampler code is copied; ZImageImg2ImgPipeline works the same way.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def combine(cond: torch.Tensor, text: torch.Tensor, negative: torch.Tensor | None, guidance: float,
            vl_guidance: float) -> torch.Tensor:
    """The three-branch prediction from the branch predictions P(c), P(q), P(n) (float32, as diffusers combines)."""
    c = cond.float()
    pred = c
    if negative is not None and guidance > 0:
        pred = c + guidance * (c - negative.float())  # diffusers' own line: pos + g * (pos - neg)
    if vl_guidance != 0:
        pred = pred + vl_guidance * (c - text.float())
    return pred


@contextmanager
def vl_guidance(transformer, text_embeds: torch.Tensor, negative_embeds: torch.Tensor | None, guidance: float,
                scale: float) -> Iterator[dict]:
    """While entered, every transformer call over B samples runs B·k items — [captions as given; q × B; n × B]
    (k = 3 with guidance > 0 and a negative, else 2) — in one batch, and returns `combine`'s prediction per sample.
    Call the pipeline with guidance_scale 0 inside it. The yielded dict counts the calls and items run."""
    if guidance > 0 and negative_embeds is None:
        raise ValueError("guidance > 0 needs the negative caption")
    three = guidance > 0
    stats = {"calls": 0, "items": 0, "branches": 3 if three else 2}
    batch: list[int] = []

    def pre(module, args, kwargs):
        x, t, caps = args[0], args[1], args[2]
        if isinstance(x[0], list):
            raise RuntimeError("vl_guidance does not support the omni (multi-image) transformer mode")
        n = len(x)
        batch.append(n)
        extra_caps = [text_embeds] * n + ([negative_embeds] * n if three else [])
        k = 3 if three else 2
        stats["calls"] += 1
        stats["items"] += n * k
        return (list(x) * k, t.repeat(k), list(caps) + extra_caps, *args[3:]), kwargs

    def post(module, args, kwargs, output):
        n = batch.pop()
        out = output[0]
        preds = [combine(out[j], out[n + j], out[2 * n + j] if three else None, guidance, scale) for j in range(n)]
        if isinstance(output, tuple):
            return (preds, *output[1:])
        return type(output)(sample=preds)

    handles = [transformer.register_forward_pre_hook(pre, with_kwargs=True),
               transformer.register_forward_hook(post, with_kwargs=True)]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
