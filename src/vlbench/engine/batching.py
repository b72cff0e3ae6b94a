"""Opt-in batching (the `batch` setting, issue 28): jobs that share a shape run as one DiT pipeline call.

A shape is what one diffusers call must share: width, height, steps, guidance and negative prompt (`batch_key`),
and, when caption buckets are on (the fast mode), the caption's bucket. Each image keeps its own caption and its own seed:
its starting noise comes from `torch.Generator("cpu").manual_seed(seed)` as a batch-1 run's does, so the same seed
gives nearly the same image whatever batch it lands in — not bit for bit: batched matmuls and the key mask that pads
shorter captions reduce in another order (tiny models, fp32: within 2/255, tests/test_batching.py; an H100 under
--fast: at most 9/255, mean 1.2, benchmarks/perf28.py).

What does not batch runs alone, exactly as at batch 1: img2img (strength), schedules (the caption changes
between steps), attention-weighted captions (their bias hook weights the batch's first item only) and issue 27's
vl_guidance, image_positions grid and vl_blocks (their hooks act on one caption's call) and negative_vl_text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from vlbench.engine.engine import Result
from vlbench.engine.generate import check_caption, generate_batch
from vlbench.errors import Interrupt
from vlbench.recipe import ImagePositions


def batch_key(recipe) -> tuple | None:
    """Recipes with equal keys can share one pipeline call; None: this recipe always runs alone."""
    if recipe.strength is not None or recipe.schedule is not None or recipe.attention_bias:
        return None
    if recipe.vl_guidance != 0 or recipe.image_positions != ImagePositions.SEQUENCE or recipe.vl_blocks is not None \
            or recipe.negative_vl_text is not None:  # issue 27
        return None
    negative = recipe.negative_prompt if recipe.guidance > 0 else None
    return (recipe.width, recipe.height, recipe.steps, recipe.guidance, negative)


@dataclass
class Item:
    """One job of a batch: what Engine.run takes."""

    recipe: Any
    prompt: str
    refs: list


def run_batch(engine, items: list[Item], on_step: Callable[[int, int], None] | None = None,
              conds: dict[int, Any] | None = None, pad_to: int | None = None) -> list:
    """Engine.run for several jobs of one batch_key: a list of Result (or the exception a job's conditioning
    raised), in order. The conditionings are computed (and cached) one by one; captions that may share a call
    (same bucket under caption buckets) run as one `generate_batch`; a job whose conditioning carries weights or a
    schedule runs alone through Engine.run. Each Result's `batch` says the call's size and the job's place in it;
    its timings' generation is its share of the call (call seconds / size)."""
    keys = {batch_key(item.recipe) for item in items}
    if len(keys) != 1 or None in keys:
        raise ValueError("run_batch takes jobs of one batch_key")
    models = engine.models
    results: list = [None] * len(items)
    if conds is None:  # `conds`: the caller conditioned them (item index -> Conditioning; absent: failed)
        conds = {}
        for i, item in enumerate(items):
            try:
                conds[i] = engine.condition(item.recipe, item.prompt, item.refs)
            except Interrupt:
                raise
            except Exception as exc:  # noqa: BLE001 — this job fails alone (jobs.execute_batch classifies it)
                results[i] = exc
    else:
        for i in range(len(items)):
            if i not in conds:
                results[i] = ValueError("not conditioned")
    alone = [i for i, c in conds.items() if c.weights is not None or c.schedule]
    groups: dict[Any, list[int]] = {}
    buckets = getattr(models.pipe.transformer, "_vlbench_buckets", None)
    for i, cond in conds.items():
        if i not in alone:
            length = int(cond.embeds.shape[0])
            groups.setdefault(buckets and buckets.bucket(length), []).append(i)
    for i in alone:
        item = items[i]
        try:
            results[i] = engine.run(item.recipe, item.prompt, item.refs, on_step=on_step)
            results[i].batch = {"size": 1, "position": 0}
        except Interrupt:
            raise
        except Exception as exc:  # noqa: BLE001
            results[i] = exc
    first = items[0].recipe
    cuda = models.device.type == "cuda"
    budget = models.caption_budget
    for members in groups.values():
        try:
            negative = engine.negative(first)
            for i in members:
                check_caption(conds[i].embeds.shape[0], budget)
            models.prepare_generation()
            if cuda:
                torch.cuda.reset_peak_memory_stats(models.device)
            captions = [conds[i].embeds for i in members]
            seeds = [items[i].recipe.seed for i in members]
            padded = len(members)
            if buckets is not None and pad_to is not None and 1 < len(members) < pad_to:
                # static graphs (--fast) are per batch size: a short batch repeats its last image to the full size
                # (extra images discarded) rather than compile a graph for its size (~8 s on an H100)
                padded = pad_to
                captions += [captions[-1]] * (pad_to - len(members))
                seeds += [seeds[-1]] * (pad_to - len(members))
            start = time.perf_counter()
            images = generate_batch(models.pipe, captions, seeds=seeds, steps=first.steps,
                                    width=first.width, height=first.height, guidance=first.guidance,
                                    negative_embeds=negative, budget=budget, on_step=on_step)
            seconds = time.perf_counter() - start
        except Interrupt:
            raise
        except Exception as exc:  # noqa: BLE001 — the caller runs these jobs again one by one
            for i in members:
                results[i] = exc
            continue
        peak = int(torch.cuda.max_memory_allocated(models.device)) if cuda else None
        for position, (i, image) in enumerate(zip(members, images)):
            timings = dict(conds[i].timings, generation=seconds / len(members), batch_generation=seconds)
            results[i] = Result(image=image, conditioning=conds[i], timings=timings, peak_memory_bytes=peak)
            results[i].batch = {"size": len(members), "position": position}
            if padded != len(members):
                results[i].batch["padded_to"] = padded
    return results
