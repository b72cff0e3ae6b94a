"""What the models' files decide about a plan, checked before any weight loads.

A size past the DiT's image positions, a prompt holding a tokenizer's control token, or top-k above a
reference's image tokens can only be judged with the models' configs, tokenizers and processor — but not with
their weights. `check_plan` reads those small files (the same `from_pretrained` calls the loader makes, on a hub
id or a local directory, but local files only: a directory or the hub's cache, never the network) and runs each
job's checks with the engine's own functions, so `vlbench run` refuses such a plan in one line in seconds, instead
of after minutes of loading or once per job of a sweep. When the files cannot be read here (a hub id not downloaded
yet), the checks are left to the engine, which makes them again for every job anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

from vlbench.recipe import ImageAttention, Recipe, VLText

log = logging.getLogger("vlbench.precheck")
QWEN3 = "Qwen3-4B (Z-Image's text encoder)"  # how the engine's encode_text names it


@dataclass
class ModelFiles:
    """The parts of the models that judge inputs without weights."""

    axes_lens: list[int]  # the DiT's RoPE axes: caption, height, width positions
    pixels_per_token: int  # VAE downscale × the DiT's 2×2 patch
    vl_processor: Any  # Qwen3-VL's processor (tokenizer + image processor)
    qwen3_tokenizer: Any  # Z-Image's tokenizer (Qwen3-4B)

    @property
    def caption_budget(self) -> int:
        from vlbench.engine.models import CAPTION_PAD

        return int(self.axes_lens[0]) - CAPTION_PAD


def read_model_files(spec) -> ModelFiles | None:
    """The configs, tokenizers and processor of `spec`'s models (no weights); None when they cannot be read."""
    try:
        from diffusers import AutoencoderKL, ZImageTransformer2DModel
        from transformers import AutoProcessor, AutoTokenizer

        from vlbench.logs import quiet_libraries

        quiet_libraries()
        spec = spec.built()
        local = {"local_files_only": True}  # a local directory or the hub's cache: never the network (the loader's job)
        processor = AutoProcessor.from_pretrained(spec.vl, **local)
        if not hasattr(processor, "image_processor"):  # not a vision-language model: the loader says so
            return None
        dit = ZImageTransformer2DModel.load_config(spec.zimage, subfolder="transformer", **local)
        vae = AutoencoderKL.load_config(spec.zimage, subfolder="vae", **local)
        return ModelFiles(axes_lens=list(dit["axes_lens"]),
                          pixels_per_token=2 ** (len(vae["block_out_channels"]) - 1) * 2,
                          vl_processor=processor,
                          qwen3_tokenizer=AutoTokenizer.from_pretrained(spec.zimage, subfolder="tokenizer", **local))
    except Exception as exc:  # noqa: BLE001 — not downloaded, offline, an odd layout: the loader says why later
        reason = f"{type(exc).__name__}: {exc}".encode("utf-8", "backslashreplace").decode()  # a path may not be
        log.info("plan checks left to the engine: the model files could not be read (%s)", reason)  # valid UTF-8
        return None


def check_plan(files: ModelFiles | None, jobs: Iterable[tuple[Recipe, str, list]]) -> None:
    """Every (recipe, prompt, references) the plan will run, checked as the engine would: UserError on the first
    that cannot run (sizes, control tokens in any text a tokenizer reads, top-k above an image's tokens). Nothing
    without `files` (they could not be read here: the engine checks each job)."""
    if files is None:
        return
    from vlbench.engine.extract import check_special_tokens
    from vlbench.engine.generate import check_side

    seen: set = set()

    def once(key) -> bool:
        if key in seen:
            return False
        seen.add(key)
        return True

    for recipe, prompt, refs in jobs:
        if once(("size", recipe.width, recipe.height)):
            check_side(recipe.width, recipe.height, files.axes_lens, files.pixels_per_token)
        if VLText.PROMPT in recipe.vl_text_settings and once(("vl", prompt)):
            check_special_tokens(files.vl_processor.tokenizer, prompt, "prompt", "Qwen3-VL")
        system = recipe.resolve_vl_system()
        if system is not None and once(("vl-system", system)):  # issue 27
            check_special_tokens(files.vl_processor.tokenizer, system, "vl_system", "Qwen3-VL")
        if (recipe.uses_qwen3 or recipe.vl_guidance != 0) and once(("qwen3", prompt)):
            check_special_tokens(files.qwen3_tokenizer, prompt, "prompt", QWEN3)
        if recipe.guidance > 0 and once(("qwen3-negative", recipe.negative_prompt)):
            check_special_tokens(files.qwen3_tokenizer, recipe.negative_prompt, "negative_prompt", QWEN3)
        if recipe.image_attention == ImageAttention.TOPK and refs:
            _check_top_k(files, recipe, prompt, refs, once)


def _check_top_k(files: ModelFiles, recipe: Recipe, prompt: str, refs: list, once) -> None:
    """top-k keeps k tokens of each reference: the processor's count for each (as the forward will see it)."""
    from vlbench.engine.condition import check_top_k
    from vlbench.engine.extract import image_token_counts, prepare_inputs

    text = recipe.resolve_vl_text(prompt)  # (topk reads the references jointly: the Recipe refuses separate)
    if not once(("topk", tuple(r.sha256 for r in refs), text, recipe.max_image_tokens, recipe.image_top_k)):
        return
    prep = prepare_inputs(files.vl_processor, [r.image for r in refs], text, files.caption_budget,
                          recipe.max_image_tokens, recipe.resolve_vl_system())
    for n, grid in image_token_counts(files.vl_processor, prep):
        check_top_k(recipe.image_top_k, n, grid)
