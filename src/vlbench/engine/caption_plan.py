"""The caption's budget, planned for the whole caption before any reference is sized (issue 23). Torch-free.

The DiT reads at most `budget` caption rows (Models.caption_budget: axes_lens[0] - 32). A caption is assembled from
parts — Qwen3-4B's prompt rows (Z-Image's template included), the rows a VL selection keeps of each extraction (its
chat template, its text, two vision markers and the image tokens of each reference), the dual pass, pooled or top-k
image rows — and mixed (attend: side by side; split: a share of each; positionwise: row by row). Every part except
the references' image tokens has a size known before the VL runs; `plan_caption` computes each, then gives the
references' image tokens what is left: `CaptionPlan.image_budget`, the image tokens each VL input may hold (one rule
for every extraction of the job), to which the engine sizes each reference (extract._fit: the smaller of this and
what the VL input leaves of the budget, the rule before issue 23). When even the smallest references cannot fit, it
refuses in one line naming what each part wants, before any model loads (precheck) and before any forward (engine).

Exact or an upper bound (`CaptionPlan.length` against the caption the engine assembles):
  exact: every selection (tokens full / image / text / prompt / image-markers / image+template) of one joint
    extraction or a dual pass, intra / dual / alpha mixes with attend (sides dropped at ratio 0 and 1 included) or
    positionwise, schedules, vl_blocks' added Qwen3-4B rows, top-k (k rows per image), a split mix of text rows;
  an upper bound (never below the real length, so no overflow): pool_image_tokens / weighted-pool (k rows per image;
    the pooled grid may hold fewer cells, blend.grid_for), a split mix over image rows (each image keeps the cells of
    grid_for of its share), multi_image separate (the references' common grid is at most the smallest reference).
The negative caption (negative_prompt, negative_vl_text) and vl_guidance's text-only branch are captions of their own,
each checked against the budget by generate.check_caption; they take nothing from this one.
The text bridge's description is generated before the caption is planned in the engine (its Qwen3-4B rows are then
exact); the pre-load check, which cannot generate it, counts the prompt alone (a lower bound: it refuses only what
can never fit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from vlbench.errors import CaptionTooLong
from vlbench.recipe import ALPHA_SOURCE, NATURAL, ImageAttention, MixPolicy, MultiImage, Source, Tokens, schedule_alpha

# Roles of positions in the VL input (extract.py uses these).
TEMPLATE, PROMPT, VISION_START, IMAGE, VISION_END = "template", "prompt", "vision_start", "image", "vision_end"
SELECTION_ROLES: dict[str, frozenset[str]] = {
    Tokens.FULL: frozenset({TEMPLATE, PROMPT, VISION_START, IMAGE, VISION_END}),
    Tokens.IMAGE: frozenset({IMAGE}),
    Tokens.IMAGE_MARKERS: frozenset({VISION_START, IMAGE, VISION_END}),
    Tokens.IMAGE_TEMPLATE: frozenset({TEMPLATE, IMAGE}),
    Tokens.TEXT: frozenset({TEMPLATE, PROMPT}),
    Tokens.PROMPT: frozenset({PROMPT}),
}
QWEN3_PART = "Qwen3-4B prompt"
FIX = ("shorten the prompt (or the VL text), give fewer references, or keep fewer VL rows (tokens image or text, "
       "pool_image_tokens, a split mix)")


@dataclass(frozen=True)
class VLCounts:
    """One VL input's positions by role, counted without pixels: everything but the references' image tokens."""

    template: int  # TEMPLATE positions (the chat template, a system turn)
    prompt: int  # PROMPT positions (the VL text)
    images: int  # references in this input: each adds a vision_start and a vision_end position around its tokens

    @property
    def text_tokens(self) -> int:
        """The input's positions other than image tokens: what extract._fit leaves out of the image tokens."""
        return self.template + self.prompt + 2 * self.images

    def fixed_rows(self, tokens: str) -> int:
        """Rows of selection `tokens` that are not image tokens."""
        roles = SELECTION_ROLES[tokens]
        return ((self.template if TEMPLATE in roles else 0) + (self.prompt if PROMPT in roles else 0)
                + (self.images if VISION_START in roles else 0) + (self.images if VISION_END in roles else 0))


