"""A trial's objectives (metric means with design-aware 95% intervals, as `vlbench stats`), the non-dominated set of the trials,
and the Pareto plot. No torch, no Optuna: the search loop hands in plain numbers.

Dominance, on the trials' metric means with each objective's direction: a dominates b when a is at least as
good on every objective and strictly better on one. The front is every feasible trial that no other feasible
trial dominates (equal points are all kept). A trial is feasible when every constraint holds on its means.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

from vlbench.files import atomic_write
from vlbench.metrics import METRICS

# /2: a trial's "ci" is vlbench stats' design-aware interval, named by its "method"; /1's (no "method") was a
# percentile bootstrap over images. A resumed /1 search keeps its old trials' intervals, told apart by "method".
PARETO_SCHEMA = "vlbench.search.pareto/2"


def metric_summary(values: Mapping[tuple, float] | Sequence[float]) -> dict:
    """{"n", "not_finite", "mean", "ci", "method", "conditional_on"} of one metric over a trial's images.

    `values`: {(prompt, reference sha256, seed): value}, so the interval is `vlbench stats`' design-aware one
    (vlbench.analysis.crossed.infer: prompt × reference cells, seeds inside; conditional on the prompts/references when
    fewer than 4); a plain sequence counts as the seeds of one cell. Non-finite values are counted in
    "not_finite" and left out. ci: None when the design gives no interval (e.g. one image)."""
    from vlbench.analysis.crossed import infer

    units = dict(values) if isinstance(values, Mapping) else {("", "", i): v for i, v in enumerate(values)}
    finite = {u: float(v) for u, v in units.items() if math.isfinite(v)}
    fit = infer(finite) if finite else None
    return {"n": len(finite), "not_finite": len(units) - len(finite),
            "mean": None if fit is None else fit["mean"], "ci": None if fit is None else fit["ci"],
            "method": None if fit is None else fit["method"],
            "conditional_on": [] if fit is None else fit["conditional_on"]}


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """a is at least as good as b on every objective and strictly better on one."""
    better = False
    for x, y, d in zip(a, b, directions):
        if d == "maximize":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return better


def non_dominated(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates, in input order."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, directions) for j, q in enumerate(points) if j != i)]


# ---------------------------------------------------------------- the plot
def plot_front(trials: list[dict], front: list[int], objectives: list[dict], path: str | Path,
               title: str = "") -> Path | None:
    """The trials on the first two objectives (one objective: against the trial number); the front's points
    with their 95% intervals as error bars, labelled with the trial's name. `trials`: entries of
    trials.jsonl that completed; `front`: their trial numbers. None when no trial completed."""
    from matplotlib.figure import Figure

    done = [t for t in trials if t["state"] == "complete"]
    if not done:
        return None
    names = [o["metric"] for o in objectives]

    def coord(t: dict, metric: str | None):
        if metric is None:
            return t["number"], None
        s = t["objectives"][metric]
        return s["mean"], s["ci"]

    x_metric, y_metric = (names[0], names[1]) if len(names) >= 2 else (None, names[0])
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    ax = fig.subplots()
    for t in done:
        (x, _), (y, _) = coord(t, x_metric), coord(t, y_metric)
        ax.scatter(x, y, s=14, marker="o" if t["feasible"] else "x", color="0.7", zorder=1)
    on_front = sorted((t for t in done if t["number"] in set(front)), key=lambda t: coord(t, x_metric)[0])
    for t in on_front:
        (x, xci), (y, yci) = coord(t, x_metric), coord(t, y_metric)
        ax.errorbar(x, y, xerr=_err(x, xci), yerr=_err(y, yci), fmt="o", ms=5, capsize=3, lw=1, color="C3",
                    zorder=3)
        ax.annotate(t["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if len(on_front) > 1 and x_metric is not None:
        ax.plot([coord(t, x_metric)[0] for t in on_front], [coord(t, y_metric)[0] for t in on_front], lw=0.8,
                ls="--", color="C3", zorder=2)

    def label(metric: str | None) -> str:
        if metric is None:
            return "trial"
        o = next(o for o in objectives if o["metric"] == metric)
        return f"{METRICS[metric].label} ({metric}, mean per trial; {o['direction']})"

    ax.set(xlabel=label(x_metric), ylabel=label(y_metric))
    more = f"; objectives beyond the first two not shown: {', '.join(names[2:])}" if len(names) > 2 else ""
    ax.set_title(f"{title}\nred: the Pareto front (bars: 95% CI of each mean, as vlbench stats); grey: other trials, "
                 f"x: violates a constraint{more}".strip(), fontsize=9)
    ax.grid(alpha=0.3)
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return path


def _err(center: float, ci):
    if not ci:
        return None
    return [[max(center - ci[0], 0.0)], [max(ci[1] - center, 0.0)]]
