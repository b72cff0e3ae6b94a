"""Recipe: the schema of one conditioning and one image — every field, its vocabulary and its metadata.

Each field says here, once, what it means (help), where it belongs (section), what values it takes
(kind, choices, range) and when it has an effect (`applies`). From this one definition come the CLI
flags and their help, the workbench's Parameters form, recipe TOML files, experiment-type files and
the README's recipe table; a setting with no effect in its combination is refused, from any of them.
Torch-free: the workbench imports it before its first paint. Inputs (references, prompt) are not part
of a Recipe: one recipe applies to many inputs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterable

from vlbench.errors import UserError
from vlbench.files import NotAFile, TooDeep, atomic_write_text, parse_toml, read_text_file


# ---------------------------------------------------------------- vocabularies
class Choice(StrEnum):
    """A vocabulary: each member is its TOML/CLI value and carries a one-line description."""

    def __new__(cls, value: str, help: str = ""):
        member = str.__new__(cls, value)
        member._value_ = value
        member.help = help
        return member

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


class Tokens(Choice):
    """Which positions of one Qwen3-VL extraction are kept."""

    FULL = "full", "every position of the VL input"
    IMAGE = "image", "image-pad positions only, no vision markers"
    IMAGE_TEMPLATE = "image+template", ("image-pad positions and the chat template's (the attention sink included), "
                                        "no VL text: image-only captions with the structure Z-Image saw in training")
    IMAGE_MARKERS = "image-markers", "the vision block including <|vision_start|> and <|vision_end|>"
    TEXT = "text", "every position outside vision blocks: chat template + VL text"
    PROMPT = "prompt", "only the positions of the VL text itself"


class MixPolicy(Choice):
    """How a mix combines its base and its other sequence at ratio r (docs/intra_vl_blending.md has the formulas)."""

    ATTEND = "attend", ("both whole, one after the other; r is the share of the caption's attention the other "
                        "source receives when every attention logit is equal: an attention bias log w on each "
                        "source's caption keys, w_other/w_base = r/(1-r) · n_base/n_other (n: the sources' rows), "
                        "the larger at 1 (natural: no bias, plain concatenation; r 0 or 1: that source alone)")
    SPLIT = "split", ("both, one after the other, as a share of caption tokens: round((1-r)·base) and round(r·other) "
                      "rows, image rows pooled on their own patch grid; moves in steps as r moves")
    POSITIONWISE = "positionwise", ("row by row, (1-r)·base + r·other: only for sequences that match token for token "
                                    "(VL text tokens of the prompt against Qwen3-4B's encoding of it)")


class Normalization(Choice):
    NONE = "none", "the VL hidden states as they are"
    PER_DIM = "per-dim", ("per dimension, each role's rows z-scored with that role's calibrated VL statistics and "
                          "mapped onto Qwen3-4B's text statistics (vlbench calibrate)")
    PER_DIM_SCALE = "per-dim-scale", ("per dimension, each role's rows' deviation from that role's calibrated mean "
                                      "scaled by Qwen3-4B's std over the role's (vlbench calibrate), the calibrated "
                                      "mean kept: per-dim shifted by one constant vector (the calibrated means' "
                                      "difference) shared by every reference, not each reference's own means")
    GLOBAL = "global", ("one scale to Qwen3-4B's RMS; the DiT's caption RMSNorm removes it unless the rows are mixed "
                        "position-wise, so only with alpha_policy positionwise")


NATURAL = "natural"  # an attend ratio: the sources' natural share n_other/(n_base+n_other), no bias installed
RECIPE_SCHEMA = 3  # 3: attend ratios are shares (attend_ratio, attend_scope); <= 2: per-token odds, joint blocks only


class AttendRatio(Choice):
    """What an attend mix's ratio r means (docs/intra_vl_blending.md)."""

    SHARE = "share", ("r is the share of the caption's attention the other source receives when every logit is "
                      "equal, whatever the sources' token counts")
    TOKEN_ODDS = "token-odds", ("each row of the other source weighs r/(1-r) of a base row, whatever the sources' "
                                "token counts (the meaning of every attend ratio before recipe schema 3)")


class AttendScope(Choice):
    """Which DiT blocks the attend bias acts in."""

    REFINER_JOINT = "refiner+joint", ("the caption-only context-refiner blocks and every joint (image + caption) "
                                      "block: the sources never meet at full weight")
    JOINT = "joint", ("the joint blocks only: the context refiner mixes the sources at full weight first (every "
                      "biased run before recipe schema 3)")


class Curve(Choice):
    CONSTANT = "constant", "one ratio for every token"
    LINEAR = "linear", "from the start ratio at the first token to the end ratio at the last, linearly"
    EASE_IN = "ease-in", "slow start, fast end"
    EASE_OUT = "ease-out", "fast start, slow end"


class MultiImage(Choice):
    JOINT = "joint", "one extraction over all references (one vision block each)"
    SEPARATE = "separate", "one extraction per reference, mixed with image_weights"


class VLText(Choice):
    """Keywords of the vl_text fields; any other string is read verbatim."""

    PROMPT = "prompt", "the prompt itself"
    NONE = "none", "no text: the image alone"


class VLSystem(Choice):
    """issue 27: the shipped system turns for Qwen3-VL (vl_system); any other text is read verbatim (docs/levers.md)."""

    STYLE = "style", ("Describe the visual style of the image for an image generator: its palette, lighting, medium, "
                      "texture and brushwork, not its subject.")
    CONTENT = "content", ("Describe the content of the image for an image generator: the subjects, objects and scene "
                          "and where they are, not its style.")
    EDIT = "edit", ("Describe the key features of the input image (color, shape, size, texture, objects, background), "
                    "then explain how the user's text instruction should alter or modify the image. Generate a new "
                    "image that meets the user's requirements while maintaining consistency with the original input "
                    "where appropriate.")


class ImagePositions(Choice):
    """issue 27: the RoPE positions the DiT gives the caption's VL image rows (docs/levers.md)."""

    SEQUENCE = "sequence", "one caption position per row, as Z-Image reads any caption: row i at (1 + i, 0, 0)"
    GRID = "grid", ("each image's rows on its own patch grid, as Z-Image-Omni places condition images: row (r, c) of "
                    "an image starting at caption row s at (1 + s, r, c); text rows as in sequence")


