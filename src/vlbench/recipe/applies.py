"""When a field has an effect: the predicates over a Recipe that its `applies` metadata and the rules use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlbench.recipe.vocab import NATURAL, WITH_IMAGE_ROWS, MixPolicy

if TYPE_CHECKING:
    from vlbench.recipe.schema import Recipe


def _uses_vl(r: "Recipe") -> bool:
    return r.uses_vl


def _single_pass(r: "Recipe") -> bool:
    return r.uses_vl and not r.dual


def inside(ratio: Any) -> bool:
    """A ratio strictly between its ends: 0 < r < 1, or `natural`."""
    return ratio == NATURAL or 0 < ratio < 1


def above_0(ratio: Any) -> bool:
    return ratio == NATURAL or ratio > 0


def below_1(ratio: Any) -> bool:
    return ratio == NATURAL or ratio < 1


def _alpha_mixes(r: "Recipe") -> bool:
    """The recipe's own conditioning mixes Qwen3-4B and the VL (not one of them alone)."""
    return r.own_used and (inside(r.alpha) or (r.alpha_end is not None and r.alpha_end != r.alpha))


def _attend_ratios(r: "Recipe") -> list[Any]:
    """The ratios of every attend mix some step's caption makes (the recipe's own mixes, a schedule's alpha=R)."""
    out = [ratio for ratio, policy in r.mixes.values() if policy == MixPolicy.ATTEND]
    if r.alpha_policy == MixPolicy.ATTEND:
        out += list(r.scheduled_alphas)
    return out


def _numeric_attend(r: "Recipe") -> bool:
    """Some attend mix has a numeric ratio strictly between 0 and 1 (what attend_ratio gives a meaning to)."""
    return any(ratio != NATURAL and 0 < ratio < 1 for ratio in _attend_ratios(r))


def _any_alpha_mix(r: "Recipe") -> bool:
    """Some step's caption is an alpha mix: the recipe's own, or a schedule's alpha=R entry."""
    return _alpha_mixes(r) or bool(r.scheduled_alphas)


def _alpha_positionwise(r: "Recipe") -> bool:
    return _any_alpha_mix(r) and r.alpha_policy == MixPolicy.POSITIONWISE


def _layer_used(r: "Recipe") -> bool:
    if not r.uses_vl:
        return False
    if r.dual:
        return r.style_layer is None or r.content_layer is None
    return r.image_layer is None or r.text_layer is None


def _holds_image_rows(r: "Recipe") -> bool:
    """issue 27: the VL sequence holds image rows on a patch grid (given a reference)."""
    if not r.uses_vl:
        return False
    if r.dual:
        return r.style_tokens in WITH_IMAGE_ROWS or r.content_tokens in WITH_IMAGE_ROWS
    return r.intra_ratio is not None or r.tokens in WITH_IMAGE_ROWS


def _weighting_applies(r: "Recipe") -> bool:
    """issue 17: attention weighting reshapes image rows of one (non-dual) extraction."""
    return _single_pass(r) and (r.intra_ratio is not None or r.tokens in WITH_IMAGE_ROWS)
