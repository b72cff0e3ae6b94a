"""`vlbench stats DIR [DIR…]`: the statistics of scored run folders, as tables or as JSON.

The command-line glue only: `add_stats_parser(subparsers)` adds the command, `cmd_stats(args)` runs it,
`print_folder_stats(dirs, console)` is what `vlbench run … --metrics` prints at the end. The numbers are
`vlbench.stats`'; the JSON schema is in docs/stats.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vlbench.errors import UserError


def add_stats_parser(subparsers) -> None:
    from vlbench.stats import ALPHA, BOOTSTRAP_SEED, RESAMPLES

    p = subparsers.add_parser(
        "stats", help="per config and metric: mean, std, 95% bootstrap CI; each config against a baseline",
        description="Statistics of scored run folders (vlbench score writes the scores). For every config and "
                    "metric: the mean, the standard deviation and a 95% percentile-bootstrap interval over images "
                    "(units: prompt × reference × seed). For every config against the baseline: the paired "
                    "difference with its interval, a two-sided Wilcoxon signed-rank test with Holm correction "
                    "across configs, and the win rate. Several folders of one experiment are pooled.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="the --output-dir of scored vlbench runs (one experiment)")
    p.add_argument("--baseline", metavar="CONFIG", help="the config the others are compared with (default: the first)")
    p.add_argument("--metric", action="append", metavar="M",
                   help="only this metric; repeat or comma-separate for several (default: every scored metric)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON (schema: docs/stats.md)")
    p.add_argument("--resamples", type=int, default=RESAMPLES, metavar="N", help=f"bootstrap resamples ({RESAMPLES})")
    p.add_argument("--bootstrap-seed", type=int, default=BOOTSTRAP_SEED, metavar="S",
                   help=f"seed of the bootstrap's numpy generator ({BOOTSTRAP_SEED}): the output is reproducible")
    p.add_argument("--alpha", type=float, default=ALPHA, help=f"significance level after Holm correction ({ALPHA})")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=cmd_stats)


def _metrics_arg(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not names:
        raise UserError("give a metric name", field="metric", value=",".join(values), fix="e.g. --metric siglip")
    return list(dict.fromkeys(names))


def folder_stats(dirs: list[str | Path], baseline: str | None = None, metrics: list[str] | None = None,
                 **options) -> dict:
    """Load the folders, check the request against them, summarise; adds "experiment" and "folders"."""
    from vlbench.stats import check_metrics, folder_rows, summarize

    rows, experiment = folder_rows(dirs)
    if metrics:
        check_metrics(rows, metrics, " ".join(str(d) for d in dirs))
    stats = summarize(rows, baseline=baseline, metrics=metrics, **options)
    return {"experiment": experiment, "folders": [str(d) for d in dirs], **stats}


def cmd_stats(args) -> int:
    if args.resamples < 100:
        raise UserError("too few resamples for a 95% interval", field="resamples", value=args.resamples,
                        fix="use at least 1000 (default 10000)")
    if not 0 < args.alpha < 1:
        raise UserError("must be between 0 and 1", field="alpha", value=args.alpha, fix="e.g. --alpha 0.05")
    stats = folder_stats(args.dirs, baseline=args.baseline, metrics=_metrics_arg(args.metric),
                         resamples=args.resamples, seed=args.bootstrap_seed, alpha=args.alpha)
    if args.json:
        json.dump(stats, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console

    print_stats(stats, Console())
    return 0


def print_stats(stats: dict, console) -> None:
    """One rich table per metric, the notes below them."""
    from rich.markup import escape
    from rich.table import Table

    from vlbench.stats import table_rows

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


def print_folder_stats(dirs: list[Path], console) -> None:
    """What `vlbench run … --metrics` prints last; a folder that cannot be summarised says why, in one line."""
    try:
        stats = folder_stats(dirs)
    except UserError as exc:
        from rich.markup import escape

        console.print(f"[yellow]statistics: {escape(str(exc))}[/yellow]")
        return
    print_stats(stats, console)