# ---------------------------------------------------------------- the caption as an expression
@dataclass(frozen=True)
class Qwen3:
    rows: int

    def length(self, t: Sequence[int], lower: bool = False) -> int:
        return self.rows

    def has_non_vl(self, t: Sequence[int]) -> bool:
        return True


@dataclass(frozen=True)
class Selection:
    """The rows a selection keeps of one or more extractions (several: multi_image separate, averaged on the
    references' common grid — at most the smallest's rows)."""

    name: str  # for messages: "VL text", "VL text (style pass)"
    tokens: str
    counts: tuple[VLCounts, ...]
    extractions: tuple[int, ...]
    per_image: int | None = None  # top-k / pooling: rows per image whatever its tokens (pooling: at most)
    exact: bool = True

    @property
    def has_images(self) -> bool:
        return IMAGE in SELECTION_ROLES[self.tokens] and any(c.images for c in self.counts)

    def fixed(self) -> int:
        return self.counts[0].fixed_rows(self.tokens)

    def length(self, t: Sequence[int], lower: bool = False) -> int:
        """Rows given each extraction's image tokens `t`; `lower`: a lower bound where the count is only bounded above
        (a pooled or averaged image keeps at least one row)."""
        out = []
        for c, e in zip(self.counts, self.extractions):
            image = 0
            if IMAGE in SELECTION_ROLES[self.tokens] and c.images:
                if lower and not self.exact:
                    image = c.images
                else:
                    image = c.images * self.per_image if self.per_image is not None else t[e]
            out.append(c.fixed_rows(self.tokens) + image)
        return min(out)

    def has_non_vl(self, t: Sequence[int]) -> bool:
        return False


@dataclass(frozen=True)
class Mix:
    policy: str  # attend | split | positionwise
    ratio: object  # a float or "natural"
    base: object
    other: object

    def _kept(self) -> tuple[bool, bool]:
        if self.policy != MixPolicy.ATTEND or self.ratio == NATURAL:
            return True, True
        r = float(self.ratio)
        return r != 1.0, r != 0.0  # a weight of 0 drops that side (blend.share_weights / attend_weights)

    def length(self, t: Sequence[int], lower: bool = False) -> int:
        if lower and not _exact(self):  # a split over image rows: shrink may keep fewer cells than its share
            return 0
        b, o = self.base.length(t, lower), self.other.length(t, lower)
        if self.policy == MixPolicy.SPLIT:
            kb, ko = split_counts(b, o, float(self.ratio))
            return kb + ko
        if self.policy == MixPolicy.POSITIONWISE:
            return b
        keep_b, keep_o = self._kept()
        return (b if keep_b else 0) + (o if keep_o else 0)

    def has_non_vl(self, t: Sequence[int]) -> bool:
        if self.policy == MixPolicy.POSITIONWISE:
            return True  # its rows name the mix, not a source (condition.positionwise)
        if self.policy == MixPolicy.SPLIT:
            kb, ko = split_counts(self.base.length(t), self.other.length(t), float(self.ratio))
            return (kb > 0 and self.base.has_non_vl(t)) or (ko > 0 and self.other.has_non_vl(t))
        keep_b, keep_o = self._kept()
        return (keep_b and self.base.has_non_vl(t)) or (keep_o and self.other.has_non_vl(t))


@dataclass(frozen=True)
class WithQwen3:
    """vl_blocks: a caption of VL rows alone gets Qwen3-4B's rows first (Engine._vl_blocks)."""

    inner: object
    qwen3: Qwen3

    def length(self, t: Sequence[int], lower: bool = False) -> int:
        n = self.inner.length(t, lower)
        return n if self.inner.has_non_vl(t) else n + self.qwen3.rows

    def has_non_vl(self, t: Sequence[int]) -> bool:
        return True