class Source(Choice):
    """What a schedule entry conditions the DiT on from its step on (docs/schedules.md)."""

    RECIPE = "recipe", "the recipe's own conditioning (its alpha mix, as without a schedule)"
    VL = "vl", "the recipe's VL sequence alone (its token selection, intra or dual mix; no Qwen3-4B)"
    QWEN3 = "qwen3", ("Qwen3-4B's encoding of the prompt alone (Z-Image's own text path; with text_bridge, of the "
                      "prompt + description)")


class ImageAttention(Choice):
    """How the prompt's attention to the image tokens (attention_layer) reshapes the image rows."""

    NONE = "none", "image rows as selected; no attention read"
    TOPK = "topk", ("keep each reference's image_top_k image tokens with the largest attention weight, in their "
                    "original order (rows leave the patch grid: no split mix, no pool_image_tokens)")
    WEIGHTED_POOL = "weighted-pool", ("pool each reference's image rows on its patch grid to pool_image_tokens "
                                      "cells, each cell the attention-weighted mean of its tokens "
                                      "(sum a·w·x / sum a·w, a the area overlap)")


class Section(Choice):
    EXTRACTION = "extraction", "what Qwen3-VL reads and which hidden states are taken"
    CONDITIONING = "conditioning", "how the taken states are mixed into the caption the DiT receives"
    GENERATION = "generation", "the sampler's settings"


IMAGE_SELECTIONS = (Tokens.IMAGE, Tokens.IMAGE_MARKERS, Tokens.IMAGE_TEMPLATE)  # need a reference
WITH_IMAGE_ROWS = (Tokens.FULL, *IMAGE_SELECTIONS)  # hold image rows when a reference is given
SEED_MAX = 2**63 - 1


