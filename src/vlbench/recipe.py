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
    IMAGE_MARKERS = "image-markers", "the vision block including <|vision_start|> and <|vision_end|>"
    TEXT = "text", "every position outside vision blocks: chat template + VL text"
    PROMPT = "prompt", "only the positions of the VL text itself"


class LengthPolicy(Choice):
    """How two sequences of different lengths are mixed (docs/intra_vl_blending.md)."""

    POOL = "pool", "antialiased average pooling of the other sequence onto the base length (a real average)"
    RESAMPLE = "resample", "linear interpolation onto the base length, antialiased when shrinking"
    TRUNCATE = "truncate", "first rows only: keeps the TOP-LEFT image patches; legacy, to reproduce earlier results"
    CONCAT = "concat", "keep both, one after the other; the ratio sets how many (pooled) tokens each keeps"


class Normalization(Choice):
    NONE = "none", "the VL hidden states as they are"
    GLOBAL = "global", "scale the VL sequence to Qwen3-4B's RMS (from vlbench calibrate)"
    PER_DIM = "per-dim", "per-dimension z-score of the VL sequence onto Qwen3-4B's statistics (from vlbench calibrate)"


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


class Section(Choice):
    EXTRACTION = "extraction", "what Qwen3-VL reads and which hidden states are taken"
    CONDITIONING = "conditioning", "how the taken states are mixed into the caption the DiT receives"
    GENERATION = "generation", "the sampler's settings"


IMAGE_SELECTIONS = (Tokens.IMAGE, Tokens.IMAGE_MARKERS)
POSITIONWISE = (LengthPolicy.POOL, LengthPolicy.RESAMPLE, LengthPolicy.TRUNCATE)
SEED_MAX = 2**63 - 1


# ---------------------------------------------------------------- field metadata
@dataclass(frozen=True)
class FieldInfo:
    """Everything a front end needs to know about one Recipe field."""

    kind: str  # bool | int | float | str | choice | floats | vl_text
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


def _layer_used(r: "Recipe") -> bool:
    if not r.uses_vl:
        return False
    if r.dual:
        return r.style_layer is None or r.content_layer is None
    return r.image_layer is None or r.text_layer is None


X, C, G = Section.EXTRACTION, Section.CONDITIONING, Section.GENERATION


