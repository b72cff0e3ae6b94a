"""The Recipe schema: every field once, with its metadata (help, section, kind, vocabulary, range, when it
applies); the Recipe dataclass, its derived properties and the field tables."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, fields
from typing import Any

from vlbench.errors import UserError
from vlbench.recipe.applies import (ALPHA_MIX, ATTENTION_BIAS, ATTENTION_READ, CURVED, DUAL, GUIDED,
                                    HOLDS_IMAGE_ROWS, INTRA_MIX, LAYER_USED, NEGATIVE_FROM_QWEN3, NEGATIVE_FROM_VL,
                                    NO_INTRA_MIX, NO_SCHEDULE, NORMALIZED, NUMERIC_ATTEND, ONE_PASS,
                                    ONE_PASS_IMAGE_ROWS, OWN_POSITIONWISE, OWN_USED, QWEN3_USED, SEPARATE, TOPK,
                                    VL_USED, When, _alpha_mixes, _attend_ratios, above_0, below_1)
from vlbench.recipe.rules import _RULES, _check_field
from vlbench.recipe.schedules import ALPHA_SOURCE, format_schedule, parse_schedule, schedule_alpha
from vlbench.recipe.values import SEED_MAX, _float, _is_int, _num, _show_default, _toml_value
from vlbench.recipe.vocab import (IMAGE_SELECTIONS, NATURAL, PER_REFERENCE_NORMALIZATIONS, AttendRatio, AttendScope, Choice, Curve, ImageAttention,
                                  ImagePositions, MixPolicy, MultiImage, Normalization, Section, Source, Tokens,
                                  VLSystem, VLText)

RECIPE_SCHEMA = 3  # 3: attend ratios are shares (attend_ratio, attend_scope); <= 2: per-token odds, joint blocks only


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
    # when the field changes anything (a named condition of vlbench.recipe.applies); a non-default value outside it
    # is an error naming the condition's text
    applies: When | None = None
    natural: bool = False  # a ratio that also takes the word `natural` (an attend mix with no bias)

    @property
    def when(self) -> str:
        """The condition's words, e.g. "with dual": they complete "has an effect only …" (help, README, form)."""
        return self.applies.text if self.applies is not None else ""

    @property
    def range_text(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"[{_num(self.lo)}, {_num(self.hi)}]"
        if self.lo is not None:
            return f">= {_num(self.lo)}"
        return ""


def _f(default: Any, kind: str, help: str, section: Section, **info: Any) -> Any:
    return dataclasses.field(default=default, metadata={"info": FieldInfo(kind, help, section, **info)})


X, C, G = Section.EXTRACTION, Section.CONDITIONING, Section.GENERATION


@dataclass(frozen=True)
class Recipe:
    """How one image is conditioned and generated. Defaults are Z-Image-Turbo's and pure Qwen3-VL."""

    # ---- conditioning
    alpha: float = _f(1.0, "float", "0 = pure Qwen3-4B (Z-Image's own text path), 1 = pure VL; in between the "
                                    "VL's share of the mix (attend: of the caption's attention; natural: no bias)",
                      C, lo=0.0, hi=1.0, natural=True,
                      applies=OWN_USED)
    alpha_policy: str = _f(MixPolicy.ATTEND.value, "choice", "how the alpha mix combines Qwen3-4B (base) and the VL "
                                                            "selection (other)", C, choices=MixPolicy,
                           applies=ALPHA_MIX)
    curve: str = _f(Curve.CONSTANT.value, "choice", "per-token alpha from alpha at the first token to alpha_end at the "
                                                    "last", C, choices=Curve,
                    applies=OWN_POSITIONWISE.note("(a ratio per token needs tokens paired one to one; a schedule's "
                                                  "alpha=R entry is constant)"))
    alpha_end: float | None = _f(None, "float", "alpha at the last token (with a curve)", C, lo=0.0, hi=1.0,
                                 applies=CURVED)
    intra_ratio: float | None = _f(None, "float", "mix image and text tokens of one extraction: 0 = all text (base), "
                                                  "1 = all image, in between the image rows' share (attend: of the "
                                                  "caption's attention; natural: no bias); not set: no intra mix",
                                   C, lo=0.0, hi=1.0, natural=True,
                                   applies=ONE_PASS)
    intra_policy: str = _f(MixPolicy.ATTEND.value, "choice", "how the intra mix combines the text rows (base) and the "
                                                            "image rows (other); never positionwise: a text token is "
                                                            "not paired with an image token", C, choices=MixPolicy,
                           applies=INTRA_MIX)
    dual_ratio: float = _f(0.5, "float", "dual: 0 = all content pass (base), 1 = all style pass, in between the "
                                         "style pass's share (attend: of the caption's attention; natural: no bias)",
                           C, lo=0.0, hi=1.0, natural=True,
                           applies=DUAL)
    dual_policy: str = _f(MixPolicy.ATTEND.value, "choice", "how the dual mix combines the content pass (base) and the "
                                                           "style pass (other)", C, choices=MixPolicy,
                          applies=DUAL)
    attend_ratio: str = _f(AttendRatio.SHARE.value, "choice", "what an attend mix's ratio r means", C,
                           choices=AttendRatio, applies=NUMERIC_ATTEND)
    attend_scope: str = _f(AttendScope.REFINER_JOINT.value, "choice", "which DiT blocks an attend mix's attention "
                                                                        "bias acts in", C, choices=AttendScope,
                           applies=ATTENTION_BIAS)
    normalization: str = _f(Normalization.NONE.value, "choice", "match VL statistics to Qwen3-4B's "
                                                                "(needs vlbench calibrate)", C, choices=Normalization,
                            applies=VL_USED)
    calibration: str | None = _f(None, "str", "calibration stats file; not set: the one vlbench calibrate wrote for "
                                              "these models", C,
                                 applies=NORMALIZED)
    image_weights: tuple[float, ...] | None = _f(None, "floats", "one weight per reference, comma-separated; "
                                                                 "not set: equal weights", C, lo=0.0,
                                                 applies=SEPARATE)
    # ---- issue 27: image tokens on a 2-D grid (docs/levers.md)
    image_positions: str = _f(ImagePositions.SEQUENCE.value, "choice", "the RoPE positions of the caption's VL image "
                                                                       "rows (RoPE axis 0 = caption order; axes 1 and "
                                                                       "2, otherwise the latents' height and width, "
                                                                       "carry the grid)", C, choices=ImagePositions,
                              applies=HOLDS_IMAGE_ROWS & NO_SCHEDULE)
    vl_blocks: str | None = _f(None, "str", "which DiT blocks read the caption's VL rows, comma-separated: joint-block "
                                            "indices and ranges (0-9, 12), fractions of the joint blocks' depth "
                                            "(0-0.33: the blocks whose centre (i + 0.5)/n lies in [0, 0.33); an end "
                                            "of 1 includes the last), refiner (the context-refiner blocks); every "
                                            "other block masks the VL rows' keys (Qwen3-4B's rows are added at "
                                            "alpha 1; docs/levers.md); not set: every block", C,
                               applies=VL_USED & NO_SCHEDULE)
    # ---- issue 17: schedules and the text bridge
    schedule: str | None = _f(None, "schedule", "the conditioning from step K on, as K:SOURCE entries, "
                                                "comma-separated, K ascending from 0 (steps counted as the sampler "
                                                "runs them); sources: recipe, vl, qwen3, or alpha=R (the alpha mix at "
                                                "alpha R, 0 < R < 1; docs/schedules.md); not set: "
                                                "the recipe's own conditioning at every step", C)
    text_bridge: bool = _f(False, "bool", "Qwen3-VL first describes the reference's style in one sentence (a fixed "
                                          "instruction, greedy); Qwen3-4B then encodes the prompt + that description "
                                          "instead of the prompt (docs/schedules.md)", C,
                           applies=QWEN3_USED)
    # ---- extraction
    tokens: str = _f(Tokens.FULL.value, "choice", "VL token selection", X, choices=Tokens,
                     applies=(ONE_PASS & NO_INTRA_MIX).note("(intra_ratio mixes the image and text selections itself; "
                                                            "dual has style_tokens/content_tokens)"))
    layer: int = _f(-2, "int", "hidden layer, indexed as transformers' output_hidden_states (-1 = after the final norm)",
                    X, applies=LAYER_USED)
    vl_text: str = _f(VLText.PROMPT.value, "vl_text", "what the VL reads: prompt, none, or any other text verbatim", X,
                      applies=ONE_PASS.note("(dual has style_vl_text and content_vl_text)"))
    vl_system: str | None = _f(None, "str", "a system turn before the VL's user turn (Qwen3-VL's chat template): "
                                            + ", ".join(VLSystem.values()) + " (the shipped instructions, "
                                            "docs/levers.md) or any other text verbatim; not set: no system turn "
                                            "(the stock template)", X,
                               applies=VL_USED.note("; every VL pass of the recipe reads it"))
    max_image_tokens: int | None = _f(None, "int", "cap the reference's image tokens below the caption budget (the "
                                                   "processor reads a smaller image)", X,
                                      lo=1, unit="tokens", applies=VL_USED)
    pool_image_tokens: int | None = _f(None, "int", "pool each reference's image rows to at most this many tokens on "
                                                    "its own patch grid (regions, aspect ratio kept), after the "
                                                    "forward", X, lo=1, unit="tokens", applies=VL_USED)
    image_layer: int | None = _f(None, "int", "layer for image-role positions (image pads and vision markers); "
                                              "not set: layer", X,
                                 applies=ONE_PASS.note("(dual: style_layer)"))
    text_layer: int | None = _f(None, "int", "layer for template and VL-text positions; not set: layer", X,
                                applies=ONE_PASS.note("(dual: content_layer)"))
    dual: bool = _f(False, "bool", "two extractions, a style pass and a content pass, mixed at dual_ratio", X,
                    applies=VL_USED)
    style_vl_text: str = _f(VLText.NONE.value, "vl_text", "style pass: what the VL reads", X,
                            applies=DUAL)
    style_tokens: str = _f(Tokens.IMAGE.value, "choice", "style pass: token selection", X, choices=Tokens,
                           applies=DUAL)
    style_layer: int | None = _f(None, "int", "style pass: layer; not set: layer", X,
                                 applies=DUAL)
    content_vl_text: str = _f(VLText.PROMPT.value, "vl_text", "content pass: what the VL reads", X,
                              applies=DUAL)
    content_tokens: str = _f(Tokens.TEXT.value, "choice", "content pass: token selection", X, choices=Tokens,
                             applies=DUAL)
    content_layer: int | None = _f(None, "int", "content pass: layer; not set: layer", X,
                                   applies=DUAL)
    multi_image: str = _f(MultiImage.JOINT.value, "choice", "several references: one joint extraction, or one each "
                                                            "mixed by image_weights", X, choices=MultiImage,
                          applies=VL_USED)
    # ---- issue 17: attention-weighted image tokens (docs/attention_weighting.md)
    image_attention: str = _f(ImageAttention.NONE.value, "choice", "weight or select image tokens by the VL text's "
                              "attention to them: per image token, the attention probability from the VL-text "
                              "(prompt-role) positions in attention_layer, averaged over heads and prompt positions, "
                              "renormalised to sum to 1 over the image tokens", X, choices=ImageAttention,
                              applies=ONE_PASS_IMAGE_ROWS)
    image_top_k: int | None = _f(None, "int", "topk: image tokens kept per reference", X, lo=1, unit="tokens",
                                 applies=TOPK)
    attention_layer: int | None = _f(None, "int", "whose attention weights the image tokens, as a hidden-state index "
                                                  "(output_hidden_states numbering): index h reads the self-attention "
                                                  "of decoder layer h-1, the layer that produces hidden state h "
                                                  "(-1: the last decoder layer; 0, the embeddings, has none); "
                                                  "not set: the image rows' layer (image_layer, else layer)", X,
                                     applies=ATTENTION_READ)
    # ---- generation
    strength: float | None = _f(None, "float", "img2img from the first reference: 0 keeps it, 1 ignores it; "
                                               "not set: txt2img", G, lo=0.0, hi=1.0)
    seed: int = _f(0, "int", "the sampler's seed (a CPU generator: the same image on any device)", G, lo=0, hi=SEED_MAX)
    steps: int = _f(9, "int", "denoising steps (Turbo: 8-9)", G, lo=1, hi=1000, unit="steps")
    width: int = _f(1024, "int", "image width", G, lo=16, hi=8192, multiple_of=16, unit="px")
    height: int = _f(1024, "int", "image height", G, lo=16, hi=8192, multiple_of=16, unit="px")
    guidance: float = _f(0.0, "float", "classifier-free guidance scale (Turbo: 0)", G, lo=0.0)
    negative_prompt: str = _f("", "str", "the negative prompt", G,
                              applies=NEGATIVE_FROM_QWEN3.note("(Qwen3-4B encodes it for the negative branch)"))
    negative_vl_text: str | None = _f(None, "str", "issue 27: the negative branch from Qwen3-VL instead of Qwen3-4B: "
                                                   "the VL reads this text (no image) and the negative caption is "
                                                   "its hidden states at negative_tokens, negative_layer; not set: "
                                                   "Qwen3-4B's encoding of negative_prompt", G,
                                      applies=GUIDED)
    negative_tokens: str = _f(Tokens.TEXT.value, "choice", "negative_vl_text's token selection (text ones: the VL "
                                                           "reads no image for the negative)", G, choices=Tokens,
                              applies=NEGATIVE_FROM_VL)
    negative_layer: int | None = _f(None, "int", "negative_vl_text's hidden layer (transformers' output_hidden_states "
                                                 "numbering); not set: layer", G,
                                    applies=NEGATIVE_FROM_VL)
    # ---- issue 27: levers (docs/levers.md)
    vl_guidance: float = _f(0.0, "float", "guidance on the VL condition beyond guidance, in ZImagePipeline's "
                                          "convention (0 = none): pred = P(c) + guidance·(P(c) − P(neg)) + "
                                          "vl_guidance·(P(c) − P(q)), c the recipe's caption, q Qwen3-4B's caption "
                                          "of the prompt (the text-only branch); one more DiT item per step", G,
                            applies=(VL_USED & NO_SCHEDULE).note("(the text-only branch is compared with one caption "
                                                                 "for the whole run)"))

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
    def own_caption(self) -> str | None:
        """What the recipe's own conditioning is, the one rule the engine assembles and the caption planner counts:
        Source.VL (VL rows only: alpha 1 throughout), Source.QWEN3 (Qwen3-4B rows only), ALPHA_SOURCE (the alpha
        mix of both), or None (a schedule that never uses it)."""
        if not self.own_used:
            return None
        if not self.own_uses_qwen3:
            return Source.VL
        if not self.own_uses_vl:
            return Source.QWEN3
        return ALPHA_SOURCE

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
        if self.normalization in PER_REFERENCE_NORMALIZATIONS and self.uses_vl and not n_refs:
            raise UserError("moves each reference's image rows, and no reference was given", field="normalization",
                            value=self.normalization, fix="add a reference, or use per-dim")
        if self.strength is not None and not n_refs:
            raise UserError("img2img starts from the first reference, and none was given", field="strength",
                            value=self.strength, fix="add a reference")
        if self.image_weights is not None and len(self.image_weights) != n_refs:
            raise UserError(f"{len(self.image_weights)} weights for {n_refs} references", field="image_weights",
                            value=self.image_weights, fix="give one weight per reference")
        if SEPARATE(self) and VL_USED(self) and n_refs < 2:
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


# ---------------------------------------------------------------- earlier recipe schemas: what changed when
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
DEFAULTS = Recipe()


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


def _default_hint(f: dataclasses.Field) -> str:
    return "" if f.default is None else f" (default {_show_default(f.default)})"


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
