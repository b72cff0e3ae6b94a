"""`vlbench stats DIR [DIR…]`: the statistics of scored run folders, as tables or as JSON.

The numbers are vlbench.stats'; the JSON schema is in docs/stats.md.
"""

from __future__ import annotations

import json
import sys

from vlbench.cli import common
from vlbench.errors import UserError

HELP = "per config and metric: mean, std, 95% bootstrap CI; each config against a baseline"
DESCRIPTION = ("Statistics of scored run folders (vlbench score writes the scores). For every config and "
               "metric: the mean, the standard deviation and a 95% percentile-bootstrap interval over images "
               "(units: prompt × reference × seed). For every config against the baseline: the paired "
               "difference with its interval, a two-sided Wilcoxon signed-rank test with Holm correction "
               "across configs, and the win rate. Several folders of one experiment are pooled.")


def add_arguments(p) -> None:
    from vlbench.stats import ALPHA, BOOTSTRAP_SEED, RESAMPLES

    p.add_argument("dirs", nargs="+", metavar="DIR", help="the --output-dir of scored vlbench runs (one experiment)")
    p.add_argument("--baseline", metavar="CONFIG",
                   help="the config the others are compared with (default: the baseline the experiment type names, "
                        "text_bridge in the style experiments; else the first config)")
    p.add_argument("--metric", action="append", metavar="M",
                   help="only this metric; repeat or comma-separate for several (default: every scored metric)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON (schema: docs/stats.md)")
    p.add_argument("--resamples", type=int, default=RESAMPLES, metavar="N", help=f"bootstrap resamples ({RESAMPLES})")
    p.add_argument("--bootstrap-seed", type=int, default=BOOTSTRAP_SEED, metavar="S",
                   help=f"seed of the bootstrap's numpy generator ({BOOTSTRAP_SEED}): the output is reproducible")
    p.add_argument("--alpha", type=float, default=ALPHA, help=f"significance level after Holm correction ({ALPHA})")
    common.add_debug_flag(p)


def _metrics_arg(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not names:
        raise UserError("give a metric name", field="metric", value=",".join(values), fix="e.g. --metric siglip")
    return list(dict.fromkeys(names))


def run(args) -> int:
    from vlbench.stats import folder_stats, print_stats

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
