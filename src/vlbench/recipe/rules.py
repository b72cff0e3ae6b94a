"""Validation: each field's own checks (kind, vocabulary, range) and the cross-field rules a Recipe obeys."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Callable

from vlbench.errors import UserError
from vlbench.recipe.applies import CURVED, NEGATIVE_FROM_VL, _alpha_positionwise, _holds_image_rows, _weighting_applies
from vlbench.recipe.schedules import _rule_schedule, parse_schedule
from vlbench.recipe.values import _is_int, _is_number, _show_default
from vlbench.recipe.vocab import (IMAGE_SELECTIONS, NATURAL, PER_REFERENCE_NORMALIZATIONS, WITH_IMAGE_ROWS, ImageAttention, ImagePositions,
                                  MixPolicy, MultiImage, Normalization, Tokens, VLSystem)

if TYPE_CHECKING:
    from vlbench.recipe.schema import FieldInfo, Recipe


# ---------------------------------------------------------------- per-field checks
def _check_field(name: str, info: FieldInfo, value: Any, default: Any) -> None:
    if value is None:
        if default is None:
            return
        raise UserError("must be set", field=name, fix=f"the default is {_show_default(default)}")
    err = lambda problem, fix=None: UserError(problem, field=name, value=value, fix=fix)  # noqa: E731
    kind = info.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise err("must be true or false")
        return
    if kind in ("str", "vl_text", "choice"):
        if not isinstance(value, str):
            raise err("must be text" if kind != "choice" else f"must be one of {', '.join(info.choices.values())}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError("contains bytes that are not valid UTF-8", field=name, fix="retype it") from None
        if kind == "choice" and value not in info.choices.values():
            raise err("unknown value", f"choose one of {', '.join(info.choices.values())}")
        return
    if kind == "schedule":
        if not isinstance(value, str):
            raise err("must be text such as \"0:vl, 4:qwen3\"")
        parse_schedule(value)
        return
    if kind == "floats":
        if not isinstance(value, tuple) or not value or not all(_is_number(v) for v in value):
            raise err("must be numbers separated by commas")
        for v in value:
            if not math.isfinite(v) or (info.lo is not None and v < info.lo):
                raise err(f"every weight must be a finite number {info.range_text}")
        return
    if kind == "float" and info.natural and value == NATURAL:
        return
    if kind == "int":
        if not _is_int(value):
            raise err("must be a whole number")
    elif kind == "float":
        if not _is_number(value):
            raise err("must be a number" + (f" or {NATURAL}" if info.natural else ""))
        if not math.isfinite(value):
            raise err("must be a finite number")
    if (info.lo is not None and value < info.lo) or (info.hi is not None and value > info.hi):
        raise err(f"must be in {info.range_text}" if info.hi is not None else f"must be {info.range_text}")
    if info.multiple_of and value % info.multiple_of:
        down = value // info.multiple_of * info.multiple_of or info.multiple_of
        raise err(f"is not a multiple of {info.multiple_of} (Z-Image needs multiples of {info.multiple_of})",
                  f"try {down}")


# ---------------------------------------------------------------- cross-field rules
def _rule_one_mix_of_passes(r: Recipe) -> None:
    if r.intra_ratio is not None and r.dual:
        raise UserError("cannot be combined with dual (dual mixes its own two passes at dual_ratio)",
                        field="intra_ratio", value=r.intra_ratio, fix="choose one")


def _rule_curves(r: Recipe) -> None:
    if CURVED(r) and r.alpha_end is None:
        raise UserError("needs alpha_end (alpha at the last token)", field="curve", value=r.curve)


def _rule_positionwise_pairs_text_with_text(r: Recipe) -> None:
    """A position-wise mix pairs row j with row j: both sequences must be text tokens of one template."""
    if r.intra_policy == MixPolicy.POSITIONWISE and r.intra_ratio is not None:
        raise UserError("would pair text tokens with image tokens row by row", field="intra_policy",
                        value=r.intra_policy, fix="use attend or split")
    if _alpha_positionwise(r) and (r.dual or r.intra_ratio is not None or r.tokens in WITH_IMAGE_ROWS):
        what = "dual passes" if r.dual else ("an intra mix" if r.intra_ratio is not None else f"tokens {r.tokens}")
        raise UserError(f"pairs Qwen3-4B's text tokens row by row with the VL rows, and {what} hold image rows",
                        field="alpha_policy", value=r.alpha_policy,
                        fix="use attend or split, or tokens text with vl_text prompt (token for token)")
    if r.dual and r.dual_policy == MixPolicy.POSITIONWISE and (r.style_tokens in WITH_IMAGE_ROWS
                                                                or r.content_tokens in WITH_IMAGE_ROWS):
        raise UserError("would pair the passes' rows one by one, and a pass holds image rows", field="dual_policy",
                        value=r.dual_policy, fix="use attend or split")


def _rule_natural_is_an_attend_share(r: Recipe) -> None:
    """`natural` is the attend policy's point of no bias; split and positionwise need a number."""
    for knob, (ratio, policy) in r.mixes.items():
        if ratio == NATURAL and policy != MixPolicy.ATTEND:
            raise UserError(f"is the attend policy's natural share (no bias), and the {knob} mix is {policy}",
                            field=knob, value=ratio, fix=f"give a number in [0, 1], or {_policy_name(knob)} attend")
    if r.alpha == NATURAL and CURVED(r):
        raise UserError("a per-token curve needs a number", field="alpha", value=r.alpha, fix="give a number")


