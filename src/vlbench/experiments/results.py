"""results.jsonl: one JSON object per image, appended (flushed and fsynced) as each finishes.

The log is the run's ledger: a resumed run skips every job whose row says done and whose PNG is
there. Reading it tolerates a run killed mid-write: an unreadable line (the last one, typically) is
dropped and the file rewritten cleanly before anything is appended.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlbench.files import atomic_write_text
from vlbench.records import RECORD_VERSION, RunRecord, references_key

STATUSES = ("done", "failed")
TIMING_KEYS = ("extraction", "blend", "generation", "model_load")

# field -> allowed JSON types (None allows null): a results row is RunRecord.to_json() (vlbench.records).
ROW_SCHEMA: dict[str, tuple] = {
    "schema": (int,),
    "key": (str,),  # the job key: config name + recipe + prompt + seed + reference sha256s
    "source": (str,),  # experiment (vlbench run), cli (generate), tui (the workbench)
    "experiment": (str,),
    "name": (str,),  # the config's name
    "config_index": (int,),  # its position in the type file
    "recipe": (dict,),  # Recipe.to_dict(), complete
    "prompt": (str,),
    "seed": (int,),
    "references": (list,),  # [{"path", "sha256"}]
    "image": (str, None),  # PNG path relative to the output folder; null when failed
    "image_sha256": (str, None),
    "status": (str,),
    "error": (str, None),
    "failure": (str, None),
    "error_data": (dict, None),  # the failure as data (RunRecord.error_data); absent in rows written before it
    "timings": (dict,),  # seconds: extraction, blend, generation, model_load (+ text_encoding when used)
    "peak_memory_bytes": (int, None),  # torch.cuda.max_memory_allocated during the job; null off GPU
    "caption_tokens": (int, None),
    "vl_forwards": (int,),  # VL forwards this job ran (0 when the extraction cache served it)
    "started_at": (float, int, None),
    "finished_at": (float, int, None),
    "conditioning": (dict,),
    "environment": (dict,),
    "metrics": (dict,),  # {metric name: number}; vlbench score writes scores.jsonl beside this file instead
}


# keys a row of the current schema may lack: added without a schema bump, a row written before them means None
OPTIONAL_KEYS = frozenset({"error_data"})


def validate_row(row: Any) -> list[str]:
    """Problems with one results row ([] when it is valid)."""
    if not isinstance(row, dict):
        return [f"row is a {type(row).__name__}, not an object"]
    problems = []
    for key, types in ROW_SCHEMA.items():
        if key not in row:
            if key not in OPTIONAL_KEYS:
                problems.append(f"{key}: missing")
            continue
        value = row[key]
        allowed = tuple(t for t in types if t is not None)
        if value is None:
            if None not in types:
                problems.append(f"{key}: null")
        elif isinstance(value, bool) or not isinstance(value, allowed):
            problems.append(f"{key}: {type(value).__name__}, expected {' or '.join(t.__name__ for t in allowed)}")
    if isinstance(row.get("metrics"), dict):
        problems += [f"metrics.{k}: {v!r} is not a number" for k, v in row["metrics"].items()
                     if isinstance(v, bool) or not isinstance(v, (int, float))]
    if problems:
        return problems
    if row["status"] not in STATUSES:
        problems.append(f"status: {row['status']!r} not one of {', '.join(STATUSES)}")
    if not all(isinstance(r, dict) and isinstance(r.get("path"), str) for r in row["references"]):
        problems.append("references: each must be {path, sha256}")
    for key, value in row["timings"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            problems.append(f"timings.{key}: {value!r} is not a duration")
    if row["status"] == "done":
        problems += [f"timings.{k}: missing" for k in TIMING_KEYS if k not in row["timings"]]
        if row["image"] is None:
            problems.append("image: null on a done row")
    elif row["error"] is None:
        problems.append("error: null on a failed row")
    return problems


def upgrade_row(row: Any) -> Any:
    """A results row of an earlier schema as the current one (marked "upgraded": resume rewrites the file)."""
    if not isinstance(row, dict) or row.get("schema") == RECORD_VERSION:
        return row

    try:
        out = RunRecord.from_json(row).to_json()
    except TypeError:
        return row
    out["upgraded"] = True
    return out


class JsonlLog:
    """An append-only JSON-lines file: each line fsynced, a torn last line (a kill mid-write) dropped on read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def valid(self, row) -> bool:
        return isinstance(row, dict)

    def read(self, convert=None) -> tuple[list[dict], int]:
        """(valid rows in file order, number of unreadable or invalid lines dropped)."""
        if not self.path.exists():
            return [], 0
        rows, bad = [], 0
        with open(self.path, "rb") as f:
            for line in f:
                text = line.strip()
                if not text:
                    continue
                try:
                    row = json.loads(text)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    bad += 1
                    continue
                if convert is not None:
                    row = convert(row)
                if not self.valid(row):
                    bad += 1
                    continue
                rows.append(row)
        return rows, bad

    def needs_newline(self) -> bool:
        """True when the last line is torn (no final newline): rewrite before appending."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return False
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"

    def rewrite(self, rows: list[dict]) -> None:
        """Replace the file with `rows`, atomically (a kill leaves the old file or the new one)."""
        atomic_write_text(self.path, "".join(_line(row) for row in rows))

    def append_rows(self, rows: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(_line(row))
            f.flush()
            os.fsync(f.fileno())


class ResultsLog(JsonlLog):
    """The results file of one output folder; every row checked against the schema, earlier schemas upgraded."""

    def valid(self, row) -> bool:
        return isinstance(row, dict) and not validate_row({k: v for k, v in row.items() if k != "upgraded"})

    def read(self) -> tuple[list[dict], int]:
        rows, bad = super().read(convert=upgrade_row)
        return rows, bad

    def append(self, row: dict) -> None:
        problems = validate_row(row)
        if problems:  # a bug in the runner, not a user error
            raise ValueError(f"results row for {row.get('name')!r} is invalid: {'; '.join(problems)}")
        self.append_rows([row])


def _line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=False, default=str) + "\n"


def reference_copy(reference: str, sha256: str) -> str:
    """Where the run keeps its copy of a reference, relative to the output folder (the folder travels whole)."""
    path = Path(reference)
    return f"references/{path.stem}-{sha256[:8]}{path.suffix.lower() or '.png'}"


def first_reference(row: dict) -> tuple[str, str]:
    """(path, sha256) of a row's first reference (grids, reports and scores read one per image)."""
    ref = row["references"][0] if row.get("references") else {"path": "", "sha256": ""}
    return ref["path"], ref.get("sha256") or ""


def latest_by_key(rows: list[dict]) -> dict[str, dict]:
    """The last row of each job key (a redone job's newer row wins)."""
    out: dict[str, dict] = {}
    for row in rows:
        out[row["key"]] = row
    return out
