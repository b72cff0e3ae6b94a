"""The recipe's vocabularies: each a StrEnum whose members are their TOML/CLI values, each with a one-line
description."""

from __future__ import annotations

from enum import StrEnum


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
    INSTANCE = "instance", ("image rows only, each reference's own statistics removed: per dimension, its image rows "
                            "z-scored with their own mean and std, then given Qwen3-4B's calibrated mean and std "
                            "(every reference ends with the same per-dimension mean); text rows as they are")
    PER_REF_MEAN = "per-ref-mean", ("image rows only, each reference's own per-dimension mean kept: its image rows' "
                                    "deviation from their own mean scaled by Qwen3-4B's calibrated std over their own "
                                    "std (mean: the reference's own, std: Qwen3-4B's); text rows as they are")


PER_REFERENCE_NORMALIZATIONS = (Normalization.INSTANCE, Normalization.PER_REF_MEAN)  # image rows only, per reference


NATURAL = "natural"  # an attend ratio: the sources' natural share n_other/(n_base+n_other), no bias installed


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
