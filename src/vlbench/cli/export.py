"""`vlbench export DIR | --history`: results out of the tool, as CSV, JSON Lines or Parquet (vlbench.export)."""

from __future__ import annotations

import sys
from pathlib import Path

from vlbench import export
from vlbench.cli import common
from vlbench.errors import UserError
from vlbench.export import FORMATS
from vlbench.store import Store

HELP = "export a run folder's images or the run history as CSV, JSON Lines or Parquet"
DESCRIPTION = ("One row per image of a run folder (its recipe, prompt, seed, references, image path, timings and "
               "scores) or, with --history, per run of the run store; columns recipe.<field>, timings.<stage>, "
               "metric.<name>. To stdout, or to --out FILE (the format from its suffix unless --format says).")


def add_arguments(p) -> None:
    p.add_argument("dir", nargs="?", metavar="DIR", help="the --output-dir of a vlbench run (or give --history)")
    p.add_argument("--history", action="store_true", help="every run of the run store instead of a folder")
    p.add_argument("--format", metavar="{" + ",".join(FORMATS) + "}",
                   help="csv, jsonl or parquet (needs pyarrow); default: from --out's suffix, else csv")
    p.add_argument("--out", metavar="FILE", help="write here (atomically) instead of stdout")
    common.add_debug_flag(p)


def run(args) -> int:
    if bool(args.dir) == bool(args.history):
        raise UserError("give a run folder or --history (one of them)", field="dir",
                        fix="e.g. vlbench export results/first --out first.csv")
    out = Path(args.out) if args.out else None
    fmt = args.format
    if fmt is None:
        suffix = out.suffix.lower().lstrip(".") if out is not None else ""
        fmt = {"csv": "csv", "jsonl": "jsonl", "json": "jsonl", "parquet": "parquet", "pq": "parquet"}.get(suffix, "csv")
    if fmt not in export.FORMATS:
        raise UserError("unknown format", field="format", value=fmt, fix=f"use one of {', '.join(export.FORMATS)}")
    if fmt == "parquet":
        export._pyarrow()  # one line now if it is missing, before anything is read
    if out is not None:
        if out.is_dir():
            raise UserError("is a folder", field="out", value=args.out, fix="give a file name")
        if not out.parent.is_dir():
            raise UserError(f"{out.parent} does not exist", field="out", value=args.out)
    if args.history:
        common.check_data_dir()
        with Store() as store:
            n = export.write(export.history_rows(store), fmt, out, sys.stdout)
    else:
        n = export.write(export.folder_rows(Path(args.dir)), fmt, out, sys.stdout)
    if out is not None:
        print(f"wrote {n} row{'s' if n != 1 else ''} to {out}", file=sys.stderr)
    return 0
