"""`vlbench experiments`: the experiment types, their configs and their key fields."""

from __future__ import annotations

import json
import sys

from vlbench.cli import common
from vlbench.errors import UserError
from vlbench.experiments.spec import builtin_types, load_type

HELP = "list the experiment types and their configs"
DESCRIPTION = "List the built-in experiment types, or check type files given by path."


def add_arguments(p) -> None:
    p.add_argument("types", nargs="*", metavar="NAME_OR_PATH", help="only these types (names or type files)")
    p.add_argument("--json", action="store_true", help="print the types as JSON (one object per type) instead of a table")
    common.add_debug_flag(p)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    e = common.escape
    targets = args.types or [str(p) for p in builtin_types()]
    table = Table(title="experiment types", show_lines=True, title_justify="left")
    table.add_column("type", style="bold", no_wrap=True)
    table.add_column("question")
    table.add_column("configs", justify="right", no_wrap=True)
    table.add_column("configs and their key fields")
    bad = 0
    described = []
    for target in targets:
        experiment = load_type(target)  # a shape error is fatal: one line naming file and key
        entry = {"name": experiment.name, "path": str(experiment.path), "description": experiment.description,
                 "question": experiment.question, "base": dict(experiment.base), "seeds": list(experiment.seeds),
                 "configs": [{"name": c.name, "fields": dict(c.fields), "quick": c.quick} for c in experiment.configs],
                 "quick_configs": len(experiment.selected(quick=True)), "error": None}
        described.append(entry)
        counts = f"{len(experiment.configs)}\n(quick {len(experiment.selected(quick=True))})"
        lines = []
        if experiment.base:
            lines.append("[dim]base: " + e(" ".join(f"{k}={v}" for k, v in experiment.base.items())) + "[/dim]")
        if experiment.seeds:
            lines.append(f"[dim]seeds: {e(','.join(map(str, experiment.seeds)))}[/dim]")
        for config in experiment.configs:
            mark = "" if config.quick else " [dim](full only)[/dim]"
            lines.append(f"{e(config.name)}: {e(config.describe())}{mark}")
        question = e(experiment.question or experiment.description)
        try:
            experiment.recipes()  # every key and value against Recipe
        except UserError as exc:
            bad += 1
            question += f"\n[red]{e(str(exc))}[/red]"
            entry["error"] = str(exc)
        name = e(experiment.name) if not args.types else f"{e(experiment.name)}\n[dim]{e(str(experiment.path))}[/dim]"
        table.add_row(name, question, counts, "\n".join(lines))
    if args.json:
        json.dump(described, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
        return 1 if bad else 0
    Console().print(table)
    if not args.types:
        print("run one: vlbench run --experiment NAME --image REF --prompt TEXT --output-dir DIR [--quick]")
    return 1 if bad else 0
