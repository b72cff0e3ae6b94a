"""Statistics over a run's scored images: per config and metric, the mean with a 95% interval, and each config
against a baseline with a paired difference, a test (Holm-corrected across configs), the win rate and the
smallest difference the run could detect; optionally equivalence tests (TOST) and a power plan.

The default unit ("cell") is a (prompt, reference sha256) cell with its seeds as replicates, prompts and
references crossed random factors (vlbench.analysis.crossed: two-way ANOVA of cell means, Satterthwaite df; conditional
on the prompts/references when fewer than 4). Paired differences are formed per image slot (prompt, reference,
seed: the same starting noise), then per cell. `unit="image"` keeps vlbench.stats/1's computation: every image
slot an independent unit, a percentile bootstrap from a fresh `numpy.random.default_rng(seed)` and a Wilcoxon
signed-rank test. The JSON schema is documented in docs/stats.md.

No torch here (the workbench imports this before its first paint); numpy, and scipy's special functions (scipy.stats
for the Wilcoxon test). Non-finite metric values are counted per config and metric and left out, never silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from vlbench.analysis.crossed import (APPROXIMATE_BELOW, CROSSED, METHODS, MIN_LEVELS, cells_of, design_label,
                                      detectable_by_simulation, infer, minimum_detectable, mixed_model, simulate_power,
                                      tost_p)
from vlbench.errors import UserError
from vlbench.metrics import METRICS, format_value
from vlbench.records import references_key

SCHEMA = "vlbench.stats/2"  # /2: unit "cell" (design-aware) is the default; /1's computation is unit "image"
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
ALPHA = 0.05
UNIT = ("prompt", "reference_sha256", "seed")  # the image unit of --unit image
UNITS = ("cell", "image")
DEFAULT_UNIT = "cell"
# Default equivalence margins (--equivalence without a value), in each metric's units; docs/metrics.md gives the
# reason for each. A margin is a claim about what difference does not matter: pass your own where you know better.
EQUIVALENCE_MARGINS = {
    "siglip": 0.2,  # logit: ±0.2 moves a probability of 0.5 by ±0.05, the siglip_p margin
    "siglip_p": 0.05,  # probability: five percentage points
    "clip_t": 0.01, "clip_i": 0.01, "dino": 0.01, "dinov2": 0.01, "style_gram": 0.01,  # cosines: 0.01
    "vqascore": 0.05,  # probability of "Yes": five percentage points
    "content_leak": 0.05,  # probability of "Yes": five percentage points
    "pickscore": 0.2,  # PickScore's preference P(A over B) = sigmoid(ΔS): ±0.2 is 45–55 %
    "imagereward": 0.1,  # ImageReward is standardised (z of its reward): 0.1 sd
}


@dataclass(frozen=True)
class Row:
    """One scored image: its config, its slot and its metric values."""

    config: str
    config_index: int
    prompt: str
    reference_sha256: str
    seed: int
    metrics: dict[str, float]
    experiment: str = ""
    not_finite: tuple[str, ...] = ()  # metrics whose value was NaN or infinite: counted, left out


    @property
    def unit(self) -> tuple[str, str, int]:
        return (self.prompt, self.reference_sha256, self.seed)


# ---- the numbers ----
def bootstrap_ci(values: np.ndarray, *, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean: `resamples` means of `len(values)` units drawn with
    replacement by `default_rng(seed).integers(0, n, (resamples, n))`; None below two units."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = x[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, in the input order (None stays None and is not counted).

    Sorted ascending p(1) ≤ … ≤ p(m): adjusted p(i) = max over j ≤ i of min(1, (m − j + 1) · p(j)).
    """
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    m = len(present)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def wilcoxon(diffs: np.ndarray) -> tuple[float | None, float | None, str]:
    """Two-sided Wilcoxon signed-rank test of paired differences (scipy.stats.wilcoxon, zero_method
    "wilcox": zero differences are dropped; method "auto": exact for small n without ties).

    Returns (statistic, p, note); p is None when no difference is non-zero.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0 or not np.any(d != 0):
        return None, None, "no non-zero paired difference: no test"
    from scipy.stats import wilcoxon as _wilcoxon

    res = _wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="auto")
    return float(res.statistic), float(res.pvalue), ""


def _describe(x: np.ndarray, resamples: int, seed: int, confidence: float) -> dict:
    n = int(x.size)
    return {
        "n": n,
        "mean": float(x.mean()) if n else None,
        "std": float(x.std(ddof=1)) if n >= 2 else None,
        "ci": _pair(bootstrap_ci(x, resamples=resamples, seed=seed, confidence=confidence)),
    }


def _pair(ci):
    return None if ci is None else [ci[0], ci[1]]


# ---- the summary ----
def summarize(rows: Iterable[Row | dict], *, baseline: str | None = None, metrics: Iterable[str] | None = None,
              resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE,
              alpha: float = ALPHA, unit: str = DEFAULT_UNIT, equivalence: Mapping[str, float] | None = None,
              plan: Mapping[str, float] | None = None, mixed_model: bool = False) -> dict:
    """The statistics of scored images (see docs/stats.md for the schema).

    `rows`: Row objects, or dicts shaped like results.jsonl rows with their metric values under "metrics"
    (config name under "name", its position under "config_index"). Configs are in config_index order; the
    baseline defaults to the first. `metrics` defaults to every metric some row has (in METRICS order).
    `unit`: "cell" (default: prompt × reference cells, seeds inside, prompts and references random;
    vlbench.analysis.crossed)
    or "image" (every image an independent unit: bootstrap and Wilcoxon, as vlbench.stats/1 computed).
    `equivalence`: {metric: margin} for two one-sided tests (cell unit only); `plan`: {metric: difference} to plan
    prompts, references and seeds for (plan_block); `mixed_model`: add statsmodels' crossed mixed model as a second
    estimate of each comparison (an optional extra).
    """
    if unit not in UNITS:
        raise UserError("unknown unit", field="unit", value=unit, fix=f"choose {' or '.join(UNITS)}")
    rows = [r if isinstance(r, Row) else row_from_dict(r) for r in rows]
    configs = _config_order(rows)
    if not configs:
        raise UserError("no scored images", fix="score the run first: vlbench score DIR")
    if baseline is None:
        baseline = configs[0]
    elif baseline not in configs:
        raise UserError("no such config", field="baseline", value=baseline, fix=f"choose one of {', '.join(configs)}")
    present = {m for r in rows for m in (*r.metrics, *r.not_finite)}
    names = [m for m in METRICS if m in present] + sorted(present - set(METRICS))
    if metrics is not None:
        names = list(dict.fromkeys(metrics))
    # config -> unit -> row; a later row of the same config and slot replaces an earlier one
    by_config: dict[str, dict[tuple, Row]] = {c: {} for c in configs}
    for r in rows:
        by_config[r.config][r.unit] = r
    for c in configs:
        if c != baseline and not set(by_config[c]) & set(by_config[baseline]):
            raise UserError(f"shares no (prompt, reference, seed) with {c}: no paired cells", field="baseline",
                            value=baseline, fix="choose a baseline run on the same prompts, references and seeds "
                                                f"(configs: {', '.join(configs)})")
    seeds = sorted({r.seed for r in rows})
    design = _design({u for c in configs for u in by_config[c]}, images=len({(r.config, r.unit) for r in rows}))
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "unit": unit,
        "baseline": baseline,
        "configs": configs,
        "alpha": alpha,
        "confidence": confidence,
        "design": design,
        "images": len({(r.config, r.unit) for r in rows}),
        "seeds": seeds,
        "prompts": len({r.prompt for r in rows}),
        "references": len({r.reference_sha256 for r in rows}),
        "notes": [],
        "metrics": {},
    }
    if unit == "image":
        out["bootstrap"] = {"resamples": resamples, "seed": seed, "method": "percentile", "unit": list(UNIT)}
        out["test"] = "wilcoxon signed-rank (two-sided, scipy zero_method=wilcox, method=auto), Holm across configs"
        per_config_seeds = {c: len({u[2] for u in by_config[c]}) for c in configs}
        if max(per_config_seeds.values(), default=0) <= 1:
            out["notes"].append("one seed per config: no interval over seeds can be computed; intervals and tests "
                                "resample prompts × references only (run with --seeds, at least 4)")
    else:
        out["test"] = ("t test of the design's mean difference (vlbench.crossed; interval and df by the method each "
                       "comparison names), Holm across configs")
        if design["label"]:
            out["notes"].append(design["label"])
    if mixed_model:
        if unit != "cell":
            raise UserError("the mixed model needs the cell unit", field="mixed_model", fix="drop --unit image")
        try:
            import statsmodels  # noqa: F401
        except ImportError:
            raise UserError("statsmodels is not installed", field="mixed_model",
                            fix="pip install 'vlbench[mixed]' (statsmodels), or drop --mixed-model") from None
    equivalence = dict(equivalence or {})
    if equivalence and unit != "cell":
        raise UserError("equivalence needs the cell unit", field="equivalence", fix="drop --unit image")
    for name in names:
        meta = METRICS.get(name)
        higher = True if meta is None else meta.higher_is_better
        values = {c: {u: r.metrics[name] for u, r in by_config[c].items() if name in r.metrics} for c in configs}
        block: dict[str, Any] = {
            "label": meta.label if meta else name,
            "higher_is_better": higher,
            "configs": {},
            "comparisons": {},
        }
        if unit == "image":
            _image_block(block, values, configs, baseline, resamples, seed, confidence, alpha)
        else:
            _cell_block(block, values, configs, baseline, confidence, alpha, equivalence.get(name), mixed_model)
        for c in configs:  # every value asked for is counted: a non-finite one is left out, and said
            bad = sum(1 for r in by_config[c].values() if name in r.not_finite)
            block["configs"][c]["not_finite"] = bad
            if bad:
                total = bad + block["configs"][c]["n"]
                out["notes"].append(f"{name}: {c}: {bad} of {total} not finite: left out")
        if all(block["configs"][c]["n"] == 0 for c in configs):
            bad = sum(block["configs"][c]["not_finite"] for c in configs)
            block["note"] = f"all {bad} values not finite" if bad else "no values"
        out["metrics"][name] = block
    if plan:
        if unit != "cell":
            raise UserError("plans need the cell unit", field="plan", fix="drop --unit image")
        out["plan"] = plan_block(out, dict(plan))
    return out


PLAN_POWER = 0.8
PLAN_PROMPTS = (4, 6, 8, 12, 16, 24, 32, 48, 64)
PLAN_REFERENCES = (4, 6, 8, 12, 16, 24)
PLAN_SEEDS = (1, 2, 4, 8)
PLAN_DRAWS = 2000
PLAN_SEED = 0


def plan_block(stats: dict, deltas: Mapping[str, float]) -> dict:
    """For each metric with a planned difference and each comparison with crossed variance components: the power
    of the design-aware test at Holm's strictest level (alpha / comparisons) over a grid of complete designs,
    simulated from the pilot's components (vlbench.analysis.crossed.simulate_power), and the smallest design (fewest
    images) that reaches PLAN_POWER. Schema in docs/stats.md."""
    out: dict[str, Any] = {"power": PLAN_POWER, "draws": PLAN_DRAWS, "seed": PLAN_SEED,
                           "grid": {"prompts": list(PLAN_PROMPTS), "references": list(PLAN_REFERENCES),
                                    "seeds": list(PLAN_SEEDS)}, "metrics": {}}
    for metric, delta in deltas.items():
        block = stats["metrics"].get(metric)
        if block is None:
            raise UserError("not among the metrics summarised", field="plan", value=metric,
                            fix=f"plan one of {', '.join(stats['metrics'])}")
        comps = block["comparisons"]
        alpha = stats["alpha"] / max(len(comps), 1)
        entry: dict[str, Any] = {"delta": delta, "alpha": alpha, "comparisons": {}}
        for c, comp in comps.items():
            comp_plan: dict[str, Any] = {"components": None, "pilot": None, "designs": [], "smallest": None, "note": ""}
            entry["comparisons"][c] = comp_plan
            k = comp.get("components") or {}
            if comp.get("method") != CROSSED or "prompt" not in k:
                comp_plan["note"] = ("no crossed variance components: the pilot needs at least 4 prompts and 4 "
                                     "references sharing cells")
                continue
            comps_ = {"prompt": k["prompt"], "reference": k["reference"], "cell": k["cell"], "seed": k["seed"] or 0.0}
            if k["seed"] is None:  # one seed per cell: seed noise cannot be told from the cell effect
                comps_["cell"] = k["ms_cell"]
                comp_plan["note"] = ("one seed per cell in the pilot: seed noise is counted in the cell term, so more "
                                     "seeds do not help in this plan")
            comp_plan["components"] = comps_
            P, R, S = comp["prompts"], comp["references"], comp["seeds"]
            comp_plan["pilot"] = {"prompts": P, "references": R, "seeds": S,
                                  "power": simulate_power(comps_, delta, P, R, S, alpha, PLAN_DRAWS, PLAN_SEED)}
            for seeds in PLAN_SEEDS:
                best = None
                for refs in PLAN_REFERENCES:
                    for prompts in PLAN_PROMPTS:  # power grows with prompts: the first that reaches is the smallest
                        power = simulate_power(comps_, delta, prompts, refs, seeds, alpha, PLAN_DRAWS, PLAN_SEED)
                        if power >= PLAN_POWER:
                            cand = {"prompts": prompts, "references": refs, "seeds": seeds,
                                    "images": prompts * refs * seeds, "power": power}
                            if best is None or cand["images"] < best["images"]:
                                best = cand
                            break
                if best is not None:
                    comp_plan["designs"].append(best)
            if comp_plan["designs"]:
                comp_plan["smallest"] = min(comp_plan["designs"], key=lambda d: (d["images"], d["seeds"]))
            else:
                comp_plan["note"] = (comp_plan["note"] + "; " if comp_plan["note"] else "") + \
                    f"no design of the grid reaches power {PLAN_POWER}"
        out["metrics"][metric] = entry
    return out


def _design(units: set[tuple], images: int) -> dict:
    """The design of the whole run: counts, and what a claim about it may reach."""
    levels = {"prompts": len({u[0] for u in units}), "references": len({u[1] for u in units})}
    random = [k for k in levels.values() if k >= MIN_LEVELS]
    d = {**levels, "seeds": len({u[2] for u in units}), "cells": len({u[:2] for u in units}), "images": images,
         "unit": ["prompt", "reference_sha256"], "replicate": "seed",
         "conditional_on": [name for name, k in levels.items() if k < MIN_LEVELS],
         "approximate": bool(random) and min(random) < APPROXIMATE_BELOW}
    d["label"] = design_label(d)
    return d


def _image_block(block, values, configs, baseline, resamples, seed, confidence, alpha) -> None:
    """Every image an independent unit: percentile bootstrap and Wilcoxon (vlbench.stats/1's computation)."""
    for c in configs:
        units = sorted(values[c])
        block["configs"][c] = _describe(np.array([values[c][u] for u in units], dtype=np.float64),
                                        resamples, seed, confidence)
    base = values[baseline]
    comps = {}
    for c in configs:
        if c == baseline:
            continue
        shared = sorted(set(values[c]) & set(base))
        diff = np.array([values[c][u] - base[u] for u in shared], dtype=np.float64)
        stat, p, note = wilcoxon(diff)
        comps[c] = {
            "baseline": baseline,
            "n": int(diff.size),
            "mean_diff": float(diff.mean()) if diff.size else None,
            "ci": _pair(bootstrap_ci(diff, resamples=resamples, seed=seed, confidence=confidence)),
            "statistic": stat,
            "p": p,
            "p_holm": None,
            "significant": False,
            **_wins(diff, block["higher_is_better"]),
            "note": note,
        }
    _holm_into(comps, alpha)
    block["comparisons"] = comps


def _wins(diff: np.ndarray, higher: bool) -> dict:
    better = diff > 0 if higher else diff < 0
    ties = int(np.sum(diff == 0))
    wins = int(np.sum(better & (diff != 0)))
    return {"wins": wins, "ties": ties, "losses": int(diff.size) - wins - ties,
            "win_rate": (wins + 0.5 * ties) / diff.size if diff.size else None}


def _holm_into(comps: dict, alpha: float) -> None:
    adjusted = holm([comps[c]["p"] for c in comps])
    for c, p_holm in zip(comps, adjusted):
        comps[c]["p_holm"] = p_holm
        comps[c]["significant"] = p_holm is not None and p_holm < alpha


def _cell_block(block, values, configs, baseline, confidence, alpha, margin, mixed: bool = False) -> None:
    """Prompt × reference cells, seeds inside; paired differences formed per image slot, then per cell."""
    keep = ("mean", "se", "df", "effective_units", "ci", "method", "conditional_on", "approximate", "prompts",
            "references", "seeds", "cells", "components", "note")
    for c in configs:
        x = np.array(list(values[c].values()), dtype=np.float64)
        fit = infer(values[c], confidence)
        block["configs"][c] = {"n": int(x.size), "std": float(x.std(ddof=1)) if x.size >= 2 else None,
                               **{k: fit[k] for k in keep}}
    base = values[baseline]
    comps = {}
    for c in configs:
        if c == baseline:
            continue
        shared = set(values[c]) & set(base)
        diffs = {u: values[c][u] - base[u] for u in shared}
        fit = infer(diffs, confidence)
        cell_diff = cells_of(diffs).means if diffs else np.zeros((0, 0))
        cell_diff = cell_diff[np.isfinite(cell_diff)]
        t = None if not fit["se"] else fit["mean"] / fit["se"]
        comps[c] = {
            "baseline": baseline,
            "n": len(diffs),
            "mean_diff": fit["mean"],
            "ci": fit["ci"],
            "statistic": t,
            "p": fit["p"],
            "p_holm": None,
            "significant": False,
            **{k: fit[k] for k in keep if k not in ("mean", "ci")},
            **_wins(cell_diff, block["higher_is_better"]),
            "note": fit["note"] or ("" if fit["p"] is not None else "no interval: too few cells or seeds"),
        }
    _holm_into(comps, alpha)
    m = max(len(comps), 1)
    for comp in comps.values():  # the smallest difference each comparison finds with power 0.8 at Holm's strictest step
        comp["mde"] = _detectable(comp, alpha / m)
    if margin is not None:
        _equivalence_into(comps, float(margin), alpha)
    if mixed:  # a second estimate of each comparison, beside the ANOVA one (not used for the verdicts)

        for c, comp in comps.items():
            diffs = {u: values[c][u] - base[u] for u in set(values[c]) & set(base)}
            try:
                comp["mixed_model"] = mixed_model(diffs, confidence) if len(diffs) >= 2 else None
            except (ValueError, np.linalg.LinAlgError) as exc:  # a fit that cannot start: said, not raised
                comp["mixed_model"] = {"error": f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"}
    block["comparisons"] = comps


MDE_POWER = 0.8


def _detectable(comp: dict, alpha: float) -> float | None:
    """The minimum detectable difference of one comparison (power MDE_POWER, two-sided, level alpha): simulated
    from the fitted variance components for the crossed method (a complete design of the run's size), else
    (t_{1−α/2} + t_{power})·se with the comparison's se and df."""
    k = comp.get("components") or {}
    if comp.get("method") == CROSSED and "prompt" in k:
        comps = {"prompt": k["prompt"], "reference": k["reference"], "cell": k["cell"], "seed": k["seed"] or 0.0}
        if k["seed"] is None:
            comps["cell"] = k["ms_cell"]
        value = detectable_by_simulation(comps, comp["prompts"], comp["references"], comp["seeds"], alpha, MDE_POWER)
        return value if math.isfinite(value) else None
    if comp.get("se") is None or comp.get("df") is None:
        return None
    return minimum_detectable(comp["se"], comp["df"], alpha, MDE_POWER)


def _equivalence_into(comps: dict, margin: float, alpha: float) -> None:
    """Two one-sided tests of |difference| ≥ margin on the design's estimate, Holm across configs.

    equivalent: the TOST rejects (after Holm); different: not equivalent and the difference test is significant;
    inconclusive: neither."""
    ps = []
    for comp in comps.values():
        if comp["mean_diff"] is None or comp["se"] is None:
            ps.append(None)
            continue
        ps.append(float(tost_p(comp["mean_diff"], comp["se"] ** 2, comp["df"], margin)))
    for comp, p, p_holm in zip(comps.values(), ps, holm(ps)):
        outcome = None
        if p_holm is not None:
            if p_holm < alpha:
                outcome = "equivalent"
            elif comp["significant"]:
                outcome = "different"
            else:
                outcome = "inconclusive"
        comp["equivalence"] = {"margin": margin, "p": p, "p_holm": p_holm, "outcome": outcome}


def row_from_dict(r: dict) -> Row:
    """A results row (the references' sha256s are the unit's reference), or a plain dict with reference_sha256."""
    if "reference_sha256" in r:
        reference = str(r["reference_sha256"])
    else:
        reference = references_key(r)
    metrics, not_finite = {}, []
    for k, v in (r.get("metrics") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if math.isfinite(v):
                metrics[k] = float(v)
            else:
                not_finite.append(k)  # counted and reported, never dropped silently
        elif v is None:
            not_finite.append(k)  # a NaN written as JSON null
    return Row(config=str(r["name"]), config_index=int(r.get("config_index") or 0), prompt=str(r["prompt"]),
               reference_sha256=reference, seed=int(r["seed"]), metrics=metrics,
               experiment=str(r.get("experiment", "")), not_finite=tuple(not_finite))


def _config_order(rows: list[Row]) -> list[str]:
    first: dict[str, int] = {}
    for r in rows:
        first[r.config] = min(first.get(r.config, r.config_index), r.config_index)
    return sorted(first, key=lambda c: (first[c], c))


# ---- the metrics a request names ----
def check_metrics(rows: list[Row], metrics: Iterable[str], where: str) -> None:
    """Every asked metric has values in `rows`; else one line naming the `vlbench score` to run."""
    present = {m for r in rows for m in (*r.metrics, *r.not_finite)}
    for name in metrics:
        if name not in METRICS and name not in present:
            raise UserError("unknown metric", field="metric", value=name,
                            fix=f"choose from {', '.join(sorted(present)) or ', '.join(METRICS)}")
        if name not in present:
            raise UserError(f"not computed for {where}", field="metric", value=name,
                            fix=f"run `vlbench score {where} --metrics {name}` first")


# ---- text ----
def fmt(value: float | None) -> str:
    return format_value(value)


def fmt_ci(ci) -> str:
    return "—" if not ci else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def table_rows(stats: dict, metric: str) -> list[dict[str, str]]:
    """One metric's table as text cells: config, n, mean ± std, CI, and against the baseline the
    difference, its CI, (cell unit: its degrees of freedom and the minimum detectable difference at power 0.8),
    Holm p, win rate, a verdict and (with a margin)
    the equivalence outcome. The CLI, the report and the workbench share it."""
    block = stats["metrics"][metric]
    cell = stats.get("unit", "image") == "cell"
    margin = next((c["equivalence"]["margin"] for c in block["comparisons"].values() if "equivalence" in c), None)
    rows = []
    for c in stats["configs"]:
        d = block["configs"][c]
        comp = block["comparisons"].get(c)
        if comp is None:
            vs = {"Δ vs baseline": "baseline", "Δ CI": "", **({"df": "", "MDE (power 0.8)": ""} if cell else {}),
                  "p (Holm)": "",
                  "win rate" + (" (cells)" if cell else ""): "", "verdict": ""}
        else:
            verdict = ""
            if comp["p_holm"] is not None:
                if comp["significant"]:
                    up = comp["mean_diff"] > 0
                    verdict = "better" if up == block["higher_is_better"] else "worse"
                else:
                    verdict = "no evidence"
            vs = {"Δ vs baseline": fmt(comp["mean_diff"]), "Δ CI": fmt_ci(comp["ci"]),
                  **({"df": "—" if comp.get("df") is None else f"{comp['df']:.1f}",
                      "MDE (power 0.8)": fmt(comp.get("mde"))} if cell else {}),
                  "p (Holm)": fmt_p(comp["p_holm"]),
                  "win rate" + (" (cells)" if cell else ""): "—" if comp["win_rate"] is None else f"{comp['win_rate']:.0%}",
                  "verdict": verdict}
        if margin is not None:
            eq = (comp or {}).get("equivalence") or {}
            vs[f"±{fmt(margin)}"] = eq.get("outcome") or ""
        mean = fmt(d["mean"]) + ("" if d["std"] is None else f" ± {fmt(d['std'])}")
        n = str(d["n"]) + (f" (+{d['not_finite']} not finite)" if d.get("not_finite") else "")
        rows.append({"config": c, "n": n, "mean ± std": mean, f"{stats['confidence']:.0%} CI": fmt_ci(d["ci"]), **vs})
    return rows


def design_line(stats: dict, metric: str | None = None) -> str:
    """The design above a table: counts, the method, the effective units of the comparisons, and what the
    result is conditional on (the cell unit), or the image unit named as such."""
    d = stats["design"]
    counts = (f"{d['prompts']} prompts × {d['references']} references × {d['seeds']} seeds "
              f"({d['cells']} cells, {d['images']} images)")
    if stats.get("unit", "image") == "image":
        return (f"design: {counts}; unit: image (every image an independent unit: prompts, references and seeds "
                "are not modelled)")
    line = f"design: {counts}"
    if metric is not None:
        comps = list(stats["metrics"][metric]["comparisons"].values())
        methods = sorted({c["method"] for c in comps if c.get("method")})
        eff = [c["effective_units"] for c in comps if c.get("effective_units") is not None]
        if methods:
            line += "; " + "; ".join(METHODS[m] for m in methods)
        if eff:
            lo, hi = min(eff), max(eff)
            line += f"; effective units (df + 1) {lo:.1f}" + ("" if hi - lo < 0.05 else f"–{hi:.1f}")
    if d["label"]:
        line += f"; {d['label']}"
    return line


def compact(stats: dict, metric: str) -> str:
    """One line for a batch row in the workbench: each config's mean [CI] and the verdict against the baseline."""
    block = stats["metrics"][metric]
    parts = []
    for cells in table_rows(stats, metric):
        verdict = f" {cells['verdict']}" if cells["verdict"] and cells["verdict"] != "no evidence" else ""
        ci = cells[f"{stats['confidence']:.0%} CI"]
        mean = cells["mean ± std"].split(" ±")[0]
        parts.append(f"{cells['config']} {mean}{'' if ci == '—' else ' ' + ci}{verdict}")
    return f"{block['label']}: " + " · ".join(parts)


def method_line(stats: dict) -> str:
    """What the intervals and tests are, in one sentence (the CLI's and the report's header)."""
    if stats.get("unit", "image") == "image":
        b = stats["bootstrap"]
        return (f"{stats['confidence']:.0%} percentile bootstrap over images ({b['resamples']} resamples, "
                f"seed {b['seed']}); Wilcoxon signed-rank, Holm-corrected, α = {stats['alpha']}")
    return (f"{stats['confidence']:.0%} t intervals of the design's mean (prompt × reference cells, seeds inside; "
            f"paired differences per image slot, then per cell); t test, Holm-corrected, α = {stats['alpha']}")


# ---------------------------------------------------------------- for the command line and the run's end
def print_stats(stats: dict, console) -> None:
    """One rich table per metric, the notes below them."""
    from rich.markup import escape
    from rich.table import Table

    if not console.is_terminal:  # piped or logged: 80 columns would fold every number
        console.width = max(console.width, 200)
    head = (f"[bold]{escape(stats.get('experiment', ''))}[/bold]: {len(stats['configs'])} configs, "
            f"{stats['images']} scored images; baseline [bold]{escape(stats['baseline'])}[/bold]; "
            f"{escape(method_line(stats))}")
    console.print(head)
    for name, block in stats["metrics"].items():
        rows = table_rows(stats, name)
        arrow = "higher is better" if block["higher_is_better"] else "lower is better"
        console.print(escape(design_line(stats, name)), style="dim", soft_wrap=True)  # one line, never cut
        if block.get("note"):
            console.print(f"{escape(block['label'])} ({escape(name)}): {escape(block['note'])}")
        table = Table(title=f"{block['label']} ({name}; {arrow})", title_justify="left")
        for i, column in enumerate(rows[0]):
            if i == 0:
                table.add_column(column, overflow="fold", min_width=8)
            else:
                table.add_column(column, justify="left" if column == "verdict" else "right", no_wrap=True,
                                 min_width=len(column) if len(column) < 9 else 5)
        for cells in rows:
            style = {"better": "green", "worse": "red"}.get(cells["verdict"])
            table.add_row(*(escape(v) for v in cells.values()), style=style)
        console.print(table)
    for line in plan_lines(stats):
        console.print(escape(line))
    for note in stats["notes"]:
        console.print(f"[yellow]note: {escape(note)}[/yellow]")


def plan_lines(stats: dict) -> list[str]:
    """The plan (--plan) in words: per metric and comparison, the smallest design of the grid with the power."""
    plan = stats.get("plan")
    if not plan:
        return []
    lines = []
    for metric, entry in plan["metrics"].items():
        lines.append(f"plan for {metric}: detect a difference of {fmt(entry['delta'])} with power {plan['power']} at "
                     f"α = {entry['alpha']:.4g} (Holm's strictest step), simulated from this run's variance components")
        for c, p in entry["comparisons"].items():
            best, pilot = p["smallest"], p["pilot"]
            now = "" if pilot is None else (f"this run ({pilot['prompts']} × {pilot['references']} × {pilot['seeds']}) "
                                            f"has power {pilot['power']:.2f}; ")
            if best is not None:
                lines.append(f"  {c}: {now}smallest: {best['prompts']} prompts × {best['references']} references × "
                             f"{best['seeds']} seeds ({best['images']} images per config, power {best['power']:.2f})")
            else:
                lines.append(f"  {c}: {now}{p['note']}")
    return lines
