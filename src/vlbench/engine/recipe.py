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
from dataclasses import dataclass, field, fields
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

# What the VL model reads as text: the prompt, nothing, or any other string verbatim.
VL_TEXT_PROMPT = "prompt"
VL_TEXT_NONE = "none"


@dataclass(frozen=True)
class Recipe:
    """How one image is conditioned and generated. Defaults are Z-Image-Turbo's and pure VL."""

    # conditioning
    alpha: float = 1.0  # 0 = pure Qwen3-4B (Z-Image's own text path), 1 = pure VL selection
    tokens: str = "full"  # one of TOKEN_SELECTIONS
    layer: int = -2  # index into output_hidden_states, as transformers counts (-1 = after final norm)
    vl_text: str = VL_TEXT_PROMPT  # "prompt", "none", or a verbatim string
    max_image_tokens: int | None = None  # lower the image-token budget below the caption budget
    # generation (Turbo's defaults)
    seed: int = 0
    steps: int = 9
    width: int = 1024
    height: int = 1024
    guidance: float = 0.0
    negative_prompt: str = ""

    def __post_init__(self) -> None:
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
        if 0 < self.alpha < 1 and not (self.tokens == "text" and self.vl_text == VL_TEXT_PROMPT):
            raise UserError(
                f"alpha {self.alpha}: a blend with Qwen3-4B needs sequences that match token for token "
                "(--tokens text with --vl-text prompt); other combinations need a length policy, "
                "which the conditioning-recipes work adds"
            )

    # ---- derived ----
    @property
    def uses_vl(self) -> bool:
        return self.alpha > 0

    @property
    def uses_text_encoder(self) -> bool:
        """Qwen3-4B is needed for alpha < 1 and for the negative prompt of guided runs."""
        return self.alpha < 1 or self.guidance > 0

    def resolve_vl_text(self, prompt: str) -> str | None:
        if self.vl_text == VL_TEXT_PROMPT:
            return prompt
        if self.vl_text == VL_TEXT_NONE:
            return None
        return self.vl_text

    # ---- serialisation ----
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
    data.update(overrides or {})
    try:
        return Recipe.from_dict(data, source=f"--recipe {path}")
    except TypeError as exc:  # wrong value types reach the dataclass constructor
        raise UserError(f"--recipe {path}: {exc}") from None


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(recipe.to_toml(), encoding="utf-8")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _check_unit(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0):
        raise UserError(f"{name}: {value!r} must be a number in [0, 1]")


def _check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name}: {value!r} must be a whole number")
    if lo is not None and value < lo:
        raise UserError(f"{name}: {value} must be >= {lo}")
    if hi is not None and value > hi:
        raise UserError(f"{name}: {value} must be <= {hi}")
