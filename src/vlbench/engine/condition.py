"""Conditioning sequences with provenance: selections of an extraction, their mixes, pooling and normalisation.

A `Seq` is the rows the DiT will receive ([L, D]), where each row came from (`rows`), the attention weight
of each row (`weights`: 1 unless an attend mix weighted it) and its contiguous runs (`segments`: an image's
rows with that image's patch grid, or a run of text rows). Every function returns a new Seq; the pure tensor
maths is in blend.py. docs/intra_vl_blending.md gives each mix × policy as a formula.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from vlbench.engine import blend
from vlbench.engine.extract import IMAGE, PROMPT, TEMPLATE, VISION_END, VISION_START, Extraction
from vlbench.errors import UserError
from vlbench.recipe import NATURAL, AttendRatio, MixPolicy, Normalization, Source

IMAGE_ROLES = frozenset({IMAGE, VISION_START, VISION_END})
TEXT_ROLES = frozenset({TEMPLATE, PROMPT})


@dataclass(frozen=True)
class Segment:
    start: int
    n: int
    grid: tuple[int, int] | None = None  # an image's (rows, columns) of tokens; None: a run of text rows
    image: bool = False  # issue 17: an image's top-k rows (image rows off their grid: grid None)


@dataclass
class Seq:
    embeds: torch.Tensor  # [L, D]
    rows: list[dict]  # per row: where it came from
    weights: torch.Tensor  # [L] float32 attention weight of each row
    segments: list[Segment] = field(default_factory=list)
    mixes: list[dict] = field(default_factory=list)  # each attend mix's account (attend), inner mixes first

    @property
    def length(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def has_image_rows(self) -> bool:
        return any(s.grid is not None or s.image for s in self.segments)

    @property
    def weighted(self) -> bool:
        return bool((self.weights != 1).any())


def _segments(roles: list[str], positions: list[int], grids: list[tuple[int, int]]) -> list[Segment]:
    """Contiguous runs of the selected rows: each image's rows (its grid, images in order) or a run of other rows.

    An image's rows are consecutive positions of the VL input; a gap in positions starts another image."""
    out: list[Segment] = []
    images = iter(grids)
    start = 0
    for i in range(1, len(roles) + 1):
        same = i < len(roles) and (roles[i] == IMAGE) == (roles[start] == IMAGE) and not (
            roles[i] == IMAGE and positions[i] != positions[i - 1] + 1)
        if not same:
            out.append(Segment(start, i - start, next(images) if roles[start] == IMAGE else None))
            start = i
    return out


def select(ex: Extraction, positions: list[int], layers: list[int], pass_name: str | None = None) -> Seq:
    """hidden_states[layer_j][position_j] for each selected position: [n, D], with provenance and runs."""
    hs = ex.hidden_states
    embeds = hs[torch.tensor(layers, device=hs.device), torch.tensor(positions, device=hs.device)]
    roles = [ex.roles[p] for p in positions]
    with_image = IMAGE in ex.roles
    rows = [{"source": "vl", "role": r, "position": p, "layer": l, "with_image": with_image}
            for r, p, l in zip(roles, positions, layers)]
    if pass_name is not None:
        rows = [dict(r, pass_=pass_name) for r in rows]
    image_grids = ex.image_grids
    seen = [i for i, r in enumerate(roles) if r == IMAGE]
    if seen and len(seen) != sum(n for n in ex.image_token_counts):
        raise UserError("selects part of an image's rows", field="tokens", fix="select whole images")
    segments = _segments(roles, positions, image_grids) if roles else []
    return Seq(embeds, rows, torch.ones(len(rows), dtype=torch.float32), segments)


def text_seq(embeds: torch.Tensor, source: str = "qwen3", layer: int = -2) -> Seq:
    n = int(embeds.shape[0])
    rows = [{"source": source, "position": i, "layer": layer} for i in range(n)]
    return Seq(embeds, rows, torch.ones(n, dtype=torch.float32), [Segment(0, n)])