@dataclass(frozen=True)
class Recipe:
    """How one image is conditioned and generated. Defaults are Z-Image-Turbo's and pure Qwen3-VL."""

    # ---- conditioning
    alpha: float = _f(1.0, "float", "0 = pure Qwen3-4B (Z-Image's own text path), 1 = pure VL", C, lo=0.0, hi=1.0)
    intra_ratio: float | None = _f(None, "float", "mix image and text tokens of one extraction: 0 = all text, "
                                                  "1 = all image; not set: no intra mix", C, lo=0.0, hi=1.0,
                                   applies=_single_pass, when="when the VL is used (alpha > 0) without dual")
    dual_ratio: float = _f(0.5, "float", "dual: 0 = all content pass, 1 = all style pass", C, lo=0.0, hi=1.0,
                           applies=lambda r: r.dual, when="with dual")
    length_policy: str = _f(LengthPolicy.CONCAT.value, "choice", "how sequences of different lengths mix", C,
                            choices=LengthPolicy)
    curve: str = _f(Curve.CONSTANT.value, "choice", "per-token ratio from alpha/intra_ratio at the first token to "
                                                    "alpha_end/intra_ratio_end at the last", C, choices=Curve)
    alpha_end: float | None = _f(None, "float", "alpha at the last token (with a curve)", C, lo=0.0, hi=1.0,
                                 applies=lambda r: r.curve != Curve.CONSTANT, when="with a curve other than constant")
    intra_ratio_end: float | None = _f(None, "float", "intra_ratio at the last token (with a curve)", C, lo=0.0, hi=1.0,
                                       applies=lambda r: r.curve != Curve.CONSTANT and r.intra_ratio is not None,
                                       when="with intra_ratio and a curve other than constant")
    normalization: str = _f(Normalization.NONE.value, "choice", "match VL statistics to Qwen3-4B's "
                                                                "(needs vlbench calibrate)", C, choices=Normalization,
                            applies=_uses_vl, when="when the VL is used (alpha > 0)")
    calibration: str | None = _f(None, "str", "calibration stats file; not set: the one vlbench calibrate wrote for "
                                              "these models", C,
                                 applies=lambda r: r.normalization != Normalization.NONE,
                                 when="with a normalization other than none")
    image_weights: tuple[float, ...] | None = _f(None, "floats", "one weight per reference, comma-separated; "
                                                                 "not set: equal weights", C, lo=0.0,
                                                 applies=lambda r: r.multi_image == MultiImage.SEPARATE,
                                                 when="with multi_image separate")
    # ---- extraction
    tokens: str = _f(Tokens.FULL.value, "choice", "VL token selection", X, choices=Tokens,
                     applies=lambda r: _single_pass(r) and r.intra_ratio is None,
                     when="when the VL is used (alpha > 0) in one pass without intra_ratio "
                          "(intra_ratio mixes the image and text selections itself; dual has style_tokens/content_tokens)")
    layer: int = _f(-2, "int", "hidden layer, indexed as transformers' output_hidden_states (-1 = after the final norm)",
                    X, applies=_layer_used,
                    when="when the VL is used and some positions take no layer of their own (image_layer/text_layer, "
                         "style_layer/content_layer)")
    vl_text: str = _f(VLText.PROMPT.value, "vl_text", "what the VL reads: prompt, none, or any other text verbatim", X,
                      applies=_single_pass, when="when the VL is used (alpha > 0) without dual "
                                                 "(dual has style_vl_text and content_vl_text)")
    max_image_tokens: int | None = _f(None, "int", "cap the reference's image tokens below the caption budget", X,
                                      lo=1, unit="tokens", applies=_uses_vl, when="when the VL is used (alpha > 0)")
    image_layer: int | None = _f(None, "int", "layer for image-role positions (image pads and vision markers); "
                                              "not set: layer", X,
                                 applies=_single_pass, when="when the VL is used without dual (dual: style_layer)")
    text_layer: int | None = _f(None, "int", "layer for template and VL-text positions; not set: layer", X,
                                applies=_single_pass, when="when the VL is used without dual (dual: content_layer)")
    dual: bool = _f(False, "bool", "two extractions, a style pass and a content pass, mixed at dual_ratio", X,
                    applies=_uses_vl, when="when the VL is used (alpha > 0)")
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
                          applies=_uses_vl, when="when the VL is used (alpha > 0)")
    # ---- generation
    strength: float | None = _f(None, "float", "img2img from the first reference: 0 keeps it, 1 ignores it; "
                                               "not set: txt2img", G, lo=0.0, hi=1.0)
    seed: int = _f(0, "int", "the sampler's seed (a CPU generator: the same image on any device)", G, lo=0, hi=SEED_MAX)
    steps: int = _f(9, "int", "denoising steps (Turbo: 8-9)", G, lo=1, hi=1000, unit="steps")
    width: int = _f(1024, "int", "image width", G, lo=16, hi=8192, multiple_of=16, unit="px")
    height: int = _f(1024, "int", "image height", G, lo=16, hi=8192, multiple_of=16, unit="px")
    guidance: float = _f(0.0, "float", "classifier-free guidance scale (Turbo: 0)", G, lo=0.0)
    negative_prompt: str = _f("", "str", "the negative prompt", G,
                              applies=lambda r: r.guidance > 0, when="with guidance > 0")

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
    def uses_vl(self) -> bool:
        return self.alpha > 0 or (self.alpha_end or 0) > 0

    @property
    def uses_qwen3(self) -> bool:
        """Qwen3-4B's encoding of the prompt is part of the conditioning.

        Under a position-wise policy it is also the base whose length the VL is mapped onto, even at
        alpha 1, so alpha 1 stays continuous with alpha 0.999; under concat, alpha 1 is the VL alone.
        """
        mixes = self.alpha < 1 or (self.alpha_end is not None and self.alpha_end < 1)
        return mixes or (self.uses_vl and self.length_policy != LengthPolicy.CONCAT)

    @property
    def uses_text_encoder(self) -> bool:
        """Qwen3-4B is needed for alpha < 1 and for the negative prompt of guided runs."""
        return self.uses_qwen3 or self.guidance > 0

    def resolve_vl_text(self, prompt: str, value: str | None = None) -> str | None:
        """The text the VL reads for `vl_text` (or another *_vl_text value)."""
        value = self.vl_text if value is None else value
        if value == VLText.PROMPT:
            return prompt
        if value == VLText.NONE:
            return None
        return value

    def vl_texts(self, prompt: str) -> tuple[str | None, ...]:
        """What the VL reads in each extraction this recipe needs, distinct, in pass order (none: pure Qwen3-4B)."""
        if not self.uses_vl:
            return ()
        values = (self.style_vl_text, self.content_vl_text) if self.dual else (self.vl_text,)
        return tuple(dict.fromkeys(self.resolve_vl_text(prompt, v) for v in values))

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

    def check_inputs(self, n_refs: int) -> None:
        """What this recipe needs of its references, checked before any model runs (every front end calls it)."""
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
        lines = ["# vlbench recipe"]
        for name, value in self.to_dict().items():
            lines.append(f"# {name} = (not set)" if value is None else f"{name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def field_infos() -> dict[str, FieldInfo]:
    """Field name -> its metadata, in form order."""
    return {f.name: f.metadata["info"] for f in fields(Recipe)}


def field_default(name: str) -> Any:
    return next(f.default for f in fields(Recipe) if f.name == name)


def check_keys(data: dict[str, Any]) -> None:
    known = field_infos()
    for key in data:
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
    if kind == "floats":
        if not isinstance(value, tuple) or not value or not all(_is_number(v) for v in value):
            raise err("must be numbers separated by commas")
        for v in value:
            if not math.isfinite(v) or (info.lo is not None and v < info.lo):
                raise err(f"every weight must be a finite number {info.range_text}")
        return
    if kind == "int":
        if not _is_int(value):
            raise err("must be a whole number")
    elif kind == "float":
        if not _is_number(value):
            raise err("must be a number")
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
    if r.curve != Curve.CONSTANT and r.alpha_end is None and r.intra_ratio_end is None:
        raise UserError("needs alpha_end or intra_ratio_end (the ratio at the last token)", field="curve",
                        value=r.curve)
    if r.curve != Curve.CONSTANT and r.length_policy == LengthPolicy.CONCAT:
        raise UserError("per-token ratios need a position-wise length_policy (pool, resample, truncate), not concat",
                        field="curve", value=r.curve)


def _rule_image_weights(r: Recipe) -> None:
    if r.image_weights is not None and sum(r.image_weights) <= 0:
        raise UserError("must have a positive sum", field="image_weights", value=r.image_weights)


def _rule_separate_mixes_positionwise(r: Recipe) -> None:
    if r.multi_image == MultiImage.SEPARATE and r.length_policy == LengthPolicy.CONCAT:
        raise UserError("mixes references position by position", field="multi_image", value=r.multi_image,
                        fix="use length_policy pool, resample or truncate")


_RULES: tuple[Callable[[Recipe], None], ...] = (_rule_one_mix_of_passes, _rule_curves, _rule_image_weights,
                                                 _rule_separate_mixes_positionwise)
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
    """The fields a recipe file sets (a partial recipe is fine), checked as keys; values are checked by Recipe."""
    from vlbench.files import NotAFile, read_text_file

    path = Path(path)
    try:
        data = tomllib.loads(read_text_file(path))
    except FileNotFoundError:
        raise UserError("no such file", field="recipe", value=str(path)) from None
    except IsADirectoryError:
        raise UserError("is a folder; give a .toml file", field="recipe", value=str(path)) from None
    except NotAFile as exc:
        raise UserError(str(exc), field="recipe", value=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"not valid TOML ({exc})", field="recipe", value=str(path)) from None
    except (OSError, ValueError) as exc:  # ValueError: UnicodeDecodeError, a NUL in the path
        raise UserError(f"cannot read it ({exc.__class__.__name__})", field="recipe", value=str(path)) from None
    try:
        check_keys(data)
    except UserError as exc:
        raise exc.within(str(path)) from None
    return data


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None, base: Recipe | None = None) -> Recipe:
    """A recipe file over `base` (default: the defaults), then `overrides` (e.g. flags the user set) over both."""
    data = read_recipe_file(path)
    overrides = overrides or {}
    start = (base or DEFAULTS).to_dict()
    try:  # the file alone: its own bad values are named with the file
        Recipe.from_dict({**start, **data})
    except UserError as exc:
        if not set(overrides) & set(data) or exc.field not in overrides:
            raise exc.within(str(path)) from None
    return Recipe.from_dict({**start, **data, **overrides})


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    from vlbench.files import atomic_write_text

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
        else:
            values = (info.range_text or info.kind) + (f", multiple of {info.multiple_of}" if info.multiple_of else "")
        text = info.help + (f"; has an effect only {info.when}" if info.when else "")
        flag = "--" + f.name.replace("_", "-")
        lines.append(f"| `{f.name}` `{flag}` | {info.section} | {_show_default(f.default)} | {values} | "
                     f"{text.replace('|', '/')} |")
    return "\n".join(lines)


def choices_help(choices: Iterable[Choice]) -> str:
    return "; ".join(f"{c.value}: {c.help}" for c in choices)