def split_counts(base_len: int, other_len: int, ratio: float) -> tuple[int, int]:
    """blend.split_counts without torch: (round((1-r) * base_len), round(r * other_len)), halves up."""
    return math.floor((1 - ratio) * base_len + 0.5), math.floor(ratio * other_len + 0.5)


def _leaves(node) -> list:
    if isinstance(node, Mix):
        return _leaves(node.base) + _leaves(node.other)
    if isinstance(node, WithQwen3):
        return _leaves(node.inner) + [node.qwen3]
    return [node]


def _exact(node) -> bool:
    if isinstance(node, Selection):
        return node.exact
    if isinstance(node, Qwen3):
        return True
    if isinstance(node, WithQwen3):
        return _exact(node.inner)
    if node.policy == MixPolicy.SPLIT and any(isinstance(leaf, Selection) and leaf.has_images for leaf in _leaves(node)):
        return False  # shrink pools each image to grid_for of its share: at most that many cells
    return _exact(node.base) and _exact(node.other)


# ---------------------------------------------------------------- the plan
@dataclass
class CaptionPlan:
    """What every part of a job's caption wants, and what is left for the references' image tokens."""

    budget: int
    captions: list  # every caption the DiT reads (a schedule: one per entry), as expressions over image tokens
    extractions: int  # VL inputs of the job (dual: 2, separate: one per reference, else 1; 0 without the VL)
    image_budget: int | None  # image tokens each VL input may hold; None: the caption sets no limit
    exact: bool  # length() is the assembled caption's length (else an upper bound of it)
    parts: dict[str, int] = field(default_factory=dict)  # each part's rows other than image tokens, for messages

    def length(self, image_tokens: Sequence[int], lower: bool = False) -> int:
        """The longest caption, given each VL input's image tokens (in the engine's extraction order): exact or an
        upper bound (`exact`); `lower`: a lower bound instead (what a refusal may rely on)."""
        return max((c.length(image_tokens, lower) for c in self.captions), default=0)


def vl_inputs(recipe, prompt: str, refs: Sequence) -> list[tuple]:
    """(references, VL text, system text) of each VL input a job extracts, in the engine's order (Engine._vl_sequence:
    dual: the style pass, then the content pass; multi_image separate: one per reference; else one, all references)."""
    if not recipe.uses_vl:
        return []
    system = recipe.resolve_vl_system()
    if recipe.dual:
        return [(list(refs), recipe.resolve_vl_text(prompt, recipe.style_vl_text), system),
                (list(refs), recipe.resolve_vl_text(prompt, recipe.content_vl_text), system)]
    text = recipe.resolve_vl_text(prompt)
    if recipe.multi_image == MultiImage.SEPARATE and len(refs) > 1:
        return [([r], text, system) for r in refs]
    return [(list(refs), text, system)]


def vl_tree(recipe, counts: Sequence[VLCounts]):
    """The VL sequence as Engine._vl_sequence assembles it; `counts` in the engine's extraction order (dual: the
    style pass, then the content pass; multi_image separate: one per reference; else one)."""
    per_image, exact = None, True
    if recipe.image_attention == ImageAttention.TOPK:
        per_image = recipe.image_top_k
    elif recipe.image_attention != ImageAttention.NONE or recipe.pool_image_tokens is not None:
        per_image, exact = recipe.pool_image_tokens, False

    def sel(tokens, name, which):
        cs = tuple(counts[i] for i in which)
        images = IMAGE in SELECTION_ROLES[tokens] and any(c.images for c in cs)
        return Selection(name, tokens, cs, tuple(which), per_image if images else None,
                         (exact if images else True) and len(which) == 1)

    if recipe.dual:
        style = sel(recipe.style_tokens, "VL style pass", [0])
        content = sel(recipe.content_tokens, "VL content pass", [1])
        return Mix(recipe.dual_policy, recipe.dual_ratio, content, style)
    which = list(range(len(counts))) if recipe.multi_image == MultiImage.SEPARATE and len(counts) > 1 else [0]
    if recipe.intra_ratio is None:
        return sel(recipe.tokens, "VL", which)
    return Mix(recipe.intra_policy, recipe.intra_ratio, sel("text", "VL text", which),
               sel("image", "VL image", which))


