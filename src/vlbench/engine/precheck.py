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

from vlbench.engine.caption_plan import plan_caption, vl_inputs
from vlbench.errors import UserError
from vlbench.recipe import ImageAttention, Recipe, VLText

log = logging.getLogger("vlbench.precheck")
QWEN3 = "Qwen3-4B (Z-Image's text encoder)"  # how the engine's encode_text names it
# A text of n characters is at least n / (longest token × this) tokens: a byte-level BPE (Qwen's) has every byte in
# its vocabulary, so no token covers more characters than its own string has, and NFC (its normaliser) composes at
# most a few characters into one (Hangul jamo: 3 -> 1). Longer texts are refused without being tokenized.
NORMALIZATION_MARGIN = 4


@dataclass
class ModelFiles:
    """The parts of the models that judge inputs without weights."""

    axes_lens: list[int]  # the DiT's RoPE axes: caption, height, width positions
    pixels_per_token: int  # VAE downscale × the DiT's 2×2 patch
    vl_processor: Any  # Qwen3-VL's processor (tokenizer + image processor)
    qwen3_tokenizer: Any  # Z-Image's tokenizer (Qwen3-4B)
    vl_layers: int | None = None  # Qwen3-VL's decoder layers (text_config.num_hidden_layers): the layer fields' range

    @property
    def caption_budget(self) -> int:
        from vlbench.engine.models import CAPTION_PAD

        return int(self.axes_lens[0]) - CAPTION_PAD


def read_model_files(spec) -> ModelFiles | None:
    """The configs, tokenizers and processor of `spec`'s models (no weights); None when they cannot be read."""
    try:
        from diffusers import AutoencoderKL, ZImageTransformer2DModel
        from transformers import AutoConfig, AutoProcessor, AutoTokenizer

        from vlbench.logs import quiet_libraries  # logs -> paths -> platformdirs: not in the engine's benchmarks' needs

        quiet_libraries()
        spec = spec.built()
        local = {"local_files_only": True}  # a local directory or the hub's cache: never the network (the loader's job)
        processor = AutoProcessor.from_pretrained(spec.vl, **local)
        if not hasattr(processor, "image_processor"):  # not a vision-language model: the loader says so
            return None
        dit = ZImageTransformer2DModel.load_config(spec.zimage, subfolder="transformer", **local)
        vae = AutoencoderKL.load_config(spec.zimage, subfolder="vae", **local)
        text_config = getattr(AutoConfig.from_pretrained(spec.vl, **local), "text_config", None)
        return ModelFiles(axes_lens=list(dit["axes_lens"]),
                          pixels_per_token=2 ** (len(vae["block_out_channels"]) - 1) * 2,
                          vl_processor=processor,
                          qwen3_tokenizer=AutoTokenizer.from_pretrained(spec.zimage, subfolder="tokenizer", **local),
                          vl_layers=getattr(text_config, "num_hidden_layers", None))
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
        if files.vl_layers is not None and recipe.uses_vl and once(("layers", *layer_settings(recipe))):
            check_layers(recipe, files.vl_layers)
        check_text_bounds(files, recipe, prompt)  # from lengths alone, before anything reads a whole text
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
        check_text_lengths(files, recipe, prompt, len(refs), once)
        if recipe.image_attention == ImageAttention.TOPK and refs:
            _check_top_k(files, recipe, prompt, refs, once)
        check_caption_budget(files, recipe, prompt, refs, once)  # issue 23: after top-k's own, more precise error


# ---- layer ranges (a VL config's layer count; no tokenizer, no weights) ----
def layer_settings(recipe: Recipe) -> tuple:
    return (recipe.layer, recipe.image_layer, recipe.text_layer, recipe.style_layer, recipe.content_layer,
            recipe.attention_layer, recipe.dual, recipe.image_attention)


def check_layers(recipe: Recipe, num_hidden_layers: int) -> None:
    """Every layer field a recipe reads, against a VL with `num_hidden_layers` decoder layers (hidden_states has one
    more entry): the engine's own range checks and words, before the model loads. Torch-free; the workbench's
    queue-time checks call it with the config's layer count."""
    from vlbench.engine.extract import check_layer_index, decoder_layer_for

    if not recipe.uses_vl:
        return
    n = num_hidden_layers + 1
    if recipe.dual:
        check_layer_index(recipe.style_layer if recipe.style_layer is not None else recipe.layer, n,
                          "style_layer" if recipe.style_layer is not None else "layer")
        check_layer_index(recipe.content_layer if recipe.content_layer is not None else recipe.layer, n,
                          "content_layer" if recipe.content_layer is not None else "layer")
        return
    check_layer_index(recipe.layer_for(True), n, "image_layer" if recipe.image_layer is not None else "layer")
    check_layer_index(recipe.layer_for(False), n, "text_layer" if recipe.text_layer is not None else "layer")
    if recipe.image_attention != ImageAttention.NONE:  # as Engine.attention_layer resolves it
        if recipe.attention_layer is not None:
            decoder_layer_for(recipe.attention_layer, num_hidden_layers, "attention_layer")
        else:
            decoder_layer_for(recipe.layer_for(True), num_hidden_layers,
                              "image_layer" if recipe.image_layer is not None else "layer")


# ---- text lengths: bounded before anything reads the whole text ----
def max_token_chars(tokenizer) -> int:
    """The longest token's string, in characters (byte-level BPE: bytes), over the whole vocabulary; read once per
    tokenizer."""
    found = getattr(tokenizer, "_vlbench_max_token_chars", None)
    if found is None:
        found = max((len(t) for t in tokenizer.get_vocab()), default=1)
        try:
            tokenizer._vlbench_max_token_chars = found
        except AttributeError:
            pass
    return max(1, found)