def _rule_image_weights(r: Recipe) -> None:
    if r.image_weights is not None and sum(r.image_weights) <= 0:
        raise UserError("must have a positive sum", field="image_weights", value=r.image_weights)


def _rule_global_normalization_needs_a_positionwise_mix(r: Recipe) -> None:
    if r.normalization == Normalization.GLOBAL and not _alpha_positionwise(r):
        raise UserError("has no effect here: one scale per sequence is removed by the DiT's caption RMSNorm unless "
                        "the rows are mixed position-wise", field="normalization", value=r.normalization,
                        fix="use per-dim or per-dim-scale, or alpha_policy positionwise with 0 < alpha < 1")


def _rule_per_reference_normalization_needs_image_rows(r: Recipe) -> None:
    if r.normalization in PER_REFERENCE_NORMALIZATIONS and not _holds_image_rows(r):
        raise UserError("has no effect here: it moves each reference's image rows, and this selection keeps none",
                        field="normalization", value=r.normalization,
                        fix="select image rows (tokens full, image, …), or use per-dim")


def _rule_text_bridge_keeps_token_pairs(r: Recipe) -> None:
    if r.text_bridge and _alpha_positionwise(r):
        raise UserError("Qwen3-4B then encodes the prompt + a description, which no longer pairs token for token with "
                        "the VL's text rows (alpha_policy positionwise)", field="text_bridge", value=True,
                        fix="use alpha_policy attend or split, or drop text_bridge")


# ---- issue 27: levers
def _rule_vl_system(r: Recipe) -> None:
    if r.vl_system is None:
        return
    if not r.vl_system.strip():
        raise UserError("is empty", field="vl_system", value=r.vl_system,
                        fix=f"give a text or one of {', '.join(VLSystem.values())}, or leave it not set")
    if _alpha_positionwise(r) and r.tokens == Tokens.TEXT:
        raise UserError("adds a system turn to the VL's text rows, which then no longer pair token for token with "
                        "Qwen3-4B's (alpha_policy positionwise)", field="vl_system", value=r.vl_system,
                        fix="use tokens prompt, alpha_policy attend or split, or drop it")


# ---- issue 17: attention-weighted image tokens
def _rule_image_weighting(r: Recipe) -> None:
    mode = r.image_attention
    if mode == ImageAttention.NONE or not _weighting_applies(r):
        return  # (a non-default value outside `applies` is refused by validate)
    err = lambda problem, fix: UserError(problem, field="image_attention", value=mode, fix=fix)  # noqa: E731
    if r.resolve_vl_text("x") is None:
        raise err("reads the VL text's attention to the image, and vl_text none gives the VL no text",
                  "give the VL a text (vl_text prompt or your own), or drop it (default none)")
    hidden_index = r.attention_layer if r.attention_layer is not None else r.layer_for(True)
    if hidden_index == 0:
        field = "attention_layer" if r.attention_layer is not None else ("image_layer" if r.image_layer is not None
                                                                         else "layer")
        raise UserError("is hidden state 0, the embeddings, which no attention produces", field=field, value=0,
                        fix="set attention_layer to 1 or more (hidden state h: the attention of decoder layer h-1)")
    if mode == ImageAttention.TOPK:
        if r.image_top_k is None:
            raise err("needs image_top_k (image tokens kept per reference)", "set image_top_k, e.g. 64")
        if r.pool_image_tokens is not None:
            raise err("and pool_image_tokens both reduce the image rows", "choose one (weighted-pool pools with "
                                                                           "the attention weights)")
        if r.multi_image == MultiImage.SEPARATE:
            raise err("keeps different positions in each reference, so multi_image separate cannot average them "
                      "row by row", "use multi_image joint or weighted-pool")
        split = [name for name, (_, policy) in r.mixes.items() if policy == MixPolicy.SPLIT]
        if split:
            raise err(f"rows have no patch grid, and the {split[0]} mix's split policy pools image rows on theirs",
                      f"use {_policy_name(split[0])} attend")
        if r.max_image_tokens is not None and r.image_top_k > r.max_image_tokens:
            raise UserError(f"keeps more tokens than an image can have (max_image_tokens {r.max_image_tokens})",
                            field="image_top_k", value=r.image_top_k, fix=f"give at most {r.max_image_tokens}")
    elif mode == ImageAttention.WEIGHTED_POOL and r.pool_image_tokens is None:
        raise err("pools with the attention weights, and pool_image_tokens (the cells per reference) is not set",
                  "set pool_image_tokens, e.g. 64")


