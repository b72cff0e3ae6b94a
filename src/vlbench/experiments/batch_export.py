"""An experiment batch queued from the workbench, exported when its last run ends: the same output folder
as `vlbench run` makes (images/, references/, results.jsonl, run.json, grid.png, report.html).

The runs live in the store (their PNGs in the data dir's outputs/); the folder is the portable copy, made
with vlbench.experiments.folder's own writer so the grid is `vlbench run`'s (the report: the worker's `report`,
vlbench.analysis.report.write_folder_report, as `vlbench run` passes it). The worker that ends a
batch's last run exports it (the workbench's thread or `vlbench worker`, so a batch that finishes while the
workbench is closed is exported too); a worker also exports, when it starts and whenever its queue runs dry,
every finished batch still without its folder (a worker killed before the export, runs cancelled from the
queue). The store's state claims each export once, whichever process gets there first. torch is not imported.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from vlbench.errors import UserError
from vlbench.experiments import folder as F
from vlbench.experiments.results import ResultsLog, reference_copy
from vlbench.experiments.spec import load_type
from vlbench.files import atomic_copy, atomic_write_json
from vlbench.paths import data_dir
from vlbench.process import owner_alive, process_token
from vlbench.records import job_key

EXPORTED = "batch_exported:"  # state key prefix: the folder a batch was exported to ("writing:TOKEN" meanwhile)
WRITING = "writing"


def batch_folder(experiment: str, batch: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._+=-]+", "-", experiment).strip("-") or "experiment"
    return data_dir() / "experiments" / f"{safe}-{batch}"


def export_batch(store, batch: str, models: dict | None = None,
                 report: Callable[[Path], Any] | None = None) -> tuple[Path, int]:
    """Write the batch's folder (the grid included), then `report(folder)` (the caller's:
    vlbench.analysis.report.write_folder_report) before the batch is marked exported; (folder, images in it)."""
    runs = [r for r in store.batch_runs(batch) if r.status in ("done", "failed")]
    experiment = next((r.experiment for r in runs if r.experiment), None) or "experiment"
    out = batch_folder(experiment, batch)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for run in runs:
        record = run.record()
        shas = [r.get("sha256") or "" for r in record.references]
        name = record.name or f"run-{run.id}"
        key = record.key or job_key(name, record.recipe, record.prompt, shas)
        image = None
        if run.status == "done" and run.image and Path(run.image).is_file():
            image = f"images/{name}__{run.id:06d}__s{run.seed}.png"
            if not (out / image).is_file():
                atomic_copy(run.image, out / image)
        elif run.status == "done":  # the PNG is gone from outputs/: the folder says so rather than lies
            record = record.replace(status="failed", error=f"image missing: {run.image}", failure="store")
        for ref in record.references:
            if ref.get("sha256") and Path(ref["path"]).is_file():
                target = out / reference_copy(ref["path"], ref["sha256"])
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    atomic_copy(ref["path"], target)
        row = record.replace(key=key, name=name, image=image, config_index=record.config_index or 0,
                             error=record.error or (None if record.status == "done" else "failed")).to_json()
        if row["status"] == "done":
            for timing in ("extraction", "blend", "generation", "model_load"):
                row["timings"].setdefault(timing, 0.0)
        rows.append(row)
    ResultsLog(out / F.RESULTS).rewrite(rows)
    info = {"experiment": experiment, "batch": batch, "source": "workbench",
            "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"), "models": models or {},
            "runs": [r.id for r in runs]}
    try:
        kind = load_type(experiment)
        info.update(description=kind.description, question=kind.question, type_file=str(kind.path),
                    type_source=kind.source)
    except UserError:  # a type file since renamed: the folder still has its runs
        pass
    atomic_write_json(out / F.RUN_INFO, info)
    F.write_outputs(out)
    if report is not None:
        report(out)
    store.set_state(EXPORTED + batch, str(out))
    return out, sum(1 for r in rows if r["status"] == "done")


def finished_batch(store, run_id: int) -> tuple[str, str] | None:
    """(batch, experiment) when `run_id` belongs to an experiment batch with nothing left to run and at least one
    image or failure to show; else None."""
    run = store.get(run_id)
    if run is None or not run.batch or not run.experiment:
        return None
    counts = store.batch_counts([run.batch]).get(run.batch, {})
    if counts.get("pending") or counts.get("running") or not (counts.get("done") or counts.get("failed")):
        return None
    return run.batch, run.experiment


def export_finished(store, batch: str, experiment: str, models: dict | None = None,
                    report: Callable[[Path], Any] | None = None) -> tuple[Path, int] | None:
    """Export a finished batch unless another process has (or is doing it): (folder, images), or None. A failed
    export gives its claim back (the next worker start or idle queue tries again) and raises."""
    if not store.claim_state(EXPORTED + batch, f"{WRITING}:{process_token()}", replacing=_stale(store, batch)):
        return None
    try:
        return export_batch(store, batch, models, report)
    except BaseException:
        store.set_state(EXPORTED + batch, "")
        raise


def unexported_batches(store) -> list[tuple[str, str]]:
    """Every finished experiment batch whose folder was never written, whose export failed, or whose exporting
    process died before it finished."""
    return [(batch, experiment) for batch, experiment in store.finished_batches()
            if not store.get_state(EXPORTED + batch) or _stale(store, batch) is not None]


def exported_folder(value) -> str | None:
    """The folder a batch's state names once its export is written (None while unset, failed or in progress)."""
    return value if isinstance(value, str) and value and not value.startswith(WRITING) else None


def _stale(store, batch: str) -> str | None:
    """The batch's export claim when the process that made it is gone (killed mid-export), else None."""
    value = store.get_state(EXPORTED + batch)
    if isinstance(value, str) and value.startswith(WRITING):
        owner = value[len(WRITING) + 1:] or None
        if not owner_alive(owner):
            return value
    return None
