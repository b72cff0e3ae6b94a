"""The statistics of run folders: their scored images as rows (results.jsonl's latest done row per job key with its
values from scores.jsonl), the baseline and equivalence margins the folders' experiment type asks for, and the
summary `vlbench stats` and `vlbench run … --metrics` print.

The reading of a folder lives here, not in vlbench.analysis.stats, so the numbers know no output folder: stats
takes rows, this module makes them from a folder (vlbench.experiments' ledger and run.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from vlbench.analysis.stats import (DEFAULT_UNIT, EQUIVALENCE_MARGINS, Row, check_metrics, print_stats,
                                    row_from_dict, summarize)
from vlbench.errors import UserError
from vlbench.experiments.folder import read_info
from vlbench.experiments.results import ResultsLog, latest_by_key
from vlbench.metrics.score import SCORES, load_scores


def folder_rows(dirs: Iterable[str | Path]) -> tuple[list[Row], str]:
    """The scored images of one or more run folders of one experiment -> (rows, experiment name).

    Each folder's latest done row per job key, with its values from scores.jsonl (the image on record).
    Bad input is a UserError naming the folder and the fix.
    """
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


def recorded_baseline(dirs: Iterable[str | Path], configs: Iterable[str]) -> str | None:
    """The baseline the folders' experiment type names (run.json's "baseline", from the type's `baseline` key),
    when it is one of `configs`; else None (the first config is the baseline)."""
    named = {(read_info(Path(d)) or {}).get("baseline") for d in dirs}
    named.discard(None)
    if len(named) == 1 and (name := next(iter(named))) in set(configs):
        return name
    return None


def recorded_equivalence(dirs: Iterable[str | Path]) -> dict[str, float] | None:
    """The equivalence margins the folders' experiment type asks for (run.json's "equivalence": true for every
    metric's default margin, or a {metric: margin} table); None when it asks for none."""
    asked = [(read_info(Path(d)) or {}).get("equivalence") for d in dirs]
    if not asked or any(a in (None, False) for a in asked):
        return None
    first = asked[0]
    if first is True:
        return dict(EQUIVALENCE_MARGINS)
    if isinstance(first, dict):
        return {str(k): float(v) for k, v in first.items()}
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
    if options.get("equivalence") is None and options.get("unit", DEFAULT_UNIT) == "cell":
        options["equivalence"] = recorded_equivalence(dirs)  # the experiment type's own question, when it asks
    stats = summarize(rows, baseline=baseline, metrics=metrics, **options)
    return {"experiment": experiment, "folders": [str(d) for d in dirs], **stats}


def print_folder_stats(dirs: list, console, render=str) -> None:
    """What `vlbench run … --metrics` prints last; a folder that cannot be summarised says why, in one line."""
    try:
        stats = folder_stats(dirs)
    except UserError as exc:
        from rich.markup import escape

        console.print(f"[yellow]statistics: {escape(render(exc))}[/yellow]")
        return
    print_stats(stats, console)