def captions(recipe, vl, qwen3: Qwen3 | None) -> list:
    """Every caption the DiT reads, as Engine.condition assembles them."""
    def alpha_mix(ratio):
        return Mix(recipe.alpha_policy, ratio, qwen3, vl)

    kind = recipe.own_caption
    own = alpha_mix(recipe.alpha) if kind == ALPHA_SOURCE else {Source.VL: vl, Source.QWEN3: qwen3}.get(kind)
    entries = recipe.schedule_entries
    by_source = {Source.RECIPE: own, Source.VL: vl, Source.QWEN3: qwen3}
    out = []
    for _, source in entries:
        ratio = schedule_alpha(source)
        out.append(alpha_mix(ratio) if ratio is not None and source not in by_source else by_source[source])
    first = out[0] if out else own
    if recipe.vl_blocks is not None and qwen3 is not None:
        first = WithQwen3(first, qwen3)
    return [c for c in [first, *out] if c is not None]


def plan_caption(recipe, budget: int, qwen3_rows: int | None, vl_counts: Sequence[VLCounts],
                 min_image_tokens: Sequence[int] | None = None) -> CaptionPlan:
    """The whole caption's budget for one job, before any reference is sized (the engine and the pre-load check).

    `qwen3_rows`: Qwen3-4B's rows of the prompt (None when the recipe does not encode it); `vl_counts`: each VL
    input's positions other than image tokens, in the engine's extraction order; `min_image_tokens`: the fewest
    image tokens each VL input's references can take (the processor at its smallest size; default 1 a reference).
    CaptionTooLong (a UserError, field conditioning) when the caption cannot fit even with the smallest references."""
    qwen3 = Qwen3(qwen3_rows) if qwen3_rows is not None else None
    vl = vl_tree(recipe, vl_counts) if recipe.uses_vl and vl_counts else None
    nodes = captions(recipe, vl, qwen3)
    m = len(vl_counts) if vl is not None else 0
    lows = list(min_image_tokens) if min_image_tokens is not None else [c.images for c in vl_counts]
    lows = (lows + [0] * m)[:m]
    parts: dict[str, int] = {}
    for node in nodes:
        for leaf in _leaves(node):
            if isinstance(leaf, Qwen3):
                parts[QWEN3_PART] = leaf.rows
            else:
                parts[leaf.name] = leaf.fixed()
    plan = CaptionPlan(budget, nodes, m, None, all(_exact(n) for n in nodes), parts)
    smallest = plan.length(lows, lower=True)  # refused only when it can never fit
    if smallest > budget:
        raise CaptionTooLong(refusal(plan, nodes, lows), field="conditioning", fix=FIX)
    if m and plan.length([budget] * m) > budget:  # the references' tokens matter: the most each may hold
        lo, hi = max(lows), budget
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if plan.length([max(mid, low) for low in lows]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        plan.image_budget = lo
    return plan


def refusal(plan: CaptionPlan, nodes: list, lows: Sequence[int]) -> str:
    """One line: the budget, what each part wants, and what the smallest references need."""
    shown = [f"{name} {rows}" for name, rows in plan.parts.items() if rows]
    images = sorted({leaf for node in nodes for leaf in _leaves(node) if isinstance(leaf, Selection)
                     and leaf.has_images}, key=lambda s: s.name)
    if images:
        passes = len(images)
        first = images[0]
        n = sum(c.images for c in first.counts) // len(first.counts) or 1
        if first.per_image is not None:
            each = first.per_image if first.exact else 1  # pooled: at least one row an image
        else:
            each = max(1, math.ceil(lows[first.extractions[0]] / n))
        shown.append(f"references need >= {each} each ×{n * passes}" + (f" ({passes} VL passes)" if passes > 1
                                                                          else ""))
    total = plan.length(lows, lower=True)
    return (f"caption over the budget of {plan.budget}: {', '.join(shown)} ({total} tokens"
            + (" with the smallest references)" if images else ")"))
