"""The calibration table of `vlbench stats`' default interval and test (docs/stats.md, issue 22).

Runs the scenarios of tests/test_stats_calibration.py (the same simulation and the same fitting code,
vlbench.analysis.crossed) with more draws, and writes the table as JSON and as Markdown; with --docs it replaces the
table between the markers in docs/stats.md. numpy and scipy only, about a minute on one core:

    .venv/bin/python benchmarks/stats_calibration.py --draws 40000 \
        --out benchmarks/results/stats_calibration.json --docs docs/stats.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- calibration table: benchmarks/stats_calibration.py -->", "<!-- end of calibration table -->"


def table(draws: int, seed: int) -> list[dict]:
    sys.path.insert(0, str(ROOT / "tests"))
    import test_stats_calibration as cal

    rows = []
    for model, size, missing in cal.CASES:
        row = cal.scenario(model, size, missing, seed=seed, draws=draws)
        rows.append({"model": model, "size": "×".join(map(str, size)), "missing": missing, **row})
    return rows


def markdown(rows: list[dict], draws: int) -> str:
    se = (0.05 * 0.95 / draws) ** 0.5
    head = ("| model | prompts × references × seeds | missing | coverage of the 95 % interval | false positives at "
            "0.05 | power | power of the cell-mean t test | its false positives | equivalence error at the margin |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['model']} | {r['size']} | {r['missing']:.0%} | {r['coverage']:.3f} | {r['fpr']:.3f} | {r['power']:.3f} "
        f"| {r['power_cell_t']:.3f} | {r['fpr_cell_t']:.3f} | {r['equivalence_error']:.3f} |\n" for r in rows)
    return (f"{head}{body}\n{draws} simulated experiments per row (Monte Carlo standard error ≈ {se:.4f} for a rate "
            "near 0.05 or 0.95); power at a true difference of 1 sd of the config × cell term (1 in M1, 0.5 in M2); "
            "the equivalence error is the larger of the rates of \"equivalent\" at a true difference of +1 and −1 "
            "with margin 1.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=40_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    p.add_argument("--docs", type=Path, help="replace the table between the calibration markers of this file")
    args = p.parse_args(argv)
    rows = table(args.draws, args.seed)
    text = markdown(rows, args.draws)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"draws": args.draws, "seed": args.seed, "rows": rows}, indent=1) + "\n")
    if args.docs:
        doc = args.docs.read_text(encoding="utf-8")
        if START not in doc or END not in doc:
            print(f"{args.docs}: no calibration markers ({START} … {END})", file=sys.stderr)
            return 2
        before, rest = doc.split(START, 1)
        _, after = rest.split(END, 1)
        args.docs.write_text(f"{before}{START}\n{text}\n{END}{after}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
