"""Results out of the tool: a run folder's images or the whole run history as flat rows (CSV, JSON Lines, Parquet).

One row per image (a folder: the latest row of each job, its scores joined by job key) or per run (the history).
Columns: the run's own fields, then `recipe.<field>` for every Recipe field, `timings.<stage>` and
`metric.<name>`; references as one `;`-separated column of absolute paths. Torch-free; Parquet through pyarrow
(an optional extra: `pip install 'vlbench[parquet]'`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Iterator

from vlbench.errors import UserError
from vlbench.experiments.results import ResultsLog, latest_by_key
from vlbench.files import atomic_write_text
from vlbench.metrics.score import load_scores
from vlbench.recipe import field_infos

FORMATS = ("csv", "jsonl", "parquet")
RUN_COLUMNS = ("id", "key", "experiment", "name", "config_index", "status", "failure", "error", "prompt", "seed",
               "references", "image", "image_sha256", "caption_tokens", "vl_forwards", "created_at", "started_at",
               "finished_at", "batch", "source")
PAGE = 1000


def folder_rows(out: Path) -> list[dict[str, Any]]:
    """A run folder's images: the latest results.jsonl row of each job, its scores joined by job key."""
    if not out.is_dir():
        raise UserError("no such folder", field="dir", value=str(out), fix="give the --output-dir of a vlbench run")
    if not (out / "results.jsonl").is_file():
        raise UserError("no results.jsonl here", field="dir", value=str(out), fix="give the --output-dir of a vlbench run")
    rows, _ = ResultsLog(out / "results.jsonl").read()
    scores = load_scores(out)
    flat = []
    for row in latest_by_key(rows).values():
        image = row.get("image")
        score = scores.get(row.get("key"), {})
        metrics = score.get("metrics", {}) if score.get("image") in (None, image) else {}
        flat.append(flatten({**row, "image": str((out / image).resolve()) if image else None,
                             "metrics": {**row.get("metrics", {}), **metrics}}))
    return flat


def history_rows(store) -> Iterator[dict[str, Any]]:
    """Every run of the store, oldest first, read a page at a time."""
    offset = 0
    while True:
        page = store.history(offset=offset, limit=PAGE, sort="id", descending=False)
        for row in page:
            yield flatten({f: getattr(row, f) for f in row.__dataclass_fields__})
        if len(page) < PAGE:
            return
        offset += PAGE


def flatten(row: dict[str, Any]) -> dict[str, Any]:
    """One run as flat columns (a fixed order: the run's fields, recipe.*, timings.*, metric.*)."""
    out: dict[str, Any] = {}
    for name in RUN_COLUMNS:
        value = row.get(name)
        if name == "references":
            value = ";".join(r.get("path", "") for r in row.get("references") or [])
        out[name] = value
    recipe = row.get("recipe") or {}
    for name in field_infos():
        value = recipe.get(name)
        out[f"recipe.{name}"] = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value
    for name, value in sorted((row.get("timings") or {}).items()):
        out[f"timings.{name}"] = value
    for name, value in (row.get("metrics") or {}).items():
        out[f"metric.{name}"] = value
    return out


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """Every column any row has, in first-seen order (rows differ in their timings and metrics)."""
    return list(dict.fromkeys(c for row in rows for c in row))


def write(rows: Iterable[dict[str, Any]], fmt: str, out: Path | None, stdout) -> int:
    """Write the rows as `fmt` to `out` (None: `stdout`, text formats only); returns how many."""
    rows = list(rows)
    if fmt == "parquet":
        if out is None:
            raise UserError("Parquet is binary: give a file", field="out", fix="e.g. --out runs.parquet")
        pq = _pyarrow()
        import pyarrow as pa

        columns = columns_of(rows)
        table = pa.Table.from_pylist([{c: _finite(r.get(c)) for c in columns} for r in rows])
        pq.write_table(table, out)
        return len(rows)
    text = io.StringIO() if out is not None else stdout
    if fmt == "csv":
        writer = csv.DictWriter(text, fieldnames=columns_of(rows), restval="", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    else:
        for row in rows:
            text.write(json.dumps({k: _finite(v) for k, v in row.items()}, ensure_ascii=False, allow_nan=False) + "\n")
    if out is not None:
        atomic_write_text(out, text.getvalue())
    return len(rows)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("needs pyarrow, which is not installed", field="format", value="parquet",
                        fix="pip install 'vlbench[parquet]' (or pyarrow), or use --format csv or jsonl") from None
    return pq
