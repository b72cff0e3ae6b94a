"""Inference on the mean of a crossed design: prompts × references cells, seeds as replicates inside each cell.

`vlbench stats` (docs/stats.md), the calibration test and `--plan` share these functions. The model of one
config's values, or of two configs' paired differences, is

    y[p, r, s] = mu + a[p] + b[r] + g[p, r] + e[p, r, s]
    a ~ N(0, σ_prompt²), b ~ N(0, σ_reference²), g ~ N(0, σ_cell²), e ~ N(0, σ_seed²)

so cells that share a prompt (or a reference) are not independent. The estimate of mu is the grand mean of the
table of cell means; a cell without images is filled by the additive fit (Yates' missing-value method: the
interaction loses one degree of freedom per filled cell). From the two-way ANOVA mean squares of the cell means,

    Var(estimate) = (MS_prompt + MS_reference − MS_cell) / (P·R)

where a main effect whose F ratio against MS_cell is below the 0.75 quantile of its F distribution is pooled into
the interaction (its two terms drop out: the "sometimes pool" rule of Paull 1950 and Bozivich, Bancroft & Hartley
1956), and the t interval takes Satterthwaite's degrees of freedom for the combination that is left. The choice
was made by simulation (docs/stats.md, tests/test_stats_calibration.py): without pooling, or pooling whenever
F < 1, the interval over-covers (≥ 0.99) when prompts and references add nothing; pooling at the 0.25 level keeps
coverage at 0.95–0.98 there and 0.95 when they matter.

numpy and scipy only (no torch): the workbench imports this through vlbench.analysis.stats. Every function is
batched over leading axes, so one call evaluates thousands of simulated experiments.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np

POOL_ALPHA = 0.25  # a main effect is pooled into the interaction when its F test's p-value is above this
MIN_LEVELS = 4  # fewer prompts (references) than this: the result is conditional on those prompts (references)
APPROXIMATE_BELOW = 6  # a random factor with fewer levels than this: "few prompts/references: approximate"

# How the interval was computed; the JSON's "method" and the table's design line name these.
CROSSED = "crossed"  # prompts and references random: two-way ANOVA of cell means, Satterthwaite df
PROMPTS = "prompt means"  # references fixed (fewer than MIN_LEVELS): t over the prompts' means
REFERENCES = "reference means"  # prompts fixed: t over the references' means
SEEDS = "seeds within cells"  # prompts and references fixed: pooled within-cell seed variance
CELLS = "cell means"  # cells as independent units (one seed per cell, or prompts and references not crossed)
METHODS = {
    CROSSED: "prompts and references random, crossed (two-way ANOVA of cell means, Satterthwaite df, "
             "main effects pooled at p > 0.25)",
    PROMPTS: "prompts random, conditional on these references (t over prompt means)",
    REFERENCES: "references random, conditional on these prompts (t over reference means)",
    SEEDS: "conditional on these prompts and references (seeds within cells, pooled within-cell variance)",
    CELLS: "cells as independent units (t over cell means)",
}


# ---------------------------------------------------------------- batched two-way ANOVA of cell means
def fill_missing(y: np.ndarray, present: np.ndarray) -> np.ndarray:
    """y, present: [..., P, R]. Cells not present get the additive fit (row + column effects) of the present
    cells: the least-squares fill, which leaves those cells no residual (Yates' missing values). A table with
    nothing missing comes back as it is.

    The fit solves the normal equations of y[p, r] = u[p] + v[r] over the present cells, batched; their one
    degenerate direction (u + c, v − c) is fixed by adding w·wᵀ, w = (1, …, 1, −1, …, −1), which changes no
    fitted value."""
    y = np.asarray(y, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    if present.all():
        return y
    P, R = y.shape[-2:]
    flat_y = y.reshape(-1, P, R).copy()
    flat_m = np.broadcast_to(present, y.shape).reshape(-1, P, R)
    holes = ~flat_m.all(axis=(-1, -2))
    sub, mask = flat_y[holes], flat_m[holes].astype(np.float64)
    ys = np.where(mask > 0, sub, 0.0)
    n = mask.shape[0]
    a = np.zeros((n, P + R, P + R))
    a[:, :P, :P] = np.eye(P) * mask.sum(-1)[:, :, None]  # Σ over a prompt's present cells
    a[:, P:, P:] = np.eye(R) * mask.sum(-2)[:, :, None]
    a[:, :P, P:] = mask
    a[:, P:, :P] = np.swapaxes(mask, -1, -2)
    w = np.concatenate([np.ones(P), -np.ones(R)])
    a += np.outer(w, w)
    b = np.concatenate([ys.sum(-1), ys.sum(-2)], axis=-1)
    try:
        theta = np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:  # a disconnected table (blocks sharing no prompt or reference): least norm
        theta = (np.linalg.pinv(a) @ b[..., None])[..., 0]
    fit = theta[:, :P, None] + theta[:, None, P:]
    flat_y[holes] = np.where(mask > 0, sub, fit)
    return flat_y.reshape(y.shape)


@dataclass
class Anova:
    """Two-way ANOVA of a (batch of) P × R table(s) of cell means; every field is an array over the batch."""

    estimate: np.ndarray  # grand mean of the (filled) table
    ms_prompt: np.ndarray
    ms_reference: np.ndarray
    ms_cell: np.ndarray  # interaction (config × cell effect + seed noise of a cell mean)
    df_prompt: int
    df_reference: int
    df_cell: np.ndarray  # (P−1)(R−1) − filled cells
    P: int
    R: int


def anova(y: np.ndarray, present: np.ndarray | None = None) -> Anova:
    """y: [..., P, R] cell means (P, R ≥ 2); present: which cells have images (default: all)."""
    y = np.asarray(y, dtype=np.float64)
    P, R = y.shape[-2:]
    if present is None:
        present = np.ones(y.shape, dtype=bool)
    table = fill_missing(y, present)
    filled = (~np.asarray(present, dtype=bool)).sum(axis=(-1, -2))
    grand = table.mean(axis=(-1, -2))
    rows, cols = table.mean(-1), table.mean(-2)
    ms_p = R * ((rows - grand[..., None]) ** 2).sum(-1) / (P - 1)
    ms_r = P * ((cols - grand[..., None]) ** 2).sum(-1) / (R - 1)
    resid = table - rows[..., :, None] - cols[..., None, :] + grand[..., None, None]
    df_c = (P - 1) * (R - 1) - filled
    with np.errstate(divide="ignore", invalid="ignore"):
        ms_c = (resid**2).sum(axis=(-1, -2)) / df_c
    return Anova(grand, ms_p, ms_r, ms_c, P - 1, R - 1, np.asarray(df_c), P, R)


def crossed_variance(a: Anova, pool_alpha: float = POOL_ALPHA) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (variance of the estimate, Satterthwaite df, prompt kept, reference kept) for prompts and references
    random. A main effect is kept when F = MS_effect / MS_cell exceeds F's (1 − pool_alpha) quantile."""
    from scipy.special import fdtri  # F quantile; scipy.special imports in a fraction of scipy.stats' time

    df_c = np.maximum(a.df_cell, 1)
    levels, where = np.unique(df_c, return_inverse=True)  # few distinct df: the quantile once for each
    f_p = fdtri(a.df_prompt, levels, 1 - pool_alpha)[where].reshape(np.shape(df_c))
    f_r = fdtri(a.df_reference, levels, 1 - pool_alpha)[where].reshape(np.shape(df_c))
    with np.errstate(divide="ignore", invalid="ignore"):
        keep_p = a.ms_prompt / a.ms_cell > f_p
        keep_r = a.ms_reference / a.ms_cell > f_r
        # a zero interaction (e.g. identical configs) keeps a non-zero main effect
        keep_p = np.where(a.ms_cell > 0, keep_p, a.ms_prompt > 0)
        keep_r = np.where(a.ms_cell > 0, keep_r, a.ms_reference > 0)
    cp, cr = keep_p.astype(np.float64), keep_r.astype(np.float64)
    cc = 1.0 - cp - cr
    num = cp * a.ms_prompt + cr * a.ms_reference + cc * a.ms_cell
    den = (cp * a.ms_prompt) ** 2 / a.df_prompt + (cr * a.ms_reference) ** 2 / a.df_reference \
        + (cc * a.ms_cell) ** 2 / df_c
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(den > 0, num**2 / np.where(den > 0, den, 1.0), np.nan)
    return num / (a.P * a.R), df, keep_p, keep_r


def t_interval(estimate, variance, df, confidence: float = 0.95):
    """-> (low, high, two-sided p of estimate = 0); batched; nan where the variance or df is not usable."""
    from scipy.special import stdtr, stdtrit  # Student t cdf and quantile

    estimate, variance, df = (np.asarray(v, dtype=np.float64) for v in (estimate, variance, df))
    ok = np.isfinite(variance) & np.isfinite(df) & (df > 0) & (variance >= 0)
    se = np.sqrt(np.where(ok, variance, np.nan))
    dfs = np.where(ok, df, 1.0)
    q = stdtrit(dfs, 0.5 + confidence / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        tstat = np.where(se > 0, estimate / np.where(se > 0, se, 1.0), np.where(estimate == 0, 0.0, np.inf))
    p = 2 * stdtr(dfs, -np.abs(tstat))
    return np.where(ok, estimate - q * se, np.nan), np.where(ok, estimate + q * se, np.nan), np.where(ok, p, np.nan)


def t_test_p(estimate, variance, df):
    """Two-sided p of the t test of estimate = 0 (batched; nan where the variance or df is not usable): what
    t_interval returns as p, without the quantile (the planning loops need only this)."""
    from scipy.special import stdtr

    estimate, variance, df = (np.asarray(v, dtype=np.float64) for v in (estimate, variance, df))
    ok = np.isfinite(variance) & np.isfinite(df) & (df > 0) & (variance >= 0)
    se = np.sqrt(np.where(ok, variance, 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        tstat = np.where(se > 0, estimate / np.where(se > 0, se, 1.0), np.where(estimate == 0, 0.0, np.inf))
    return np.where(ok, 2 * stdtr(np.where(ok, df, 1.0), -np.abs(tstat)), np.nan)


def tost_p(estimate, variance, df, margin: float):
    """Two one-sided t tests of |mu| ≥ margin: the larger of the two one-sided p-values (batched)."""
    from scipy.special import stdtr

    estimate, variance, df = (np.asarray(v, dtype=np.float64) for v in (estimate, variance, df))
    ok = np.isfinite(variance) & np.isfinite(df) & (df > 0) & (variance > 0)
    se = np.sqrt(np.where(ok, variance, 1.0))
    dfs = np.where(ok, df, 1.0)
    p_low = stdtr(dfs, -(estimate + margin) / se)  # H0: mu ≤ −margin
    p_high = stdtr(dfs, (estimate - margin) / se)  # H0: mu ≥ +margin
    exact = np.where(np.abs(estimate) < margin, 0.0, 1.0)  # no spread at all: the estimate is the answer
    return np.where(ok, np.maximum(p_low, p_high), np.where(np.isfinite(estimate), exact, np.nan))


# ---------------------------------------------------------------- one design's data
@dataclass
class Cells:
    """The values of one design, by cell: prompts × references, seeds inside."""

    prompts: list[str]
    references: list[str]
    means: np.ndarray  # [P, R] cell means (nan where a cell has no value)
    counts: np.ndarray  # [P, R] values per cell
    within_ss: float  # Σ over cells of Σ (value − cell mean)²
    seeds: int  # distinct seeds

    @property
    def present(self) -> np.ndarray:
        return self.counts > 0

    @property
    def images(self) -> int:
        return int(self.counts.sum())

    @property
    def n_cells(self) -> int:
        return int(self.present.sum())

    @property
    def within_df(self) -> int:
        return int(np.sum(np.maximum(self.counts - 1, 0)))


def cells_of(values: Mapping[tuple, float]) -> Cells:
    """values: {(prompt, reference, seed): value} -> the cell table (only prompts/references that have values)."""
    prompts = sorted({u[0] for u in values})
    refs = sorted({u[1] for u in values})
    pi, ri = {p: i for i, p in enumerate(prompts)}, {r: i for i, r in enumerate(refs)}
    sums = np.zeros((len(prompts), len(refs)))
    counts = np.zeros((len(prompts), len(refs)), dtype=np.int64)
    for (p, r, _), v in values.items():
        sums[pi[p], ri[r]] += v
        counts[pi[p], ri[r]] += 1
    with np.errstate(divide="ignore", invalid="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    within = sum((v - means[pi[p], ri[r]]) ** 2 for (p, r, _), v in values.items())
    return Cells(prompts, refs, means, counts, float(within), len({u[2] for u in values}))


def connected(present: np.ndarray) -> bool:
    """Whether the present cells of a P × R table link every prompt and reference (the bipartite graph of
    prompts and references through cells is connected): only then are the filled cells and the ANOVA defined."""
    P, R = present.shape
    seen_p, seen_r = {0}, set()
    frontier = [("p", 0)]
    while frontier:
        kind, i = frontier.pop()
        if kind == "p":
            for j in np.flatnonzero(present[i]):
                if j not in seen_r:
                    seen_r.add(int(j))
                    frontier.append(("r", int(j)))
        else:
            for k in np.flatnonzero(present[:, i]):
                if k not in seen_p:
                    seen_p.add(int(k))
                    frontier.append(("p", int(k)))
    return len(seen_p) == P and len(seen_r) == R


def infer(values: Mapping[tuple, float], confidence: float = 0.95, min_levels: int = MIN_LEVELS) -> dict:
    """The design-aware mean of {(prompt, reference, seed): value} with its interval and its test of 0.

    -> {"mean", "se", "df", "effective_units", "ci", "p", "method", "conditional_on", "approximate",
        "prompts", "references", "seeds", "cells", "images", "components", "note"} (JSON-ready; see docs/stats.md)
    """
    c = cells_of(values)
    P, R = len(c.prompts), len(c.references)
    out: dict = {"prompts": P, "references": R, "seeds": c.seeds, "cells": c.n_cells, "images": c.images,
                 "mean": None, "se": None, "df": None, "effective_units": None, "ci": None, "p": None,
                 "method": None, "conditional_on": [], "approximate": False, "components": None, "note": ""}
    if not values:
        out["note"] = "no values"
        return out
    present = c.present
    conditional = [name for name, n in (("prompts", P), ("references", R)) if n < min_levels]
    out["conditional_on"] = conditional
    s2_seed = c.within_ss / c.within_df if c.within_df > 0 else None
    est = var = df = None
    components = {"seed": s2_seed, "seed_df": c.within_df}
    if not conditional:
        a = anova(np.nan_to_num(c.means)[None], present[None])
        if int(a.df_cell[0]) >= 1 and connected(present):
            v, d, kp, kr = crossed_variance(a)
            est, var, df, method = float(a.estimate[0]), float(v[0]), float(d[0]), CROSSED
            ms_c = float(a.ms_cell[0])
            components.update({
                "ms_prompt": float(a.ms_prompt[0]), "ms_reference": float(a.ms_reference[0]), "ms_cell": ms_c,
                "df_prompt": a.df_prompt, "df_reference": a.df_reference, "df_cell": int(a.df_cell[0]),
                "prompt_pooled": not bool(kp[0]), "reference_pooled": not bool(kr[0]),
                "prompt": max(0.0, (float(a.ms_prompt[0]) - ms_c) / R),
                "reference": max(0.0, (float(a.ms_reference[0]) - ms_c) / P),
                # the interaction's mean square holds σ_cell² + σ_seed² / (seeds per cell, harmonic mean)
                "cell": max(0.0, ms_c - (s2_seed or 0.0) * float(np.mean(1.0 / c.counts[present]))),
            })
            out["approximate"] = min(P, R) < APPROXIMATE_BELOW
        else:
            out["note"] = ("prompts and references are not crossed (too few shared cells, or blocks that share no "
                           "prompt or reference): cells are the units")
    if est is None and conditional and len(conditional) == 1 and (min(P, R) == 1 or connected(present)):
        axis = 1 if conditional == ["references"] else 0  # average over the fixed factor
        table = fill_missing(np.nan_to_num(c.means)[None], present[None])[0] if min(P, R) > 1 else c.means
        level_means = table.mean(axis=axis)
        k = level_means.size
        if k >= 2:
            est, var, df = float(level_means.mean()), float(level_means.var(ddof=1) / k), float(k - 1)
            method = PROMPTS if conditional == ["references"] else REFERENCES
            out["approximate"] = k < APPROXIMATE_BELOW
    if est is None and len(conditional) == 2:
        cell_means = c.means[present]
        est = float(cell_means.mean())
        if s2_seed is not None:
            var = s2_seed * float(np.sum(1.0 / c.counts[present])) / cell_means.size**2
            df, method = float(c.within_df), SEEDS
        else:
            method = SEEDS
            out["note"] = "one seed per cell: no interval within these prompts and references (run more seeds)"
    if est is None and len(conditional) == 1 and not out["note"]:
        out["note"] = "prompts and references are not crossed (blocks that share none): cells are the units"
    if est is None:  # not crossed, or a random factor whose levels could not be averaged: cells as units
        cell_means = c.means[present]
        est, method = float(cell_means.mean()), CELLS
        if cell_means.size >= 2:
            var, df = float(cell_means.var(ddof=1) / cell_means.size), float(cell_means.size - 1)
    out.update(mean=est, method=method, components=components)
    if var is not None and df is not None and math.isfinite(df):
        lo, hi, p = t_interval(est, var, df, confidence)
        out.update(se=math.sqrt(var), df=df, effective_units=df + 1, ci=[float(lo), float(hi)], p=float(p))
        if not math.isfinite(out["p"]):
            out["p"] = None
        if not all(math.isfinite(x) for x in out["ci"]):
            out["ci"] = None
    return out


def design_label(d: dict) -> str:
    """One line: what the interval is conditional on and whether it is approximate."""
    parts = []
    if d.get("conditional_on"):
        parts.append(f"conditional on these {' and '.join(d['conditional_on'])} (fewer than {MIN_LEVELS}: "
                     "no claim about others)")
    if d.get("approximate"):
        parts.append("few prompts/references: approximate")
    return "; ".join(parts)


# ---------------------------------------------------------------- planning: power from variance components
def simulate_power(components: Mapping[str, float], delta: float, prompts: int, references: int, seeds: int,
                   alpha: float, draws: int = 4000, seed: int = 0) -> float:
    """Power of the crossed test (two-sided, level `alpha`) to find a true difference `delta` in a complete
    prompts × references × seeds design, for variance components {"prompt", "reference", "cell", "seed"}.

    A balanced design's ANOVA is a function of independent draws: the grand mean ~ N(delta, E_p/(P·R) +
    E_r/(P·R) − E_c/(P·R)) and each mean square ~ E·χ²_df/df, with E_c = σ_cell² + σ_seed²/S,
    E_p = R·σ_prompt² + E_c, E_r = P·σ_reference² + E_c; so the simulation draws those, not the images."""
    P, R, S = int(prompts), int(references), int(seeds)
    rng = np.random.default_rng(seed)
    e_c = components.get("cell", 0.0) + components.get("seed", 0.0) / S
    e_p = R * components.get("prompt", 0.0) + e_c
    e_r = P * components.get("reference", 0.0) + e_c
    df_p, df_r, df_c = P - 1, R - 1, (P - 1) * (R - 1)
    sd = math.sqrt(max(e_p + e_r - e_c, 1e-300) / (P * R))
    a = Anova(estimate=delta + sd * rng.standard_normal(draws),
              ms_prompt=e_p * rng.chisquare(df_p, draws) / df_p,
              ms_reference=e_r * rng.chisquare(df_r, draws) / df_r,
              ms_cell=e_c * rng.chisquare(df_c, draws) / df_c,
              df_prompt=df_p, df_reference=df_r, df_cell=np.full(draws, df_c), P=P, R=R)
    var, df, _, _ = crossed_variance(a)
    return float(np.mean(t_test_p(a.estimate, var, df) < alpha))


def minimum_detectable(se: float, df: float, alpha: float, power: float = 0.8) -> float:
    """The smallest true difference a two-sided t test at `alpha` with this standard error and df finds with
    probability `power` (the normal-theory approximation (t_{1−α/2} + t_{power})·se)."""
    from scipy.special import stdtrit

    return float((stdtrit(df, 1 - alpha / 2) + stdtrit(df, power)) * se)


def detectable_by_simulation(components: Mapping[str, float], prompts: int, references: int, seeds: int,
                             alpha: float, power: float = 0.8, draws: int = 2000, seed: int = 0) -> float:
    """The smallest true difference the crossed test finds with probability `power` in a complete design of this
    size, for these variance components: simulate_power (same draws for every difference) solved by bisection."""
    P, R, S = int(prompts), int(references), int(seeds)
    e_c = components.get("cell", 0.0) + components.get("seed", 0.0) / S
    scale = math.sqrt(max(R * components.get("prompt", 0.0) + P * components.get("reference", 0.0) + e_c, 1e-300)
                      / (P * R))
    lo, hi = 0.0, scale
    while simulate_power(components, hi, P, R, S, alpha, draws, seed) < power:
        lo, hi = hi, hi * 2
        if hi > 1e6 * scale:
            return math.inf
    for _ in range(30):
        mid = (lo + hi) / 2
        if simulate_power(components, mid, P, R, S, alpha, draws, seed) < power:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-3 * hi:  # well inside the simulation's own error
            break
    return hi


# ---------------------------------------------------------------- a second estimate: the linear mixed model
def mixed_model(values: Mapping[tuple, float], confidence: float = 0.95) -> dict:
    """The same model fitted as a linear mixed model with crossed random intercepts for prompt, reference and
    cell (REML, statsmodels' MixedLM with variance components in one group): a second estimate beside the ANOVA
    one. statsmodels is an optional extra (`pip install 'vlbench[mixed]'`); ImportError when it is missing.
    Its interval is the normal approximation statsmodels gives (no small-sample df)."""
    import pandas as pd
    import statsmodels.formula.api as smf

    from scipy.special import ndtri

    rows = [{"prompt": str(p), "reference": str(r), "cell": f"{p}\x1f{r}", "y": float(v), "group": 0}
            for (p, r, _), v in values.items()]
    frame = pd.DataFrame(rows)
    vc = {}
    for name in ("prompt", "reference", "cell"):
        if frame[name].nunique() > 1:
            vc[name] = f"0 + C({name})"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = smf.mixedlm("y ~ 1", frame, groups="group", vc_formula=vc or None, re_formula="0")
        fit = model.fit(reml=True)
    mean, se = float(fit.fe_params["Intercept"]), float(fit.bse_fe["Intercept"])
    q = float(ndtri(0.5 + confidence / 2))
    names = list(getattr(model.exog_vc, "names", None) or sorted(vc))  # statsmodels orders them by name
    components = {name: float(v) for name, v in zip(names, np.atleast_1d(fit.vcomp))}
    components["residual"] = float(fit.scale)
    return {"mean": mean, "se": se, "ci": [mean - q * se, mean + q * se], "converged": bool(fit.converged),
            "components": components, "warnings": sorted({str(w.message).splitlines()[0] for w in caught})[:3],
            "method": "linear mixed model, crossed random intercepts for prompt, reference and cell (REML, "
                      "statsmodels MixedLM); normal-approximation interval"}
