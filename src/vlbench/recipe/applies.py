"""When a field has an effect: each condition named once (`When`: the test and its sentence), and the predicates
over a Recipe that the conditions and the cross-field rules share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from vlbench.recipe.vocab import (NATURAL, WITH_IMAGE_ROWS, Curve, ImageAttention, MixPolicy, MultiImage,
                                  Normalization)

if TYPE_CHECKING:
    from vlbench.recipe.schema import Recipe


def _uses_vl(r: "Recipe") -> bool:
    return r.uses_vl


def _single_pass(r: "Recipe") -> bool:
    return ONE_PASS(r)


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
    return _one_pass_image_rows(r)


def _weighting_applies(r: "Recipe") -> bool:
    """issue 17: attention weighting reshapes image rows of one (non-dual) extraction."""
    return ONE_PASS_IMAGE_ROWS(r)


def _one_pass_image_rows(r: "Recipe") -> bool:
    """One (non-dual) extraction's selection holds image rows: an intra mix, or tokens full or image*."""
    return r.intra_ratio is not None or r.tokens in WITH_IMAGE_ROWS


# ---------------------------------------------------------------- the conditions, each named once
@dataclass(frozen=True)
class When:
    """A condition under which a field has an effect: its test, and the words that complete "has an effect only …".

    A field's `applies` is one of the named conditions below (or their conjunction with `&`, or one with a remark
    of the field's own: `.note(...)`); its help sentence is the condition's text. The test and the sentence are
    made together here, so they cannot say different things."""

    text: str
    test: Callable[["Recipe"], bool]

    def __call__(self, r: "Recipe") -> bool:
        return bool(self.test(r))

    def __and__(self, other: "When") -> "When":
        return When(f"{self.text} and {other.text}", lambda r: self(r) and other(r))

    def note(self, remark: str) -> "When":
        """The same condition, its sentence followed by a remark of one field's own (e.g. where dual has it)."""
        return When(f"{self.text}{'' if remark[:1] in ';,' else ' '}{remark}", self.test)


OWN_USED = When("when the recipe's own conditioning is used (no schedule, or a schedule with a recipe entry)",
                lambda r: r.own_used)
VL_USED = When("when the VL is used (alpha > 0, or a vl or alpha=R schedule entry)", lambda r: r.uses_vl)
QWEN3_USED = When("when Qwen3-4B's encoding of the prompt is used (alpha < 1, or a schedule with a qwen3 or alpha=R "
                  "entry)", lambda r: r.uses_qwen3)
NO_DUAL = When("without dual", lambda r: not r.dual)
DUAL = When("with dual", lambda r: r.dual)
ONE_PASS = VL_USED & NO_DUAL  # one extraction (not dual's two passes)
NO_SCHEDULE = When("without a schedule", lambda r: r.schedule is None)
ALPHA_MIX = When("when 0 < alpha < 1, or with a schedule's alpha=R entry (Qwen3-4B and the VL are mixed)",
                 _any_alpha_mix)
OWN_POSITIONWISE = When("with alpha_policy positionwise in the recipe's own alpha mix",
                        lambda r: _alpha_mixes(r) and r.alpha_policy == MixPolicy.POSITIONWISE)
CURVED = When("with a curve other than constant", lambda r: r.curve != Curve.CONSTANT)
INTRA_MIX = ONE_PASS & When("with intra_ratio", lambda r: r.intra_ratio is not None)
NO_INTRA_MIX = When("without intra_ratio", lambda r: r.intra_ratio is None)
NUMERIC_ATTEND = When("with an attend mix at a ratio strictly between 0 and 1 (not natural)", _numeric_attend)
ATTENTION_BIAS = When("when an attend mix biases the DiT's attention", lambda r: r.attention_bias)
NORMALIZED = When("with a normalization other than none", lambda r: r.normalization != Normalization.NONE)
SEPARATE = When("with multi_image separate", lambda r: r.multi_image == MultiImage.SEPARATE)
HOLDS_IMAGE_ROWS = When("when the VL selection holds image rows (tokens full or image*, intra_ratio, or a dual pass "
                        "selecting them)", _holds_image_rows)
ONE_PASS_IMAGE_ROWS = ONE_PASS & When("with a selection holding image rows (tokens full or image*, or intra_ratio)",
                                      _one_pass_image_rows)
LAYER_USED = When("when the VL is used and some positions take no layer of their own (image_layer/text_layer, "
                  "style_layer/content_layer)", _layer_used)
TOPK = When("with image_attention topk", lambda r: r.image_attention == ImageAttention.TOPK)
ATTENTION_READ = When("with an image_attention other than none", lambda r: r.image_attention != ImageAttention.NONE)
GUIDED = When("with guidance > 0", lambda r: r.guidance > 0)
NEGATIVE_FROM_QWEN3 = GUIDED & When("without negative_vl_text", lambda r: r.negative_vl_text is None)
NEGATIVE_FROM_VL = GUIDED & When("with negative_vl_text", lambda r: r.negative_vl_text is not None)