# ---------------------------------------------------------------- pooling (fewer rows, each a real average)
def pool_images(seq: Seq, max_tokens: int, importance: torch.Tensor | None = None) -> Seq:
    """Each image's rows pooled on its own patch grid to at most `max_tokens` (aspect kept); text rows as they are.

    `importance` ([L] per row, used on image rows only): each cell the importance-weighted mean of its rows,
    sum a·w·x / sum a·w with a the area overlap (blend.pool_grid_weighted); None: the plain area mean."""
    counts = []
    for s in seq.segments:
        if s.grid is None:
            counts.append(s.n)
            continue
        if max_tokens > s.n:
            raise UserError(f"asks for {max_tokens} tokens from an image of {s.n} ({s.grid[0]}×{s.grid[1]})",
                            field="pool_image_tokens", value=max_tokens,
                            fix=f"give at most {s.n} (or lower max_image_tokens to read a smaller image)")
        counts.append(max_tokens)
    return _shrink_to(seq, counts, importance)


def _pooled_weights(w: torch.Tensor, pool) -> torch.Tensor:
    """The attention weights of pooled rows: the mean of their rows' weights; rows of one weight keep it exactly
    (averaging ones in float gives 0.99999994, which would count as weighted and bias the DiT's attention)."""
    pooled = pool(w)
    if bool((w == w[0]).all()):
        return torch.full_like(pooled, float(w[0]))
    return pooled