# ---------------------------------------------------------------- field metadata
@dataclass(frozen=True)
class FieldInfo:
    """Everything a front end needs to know about one Recipe field."""

    kind: str  # bool | int | float | str | choice | floats | vl_text | schedule
    help: str
    section: Section
    choices: type[Choice] | None = None
    lo: float | None = None  # inclusive range
    hi: float | None = None
    multiple_of: int | None = None
    unit: str = ""
    # when the field changes anything; a non-default value outside it is an error naming `when`
    applies: Callable[["Recipe"], bool] | None = None
    when: str = ""  # e.g. "with dual" — completes "has an effect only …"
    natural: bool = False  # a ratio that also takes the word `natural` (an attend mix with no bias)

    @property
    def range_text(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"[{_num(self.lo)}, {_num(self.hi)}]"
        if self.lo is not None:
            return f">= {_num(self.lo)}"
        return ""


def _f(default: Any, kind: str, help: str, section: Section, **info: Any) -> Any:
    return dataclasses.field(default=default, metadata={"info": FieldInfo(kind, help, section, **info)})


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


X, C, G = Section.EXTRACTION, Section.CONDITIONING, Section.GENERATION


@dataclass(frozen=True)
class Recipe:
    """How one image is conditioned and generated. Defaults are Z-Image-Turbo's and pure Qwen3-VL."""

    # ---- conditioning
    alpha: float = _f(1.0, "float", "0 = pure Qwen3-4B (Z-Image's own text path), 1 = pure VL; in between the "
                                    "VL's share of the mix (attend: of the caption's attention; natural: no bias)",
                      C, lo=0.0, hi=1.0, natural=True,
                      applies=lambda r: r.own_used,
                      when="when the recipe's own conditioning is used (no schedule, or a schedule with a recipe "
                           "entry)")
    alpha_policy: str = _f(MixPolicy.ATTEND.value, "choice", "how the alpha mix combines Qwen3-4B (base) and the VL "
                                                            "selection (other)", C, choices=MixPolicy,
                           applies=_any_alpha_mix, when="when 0 < alpha < 1, or with a schedule's alpha=R entry "
                                                        "(Qwen3-4B and the VL are mixed)")
    curve: str = _f(Curve.CONSTANT.value, "choice", "per-token alpha from alpha at the first token to alpha_end at the "
                                                    "last", C, choices=Curve,
                    applies=lambda r: _alpha_mixes(r) and r.alpha_policy == MixPolicy.POSITIONWISE,
                    when="with alpha_policy positionwise in the recipe's own alpha mix (a ratio per token needs "
                         "tokens paired one to one; a schedule's alpha=R entry is constant)")
    alpha_end: float | None = _f(None, "float", "alpha at the last token (with a curve)", C, lo=0.0, hi=1.0,
                                 applies=lambda r: r.curve != Curve.CONSTANT, when="with a curve other than constant")
    intra_ratio: float | None = _f(None, "float", "mix image and text tokens of one extraction: 0 = all text (base), "
                                                  "1 = all image, in between the image rows' share (attend: of the "
                                                  "caption's attention; natural: no bias); not set: no intra mix",
                                   C, lo=0.0, hi=1.0, natural=True,
                                   applies=_single_pass, when="when the VL is used (alpha > 0, or a vl or alpha=R schedule entry) without dual")
    intra_policy: str = _f(MixPolicy.ATTEND.value, "choice", "how the intra mix combines the text rows (base) and the "
                                                            "image rows (other); never positionwise: a text token is "
                                                            "not paired with an image token", C, choices=MixPolicy,
                           applies=lambda r: _single_pass(r) and r.intra_ratio is not None, when="with intra_ratio")
    dual_ratio: float = _f(0.5, "float", "dual: 0 = all content pass (base), 1 = all style pass, in between the "
                                         "style pass's share (attend: of the caption's attention; natural: no bias)",
                           C, lo=0.0, hi=1.0, natural=True,
                           applies=lambda r: r.dual, when="with dual")
    dual_policy: str = _f(MixPolicy.ATTEND.value, "choice", "how the dual mix combines the content pass (base) and the "
                                                           "style pass (other)", C, choices=MixPolicy,
                          applies=lambda r: r.dual, when="with dual")
    attend_ratio: str = _f(AttendRatio.SHARE.value, "choice", "what an attend mix's ratio r means", C,
                           choices=AttendRatio, applies=_numeric_attend,
                           when="with an attend mix at a ratio strictly between 0 and 1 (not natural)")
    attend_scope: str = _f(AttendScope.REFINER_JOINT.value, "choice", "which DiT blocks an attend mix's attention "
                                                                        "bias acts in", C, choices=AttendScope,
                           applies=lambda r: r.attention_bias, when="when an attend mix biases the DiT's attention")
    normalization: str = _f(Normalization.NONE.value, "choice", "match VL statistics to Qwen3-4B's "
                                                                "(needs vlbench calibrate)", C, choices=Normalization,
                            applies=_uses_vl, when="when the VL is used (alpha > 0, or a vl or alpha=R schedule entry)")
    calibration: str | None = _f(None, "str", "calibration stats file; not set: the one vlbench calibrate wrote for "
                                              "these models", C,
                                 applies=lambda r: r.normalization != Normalization.NONE,
                                 when="with a normalization other than none")
    image_weights: tuple[float, ...] | None = _f(None, "floats", "one weight per reference, comma-separated; "
                                                                 "not set: equal weights", C, lo=0.0,
                                                 applies=lambda r: r.multi_image == MultiImage.SEPARATE,
                                                 when="with multi_image separate")
    # ---- issue 27: image tokens on a 2-D grid (docs/levers.md)
    image_positions: str = _f(ImagePositions.SEQUENCE.value, "choice", "the RoPE positions of the caption's VL image "
                                                                       "rows (RoPE axis 0 = caption order; axes 1 and "
                                                                       "2, otherwise the latents' height and width, "
                                                                       "carry the grid)", C, choices=ImagePositions,
                              applies=lambda r: _holds_image_rows(r) and r.schedule is None,
                              when="when the VL selection holds image rows (tokens full or image*, intra_ratio, or a "
                                   "dual pass selecting them), without a schedule")
    vl_blocks: str | None = _f(None, "str", "which DiT blocks read the caption's VL rows, comma-separated: joint-block "
                                            "indices and ranges (0-9, 12), fractions of the joint blocks' depth "
                                            "(0-0.33: the blocks whose centre (i + 0.5)/n lies in [0, 0.33); an end "
                                            "of 1 includes the last), refiner (the context-refiner blocks); every "
                                            "other block masks the VL rows' keys (Qwen3-4B's rows are added at "
                                            "alpha 1; docs/levers.md); not set: every block", C,
                               applies=lambda r: r.uses_vl and r.schedule is None,
                               when="when the VL is used, without a schedule")
    # ---- issue 17: schedules and the text bridge
    schedule: str | None = _f(None, "schedule", "the conditioning from step K on, as K:SOURCE entries, "
                                                "comma-separated, K ascending from 0 (steps counted as the sampler "
                                                "runs them); sources: recipe, vl, qwen3, or alpha=R (the alpha mix at "
                                                "alpha R, 0 < R < 1; docs/schedules.md); not set: "
                                                "the recipe's own conditioning at every step", C)
    text_bridge: bool = _f(False, "bool", "Qwen3-VL first describes the reference's style in one sentence (a fixed "
                                          "instruction, greedy); Qwen3-4B then encodes the prompt + that description "
                                          "instead of the prompt (docs/schedules.md)", C,
                           applies=lambda r: r.uses_qwen3, when="when Qwen3-4B's encoding of the prompt is used "
                                                               "(alpha < 1, or a schedule with a qwen3 or alpha=R entry)")
    # ---- extraction
    tokens: str = _f(Tokens.FULL.value, "choice", "VL token selection", X, choices=Tokens,
                     applies=lambda r: _single_pass(r) and r.intra_ratio is None,
                     when="when the VL is used (alpha > 0, or a vl or alpha=R schedule entry) in one pass without intra_ratio "
                          "(intra_ratio mixes the image and text selections itself; dual has style_tokens/content_tokens)")
    layer: int = _f(-2, "int", "hidden layer, indexed as transformers' output_hidden_states (-1 = after the final norm)",
                    X, applies=_layer_used,
                    when="when the VL is used and some positions take no layer of their own (image_layer/text_layer, "
                         "style_layer/content_layer)")
    vl_text: str = _f(VLText.PROMPT.value, "vl_text", "what the VL reads: prompt, none, or any other text verbatim", X,
                      applies=_single_pass, when="when the VL is used (alpha > 0, or a vl or alpha=R schedule entry) without dual "
                                                 "(dual has style_vl_text and content_vl_text)")
    vl_system: str | None = _f(None, "str", "a system turn before the VL's user turn (Qwen3-VL's chat template): "
                                            + ", ".join(VLSystem.values()) + " (the shipped instructions, "
                                            "docs/levers.md) or any other text verbatim; not set: no system turn "
                                            "(the stock template)", X, applies=_uses_vl,
                               when="when the VL is used (alpha > 0, or a vl or alpha=R schedule entry); every VL "
                                    "pass of the recipe reads it")
    max_image_tokens: int | None = _f(None, "int", "cap the reference's image tokens below the caption budget (the "
                                                   "processor reads a smaller image)", X,
                                      lo=1, unit="tokens", applies=_uses_vl, when="when the VL is used (alpha > 0, or a vl or alpha=R schedule entry)")
    pool_image_tokens: int | None = _f(None, "int", "pool each reference's image rows to at most this many tokens on "
                                                    "its own patch grid (regions, aspect ratio kept), after the "
                                                    "forward", X, lo=1, unit="tokens", applies=_uses_vl,
                                       when="when the VL is used (alpha > 0, or a vl or alpha=R schedule entry)")
    image_layer: int | None = _f(None, "int", "layer for image-role positions (image pads and vision markers); "
                                              "not set: layer", X,
                                 applies=_single_pass, when="when the VL is used without dual (dual: style_layer)")
    text_layer: int | None = _f(None, "int", "layer for template and VL-text positions; not set: layer", X,
                                applies=_single_pass, when="when the VL is used without dual (dual: content_layer)")
    dual: bool = _f(False, "bool", "two extractions, a style pass and a content pass, mixed at dual_ratio", X,
                    applies=_uses_vl, when="when the VL is used (alpha > 0, or a vl or alpha=R schedule entry)")
    style_vl_text: str = _f(VLText.NONE.value, "vl_text", "style pass: what the VL reads", X,
                            applies=lambda r: r.dual, when="with dual")
    style_tokens: str = _f(Tokens.IMAGE.value, "choice", "style pass: token selection", X, choices=Tokens,
                           applies=lambda r: r.dual, when="with dual")
    style_layer: int | None = _f(None, "int", "style pass: layer; not set: layer", X,
                                 applies=lambda r: r.dual, when="with dual")
    content_vl_text: str = _f(VLText.PROMPT.value, "vl_text", "content pass: what the VL reads", X,
                              applies=lambda r: r.dual, when="with dual")
    content_tokens: str = _f(Tokens.TEXT.value, "choice", "content pass: token selection", X, choices=Tokens,
                             applies=lambda r: r.dual, when="with dual")
    content_layer: int | None = _f(None, "int", "content pass: layer; not set: layer", X,
                                   applies=lambda r: r.dual, when="with dual")
    multi_image: str = _f(MultiImage.JOINT.value, "choice", "several references: one joint extraction, or one each "
                                                            "mixed by image_weights", X, choices=MultiImage,
                          applies=_uses_vl, when="when the VL is used (alpha > 0, or a vl or alpha=R schedule entry)")
    # ---- issue 17: attention-weighted image tokens (docs/attention_weighting.md)
    image_attention: str = _f(ImageAttention.NONE.value, "choice", "weight or select image tokens by the VL text's "
                              "attention to them: per image token, the attention probability from the VL-text "
                              "(prompt-role) positions in attention_layer, averaged over heads and prompt positions, "
                              "renormalised to sum to 1 over the image tokens", X, choices=ImageAttention,
                              applies=_weighting_applies,
                              when="when the VL is used without dual and the selection holds image rows "
                                   "(tokens full or image*, or intra_ratio)")
    image_top_k: int | None = _f(None, "int", "topk: image tokens kept per reference", X, lo=1, unit="tokens",
                                 applies=lambda r: r.image_attention == ImageAttention.TOPK,
                                 when="with image_attention topk")
    attention_layer: int | None = _f(None, "int", "whose attention weights the image tokens, as a hidden-state index "
                                                  "(output_hidden_states numbering): index h reads the self-attention "
                                                  "of decoder layer h-1, the layer that produces hidden state h "
                                                  "(-1: the last decoder layer; 0, the embeddings, has none); "
                                                  "not set: the image rows' layer (image_layer, else layer)", X,
                                     applies=lambda r: r.image_attention != ImageAttention.NONE,
                                     when="with an image_attention other than none")
    # ---- generation
    strength: float | None = _f(None, "float", "img2img from the first reference: 0 keeps it, 1 ignores it; "
                                               "not set: txt2img", G, lo=0.0, hi=1.0)
    seed: int = _f(0, "int", "the sampler's seed (a CPU generator: the same image on any device)", G, lo=0, hi=SEED_MAX)
    steps: int = _f(9, "int", "denoising steps (Turbo: 8-9)", G, lo=1, hi=1000, unit="steps")
    width: int = _f(1024, "int", "image width", G, lo=16, hi=8192, multiple_of=16, unit="px")
    height: int = _f(1024, "int", "image height", G, lo=16, hi=8192, multiple_of=16, unit="px")
    guidance: float = _f(0.0, "float", "classifier-free guidance scale (Turbo: 0)", G, lo=0.0)
    negative_prompt: str = _f("", "str", "the negative prompt", G,
                              applies=lambda r: r.guidance > 0 and r.negative_vl_text is None,
                              when="with guidance > 0 and no negative_vl_text (Qwen3-4B encodes it for the negative "
                                   "branch)")
    negative_vl_text: str | None = _f(None, "str", "issue 27: the negative branch from Qwen3-VL instead of Qwen3-4B: "
                                                   "the VL reads this text (no image) and the negative caption is "
                                                   "its hidden states at negative_tokens, negative_layer; not set: "
                                                   "Qwen3-4B's encoding of negative_prompt", G,
                                      applies=lambda r: r.guidance > 0, when="with guidance > 0")
    negative_tokens: str = _f(Tokens.TEXT.value, "choice", "negative_vl_text's token selection (text ones: the VL "
                                                           "reads no image for the negative)", G, choices=Tokens,
                              applies=lambda r: r.guidance > 0 and r.negative_vl_text is not None,
                              when="with negative_vl_text")
    negative_layer: int | None = _f(None, "int", "negative_vl_text's hidden layer (transformers' output_hidden_states "
                                                 "numbering); not set: layer", G,
                                    applies=lambda r: r.guidance > 0 and r.negative_vl_text is not None,
                                    when="with negative_vl_text")
    # ---- issue 27: levers (docs/levers.md)
    vl_guidance: float = _f(0.0, "float", "guidance on the VL condition beyond guidance, in ZImagePipeline's "
                                          "convention (0 = none): pred = P(c) + guidance·(P(c) − P(neg)) + "
                                          "vl_guidance·(P(c) − P(q)), c the recipe's caption, q Qwen3-4B's caption "
                                          "of the prompt (the text-only branch); one more DiT item per step", G,
                            applies=lambda r: r.uses_vl and r.schedule is None,
                            when="when the VL is used, without a schedule (the text-only branch is compared with "
                                 "one caption for the whole run)")

    def __post_init__(self) -> None:
        for f in fields(self):
            kind = f.metadata["info"].kind
            value = getattr(self, f.name)
            if kind == "floats" and isinstance(value, list):  # TOML/JSON give lists; keep the recipe hashable
                object.__setattr__(self, f.name, tuple(value))
                value = tuple(value)
            if kind == "floats" and isinstance(value, tuple):
                object.__setattr__(self, f.name, tuple(float(v) if _is_int(v) else v for v in value))
            elif kind == "float" and _is_int(value):  # `alpha = 1` in TOML is the recipe `alpha = 1.0`
                object.__setattr__(self, f.name, float(value))
            elif isinstance(value, Choice):  # enum members compare equal to their text; store the text
                object.__setattr__(self, f.name, value.value)
            elif kind == "schedule" and isinstance(value, str):  # one spelling per schedule: "0:vl, 4:qwen3"
                try:
                    object.__setattr__(self, f.name, format_schedule(parse_schedule(value)))
                except UserError:
                    pass  # validate() words it
        self.validate()

    # ---- validation: every error names its field; rules in one place ----
    def validate(self) -> None:
        for f in fields(self):
            _check_field(f.name, f.metadata["info"], getattr(self, f.name), f.default)
        for rule in _RULES:
            rule(self)
        for f in fields(self):  # a setting with no effect in this combination is an error, not a no-op
            info = f.metadata["info"]
            value = getattr(self, f.name)
            if info.applies is not None and value != f.default and not info.applies(self):
                raise UserError(f"has no effect in this recipe: it applies only {info.when}", field=f.name,
                                value=value, fix=f"drop it{_default_hint(f)}")

    # ---- derived ----
    @property
    def schedule_entries(self) -> tuple[tuple[int, str], ...]:
        """The schedule as (from step, source) pairs; () without a schedule."""
        return parse_schedule(self.schedule) if self.schedule is not None else ()

    @property
    def scheduled_alphas(self) -> tuple[float, ...]:
        """The alphas of the schedule's alpha=R entries, in order; () without any."""
        return tuple(a for a in (schedule_alpha(src) for _, src in self.schedule_entries) if a is not None)

    @property
    def own_used(self) -> bool:
        """The recipe's own conditioning (its alpha mix) is used at some step: no schedule, or a recipe entry."""
        return self.schedule is None or any(src == Source.RECIPE for _, src in self.schedule_entries)

    @property
    def own_uses_vl(self) -> bool:
        """The recipe's own conditioning holds VL rows (alpha > 0 somewhere)."""
        return above_0(self.alpha) or (self.alpha_end or 0) > 0

    @property
    def own_uses_qwen3(self) -> bool:
        """The recipe's own conditioning holds Qwen3-4B rows (alpha < 1 somewhere)."""
        return below_1(self.alpha) or (self.alpha_end is not None and self.alpha_end < 1)

    @property
    def uses_vl(self) -> bool:
        """The VL's hidden states condition some step (the recipe's own conditioning, a vl or an alpha=R entry)."""
        sources = {src for _, src in self.schedule_entries}
        return (self.own_used and self.own_uses_vl) or Source.VL in sources or bool(self.scheduled_alphas)

    @property
    def uses_qwen3(self) -> bool:
        """Qwen3-4B's encoding of the prompt conditions some step (alpha < 1, a qwen3 or an alpha=R entry)."""
        sources = {src for _, src in self.schedule_entries}
        return (self.own_used and self.own_uses_qwen3) or Source.QWEN3 in sources or bool(self.scheduled_alphas)

    @property
    def run_steps(self) -> int:
        """The steps the sampler runs: `steps`, or for img2img diffusers' get_timesteps count
        (steps − int(max(steps − min(steps·strength, steps), 0)))."""
        if self.strength is None:
            return self.steps
        return self.steps - int(max(self.steps - min(self.steps * self.strength, self.steps), 0))

    @property
    def uses_text_encoder(self) -> bool:
        """Qwen3-4B is needed for alpha < 1, for the negative prompt of guided runs and for vl_guidance's text-only
        branch."""
        return self.uses_qwen3 or self.guidance > 0 or self.vl_guidance != 0 or self.vl_blocks is not None

    def resolve_vl_text(self, prompt: str, value: str | None = None) -> str | None:
        """The text the VL reads for `vl_text` (or another *_vl_text value)."""
        value = self.vl_text if value is None else value
        if value == VLText.PROMPT:
            return prompt
        if value == VLText.NONE:
            return None
        return value

    def resolve_vl_system(self) -> str | None:
        """issue 27: the system turn's text for vl_system (a shipped instruction's text, or the value verbatim)."""
        if self.vl_system is None or not self.uses_vl:
            return None
        return VLSystem(self.vl_system).help if self.vl_system in VLSystem.values() else self.vl_system

    def vl_texts(self, prompt: str) -> tuple[str | None, ...]:
        """What the VL reads in each extraction this recipe needs, distinct, in pass order (none: pure Qwen3-4B)."""
        return tuple(dict.fromkeys(self.resolve_vl_text(prompt, v) for v in self.vl_text_settings))

    @property
    def vl_text_settings(self) -> tuple[str, ...]:
        """The vl_text settings of the extractions this recipe needs ("prompt", "none" or a text), in pass order."""
        if not self.uses_vl:
            return ()
        return (self.style_vl_text, self.content_vl_text) if self.dual else (self.vl_text,)

    def layer_for(self, role_is_image: bool) -> int:
        chosen = self.image_layer if role_is_image else self.text_layer
        return self.layer if chosen is None else chosen

    @property
    def image_selections(self) -> tuple[str, ...]:
        """The token selections this recipe takes from the VL (to know whether it needs a reference)."""
        if not self.uses_vl:
            return ()
        if self.dual:
            return (self.style_tokens, self.content_tokens)
        if self.intra_ratio is not None:
            return (Tokens.IMAGE.value, Tokens.TEXT.value)
        return (self.tokens,)

    @property
    def mixes(self) -> dict[str, tuple[float, str]]:
        """The mixes this recipe makes: name -> (ratio, policy)."""
        out: dict[str, tuple[float, str]] = {}
        if self.dual:
            out["dual_ratio"] = (self.dual_ratio, self.dual_policy)
        elif self.uses_vl and self.intra_ratio is not None:
            out["intra_ratio"] = (self.intra_ratio, self.intra_policy)
        if _alpha_mixes(self):
            out["alpha"] = (self.alpha, self.alpha_policy)
        return out

    @property
    def attention_bias(self) -> bool:
        """The DiT gets an attention-logit bias on caption rows: an `attend` mix (the recipe's own or a schedule's
        alpha=R) at a ratio strictly between 0 and 1 other than natural (and, as token-odds, other than 0.5, where
        both weights are 1). A share equal to the sources' natural share also gives weights of 1, up to rounding;
        which share that is is known only once the rows are counted."""
        odds = self.attend_ratio == AttendRatio.TOKEN_ODDS
        return any(ratio != NATURAL and 0 < ratio < 1 and not (odds and ratio == 0.5)
                   for ratio in _attend_ratios(self))

    def check_inputs(self, n_refs: int) -> None:
        """What this recipe needs of its references, checked before any model runs (every front end calls it)."""
        if self.text_bridge and n_refs != 1:
            raise UserError(f"describes one reference's style, and {n_refs} references were given", field="text_bridge",
                            value=True, fix="give exactly one reference")
        if any(t in IMAGE_SELECTIONS for t in self.image_selections) and not n_refs:
            raise UserError("this recipe selects image tokens but no reference image was given", field="image",
                            fix="add a reference")
        if self.strength is not None and not n_refs:
            raise UserError("img2img starts from the first reference, and none was given", field="strength",
                            value=self.strength, fix="add a reference")
        if self.image_weights is not None and len(self.image_weights) != n_refs:
            raise UserError(f"{len(self.image_weights)} weights for {n_refs} references", field="image_weights",
                            value=self.image_weights, fix="give one weight per reference")
        if self.multi_image == MultiImage.SEPARATE and self.uses_vl and n_refs < 2:
            raise UserError("has no effect with fewer than two references", field="multi_image",
                            value=self.multi_image, fix="add references or drop it (default joint)")

    # ---- serialisation ----
    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["image_weights"] is not None:
            out["image_weights"] = list(out["image_weights"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> "Recipe":
        """A Recipe from TOML/JSON values; unknown keys and bad values are errors in the context `where`."""
        try:
            check_keys(data)
            return cls(**data)
        except UserError as exc:
            raise (exc.within(where) if where else exc) from None

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def effective(self) -> dict[str, Any]:
        """The fields that change something in this recipe (e.g. no token selection at alpha 0)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.metadata["info"].applies is None or f.metadata["info"].applies(self)}

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the defaults (what a partial recipe file would say)."""
        base = DEFAULTS.to_dict()
        return {k: v for k, v in self.to_dict().items() if v != base[k]}

    def key(self) -> str:
        """A stable text form (for cache keys and equality across processes)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        lines = [TOML_HEADER]
        for name, value in self.to_dict().items():
            lines.append(f"# {name} = (not set)" if value is None else f"{name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- earlier recipe schemas
# Fields added at a schema, with the value that reads a record of an earlier schema as what it was. A job key leaves
# them out at their defaults, so a job whose meaning did not change keeps its key (experiments.folder refuses to
# resume a folder whose images an attend ratio of the old meaning made).
ADDED_AT_3 = ("attend_ratio", "attend_scope")
# issue 27's levers: new fields whose defaults are what every earlier recipe did (no reinterpretation, so no schema
# step); a job key leaves them out at their defaults too, so earlier folders resume.
ADDED_BY_LEVERS = ("vl_system", "vl_guidance", "image_positions", "vl_blocks", "negative_vl_text", "negative_tokens",
                   "negative_layer")
TOML_HEADER = f"# vlbench recipe (schema {RECIPE_SCHEMA})"
OLD_TOML_HEADER = "# vlbench recipe"  # what Recipe.to_toml wrote before schema 3


def upgrade_recipe(data: dict[str, Any], schema: int) -> dict[str, Any]:
    """A recipe dict written under recipe schema `schema` as the current schema with the same meaning.

    Schema <= 2 read an attend ratio as per-token odds and biased the joint blocks only: such a recipe keeps
    exactly that (attend_ratio token-odds; attend_scope joint where a bias is installed), so re-running it makes
    the same image. A dict that is not a valid recipe is returned as it is (whoever reads it reports the error)."""
    if schema >= RECIPE_SCHEMA or not isinstance(data, dict) or any(k in data for k in ADDED_AT_3):
        return data
    try:
        recipe = Recipe.from_dict({**DEFAULTS.to_dict(), **data})
    except (UserError, TypeError):
        return data
    if not _numeric_attend(recipe):
        return data
    out = dict(data, attend_ratio=AttendRatio.TOKEN_ODDS.value)
    if recipe.replace(attend_ratio=AttendRatio.TOKEN_ODDS.value).attention_bias:
        out["attend_scope"] = AttendScope.JOINT.value
    return out


def changed_meaning(data: dict[str, Any]) -> bool:
    """A (current-schema) recipe dict whose attend ratios keep an earlier schema's meaning (token-odds)."""
    return isinstance(data, dict) and data.get("attend_ratio") == AttendRatio.TOKEN_ODDS


def key_dict(data: dict[str, Any]) -> dict[str, Any]:
    """The recipe dict a job key hashes: the fields added since schema 2 left out at their defaults."""
    return {k: v for k, v in data.items() if not (k in ADDED_AT_3 + ADDED_BY_LEVERS and v == field_default(k))}


def field_infos() -> dict[str, FieldInfo]:
    """Field name -> its metadata, in form order."""
    return {f.name: f.metadata["info"] for f in fields(Recipe)}


def field_default(name: str) -> Any:
    return next(f.default for f in fields(Recipe) if f.name == name)


# Fields of earlier vlbench versions: a recipe naming one is refused with what replaced it (never reinterpreted).
REMOVED = {
    "length_policy": "replaced by one policy per mix (alpha_policy, intra_policy, dual_policy: attend, split or "
                     "positionwise; docs/intra_vl_blending.md); state the policy of each mix the recipe makes",
    "intra_ratio_end": "removed: an intra mix never pairs a text token with an image token, so it has no per-token "
                       "curve; drop it",
}


def check_keys(data: dict[str, Any]) -> None:
    known = field_infos()
    for key in data:
        if key in REMOVED:
            raise UserError(REMOVED[key], field=key)
        if key not in known:
            raise UserError(f"unknown key {key!r}", fix=f"known keys: {', '.join(known)}")


# ---------------------------------------------------------------- per-field checks
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
    if r.curve != Curve.CONSTANT and r.alpha_end is None:
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
    if r.alpha == NATURAL and r.curve != Curve.CONSTANT:
        raise UserError("a per-token curve needs a number", field="alpha", value=r.alpha, fix="give a number")


def _rule_image_weights(r: Recipe) -> None:
    if r.image_weights is not None and sum(r.image_weights) <= 0:
        raise UserError("must have a positive sum", field="image_weights", value=r.image_weights)


def _rule_global_normalization_needs_a_positionwise_mix(r: Recipe) -> None:
    if r.normalization == Normalization.GLOBAL and not _alpha_positionwise(r):
        raise UserError("has no effect here: one scale per sequence is removed by the DiT's caption RMSNorm unless "
                        "the rows are mixed position-wise", field="normalization", value=r.normalization,
                        fix="use per-dim or per-dim-scale, or alpha_policy positionwise with 0 < alpha < 1")


# ---- issue 17: schedules and the text bridge
SCHEDULE_EXAMPLE = "0:vl, 4:qwen3"
ALPHA_SOURCE = "alpha"  # a schedule source "alpha=R": the alpha mix (alpha_policy) at alpha R from that step


def parse_schedule(text: str) -> tuple[tuple[int, str], ...]:
    """"0:vl, 4:qwen3" -> ((0, "vl"), (4, "qwen3")): each entry K:SOURCE, K ascending from 0. Steps are checked
    against the recipe by its schedule rule."""
    entries: list[tuple[int, str]] = []
    parts = [p.strip() for p in re.split(r"[,\s]+", re.sub(r"\s*([:=])\s*", r"\1", text)) if p.strip()]
    if not parts:
        raise UserError("is empty", field="schedule", value=text, fix=f"write entries such as {SCHEDULE_EXAMPLE}, "
                                                                        "or leave it not set")
    for part in parts:
        match = re.fullmatch(r"(\d+):([A-Za-z0-9_.+-]+(?:=[^,\s]*)?)", part)
        if not match:
            raise UserError(f"entry {part!r} is not K:SOURCE", field="schedule", value=text,
                            fix=f"write e.g. {SCHEDULE_EXAMPLE} (from step K on, use SOURCE)")
        step, source = int(match.group(1)), match.group(2)
        if source.startswith(f"{ALPHA_SOURCE}="):
            source = _alpha_source(part, source[len(ALPHA_SOURCE) + 1:], text)
        elif source not in Source.values():
            raise UserError(f"entry {part!r} names an unknown source", field="schedule", value=text,
                            fix=f"sources: {', '.join(Source.values())}, or {ALPHA_SOURCE}=R")
        if entries and step <= entries[-1][0]:
            raise UserError(f"breakpoints out of order: step {step} comes after step {entries[-1][0]}",
                            field="schedule", value=text, fix="list the entries with their steps ascending")
        entries.append((step, source))
    if entries[0][0] != 0:
        raise UserError(f"starts at step {entries[0][0]}, so nothing conditions the steps before it",
                        field="schedule", value=text, fix=f"begin with 0:SOURCE, e.g. {SCHEDULE_EXAMPLE}")
    return tuple(entries)


def _alpha_source(part: str, number: str, text: str) -> str:
    """`alpha=R` as one spelling (R as %g), 0 < R < 1: the ends are the qwen3 and vl sources."""
    try:
        ratio = float(number)
    except ValueError:
        ratio = math.nan
    if not math.isfinite(ratio) or not 0 <= ratio <= 1:
        raise UserError(f"entry {part!r}: alpha must be a number in [0, 1]", field="schedule", value=text,
                        fix="write e.g. 3:alpha=0.5")
    if ratio in (0, 1):
        name = Source.QWEN3.value if ratio == 0 else Source.VL.value
        raise UserError(f"entry {part!r} is the {name} source", field="schedule", value=text,
                        fix=f"write {part.split(':')[0]}:{name}")
    return f"{ALPHA_SOURCE}={ratio:g}"


def schedule_alpha(source: str) -> float | None:
    """R of an `alpha=R` schedule source; None for the named sources."""
    return float(source[len(ALPHA_SOURCE) + 1:]) if source.startswith(f"{ALPHA_SOURCE}=") else None


def format_schedule(entries: Iterable[tuple[int, str]]) -> str:
    return ", ".join(f"{step}:{source}" for step, source in entries)


def _own_source(r: Recipe) -> str:
    """What the recipe's own conditioning is, as a schedule source: vl or qwen3 when it is one of them alone."""
    if not r.own_uses_qwen3:
        return Source.VL.value
    if not r.own_uses_vl:
        return Source.QWEN3.value
    return Source.RECIPE.value


def _rule_schedule(r: Recipe) -> None:
    """Breakpoints within the steps the sampler runs; no entry that changes nothing."""
    if r.schedule is None:
        return
    entries = r.schedule_entries
    n = r.run_steps
    for step, source in entries:
        if step >= n:
            ran = f"img2img runs {n} of steps {r.steps} at strength {_num(r.strength)}" if r.strength is not None \
                else f"steps {r.steps}"
            raise UserError(f"breakpoint {step}:{source} is past the last step ({ran}, counted 0 … {n - 1})",
                            field="schedule", value=r.schedule, fix=f"use breakpoints below {n}, or more steps")
    own = _own_source(r)
    same_as_own = f"{ALPHA_SOURCE}={r.alpha:g}" if r.own_used and r.curve == Curve.CONSTANT and r.alpha != NATURAL \
        else None
    canonical = [own if source == Source.RECIPE or source == same_as_own else source for _, source in entries]
    for (step, source), before, now in zip(entries[1:], canonical, canonical[1:]):
        if now == before:
            raise UserError(f"entry {step}:{source} conditions on what the step before it already uses ({now})",
                            field="schedule", value=r.schedule, fix="drop that entry")
    if len(entries) == 1 and canonical[0] == own:
        raise UserError(f"has no effect: {entries[0][1]} at every step is the recipe's own conditioning",
                        field="schedule", value=r.schedule, fix="drop it (default not set)")


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
    if r.negative_vl_text is None or r.guidance <= 0:
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
                                                 _rule_schedule, _rule_text_bridge_keeps_token_pairs,
                                                 _rule_image_weighting, _rule_vl_system, _rule_image_positions,
                                                 _rule_vl_blocks, _rule_negative_vl)
DEFAULTS = Recipe()


def _default_hint(f: dataclasses.Field) -> str:
    return "" if f.default is None else f" (default {_show_default(f.default)})"


def _show_default(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "empty"
    return _num(value)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e15 else repr(value)
    return str(value)


# ---------------------------------------------------------------- text -> values (CLI flags, form fields)
def parse_value(name: str, text: str) -> Any:
    """A field's text (a flag's argument, a form field) as a value; empty text is "not set" where allowed."""
    info = field_infos()[name]
    raw = text
    text = text.strip()
    if info.kind in ("str", "vl_text"):
        return raw if raw or field_default(name) is not None else None
    if not text:
        if field_default(name) is None:
            return None
        raise UserError("enter a value", field=name, fix=f"the default is {_show_default(field_default(name))}")
    if info.kind == "bool":
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise UserError("must be true or false", field=name, value=text)
        return lowered in ("true", "1", "yes")
    if info.kind == "int":
        try:
            return int(text)
        except ValueError:
            raise UserError("must be a whole number", field=name, value=text) from None
    if info.kind == "float":
        if info.natural and text.lower() == NATURAL:
            return NATURAL
        return _float(name, text)
    if info.kind == "floats":
        return tuple(_float(name, part) for part in re.split(r"[,\s]+", text) if part)
    return text


def _float(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError("must be a number", field=name, value=text) from None
    if not math.isfinite(value):
        raise UserError("must be a finite number", field=name, value=text)
    return value


def format_value(name: str, value: Any) -> str:
    """The text a field shows for a value (the inverse of parse_value)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(_num(float(v)) for v in value)
    return _num(value) if isinstance(value, float) else str(value)


def parse_seeds(text: str, field: str = "seeds", limit: int = 10_000) -> list[int]:
    """"1,2,5", "0-7" or a mix ("0-3,8") -> seeds in order, duplicates dropped. The one seed-list parser."""
    seeds: list[int] = []
    for part in re.split(r"[,\s]+", str(text).strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)\s*(?:-|\.\.)\s*(\d+)", part)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if hi < lo:
                raise UserError("range runs backwards", field=field, value=part, fix=f"write {hi}-{lo}")
            if hi - lo >= limit:
                raise UserError(f"range has more than {limit} seeds", field=field, value=part)
            seeds.extend(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        else:
            raise UserError("is not a whole number >= 0", field=field, value=part,
                            fix="write seeds as 1,2,5 or 0-7 or 0-3,8")
    if not seeds:
        raise UserError("give at least one seed", field=field, fix="e.g. 0, 1,2,5 or 0-7")
    if len(seeds) > limit:
        raise UserError(f"more than {limit} seeds", field=field)
    for seed in seeds:
        if seed > SEED_MAX:
            raise UserError(f"must be <= {SEED_MAX}", field=field, value=seed)
    return list(dict.fromkeys(seeds))


def seeds_value(value: Any, field: str = "seeds") -> list[int]:
    """Seeds from a TOML/JSON value: a whole number, a list of them, or the text forms of parse_seeds."""
    if _is_int(value):
        value = [value]
    if isinstance(value, list) and value and all(_is_int(v) for v in value):
        bad = next((v for v in value if v < 0), None)
        if bad is not None:
            raise UserError("is not a whole number >= 0", field=field, value=bad)
        return parse_seeds(",".join(str(v) for v in value), field)
    if isinstance(value, str):
        return parse_seeds(value, field)
    raise UserError("must be seeds: a number, a list of numbers or text such as \"0-7\"", field=field, value=value)


# ---------------------------------------------------------------- TOML files
def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The fields a recipe file sets (a partial recipe is fine), checked as keys; values are checked by Recipe.
    A file Recipe.to_toml wrote before recipe schema 3 (its first line exactly OLD_TOML_HEADER) is read as what it
    was (upgrade_recipe); any other file is read in the current schema."""
    path = Path(path)
    try:
        text = read_text_file(path)
        data = parse_toml(text)
    except FileNotFoundError:
        raise UserError("no such file", field="recipe", value=str(path)) from None
    except IsADirectoryError:
        raise UserError("is a folder; give a .toml file", field="recipe", value=str(path)) from None
    except NotAFile as exc:
        raise UserError(str(exc), field="recipe", value=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"not valid TOML ({exc})", field="recipe", value=str(path)) from None
    except TooDeep as exc:
        raise UserError(str(exc), field="recipe", value=str(path)) from None
    except (OSError, ValueError) as exc:  # ValueError: UnicodeDecodeError, a NUL in the path
        raise UserError(f"cannot read it ({exc.__class__.__name__})", field="recipe", value=str(path)) from None
    try:
        check_keys(data)
    except UserError as exc:
        raise exc.within(str(path)) from None
    if text.split("\n", 1)[0].rstrip() == OLD_TOML_HEADER:
        data = upgrade_recipe(data, 2)
    return data


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None, base: Recipe | None = None) -> Recipe:
    """A recipe file over `base` (default: the defaults), then `overrides` (e.g. flags the user set) over both."""
    data = read_recipe_file(path)
    overrides = overrides or {}
    start = (base or DEFAULTS).to_dict()
    infos = field_infos()
    for name, value in data.items():  # a bad value in the file is the file's error, whatever a flag overrides
        try:
            _check_field(name, infos[name], tuple(value) if isinstance(value, list) else value,
                         field_default(name))
        except UserError as exc:
            raise exc.within(str(path)) from None
    try:  # the file alone: its combinations are checked too, unless a flag changes the field at fault
        Recipe.from_dict({**start, **data})
    except UserError as exc:
        if not set(overrides) & set(data) or exc.field not in overrides:
            raise exc.within(str(path)) from None
    return Recipe.from_dict({**start, **data, **overrides})


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    atomic_write_text(Path(path), recipe.to_toml())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # a JSON string is a valid TOML basic string, once DEL (allowed raw in JSON, not in TOML) is escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


# ---------------------------------------------------------------- documentation
def markdown_table() -> str:
    """The README's recipe table, generated from the fields (a test keeps the README in step)."""
    lines = ["| field (TOML key, `--flag`) | section | default | values | help |", "|---|---|---|---|---|"]
    for f in fields(Recipe):
        info: FieldInfo = f.metadata["info"]
        if info.choices is not None:
            values = ", ".join(f"`{c}`" for c in info.choices.values())
        elif info.kind == "vl_text":
            values = "`prompt`, `none`, any text"
        elif info.kind == "bool":
            values = "true, false"
        elif info.kind == "schedule":
            values = ("`K:SOURCE, …` with SOURCE " + ", ".join(f"`{c}`" for c in Source.values())
                      + f", `{ALPHA_SOURCE}=R`")
        else:
            values = (info.range_text or info.kind) + (f", multiple of {info.multiple_of}" if info.multiple_of else "")
            values += f", `{NATURAL}`" if info.natural else ""
        text = info.help + (f"; has an effect only {info.when}" if info.when else "")
        flag = "--" + f.name.replace("_", "-")
        lines.append(f"| `{f.name}` `{flag}` | {info.section} | {_show_default(f.default)} | {values} | "
                     f"{text.replace('|', '/')} |")
    return "\n".join(lines)


def choices_help(choices: Iterable[Choice]) -> str:
    return "; ".join(f"{c.value}: {c.help}" for c in choices)


if __name__ == "__main__":  # `python -m vlbench.recipe`: the README's recipe table
    print(markdown_table())
