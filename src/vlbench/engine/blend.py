"""Blending conditioning sequences: pure tensor functions, no I/O, no models.

A sequence is a 2-D `[L, D]` tensor of hidden states, one row per token position. Functions compute
in float32 and return the dtype of their first (base) input; bad arguments raise a one-line ValueError.
"""

from __future__ import annotations

import math

import torch

from vlbench.recipe import Curve, Normalization

NORMALIZATIONS = Normalization.values()

# Per-token ratio profiles for ratio_curve: t in [0, 1] -> weight of `end` in [0, 1].
_EASINGS = {
    Curve.CONSTANT: lambda t: torch.zeros_like(t),
    Curve.LINEAR: lambda t: t,
    Curve.EASE_IN: lambda t: t * t,
    Curve.EASE_OUT: lambda t: 1 - (1 - t) ** 2,
}
RATIO_SHAPES = tuple(_EASINGS)


# ---- argument checks ----


def _check_seq(x, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        got = f"shape {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D [L, D] tensor, got {got}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} has no rows; a sequence needs at least one token")


def _check_same_width(base: torch.Tensor, other: torch.Tensor) -> None:
    if base.shape[1] != other.shape[1]:
        raise ValueError(f"widths differ: base has D={base.shape[1]}, other has D={other.shape[1]}")


def _check_length(length) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}")