VL_BLOCKS_EXAMPLE = "0-9, refiner"
REFINER_BLOCKS = "refiner"


def parse_vl_blocks(text: str) -> tuple[tuple, ...]:
    """"0-9, 0.5-1, refiner" -> (("index", 0, 9), ("fraction", 0.5, 1.0), ("refiner",)): index ranges inclusive,
    fraction ranges [a, b) of the joint blocks' depth (b = 1 includes the last). Resolved against a DiT by
    vlbench.engine.blocks."""
    parts = [p.strip() for p in re.split(r"[,\s]+", re.sub(r"\s*-\s*", "-", text)) if p.strip()]
    err = lambda problem: UserError(problem, field="vl_blocks", value=text,  # noqa: E731
                                    fix=f"write e.g. {VL_BLOCKS_EXAMPLE} or 0-0.33 (fractions of the depth)")
    if not parts:
        raise err("is empty")
    out: list[tuple] = []
    for part in parts:
        if part == REFINER_BLOCKS:
            out.append((REFINER_BLOCKS,))
            continue
        match = re.fullmatch(r"(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?", part)
        if not match:
            raise err(f"entry {part!r} is not a block, a range or refiner")
        lo, hi = match.group(1), match.group(2) if match.group(2) is not None else match.group(1)
        if "." in lo or "." in hi:
            a, b = float(lo), float(hi)
            if not 0 <= a < b <= 1:
                raise err(f"entry {part!r}: a fraction range a-b needs 0 <= a < b <= 1")
            out.append(("fraction", a, b))
        else:
            a, b = int(lo), int(hi)
            if b < a:
                raise err(f"entry {part!r} runs backwards")
            out.append(("index", a, b))
    return tuple(out)


def _rule_vl_blocks(r: Recipe) -> None:
    if r.vl_blocks is None:
        return
    parse_vl_blocks(r.vl_blocks)
    if _alpha_positionwise(r):
        raise UserError("masks the VL rows' keys in some blocks, and a positionwise mix makes every row part VL",
                        field="vl_blocks", value=r.vl_blocks, fix="use alpha_policy attend or split")


def _rule_negative_vl(r: Recipe) -> None:
    if not NEGATIVE_FROM_VL(r):
        return
    if not r.negative_vl_text.strip():
        raise UserError("is empty", field="negative_vl_text", value=r.negative_vl_text,
                        fix="give the text the VL reads for the negative branch, or leave it not set")
    if r.negative_tokens in IMAGE_SELECTIONS:
        raise UserError("selects image rows, and the VL reads no image for the negative branch",
                        field="negative_tokens", value=r.negative_tokens, fix="use text, prompt or full")


def _rule_image_positions(r: Recipe) -> None:
    if r.image_positions == ImagePositions.GRID and r.image_attention == ImageAttention.TOPK:
        raise UserError("places image rows on their patch grid, and image_attention topk takes them off it",
                        field="image_positions", value=r.image_positions,
                        fix="use image_attention weighted-pool, or image_positions sequence")


def _policy_name(knob: str) -> str:
    return {"alpha": "alpha_policy", "intra_ratio": "intra_policy", "dual_ratio": "dual_policy"}[knob]


_RULES: tuple[Callable[[Recipe], None], ...] = (_rule_one_mix_of_passes, _rule_curves, _rule_image_weights,
                                                 _rule_natural_is_an_attend_share,
                                                 _rule_positionwise_pairs_text_with_text,
                                                 _rule_global_normalization_needs_a_positionwise_mix,
                                                 _rule_per_reference_normalization_needs_image_rows,
                                                 _rule_schedule, _rule_text_bridge_keeps_token_pairs,
                                                 _rule_image_weighting, _rule_vl_system, _rule_image_positions,
                                                 _rule_vl_blocks, _rule_negative_vl)
