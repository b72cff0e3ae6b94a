"""Statistics over a run's scored images: per config and metric, the mean with a bootstrap interval, and
each config against a baseline with a paired difference, a Wilcoxon signed-rank test (Holm-corrected
across configs) and a win rate.

The unit of resampling and pairing is one image slot: (prompt, reference sha256, seed). Two configs are
compared on the slots both have, so a config is measured against the baseline on the same prompt,
reference and starting noise. Every bootstrap draws its resamples from a fresh
`numpy.random.default_rng(seed)`, so the output is reproducible and every config of a metric is
resampled with the same index matrix (for equal n). The JSON schema is documented in docs/stats.md.

No torch here (the workbench imports this before its first paint); scipy is imported by the test only.
Non-finite metric values are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from vlbench.errors import UserError

SCHEMA = "vlbench.stats/1"
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
ALPHA = 0.05
UNIT = ("prompt", "reference_sha256", "seed")


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
              alpha: float = ALPHA) -> dict:
    """The statistics of scored images (see docs/stats.md for the schema).

    `rows`: Row objects, or dicts shaped like results.jsonl rows with their metric values under "metrics"
    (config name under "name", its position under "config_index"). Configs are in config_index order; the
    baseline defaults to the first. `metrics` defaults to every metric some row has (in METRICS order).
    """
    from vlbench.metrics import METRICS

    rows = [r if isinstance(r, Row) else row_from_dict(r) for r in rows]
    configs = _config_order(rows)
    if not configs:
        raise UserError("no scored images", fix="score the run first: vlbench score DIR")
    if baseline is None:
        baseline = configs[0]
    elif baseline not in configs:
        raise UserError("no such config", field="baseline", value=baseline, fix=f"choose one of {', '.join(configs)}")
    present = {m for r in rows for m in r.metrics}
    names = [m for m in METRICS if m in present] + sorted(present - set(METRICS))
    if metrics is not None:
        names = list(dict.fromkeys(metrics))
    # config -> unit -> row; a later row of the same config and slot replaces an earlier one
    by_config: dict[str, dict[tuple, Row]] = {c: {} for c in configs}
    for r in rows:
        by_config[r.config][r.unit] = r
    seeds = sorted({r.seed for r in rows})
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "baseline": baseline,
        "configs": configs,
        "alpha": alpha,
        "confidence": confidence,
        "bootstrap": {"resamples": resamples, "seed": seed, "method": "percentile", "unit": list(UNIT)},
        "test": "wilcoxon signed-rank (two-sided, scipy zero_method=wilcox, method=auto), Holm across configs",
        "images": len({(r.config, r.unit) for r in rows}),
        "seeds": seeds,
        "prompts": len({r.prompt for r in rows}),
        "references": len({r.reference_sha256 for r in rows}),
        "notes": [],
        "metrics": {},
    }
    per_config_seeds = {c: len({u[2] for u in by_config[c]}) for c in configs}
    if max(per_config_seeds.values(), default=0) <= 1:
        out["notes"].append("one seed per config: no interval over seeds can be computed; intervals and tests "
                            "resample prompts × references only (run with --seeds, at least 4)")
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
            better = diff > 0 if higher else diff < 0
            ties = int(np.sum(diff == 0))
            wins = int(np.sum(better & (diff != 0)))
            comps[c] = {
                "baseline": baseline,
                "n": int(diff.size),
                "mean_diff": float(diff.mean()) if diff.size else None,
                "ci": _pair(bootstrap_ci(diff, resamples=resamples, seed=seed, confidence=confidence)),
                "statistic": stat,
                "p": p,
                "p_holm": None,
                "significant": False,
                "wins": wins,
                "ties": ties,
                "losses": int(diff.size) - wins - ties,
                "win_rate": (wins + 0.5 * ties) / diff.size if diff.size else None,
                "note": note,
            }
        adjusted = holm([comps[c]["p"] for c in comps])
        for c, p_holm in zip(comps, adjusted):
            comps[c]["p_holm"] = p_holm
            comps[c]["significant"] = p_holm is not None and p_holm < alpha
        block["comparisons"] = comps
        if all(block["configs"][c]["n"] == 0 for c in configs):
            block["note"] = "no values"
        out["metrics"][name] = block
    return out


def row_from_dict(r: dict) -> Row:
    """A results row (the references' sha256s are the unit's reference), or a plain dict with reference_sha256."""
    if "reference_sha256" in r:
        reference = str(r["reference_sha256"])
    else:
        from vlbench.experiments.results import references_key

        reference = references_key(r)
    return Row(config=str(r["name"]), config_index=int(r.get("config_index") or 0), prompt=str(r["prompt"]),
               reference_sha256=reference, seed=int(r["seed"]),
               metrics={k: float(v) for k, v in (r.get("metrics") or {}).items()  # non-finite values are left out
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)},
               experiment=str(r.get("experiment", "")))


def _config_order(rows: list[Row]) -> list[str]:
    first: dict[str, int] = {}
    for r in rows:
        first[r.config] = min(first.get(r.config, r.config_index), r.config_index)
    return sorted(first, key=lambda c: (first[c], c))


# ---- run folders ----
def folder_rows(dirs: Iterable[str | Path]) -> tuple[list[Row], str]:
    """The scored images of one or more run folders of one experiment -> (rows, experiment name).

    Each folder's latest done row per job key, with its values from scores.jsonl (the image on record).
    Bad input is a UserError naming the folder and the fix.
    """
    from vlbench.experiments.results import ResultsLog, latest_by_key
    from vlbench.metrics.score import SCORES, load_scores

    rows: list[Row] = []
    experiments: dict[str, str] = {}
    for d in dirs:
        out = Path(d)
        if not out.is_dir():
            raise UserError("no such folder", where=str(out), fix="give the --output-dir of a vlbench run")
        if not (out / "results.jsonl").is_file():
            raise UserError("no results.jsonl here", where=str(out), fix="give the --output-dir of a vlbench run")
        if not (out / SCORES).is_file():
            raise UserError(f"not scored ({SCORES} is missing)", where=str(out),
                            fix=f"run `vlbench score {out} --metrics siglip` first")
        results, _ = ResultsLog(out / "results.jsonl").read()
        latest = latest_by_key(results)
        names = sorted({r["experiment"] for r in latest.values()})
        if len(names) > 1:
            raise UserError(f"mixes experiments {', '.join(names)}", where=str(out),
                            fix="give folders that each hold one experiment (one --output-dir per experiment)")
        scores = load_scores(out)
        for key, r in latest.items():
            s = scores.get(key)
            if r["status"] != "done" or s is None or s["image"] != r["image"]:
                continue
            row = row_from_dict({**r, "metrics": s["metrics"]})
            rows.append(row)
            experiments.setdefault(row.experiment, str(out))
    if len(experiments) > 1:
        where = "; ".join(f"{folder}: {name}" for name, folder in experiments.items())
        raise UserError(f"the folders hold different experiments ({where})",
                        fix="compare folders of one experiment; run stats on each separately")
    if not rows:
        first = Path(next(iter(dirs)))
        raise UserError("no scored images", where=str(first), fix=f"run `vlbench score {first}` first")
    return rows, next(iter(experiments))


def check_metrics(rows: list[Row], metrics: Iterable[str], where: str) -> None:
    """Every asked metric has values in `rows`; else one line naming the `vlbench score` to run."""
    from vlbench.metrics import METRICS

    present = {m for r in rows for m in r.metrics}
    for name in metrics:
        if name not in METRICS and name not in present:
            raise UserError("unknown metric", field="metric", value=name,
                            fix=f"choose from {', '.join(sorted(present)) or ', '.join(METRICS)}")
        if name not in present:
            raise UserError(f"not computed for {where}", field="metric", value=name,
                            fix=f"run `vlbench score {where} --metrics {name}` first")


# ---- text ----
def fmt(value: float | None) -> str:
    from vlbench.metrics import format_value

    return format_value(value)


def fmt_ci(ci) -> str:
    return "—" if not ci else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def table_rows(stats: dict, metric: str) -> list[dict[str, str]]:
    """One metric's table as text cells: config, n, mean ± std, CI, and against the baseline the
    difference, its CI, Holm p, win rate and a verdict. The CLI, the report and the workbench share it."""
    block = stats["metrics"][metric]
    rows = []
    for c in stats["configs"]:
        d = block["configs"][c]
        comp = block["comparisons"].get(c)
        if comp is None:
            vs = {"Δ vs baseline": "baseline", "Δ CI": "", "p (Holm)": "", "win rate": "", "verdict": ""}
        else:
            verdict = ""
            if comp["p_holm"] is not None:
                if comp["significant"]:
                    up = comp["mean_diff"] > 0
                    verdict = "better" if up == block["higher_is_better"] else "worse"
                else:
                    verdict = "no evidence"
            vs = {"Δ vs baseline": fmt(comp["mean_diff"]), "Δ CI": fmt_ci(comp["ci"]),
                  "p (Holm)": fmt_p(comp["p_holm"]),
                  "win rate": "—" if comp["win_rate"] is None else f"{comp['win_rate']:.0%}", "verdict": verdict}
        mean = fmt(d["mean"]) + ("" if d["std"] is None else f" ± {fmt(d['std'])}")
        rows.append({"config": c, "n": str(d["n"]), "mean ± std": mean,
                     f"{stats['confidence']:.0%} CI": fmt_ci(d["ci"]), **vs})
    return rows


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


# ---------------------------------------------------------------- for the command line and the run's end
def recorded_baseline(dirs: Iterable[str | Path], configs: Iterable[str]) -> str | None:
    """The baseline the folders' experiment type names (run.json's "baseline", from the type's `baseline` key),
    when it is one of `configs`; else None (the first config is the baseline)."""
    from vlbench.experiments.folder import read_info

    named = {(read_info(Path(d)) or {}).get("baseline") for d in dirs}
    named.discard(None)
    if len(named) == 1 and (name := next(iter(named))) in set(configs):
        return name
    return None


def folder_stats(dirs: list[str | Path], baseline: str | None = None, metrics: list[str] | None = None,
                 **options) -> dict:
    """Load the folders, check the request against them, summarise; adds "experiment" and "folders".
    `baseline` None: the type's baseline (recorded_baseline), else the first config."""
    rows, experiment = folder_rows(dirs)
    if metrics:
        check_metrics(rows, metrics, " ".join(str(d) for d in dirs))
    if baseline is None:
        baseline = recorded_baseline(dirs, {r.config for r in rows})
    stats = summarize(rows, baseline=baseline, metrics=metrics, **options)
    return {"experiment": experiment, "folders": [str(d) for d in dirs], **stats}


