"""Recipe: the one typed, serialisable description of how a conditioning and an image are made.

The CLI flags, TOML recipe files, the workbench's Parameters pane, the queue and experiment
types all build a Recipe; its defaults live here and nowhere else. Inputs (reference images and
the prompt) are not part of a Recipe: one recipe applies to many inputs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vlbench.errors import UserError

# Token selections over one Qwen3-VL extraction (CLI --tokens). Seed vocabulary in brackets.
TOKEN_SELECTIONS = {
    "full": "every position of the VL input",
    "image": "image-pad positions only, no vision markers  [image_tokens_no_markers]",
    "image-markers": "the vision block including <|vision_start|> and <|vision_end|>",
    "text": "every position outside vision blocks: chat template + VL text  [text_tokens_only]",
    "prompt": "only the positions of the VL text itself",
}
IMAGE_SELECTIONS = ("image", "image-markers")

# Where models come from unless the user says otherwise (hub ids or local directories).
DEFAULT_ZIMAGE = "Tongyi-MAI/Z-Image-Turbo"
DEFAULT_VL = "Qwen/Qwen3-VL-4B-Instruct"

# What the VL model reads as text: the prompt, nothing, or any other string verbatim.
VL_TEXT_PROMPT = "prompt"
VL_TEXT_NONE = "none"

# How two sequences of different lengths are mixed (see blend.py and docs/intra_vl_blending.md).
LENGTH_POLICIES = {
    "pool": "antialiased average pooling of the other sequence onto the base length (a real average)",
    "resample": "linear interpolation onto the base length, antialiased when shrinking",
    "truncate": "first rows only: keeps the TOP-LEFT image patches; legacy, to reproduce earlier results",
    "concat": "keep both, one after the other; the ratio sets how many (pooled) tokens each keeps",
}
NORMALIZATIONS = {
    "none": "the VL hidden states as they are",
    "global": "scale the VL sequence to Qwen3-4B's RMS (from vlbench calibrate)",
    "per-dim": "per-dimension z-score of the VL sequence onto Qwen3-4B's statistics (from vlbench calibrate)",
}
CURVES = ("constant", "linear", "ease-in", "ease-out")
MULTI_IMAGE = {
    "joint": "one extraction over all references (one vision block each)",
    "separate": "one extraction per reference, mixed with image_weights",
}


@dataclass(frozen=True)
class Recipe:
    """How one image is conditioned and generated. Defaults are Z-Image-Turbo's and pure VL."""

    # conditioning
    alpha: float = 1.0  # 0 = pure Qwen3-4B (Z-Image's own text path), 1 = pure VL selection
    tokens: str = "full"  # one of TOKEN_SELECTIONS
    layer: int = -2  # index into output_hidden_states, as transformers counts (-1 = after final norm)
    vl_text: str = VL_TEXT_PROMPT  # "prompt", "none", or a verbatim string
    max_image_tokens: int | None = None  # lower the image-token budget below the caption budget
    # per-token-type layers (None: use `layer`)
    image_layer: int | None = None  # for image-role positions (image pads and vision markers)
    text_layer: int | None = None  # for template and VL-text positions
    # intra-VL blend: image tokens vs text tokens of the same extraction (0 = all text, 1 = all image)
    intra_ratio: float | None = None
    # dual extraction: a style pass and a content pass, mixed at dual_ratio (0 = all content, 1 = all style)
    dual: bool = False
    style_vl_text: str = VL_TEXT_NONE
    style_tokens: str = "image"
    style_layer: int | None = None
    content_vl_text: str = VL_TEXT_PROMPT
    content_tokens: str = "text"
    content_layer: int | None = None
    dual_ratio: float = 0.5
    # how sequences of different lengths mix; per-token ratio curves
    length_policy: str = "concat"
    curve: str = "constant"  # ratio along the sequence: from alpha/intra_ratio to alpha_end/intra_ratio_end
    alpha_end: float | None = None
    intra_ratio_end: float | None = None
    # VL statistics matched to Qwen3-4B's (reference statistics from `vlbench calibrate`)
    normalization: str = "none"
    calibration: str | None = None  # stats file; None: the default location for the Z-Image model
    # several references
    multi_image: str = "joint"
    image_weights: tuple[float, ...] | None = None
    # img2img from the first reference (None: txt2img)
    strength: float | None = None
    # generation (Turbo's defaults)
    seed: int = 0
    steps: int = 9
    width: int = 1024
    height: int = 1024
    guidance: float = 0.0
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.image_weights, (list, tuple)):  # TOML/JSON give lists; keep the recipe hashable
            object.__setattr__(self, "image_weights", tuple(
                float(w) if isinstance(w, int) and not isinstance(w, bool) else w for w in self.image_weights))
        for name in _FLOAT_FIELDS:  # `alpha = 1` in TOML is the same recipe as `alpha = 1.0`
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        self.validate()

    # ---- validation: every message names the field and what is allowed ----
    def validate(self) -> None:
        _check_unit("alpha", self.alpha)
        if self.tokens not in TOKEN_SELECTIONS:
            raise UserError(f"tokens: unknown selection {self.tokens!r}; choose one of {', '.join(TOKEN_SELECTIONS)}")
        _check_int("layer", self.layer)
        if not isinstance(self.vl_text, str):
            raise UserError("vl_text: must be a string ('prompt', 'none' or the text itself)")
        if self.max_image_tokens is not None:
            _check_int("max_image_tokens", self.max_image_tokens, lo=1)
        _check_int("seed", self.seed, lo=0, hi=2**63 - 1)
        _check_int("steps", self.steps, lo=1, hi=1000)
        for name in ("width", "height"):
            value = getattr(self, name)
            _check_int(name, value, lo=16, hi=8192)
            if value % 16:
                raise UserError(f"{name}: {value} is not a multiple of 16 (Z-Image needs multiples of 16); try {value // 16 * 16 or 16}")
        if not isinstance(self.guidance, (int, float)) or isinstance(self.guidance, bool) or not math.isfinite(self.guidance) or self.guidance < 0:
            raise UserError(f"guidance: {self.guidance!r} must be a number >= 0 (Turbo uses 0)")
        if not isinstance(self.negative_prompt, str):
            raise UserError("negative_prompt: must be a string")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    flag = "--" + f.name.replace("_", "-")
                    raise UserError(f"{f.name} ({flag}): contains bytes that are not valid UTF-8; retype it") from None
        for name in ("image_layer", "text_layer", "style_layer", "content_layer"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name))
        for name in ("intra_ratio", "alpha_end", "intra_ratio_end", "strength"):
            if getattr(self, name) is not None:
                _check_unit(name, getattr(self, name))
        _check_unit("dual_ratio", self.dual_ratio)
        _check_choice("length_policy", self.length_policy, LENGTH_POLICIES)
        _check_choice("normalization", self.normalization, NORMALIZATIONS)
        _check_choice("curve", self.curve, CURVES)
        _check_choice("multi_image", self.multi_image, MULTI_IMAGE)
        _check_choice("style_tokens", self.style_tokens, TOKEN_SELECTIONS)
        _check_choice("content_tokens", self.content_tokens, TOKEN_SELECTIONS)
        if not isinstance(self.dual, bool):
            raise UserError(f"dual: {self.dual!r} must be true or false")
        for name in ("style_vl_text", "content_vl_text"):
            if not isinstance(getattr(self, name), str):
                raise UserError(f"{name}: must be a string ('prompt', 'none' or the text itself)")
        if self.calibration is not None and not isinstance(self.calibration, str):
            raise UserError("calibration: must be a path")
        # Combinations that would silently ignore a setting are errors.
        if self.intra_ratio is not None and self.tokens != "full":
            raise UserError(f"intra_ratio: mixes the image and text selections itself; drop tokens={self.tokens!r}")
        if self.intra_ratio is not None and self.dual:
            raise UserError("intra_ratio and dual: choose one (dual mixes its own two passes at dual_ratio)")
        if self.dual and self.tokens != "full":
            raise UserError(f"dual: each pass has its own selection (style_tokens, content_tokens); drop tokens={self.tokens!r}")
        if self.intra_ratio_end is not None and self.intra_ratio is None:
            raise UserError("intra_ratio_end: set intra_ratio too (the curve runs from intra_ratio to intra_ratio_end)")
        if self.curve == "constant" and (self.alpha_end is not None or self.intra_ratio_end is not None):
            raise UserError("curve: is 'constant' but an *_end ratio is set; choose linear, ease-in or ease-out")
        if self.curve != "constant" and self.alpha_end is None and self.intra_ratio_end is None:
            raise UserError(f"curve: {self.curve!r} needs alpha_end or intra_ratio_end (the ratio at the last token)")
        if self.curve != "constant" and self.length_policy == "concat":
            raise UserError("curve: per-token ratios need a position-wise length_policy (pool, resample, truncate), not concat")
        if self.image_weights is not None:
            if self.multi_image != "separate":
                raise UserError("image_weights: need multi_image = 'separate' (one extraction per reference)")
            if not self.image_weights or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0
                                             for w in self.image_weights) or sum(self.image_weights) <= 0:
                raise UserError("image_weights: must be numbers >= 0 with a positive sum, one per --image")
        if self.multi_image == "separate" and self.length_policy == "concat":
            raise UserError("multi_image 'separate': mixes references position by position; use length_policy pool, resample or truncate")

    # ---- derived ----
    @property
    def uses_vl(self) -> bool:
        return self.alpha > 0 or (self.alpha_end or 0) > 0

    @property
    def uses_qwen3(self) -> bool:
        """Qwen3-4B's encoding of the prompt is part of the conditioning.

        Under a position-wise policy it is also the base whose length the VL is mapped onto, even at
        alpha 1, so alpha 1 stays continuous with alpha 0.999; under concat, alpha 1 is the VL alone.
        """
        mixes = self.alpha < 1 or (self.alpha_end is not None and self.alpha_end < 1)
        return mixes or (self.uses_vl and self.length_policy != "concat")

    @property
    def uses_text_encoder(self) -> bool:
        """Qwen3-4B is needed for alpha < 1 and for the negative prompt of guided runs."""
        return self.uses_qwen3 or self.guidance > 0

    def resolve_vl_text(self, prompt: str, value: str | None = None) -> str | None:
        """The text the VL reads for `vl_text` (or another *_vl_text value)."""
        value = self.vl_text if value is None else value
        if value == VL_TEXT_PROMPT:
            return prompt
        if value == VL_TEXT_NONE:
            return None
        return value

    def layer_for(self, role_is_image: bool) -> int:
        chosen = self.image_layer if role_is_image else self.text_layer
        return self.layer if chosen is None else chosen

    # ---- serialisation ----
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["image_weights"] is not None:
            out["image_weights"] = list(out["image_weights"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> "Recipe":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{source}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        return cls(**data)

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """A stable text form (for cache keys and equality across processes)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        lines = ["# vlbench recipe"]
        for name, value in self.to_dict().items():
            if value is None:
                lines.append(f"# {name} = (not set)")
            else:
                lines.append(f"{name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


_FLOAT_FIELDS = ("alpha", "intra_ratio", "dual_ratio", "alpha_end", "intra_ratio_end", "strength", "guidance")


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a TOML recipe; `overrides` (e.g. CLI flags the user set) win over the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--recipe {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--recipe {path}: cannot read it ({exc.__class__.__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"--recipe {path}: not valid TOML ({exc})") from None
    source = f"--recipe {path}"
    try:
        Recipe.from_dict(data, source=source)  # the file alone: its bad values are named with the file
    except TypeError as exc:  # wrong value types reach the dataclass constructor
        raise UserError(f"{source}: {exc}") from None
    except UserError as exc:
        if not set(overrides or {}) & set(data):  # a flag that overrides the bad key fixes it
            raise UserError(f"{source}: {exc}") if not str(exc).startswith(source) else exc from None
    return Recipe.from_dict({**data, **(overrides or {})}, source=source)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(recipe.to_toml(), encoding="utf-8")


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


def _check_unit(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0):
        raise UserError(f"{name}: {value!r} must be a number in [0, 1]")


def _check_choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise UserError(f"{name}: unknown value {value!r}; choose one of {', '.join(choices)}")


def _check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name}: {value!r} must be a whole number")
    if lo is not None and value < lo:
        raise UserError(f"{name}: {value} must be >= {lo}")
    if hi is not None and value > hi:
        raise UserError(f"{name}: {value} must be <= {hi}")