def _number(value, name: str) -> float:
    """A finite Python number or 0-d tensor as a float."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 0:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {list(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _scalar_ratio(ratio) -> float:
    r = _number(ratio, "ratio")
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {r!r}")
    return r


def _ratio_weight(ratio, length: int, device: torch.device) -> float | torch.Tensor:
    """A float, or a [L] tensor of per-position ratios as a float32 [L, 1] column."""
    if not isinstance(ratio, torch.Tensor) or ratio.ndim == 0:
        return _scalar_ratio(ratio)
    if ratio.shape != (length,):
        raise ValueError(f"per-position ratio must have shape [{length}], got {list(ratio.shape)}")
    weight = ratio.to(device=device, dtype=torch.float32)
    if not bool(((weight >= 0) & (weight <= 1)).all()):
        raise ValueError("per-position ratio values must all be in [0, 1]")
    return weight[:, None]


# ---- position-wise mix ----


def mix(base: torch.Tensor, other: torch.Tensor, ratio: float | torch.Tensor) -> torch.Tensor:
    """Position-wise linear mix `(1 - r) * base + r * other`.

    base, other: [L, D]; ratio: a float or a [L] tensor of per-position ratios, all in [0, 1].
    Returns [L, D] in base's dtype. torch.lerp is exact at both ends: ratio 0 gives base and ratio 1
    gives other bit for bit (other cast to base's dtype), and it is continuous in between.
    """
    _check_seq(base, "base")
    _check_seq(other, "other")
    if other.shape != base.shape:
        raise ValueError(
            f"mix needs equal shapes, got base {list(base.shape)} and other {list(other.shape)}; "
            "map other onto base's length first (map_length)"
        )
    weight = _ratio_weight(ratio, base.shape[0], base.device)
    return torch.lerp(base.float(), other.float(), weight).to(base.dtype)


# ---- pooling: fewer rows, each a real average ----


def _area_weights(n: int, length: int, device: torch.device) -> torch.Tensor:
    """[length, n] area-overlap weights; row j averages input over [j*n/length, (j+1)*n/length).

    In units of 1/length of an input row, input row i spans [i*length, (i+1)*length) and output
    row j spans [j*n, (j+1)*n): integer endpoints, so the overlaps are exact. Each output window
    is n units long, hence weight = overlap / n and every row of weights sums to 1.
    """
    i = torch.arange(n, device=device)[None, :]
    j = torch.arange(length, device=device)[:, None]
    lo = torch.maximum(j * n, i * length)
    hi = torch.minimum((j + 1) * n, (i + 1) * length)
    return (hi - lo).clamp(min=0).to(torch.float32) / n


def pool(x: torch.Tensor, length: int) -> torch.Tensor:
    """Antialiased area pooling of a run of rows (text order) onto `length` rows.

    x: [N, D] -> [length, D]. Output row j is the overlap-weighted mean of x over the fractional
    window [j*N/length, (j+1)*N/length): shrinking averages every input row, growing gives each output
    a piece of one or two inputs. Constants pool to themselves, the mean over rows is preserved, and
    length == N returns x itself. For text runs only: image rows pool on their grid (pool_grid).
    """
    _check_seq(x)
    _check_length(length)
    n = x.shape[0]
    if length == n:
        return x
    weights = _area_weights(n, length, x.device)  # dense is fine for the lengths we meet (<= 4096)
    return (weights @ x.float()).to(x.dtype)


def pool_grid(x: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """Area pooling of image rows on their own patch grid: x [h*w, D] in raster order -> [h2*w2, D].

    Each output row is the overlap-weighted mean of the input over one rectangle of the grid (separable
    area weights on rows and columns): a pooled token is a region, never a horizontal band. Constants
    pool to themselves; target == grid returns x itself.
    """
    _check_seq(x)
    (h, w), (h2, w2) = grid, target
    if h * w != x.shape[0]:
        raise ValueError(f"grid {h}×{w} does not hold {x.shape[0]} rows")
    if not (1 <= h2 <= h and 1 <= w2 <= w):
        raise ValueError(f"target grid {h2}×{w2} must lie within the source grid {h}×{w}")
    if (h2, w2) == (h, w):
        return x
    wh = _area_weights(h, h2, x.device)  # [h2, h]
    ww = _area_weights(w, w2, x.device)  # [w2, w]
    out = torch.einsum("ah,bw,hwd->abd", wh, ww, x.float().reshape(h, w, -1))
    return out.reshape(h2 * w2, -1).to(x.dtype)


def pool_grid_weighted(x: torch.Tensor, w: torch.Tensor, grid: tuple[int, int],
                       target: tuple[int, int]) -> torch.Tensor:
    """pool_grid with a weight per row: each output row sum a·w·x / sum a·w over its rectangle (a: the area overlap
    pool_grid uses). Equal weights give pool_grid (up to rounding); a cell whose weights are all 0 takes the plain
    mean."""
    _check_seq(x)
    if w.shape != (x.shape[0],) or bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise ValueError("weights must be one finite number >= 0 per row")
    wf = w.to(x.device, torch.float32)[:, None]
    num = pool_grid(x.float() * wf, grid, target)
    den = pool_grid(wf, grid, target)
    plain = pool_grid(x.float(), grid, target)
    out = torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float32).tiny), plain)
    return out.to(x.dtype)


def grid_for(grid: tuple[int, int], tokens: int) -> tuple[int, int]:
    """A grid of at most `tokens` cells within `grid`, keeping its aspect ratio: among the grids with at least
    3/4 of the most cells possible, the one whose rows/columns ratio is closest to the source's."""
    h, w = grid
    if tokens >= h * w:
        return grid
    candidates = [(rows, min(w, tokens // rows)) for rows in range(1, min(h, max(tokens, 1)) + 1)
                  if tokens // rows >= 1]
    most = max(r * c for r, c in candidates)
    aspect = math.log(h / w)
    return min((c for c in candidates if c[0] * c[1] >= 0.75 * most),
               key=lambda c: (abs(math.log(c[0] / c[1]) - aspect), -c[0] * c[1]))


def attend_weights(ratio: float) -> tuple[float, float]:
    """(w_base, w_other) of an attend mix under `attend_ratio = "token-odds"` (every attend ratio before recipe schema
    3): w_other / w_base = r / (1 - r) per row, whatever the sources' sizes, the larger weight 1.

    r = 0.5 gives (1, 1): plain concatenation; r = 0 gives (1, 0) and r = 1 gives (0, 1): a weight of 0 drops that
    source (exactly the other one alone). Continuous in r.
    """
    r = _scalar_ratio(ratio)
    if r <= 0.5:
        return 1.0, (r / (1 - r))
    return ((1 - r) / r), 1.0


def share_weights(ratio: float, mass_base: float, mass_other: float) -> tuple[float, float]:
    """(s_base, s_other) of an attend mix whose ratio is a share (`attend_ratio = "share"`, the default): the factors
    on each source's row weights such that, with equal attention logits, the other source receives exactly r of the
    caption's attention: s_o·M_o / (s_b·M_b + s_o·M_o) = r, i.e. s_o / s_b = r / (1 - r) · M_b / M_o, the larger 1.

    M is a source's mass, the sum of its rows' attention weights (its row count when unweighted), so nested mixes
    compose as shares. r = 0 gives (1, 0) and r = 1 gives (0, 1) (that source alone); the natural share
    M_o / (M_b + M_o) gives (1, 1) up to rounding (`NATURAL` spells it exactly)."""
    r = _scalar_ratio(ratio)
    mb, mo = _number(mass_base, "mass_base"), _number(mass_other, "mass_other")
    if mb <= 0 or mo <= 0:
        raise ValueError(f"source masses must be > 0, got {mb!r} and {mo!r}")
    if r == 0.0:
        return 1.0, 0.0
    if r == 1.0:
        return 0.0, 1.0
    odds = r / (1 - r) * mb / mo
    return (1.0, odds) if odds <= 1 else (1 / odds, 1.0)


def prior_share(mass_base: float, mass_other: float, s_base: float, s_other: float) -> float:
    """The other source's share of the caption attention with equal logits: s_o·M_o / (s_b·M_b + s_o·M_o)."""
    return s_other * mass_other / (s_base * mass_base + s_other * mass_other)


def split_counts(base_len: int, other_len: int, ratio: float) -> tuple[int, int]:
    """Rows kept by a split mix: (round((1-r) * base_len), round(r * other_len)), halves up; monotone in r."""
    _check_length(base_len)
    _check_length(other_len)
    r = _scalar_ratio(ratio)
    return math.floor((1 - r) * base_len + 0.5), math.floor(r * other_len + 0.5)


def shrink_segments(segments: list[tuple[int, tuple[int, int] | None]], keep: int) -> list[int]:
    """How many rows each segment keeps when a sequence of `segments` shrinks to `keep` rows.

    segments: (rows, grid or None) per contiguous run — an image's rows (with its patch grid) or a run of
    text rows. Rows are shared in proportion to each segment's size (largest remainders), every kept segment
    at least 1 row; an image keeps the cells of grid_for(grid, its share).
    """
    total = sum(n for n, _ in segments)
    if keep >= total:
        return [n for n, _ in segments]
    shares = [keep * n / total for n, _ in segments]
    counts = [math.floor(s) for s in shares]
    for i in sorted(range(len(shares)), key=lambda i: shares[i] - counts[i], reverse=True)[: keep - sum(counts)]:
        counts[i] += 1
    out = []
    for (n, grid), k in zip(segments, counts):
        if grid is not None and k:
            rows, cols = grid_for(grid, k)
            k = rows * cols
        out.append(min(n, k))
    return out


def ratio_curve(length: int, start: float, end: float, shape: str) -> torch.Tensor:
    """Per-token ratios from `start` at the first position to `end` at the last -> float32 [length].

    shape: "constant" (all start), "linear", "ease-in" (t**2) or "ease-out" (1 - (1-t)**2), with
    t = position / (length - 1). Values are clamped to [0, 1]; length 1 gives [start].
    """
    _check_length(length)
    if shape not in _EASINGS:
        raise ValueError(f"unknown ratio shape {shape!r}; choose one of {', '.join(RATIO_SHAPES)}")
    t = torch.arange(length, dtype=torch.float32) / max(length - 1, 1)
    ends = torch.full_like(t, _number(start, "start")), torch.full_like(t, _number(end, "end"))
    return torch.lerp(*ends, _EASINGS[shape](t)).clamp(0.0, 1.0)  # lerp: exact start and end


# ---- statistics and normalisation ----


def dim_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension (mean [D], std [D]) over the rows of x [L, D]; population std, float32."""
    _check_seq(x)
    xf = x.float()
    return xf.mean(0), xf.std(0, correction=0)


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square over every entry of x [L, D] -> 0-d float32 tensor."""
    _check_seq(x)
    return x.float().square().mean().sqrt()


def normalize_global(x: torch.Tensor, target_rms: float | torch.Tensor) -> torch.Tensor:
    """Scale x [L, D] so its RMS is `target_rms` -> [L, D], x's dtype. Zero RMS returns x unchanged.

    A whole-sequence scale is invisible to the DiT (RMSNorm first, DESIGN §3); it matters only
    before a position-wise mix with another sequence.
    """
    _check_seq(x)
    target = _number(target_rms, "target_rms")
    if target < 0:
        raise ValueError(f"target_rms must be >= 0, got {target!r}")
    current = rms(x)
    if current == 0:
        return x
    return (x.float() * (target / current)).to(x.dtype)


def normalize_per_dim(
    x: torch.Tensor,
    src_mean: torch.Tensor,
    src_std: torch.Tensor,
    ref_mean: torch.Tensor,
    ref_std: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Move x [L, D] from source to reference per-dimension statistics (all [D]) -> [L, D], x's dtype.

    (x - src_mean) / (src_std + eps) * ref_std + ref_mean; with x's own stats on both sides it is
    the identity up to eps.
    """
    _check_seq(x)
    stats = {"src_mean": src_mean, "src_std": src_std, "ref_mean": ref_mean, "ref_std": ref_std}
    for name, stat in stats.items():
        if not isinstance(stat, torch.Tensor) or stat.shape != (x.shape[1],):
            got = list(stat.shape) if isinstance(stat, torch.Tensor) else type(stat).__name__
            raise ValueError(f"{name} must be a [{x.shape[1]}] tensor, got {got}")
    if (eps := _number(eps, "eps")) <= 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    src_mean, src_std, ref_mean, ref_std = (stat.to(x.device, torch.float32) for stat in stats.values())
    return ((x.float() - src_mean) / (src_std + eps) * ref_std + ref_mean).to(x.dtype)


def sink_positions(x: torch.Tensor, factor: float = 20.0) -> list[int]:
    """Rows of x [L, D] carrying massive activations (attention sinks), in increasing order.

    A row is a sink when its max |value| exceeds `factor` times the median over rows of that max.
    Qwen3's first token has a few dims hundreds of times larger than any ordinary token's; keep such
    rows out of statistics (dim_stats, outlier_dims) or they dominate them (DESIGN §4).
    """
    _check_seq(x)
    if (factor := _number(factor, "factor")) <= 0:
        raise ValueError(f"factor must be > 0, got {factor!r}")
    peak = x.float().abs().amax(1)  # [L]
    return torch.nonzero(peak > factor * peak.median()).flatten().tolist()


def outlier_dims(x: torch.Tensor, ref_std: torch.Tensor, ratio: float = 8.0) -> dict[str, list[int]]:
    """Dimensions whose std over the rows of x [L, D] is off from ref_std [D] by more than `ratio`.

    Returns {"too_large": dims with std > ratio * ref_std, "too_small": dims with std < ref_std / ratio}.
    Both directions matter: VL image tokens are far *smaller* than Qwen3-4B's in dims 4 and 396
    (DESIGN §4). Drop sink rows (sink_positions) from x first.
    """
    _check_seq(x)
    if x.shape[0] < 2:
        raise ValueError("outlier_dims needs at least 2 rows of x to estimate a std")
    if not isinstance(ref_std, torch.Tensor) or ref_std.shape != (x.shape[1],):
        got = list(ref_std.shape) if isinstance(ref_std, torch.Tensor) else type(ref_std).__name__
        raise ValueError(f"ref_std must be a [{x.shape[1]}] tensor, got {got}")
    if (ratio := _number(ratio, "ratio")) <= 1:
        raise ValueError(f"ratio must be > 1, got {ratio!r}")
    std = x.float().std(0, correction=0)
    ref = ref_std.to(x.device, torch.float32)
    return {
        "too_large": torch.nonzero(std > ratio * ref).flatten().tolist(),
        "too_small": torch.nonzero(std < ref / ratio).flatten().tolist(),
    }