def print_stats(stats: dict, console) -> None:
    """One rich table per metric, the notes below them."""
    from rich.markup import escape
    from rich.table import Table

    if not console.is_terminal:  # piped or logged: 80 columns would fold every number
        console.width = max(console.width, 160)
    head = (f"[bold]{escape(stats.get('experiment', ''))}[/bold]: {len(stats['configs'])} configs, "
            f"{stats['images']} scored images ({len(stats['seeds'])} seeds × {stats['prompts']} prompts × "
            f"{stats['references']} references at most); baseline [bold]{escape(stats['baseline'])}[/bold]; "
            f"{stats['confidence']:.0%} percentile bootstrap over images ({stats['bootstrap']['resamples']} resamples, "
            f"seed {stats['bootstrap']['seed']}); Wilcoxon signed-rank, Holm-corrected, α = {stats['alpha']}")
    console.print(head)
    for name, block in stats["metrics"].items():
        rows = table_rows(stats, name)
        arrow = "higher is better" if block["higher_is_better"] else "lower is better"
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
    for note in stats["notes"]:
        console.print(f"[yellow]note: {escape(note)}[/yellow]")


def print_folder_stats(dirs: list, console, render=str) -> None:
    """What `vlbench run … --metrics` prints last; a folder that cannot be summarised says why, in one line."""
    try:
        stats = folder_stats(dirs)
    except UserError as exc:
        from rich.markup import escape

        console.print(f"[yellow]statistics: {escape(render(exc))}[/yellow]")
        return
    print_stats(stats, console)
