"""`vlbench stats DIR [DIR…]`: the statistics of scored run folders, as tables or as JSON.

The numbers are vlbench.analysis.stats'; the JSON schema is in docs/stats.md.
"""

from __future__ import annotations

import json
import math
import sys

from vlbench.cli import common
from vlbench.errors import UserError

HELP = "per config and metric: mean with a design-aware 95% CI; each config against a baseline"
DESCRIPTION = ("Statistics of scored run folders (vlbench score writes the scores). The unit is a (prompt, "
               "reference) cell with its seeds inside; prompts and references are random, crossed factors (with "
               "fewer than 4 of either the result is conditional on them, and says so). For every config and "
               "metric: the mean with a 95% t interval; against the baseline: the paired difference (per image "
               "slot, then per cell) with its interval, a t test with Holm correction across configs, the win "
               "rate over cells and the smallest difference the run could detect. --equivalence tests whether "
               "configs are equivalent within a margin, --plan how many prompts, references and seeds a "
               "difference needs, --unit image gives the old per-image bootstrap and Wilcoxon. Several folders "
               "of one experiment are pooled.")


def add_arguments(p) -> None:
    from vlbench.analysis.stats import ALPHA, BOOTSTRAP_SEED, DEFAULT_UNIT, RESAMPLES, UNITS

    p.add_argument("dirs", nargs="+", metavar="DIR", help="the --output-dir of scored vlbench runs (one experiment)")
    p.add_argument("--baseline", metavar="CONFIG",
                   help="the config the others are compared with (default: the baseline the experiment type names, "
                        "text_bridge in the style experiments; else the first config)")
    p.add_argument("--metric", action="append", metavar="M",
                   help="only this metric; repeat or comma-separate for several (default: every scored metric)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON (schema: docs/stats.md)")
    p.add_argument("--unit", choices=UNITS, default=DEFAULT_UNIT,
                   help="cell (default): prompt × reference cells, seeds inside, design-aware intervals; image: every "
                        "image an independent unit (percentile bootstrap, Wilcoxon; vlbench.stats/1's numbers)")
    p.add_argument("--equivalence", nargs="?", const="", metavar="MARGIN",
                   help="two one-sided tests against ±MARGIN in the metric's units: equivalent, different or "
                        "inconclusive. No value: each metric's default margin (docs/metrics.md); a number: that "
                        "margin (one metric); or METRIC=M[,METRIC=M…]")
    p.add_argument("--plan", metavar="DELTA",
                   help="how many prompts, references and seeds detect DELTA (metric units) with power 0.8 at the "
                        "family's alpha, simulated from this run's variance components: a number (one metric) or "
                        "METRIC=D[,METRIC=D…]")
    p.add_argument("--mixed-model", action="store_true",
                   help="also fit a linear mixed model with crossed random effects for prompt and reference "
                        "(statsmodels, an optional extra: pip install 'vlbench[mixed]') as a second estimate (JSON)")
    p.add_argument("--resamples", type=int, default=RESAMPLES, metavar="N", help=f"bootstrap resamples, --unit image ({RESAMPLES})")
    p.add_argument("--bootstrap-seed", type=int, default=BOOTSTRAP_SEED, metavar="S",
                   help=f"seed of the bootstrap's numpy generator, --unit image ({BOOTSTRAP_SEED}): the output is "
                        "reproducible")
    p.add_argument("--alpha", type=float, default=ALPHA, help=f"significance level after Holm correction ({ALPHA})")
    common.add_debug_flag(p)


def _metrics_arg(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not names:
        raise UserError("give a metric name", field="metric", value=",".join(values), fix="e.g. --metric siglip")
    return list(dict.fromkeys(names))


def _per_metric(spec: str | None, option: str, metrics: list[str] | None, defaults: dict[str, float] | None,
                what: str) -> dict[str, float] | None:
    """--equivalence / --plan: "" (defaults for every metric), a number (one metric), or METRIC=X[,METRIC=X…]."""
    if spec is None:
        return None
    example = f"e.g. --{option} siglip=0.2"
    if spec.strip() == "":
        if defaults is None:
            raise UserError(f"give {what}", field=option, value="", fix=example)
        return dict(defaults) if metrics is None else {m: defaults[m] for m in metrics if m in defaults}
    out: dict[str, float] = {}
    for part in (x.strip() for x in spec.split(",") if x.strip()):
        name, sep, value = part.rpartition("=")
        if not sep:
            if metrics is None or len(metrics) != 1:
                raise UserError(f"a bare {what.split()[-1]} needs exactly one --metric (it is in that metric's units)",
                                field=option, value=spec, fix=f"add --metric NAME, or write METRIC=VALUE ({example})")
            name = metrics[0]
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"not a number: {value!r}", field=option, value=spec, fix=example) from None
        if not math.isfinite(number) or number <= 0:
            raise UserError(f"{what} must be a positive finite number", field=option, value=spec,
                            fix=f"{example} (in the metric's units)")
        out[name.strip()] = number
    if not out:
        raise UserError(f"give {what}", field=option, value=spec, fix=example)
    return out


def run(args) -> int:
    from vlbench.analysis.folders import folder_stats
    from vlbench.analysis.stats import EQUIVALENCE_MARGINS, print_stats

    if args.resamples < 100:
        raise UserError("too few resamples for a 95% interval", field="resamples", value=args.resamples,
                        fix="use at least 1000 (default 10000)")
    if not 0 < args.alpha < 1:
        raise UserError("must be between 0 and 1", field="alpha", value=args.alpha, fix="e.g. --alpha 0.05")
    metrics = _metrics_arg(args.metric)
    equivalence = _per_metric(args.equivalence, "equivalence", metrics, EQUIVALENCE_MARGINS, "a margin")
    plan = _per_metric(args.plan, "plan", metrics, None, "a difference")
    if args.unit == "image" and (equivalence or plan):
        raise UserError("equivalence and plans need the cell unit", field="unit", value="image",
                        fix="drop --unit image")
    stats = folder_stats(args.dirs, baseline=args.baseline, metrics=metrics, resamples=args.resamples,
                         seed=args.bootstrap_seed, alpha=args.alpha, unit=args.unit, equivalence=equivalence,
                         plan=plan, mixed_model=args.mixed_model)
    if args.json:
        json.dump(stats, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console

    print_stats(stats, Console())
    return 0