def check_text_bound(text: str, field: str, limit: int, max_chars: int, model: str) -> None:
    """Refuse a text too long to fit `limit` tokens whatever its content, from its length alone (nothing tokenized):
    more than limit × max_chars × NORMALIZATION_MARGIN characters. Torch-free: the workbench can call it with a
    tokenizer's max_token_chars."""
    bound = limit * max_chars * NORMALIZATION_MARGIN
    if isinstance(text, str) and len(text) > bound:
        raise UserError(f"is {len(text):,} characters: too long for {model}'s {limit}-token limit whatever it says "
                        f"({limit} tokens hold at most {bound:,} characters)", field=field, fix="shorten it")


def check_qwen3_length(tokenizer, text: str, field: str) -> None:
    """Qwen3-4B's text limit, as the engine's encode_text counts it (Z-Image's template), on a bounded text."""
    from vlbench.engine.encode import MAX_SEQUENCE_LENGTH, template_ids
    from vlbench.engine.extract import check_special_tokens, check_text

    check_text_bound(text, field, MAX_SEQUENCE_LENGTH, max_token_chars(tokenizer), QWEN3)
    check_text(text, field)
    check_special_tokens(tokenizer, text, field, QWEN3)  # as encode_text: a control token is named before its length
    ids, _ = template_ids(tokenizer, text)
    if len(ids) > MAX_SEQUENCE_LENGTH:
        raise UserError(f"{len(ids)} tokens in Z-Image's template, over its {MAX_SEQUENCE_LENGTH}-token text limit "
                        "(it would be cut silently)", field=field, fix="shorten it")


def check_vl_length(processor, text: str | None, num_images: int, budget: int, field: str = "vl_text",
                    system: str | None = None) -> None:
    """The VL input's text tokens against the caption budget, as the engine's prepare counts them, on a bounded
    text (images take what the text leaves; their fit is the engine's, per job)."""
    from vlbench.engine.extract import check_vl_text

    if text is not None:
        check_text_bound(text, field, budget, max_token_chars(processor.tokenizer), "the caption budget")
    if system is not None:
        check_text_bound(system, "vl_system", budget, max_token_chars(processor.tokenizer), "the caption budget")
    check_vl_text(processor, num_images, text, budget, system)


def check_text_bounds(files: ModelFiles, recipe: Recipe, prompt: str) -> None:
    """Every text a tokenizer will read for this job, from its length alone: a 10 MB negative_prompt is refused at
    once, before any check reads it whole."""
    from vlbench.engine.encode import MAX_SEQUENCE_LENGTH as QWEN3_LIMIT

    if recipe.uses_qwen3:
        check_text_bound(prompt, "prompt", QWEN3_LIMIT, max_token_chars(files.qwen3_tokenizer), QWEN3)
    if recipe.guidance > 0:
        check_text_bound(recipe.negative_prompt, "negative_prompt", QWEN3_LIMIT, max_token_chars(files.qwen3_tokenizer),
                         QWEN3)
    for setting in dict.fromkeys(recipe.vl_text_settings):
        text = recipe.resolve_vl_text(prompt, setting)
        if text is not None:
            check_text_bound(text, "prompt" if setting == VLText.PROMPT else "vl_text", files.caption_budget,
                             max_token_chars(files.vl_processor.tokenizer), "the caption budget")


def check_text_lengths(files: ModelFiles, recipe: Recipe, prompt: str, num_images: int, once=lambda key: True) -> None:
    """Every text a tokenizer will read for this job, counted as the engine counts it (each bounded first)."""
    if recipe.uses_qwen3 and once(("qwen3-length", prompt)):
        check_qwen3_length(files.qwen3_tokenizer, prompt, "prompt")
    if recipe.guidance > 0 and once(("qwen3-length-negative", recipe.negative_prompt)):
        check_qwen3_length(files.qwen3_tokenizer, recipe.negative_prompt, "negative_prompt")
    for setting in dict.fromkeys(recipe.vl_text_settings):
        text = recipe.resolve_vl_text(prompt, setting)
        system = recipe.resolve_vl_system()
        if once(("vl-length", text, num_images, system)):
            check_vl_length(files.vl_processor, text, num_images, files.caption_budget,
                            "prompt" if setting == VLText.PROMPT else "vl_text", system)


def check_caption_budget(files: ModelFiles, recipe: Recipe, prompt: str, refs: list, once=lambda key: True) -> None:
    """issue 23: the whole caption planned as the engine plans it (caption_plan.plan_caption, the same rule and
    counts), refused when even the smallest references cannot fit — before any model loads. The text bridge's
    description is not known yet: its Qwen3-4B rows are counted as the prompt's with an empty description (a lower
    bound; the engine plans with the real one)."""
    from vlbench.engine.extract import min_image_tokens, vl_counts

    inputs = vl_inputs(recipe, prompt, refs)
    key = ("caption-plan", recipe.key(), prompt,
           tuple((tuple(r.sha256 for r in images), text, system) for images, text, system in inputs))
    if not once(key):
        return
    qwen3_rows = None
    if recipe.uses_qwen3 or recipe.vl_guidance != 0 or recipe.vl_blocks is not None:
        from vlbench.engine.encode import template_ids

        text = prompt
        if recipe.text_bridge:
            from vlbench.engine.bridge import JOIN

            text = JOIN.format(prompt=prompt, description="")
        qwen3_rows = len(template_ids(files.qwen3_tokenizer, text)[0])
    processor = files.vl_processor
    counts = [vl_counts(processor, len(images), text, system) for images, text, system in inputs]
    lows = [min_image_tokens(processor.image_processor, [r.image.size for r in images]) for images, _, _ in inputs]
    plan_caption(recipe, files.caption_budget, qwen3_rows, counts, lows)


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