def _shrink_to(seq: Seq, counts: list[int], importance: torch.Tensor | None = None) -> Seq:
    """Each segment pooled to its count: images on their grid (grid_for), text runs in order (pool)."""
    parts, rows, weights, segments = [], [], [], []
    at = 0
    for s, k in zip(seq.segments, counts):
        if k <= 0:
            continue
        x = seq.embeds[s.start:s.start + s.n]
        w = seq.weights[s.start:s.start + s.n]
        src = seq.rows[s.start:s.start + s.n]
        if s.image:
            raise UserError("cannot pool top-k image rows: they have no patch grid", field="image_attention",
                            value="topk", fix="use attend mixes, or weighted-pool")
        if s.grid is not None:
            target = blend.grid_for(s.grid, k)
            if importance is not None:
                pooled = blend.pool_grid_weighted(x, importance[s.start:s.start + s.n], s.grid, target)
            else:
                pooled = blend.pool_grid(x, s.grid, target)
            pw = _pooled_weights(w, lambda v: blend.pool_grid(v[:, None].to(x.dtype), s.grid, target)[:, 0].float())
            grid = target
            new_rows = [dict(src[0], position=None, pooled={"grid": list(s.grid), "to": list(target), "cell": c})
                        for c in range(target[0] * target[1])] if target != s.grid else src
        else:
            pooled = blend.pool(x, k)
            pw = _pooled_weights(w, lambda v: blend.pool(v[:, None], k)[:, 0])
            grid = None
            new_rows = src if k == s.n else [dict(src[min(j * s.n // k, s.n - 1)], position=None,
                                                  pooled={"rows": s.n, "to": k, "row": j}) for j in range(k)]
        parts.append(pooled)
        weights.append(pw)
        rows += new_rows
        segments.append(Segment(at, pooled.shape[0], grid))
        at += pooled.shape[0]
    if not parts:
        raise UserError("the sequence is empty", field="conditioning", fix="select some tokens")
    return Seq(torch.cat(parts), rows, torch.cat(weights), segments, seq.mixes)


# ---------------------------------------------------------------- issue 17: attention-weighted image tokens
def image_row_weights(seq: Seq, ex: Extraction) -> torch.Tensor:
    """[L]: each image row's attention weight from ex.image_attention (by its VL position); 0 on other rows."""
    if ex.image_attention is None:
        raise RuntimeError("the extraction was made without attention_layer")
    index = {p: j for j, p in enumerate(i for i, r in enumerate(ex.roles) if r == IMAGE)}
    out = torch.zeros(seq.length, dtype=torch.float32)
    for i, row in enumerate(seq.rows):
        if row.get("role") == IMAGE and row.get("position") is not None:
            out[i] = float(ex.image_attention[index[row["position"]]])
    return out


def check_top_k(k: int, n: int, grid: tuple[int, int]) -> None:
    """top-k must keep at most an image's n tokens (its grid rows × columns)."""
    if k > n:
        raise UserError(f"keeps {k} tokens of an image of {n} ({grid[0]}×{grid[1]})", field="image_top_k", value=k,
                        fix=f"give at most {n}")


def top_k_images(seq: Seq, weights: torch.Tensor, k: int) -> Seq:
    """Each image's k rows with the largest `weights` (ties: the earlier row), in their original order; other rows
    as they are. The kept rows leave the patch grid (Segment.image, grid None)."""
    keep: list[int] = []
    segments, at = [], 0
    for s in seq.segments:
        if s.grid is None:
            keep += range(s.start, s.start + s.n)
            segments.append(Segment(at, s.n, None, s.image))
            at += s.n
            continue
        check_top_k(k, s.n, s.grid)
        w = weights[s.start:s.start + s.n]
        order = sorted(range(s.n), key=lambda j: (-float(w[j]), j))[:k]
        keep += [s.start + j for j in sorted(order)]
        segments.append(Segment(at, k, None, True))
        at += k
    idx = torch.tensor(keep, device=seq.embeds.device)
    rows = [dict(seq.rows[i], image_attention=float(weights[i])) if seq.rows[i].get("role") == IMAGE
            else seq.rows[i] for i in keep]
    return Seq(seq.embeds.index_select(0, idx), rows, seq.weights[torch.tensor(keep)], segments)


def shrink(seq: Seq, keep: int) -> Seq:
    """`seq` on `keep` rows, shared among its runs in proportion (images pooled on their grids)."""
    return _shrink_to(seq, blend.shrink_segments([(s.n, s.grid) for s in seq.segments], keep))


# ---------------------------------------------------------------- normalisation
def normalize(seq: Seq, mode: str, stats) -> Seq:
    """Each role's rows moved onto Qwen3-4B's calibrated text statistics at layer -2; attention-sink rows are never
    touched (nor counted in any statistics).

    per-dim: z-score with the role's calibrated mean/std, then Qwen3-4B's; per-dim-scale: the spread only
    (around the role's calibrated mean: one vector shared by every reference, not each reference's own); global:
    one RMS scale for the whole selection. Per reference (image rows only, each image's rows apart — references in
    a joint extraction are separate images — at their layer; text rows and vision markers as they are):
    instance: z-score with the reference's own per-dimension mean/std, then Qwen3-4B's mean/std; per-ref-mean: the
    deviation from the reference's own mean scaled by Qwen3-4B's std over the reference's own std, the mean kept.
    """
    if mode == Normalization.NONE:
        return seq
    x = seq.embeds.float()
    sinks = set(blend.sink_positions(x))
    ref = stats.get("qwen3", -2, "text", x.device)
    per_reference = mode in (Normalization.INSTANCE, Normalization.PER_REF_MEAN)
    image_of = {i: k for k, s in enumerate(seq.segments) if s.grid is not None or s.image
                for i in range(s.start, s.start + s.n)}
    groups: dict[tuple[str, int], list[int]] = {}
    for i, row in enumerate(seq.rows):
        if i in sinks or row.get("source") != Source.VL:
            continue
        if mode == Normalization.GLOBAL:
            key = ("all", 0)
        elif per_reference:
            if row["role"] != IMAGE:
                continue  # text rows and vision markers: as they are
            key = (f"image {image_of[i]}", row["layer"])
        elif row["role"] == IMAGE:
            key = ("image", row["layer"])
        elif row["role"] in TEXT_ROLES:
            key = ("image_text" if row.get("with_image") else "text", row["layer"])
        else:
            continue  # vision markers: two rows a block, no statistics of their own; left as they are
        groups.setdefault(key, []).append(i)
    out = x.clone()
    for (role, layer), keep in groups.items():
        idx = torch.tensor(keep, device=x.device)
        rows = x.index_select(0, idx)
        if mode == Normalization.GLOBAL:
            rows = blend.normalize_global(rows, ref["rms"])
        elif per_reference:  # this reference's own statistics over its image rows at this layer
            own_mean, own_std = blend.dim_stats(rows)
            target_mean = ref["mean"] if mode == Normalization.INSTANCE else own_mean
            rows = blend.normalize_per_dim(rows, own_mean, own_std, target_mean, ref["std"])
        else:
            src = stats.get("vl", layer, role, x.device)
            if mode == Normalization.PER_DIM:
                rows = blend.normalize_per_dim(rows, src["mean"], src["std"], ref["mean"], ref["std"])
            else:  # per-dim-scale: the spread onto Qwen3-4B's around the role's calibrated mean
                rows = blend.normalize_per_dim(rows, src["mean"], src["std"], src["mean"], ref["std"])
        out.index_copy_(0, idx, rows)
    moved = {i for keep in groups.values() for i in keep}
    rows = [dict(r, normalized="sink, untouched" if i in sinks else mode if i in moved or not per_reference
                 else "untouched") for i, r in enumerate(seq.rows)]
    return replace(seq, embeds=out.to(seq.embeds.dtype), rows=rows)


# ---------------------------------------------------------------- mixes: base at ratio 0, other at ratio 1
def mix(base: Seq, other: Seq, ratio, policy: str, knob: str, meaning: str = AttendRatio.SHARE) -> Seq:
    """Mix two sequences under a named policy (MixPolicy); `ratio` is a float (or, positionwise, [L] ratios; attend:
    also NATURAL); `meaning`: what an attend ratio means (AttendRatio)."""
    if other.embeds.device != base.embeds.device or other.embeds.dtype != base.embeds.dtype:
        other = replace(other, embeds=other.embeds.to(base.embeds.device, base.embeds.dtype))
    if policy == MixPolicy.ATTEND:
        return attend(base, other, ratio if ratio == NATURAL else float(ratio), knob, meaning)
    if policy == MixPolicy.SPLIT:
        return split(base, other, float(ratio), knob)
    if policy == MixPolicy.POSITIONWISE:
        return positionwise(base, other, ratio, knob)
    raise ValueError(f"unknown mix policy {policy!r}")


def _tagged(seq: Seq, knob: str, policy: str, side: str, weight: float | None = None) -> list[dict]:
    extra = {"mix": knob, "policy": policy, "from": side}
    if weight is not None:
        extra["weight"] = weight
    return [dict(r, **{f"{knob}_mix": extra}) for r in seq.rows]


def attend(base: Seq, other: Seq, ratio, knob: str, meaning: str = AttendRatio.SHARE) -> Seq:
    """[base; other], each source's rows' weights scaled: share (the default) by blend.share_weights, so that with
    equal logits the other source receives r of the caption's attention whatever the sources' sizes (masses: the
    sums of their rows' weights, so nested mixes compose as shares); token-odds by blend.attend_weights (r/(1-r)
    per row); NATURAL by nothing (plain concatenation). A weight of 0 drops that source."""
    mass_b, mass_o = float(base.weights.sum()), float(other.weights.sum())
    if ratio == NATURAL:
        wb, wo = 1.0, 1.0
    elif meaning == AttendRatio.TOKEN_ODDS:
        wb, wo = blend.attend_weights(ratio)
    else:
        wb, wo = blend.share_weights(ratio, mass_b, mass_o)
    kept = [(s, w, side) for s, w, side in ((base, wb, "base"), (other, wo, "other")) if w > 0]
    rows, segments, at = [], [], 0
    for s, w, side in kept:
        rows += _tagged(s, knob, MixPolicy.ATTEND, side, w)
        segments += [Segment(seg.start + at, seg.n, seg.grid) for seg in s.segments]
        at += s.length
    account = {"mix": knob, "policy": MixPolicy.ATTEND.value, "ratio": ratio,
               "meaning": "natural" if ratio == NATURAL else str(meaning), "rows": [base.length, other.length],
               "mass": [mass_b, mass_o], "weights": [wb, wo],
               "natural_share": mass_o / (mass_b + mass_o), "prior_share": blend.prior_share(mass_b, mass_o, wb, wo)}
    return Seq(torch.cat([s.embeds for s, _, _ in kept]), rows, torch.cat([s.weights * w for s, w, _ in kept]),
               segments, base.mixes + other.mixes + [account])


def split(base: Seq, other: Seq, ratio: float, knob: str) -> Seq:
    """[shrink(base, round((1-r)·Lb)); shrink(other, round(r·Lo))]: a share of caption tokens (steps in r)."""
    kb, ko = blend.split_counts(base.length, other.length, ratio)
    parts = [(shrink(s, k), side) for s, k, side in ((base, kb, "base"), (other, ko, "other")) if k]
    rows, segments, at = [], [], 0
    for s, side in parts:
        rows += _tagged(s, knob, MixPolicy.SPLIT, side)
        segments += [Segment(seg.start + at, seg.n, seg.grid) for seg in s.segments]
        at += s.length
    return Seq(torch.cat([s.embeds for s, _ in parts]), rows, torch.cat([s.weights for s, _ in parts]), segments,
               base.mixes + other.mixes)


def positionwise(base: Seq, other: Seq, ratio, knob: str) -> Seq:
    """Row j = (1 - r_j)·base_j + r_j·other_j, for sequences that match token for token (text rows only)."""
    if base.length != other.length or base.has_image_rows or other.has_image_rows:
        what = "image rows" if base.has_image_rows or other.has_image_rows else "their lengths differ"
        raise UserError(f"pairs rows one to one, but the sequences do not match token for token "
                        f"(base {base.length} rows, other {other.length}: {what})", field=f"{_policy_field(knob)}",
                        value=MixPolicy.POSITIONWISE.value,
                        fix="use attend or split, or the VL's text tokens of the prompt (tokens text, vl_text prompt)")
    if base.weighted or other.weighted:
        raise UserError("cannot mix rows that carry attention weights row by row", field=_policy_field(knob),
                        value=MixPolicy.POSITIONWISE.value, fix="use attend for the inner mix too")
    embeds = blend.mix(base.embeds, other.embeds, ratio)
    per_row = ratio.tolist() if isinstance(ratio, torch.Tensor) else [float(ratio)] * base.length
    rows = [{"mix": knob, "policy": MixPolicy.POSITIONWISE.value, "weight_other": w, "base": b, "other": o}
            for w, b, o in zip(per_row, base.rows, other.rows)]
    return Seq(embeds, rows, base.weights.clone(), list(base.segments))


def check_token_pairs(base_ids: list[int], other_ids: list[int], knob: str, tokenizer=None) -> None:
    """A positionwise mix pairs row j with row j: both sequences must hold the same token at every row (the VL's
    text tokens of the prompt against Qwen3-4B's encoding of it). Refused in one line naming the rows that differ."""
    if len(base_ids) != len(other_ids):
        return  # positionwise refuses different lengths itself
    differ = [j for j, (a, b) in enumerate(zip(base_ids, other_ids)) if a != b]
    if not differ:
        return
    show = (lambda i: repr(tokenizer.decode([i]))) if tokenizer is not None else str
    shown = ", ".join(f"{j} ({show(base_ids[j])} vs {show(other_ids[j])})" for j in differ[:5])
    more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
    raise UserError(f"pairs rows one to one, and the tokens differ at rows {shown}{more}", field=_policy_field(knob),
                    value=MixPolicy.POSITIONWISE.value,
                    fix="give the VL the prompt itself (vl_text prompt, tokens text), or use attend or split")


def _policy_field(knob: str) -> str:
    return {"alpha": "alpha_policy", "intra_ratio": "intra_policy", "dual_ratio": "dual_policy"}[knob]


def average_references(seqs: list[Seq], weights) -> Seq:
    """multi_image separate: one sequence per reference, averaged row by row with `weights`.

    Each image is pooled on its own grid to the references' common grid (the smallest rows × the smallest
    columns), so row j of every reference is the same relative region; text rows correspond token for token
    (the same VL text)."""
    grids = [[s.grid for s in seq.segments if s.grid is not None] for seq in seqs]
    if any(len(g) != 1 for g in grids):
        raise UserError("each reference's extraction must hold exactly one image", field="multi_image",
                        value="separate")
    common = (min(g[0][0] for g in grids), min(g[0][1] for g in grids))
    pooled = [_to_grid(seq, common) for seq in seqs]
    lengths = {s.length for s in pooled}
    if len(lengths) != 1:
        raise UserError("the references' sequences do not line up row by row (their text differs)",
                        field="multi_image", value="separate", fix="use multi_image joint")
    total = float(sum(weights))
    acc = torch.zeros_like(pooled[0].embeds, dtype=torch.float32)
    for seq, w in zip(pooled, weights):
        acc += (w / total) * seq.embeds.float()
    rows = [dict(r, image_weights=[w / total for w in weights]) for r in pooled[0].rows]
    return Seq(acc.to(pooled[0].embeds.dtype), rows, pooled[0].weights, pooled[0].segments)


def _to_grid(seq: Seq, grid: tuple[int, int]) -> Seq:
    """Each image segment pooled to exactly `grid` (which lies within it)."""
    parts, rows, segments, at = [], [], [], 0
    for s in seq.segments:
        x = seq.embeds[s.start:s.start + s.n]
        if s.grid is not None and s.grid != grid:
            x = blend.pool_grid(x, s.grid, grid)
            new_rows = [dict(seq.rows[s.start], position=None, pooled={"grid": list(s.grid), "to": list(grid),
                                                                         "cell": c}) for c in range(x.shape[0])]
        else:
            new_rows = seq.rows[s.start:s.start + s.n]
        parts.append(x)
        rows += new_rows
        segments.append(Segment(at, x.shape[0], grid if s.grid is not None else None))
        at += x.shape[0]
    return Seq(torch.cat(parts), rows, torch.ones(at, dtype=torch.float32), segments)
