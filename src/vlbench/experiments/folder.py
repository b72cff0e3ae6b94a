"""An experiment's output folder: the portable export of a run, and its ledger.

The folder holds one PNG per image, `results.jsonl` (one RunRecord per image, appended and fsynced as
each finishes), `run.json` (what was run, with what, every invocation), copies of the references, and
the grid and report made from the results. The run store (vlbench.store) indexes every run on this
machine; the folder is what travels. `Ledger.append` is the one way a finished job is recorded: its PNG
is already written and fsynced, then its results row, then its history row. Resume reconciles the two:
a done row whose image is missing or damaged is redone, and a done row the store lacks is re-recorded.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from vlbench.errors import UserError, one_line
from vlbench.experiments.grid import write_grid
from vlbench.experiments.results import ResultsLog, latest_by_key, reference_copy
from vlbench.files import atomic_copy, atomic_write_json, read_text_file, remove_stale_temp_files
from vlbench.pngs import png_ok
from vlbench.recipe import changed_meaning
from vlbench.records import RunRecord
from vlbench.store import Store

RESULTS, GRID, REPORT, RUN_INFO = "results.jsonl", "grid.png", "report.html", "run.json"


@dataclass
class Summary:
    jobs: int = 0  # in the plan
    skipped: int = 0  # already done in an earlier run
    done: int = 0  # finished now
    failed: int = 0
    interrupted: bool = False
    vl_forwards: int = 0  # summed over this invocation's rows
    redone: int = 0  # done rows of earlier runs whose image was missing or damaged
    rerecorded: int = 0  # done rows the run store lacked, recorded again (on resume, or at the end of the run)
    unrecorded: int = 0  # done images the run store still lacks at the end (a store fault); recorded on resume
    store_error: str | None = None  # the store fault, one line
    failures: list[str] = field(default_factory=list)  # one line each


# ---------------------------------------------------------------- the ledger
STORE_RETRY_S = 30.0  # after a store fault, history writes wait this long before the next try


class Ledger:
    """Records each finished job: results row (after its PNG), history row, summary, progress, callback.

    Both executors call `append`; the local one after its background PNG write, the Ray head after writing
    the bytes an actor sent. A store fault (locked past its busy timeout, disk full, read-only, deleted) never
    stops the run: the history write is postponed with one line, retried every STORE_RETRY_S, and `close`
    records every done image of the folder the store still lacks; what remains is re-recorded on resume."""

    def __init__(self, out: Path, experiment: str, summary: Summary, store=None, console=None, progress=None,
                 on_job_done: Callable[[Any, dict], None] | None = None):
        self.out, self.experiment, self.summary = out, experiment, summary
        self.log = ResultsLog(out / RESULTS)
        self.store, self.console, self.progress, self.on_job_done = store, console, progress, on_job_done
        self._store_file = _file_id(store.path) if store is not None else None
        self._fault: str | None = None  # the store's last error, while writes are postponed
        self._retry_at = 0.0
        self._warned = False

    def append(self, job, record: RunRecord, callback: bool = True) -> dict:
        """`record` is the job's outcome; when done, its PNG is on disk at out/job.image with `image_sha256`."""
        summary = self.summary
        row = record.to_json()
        if record.status == "done":
            summary.done += 1
        else:
            summary.failed += 1
            summary.failures.append(f"{job.label()}: {record.error}")
        summary.vl_forwards += record.vl_forwards
        self.log.append(row)  # after the PNG: a done row always has its image
        if record.status == "done":
            self.record_in_store(record)
        if self.progress is not None:
            self.progress.advance(row)
        if callback and self.on_job_done is not None:
            self.on_job_done(job, row)
        return row

    def record_in_store(self, record: RunRecord) -> bool:
        """One history row for a done image (absolute image path); a store fault postpones it, never stops the run."""
        if self.store is None or (self._fault is not None and time.monotonic() < self._retry_at):
            return False
        try:
            record_image(self.store, record.replace(image=str((self.out / record.image).resolve())))
        except Exception as exc:  # noqa: BLE001 — the folder is the run's primary record
            self._store_fault(exc)
            return False
        self._fault = None
        return True

    def close(self) -> None:
        """The run is ending: record every done image of the folder that the store lacks (writes postponed by a
        fault, or a store deleted during the run). Never raises; what is still missing is counted in the
        summary and recorded by the next resume."""
        if self.store is None:
            return
        rows, _ = self.log.read()
        done = [r for r in latest_by_key(rows).values() if r.get("status") == "done"]
        store, own = self.store, None
        try:
            if _file_id(store.path) != self._store_file:  # deleted or replaced: rows written since went nowhere

                self._say(f"run store {store.path} was deleted or replaced during the run; this folder's images "
                          "are recorded in the store now at that path")
                store = own = Store(store.path)
            for attempt in range(3):  # a lock held a little longer than the busy timeout: a few more seconds
                try:
                    self.summary.rerecorded += reconcile_store(self.out, done, store)
                    break
                except Exception:  # noqa: BLE001
                    if attempt == 2:
                        raise
                    time.sleep(1.0)
            self.summary.unrecorded, self.summary.store_error = 0, None
        except Exception as exc:  # noqa: BLE001
            self._store_fault(exc)
            self.summary.unrecorded = len(done)  # an upper bound: the store could not be read either
            self.summary.store_error = self._fault
        finally:
            if own is not None:
                own.close()

    def _store_fault(self, exc: BaseException) -> None:
        self._fault = one_line(f"{type(exc).__name__}: {exc}")
        self._retry_at = time.monotonic() + STORE_RETRY_S
        if not self._warned:
            self._warned = True
            self._say(f"run store: {self._fault}; images are recorded in the output folder and in the run "
                      "history once the store is writable (retried during the run, at its end and on resume)")

    def _say(self, text: str) -> None:
        if self.console is not None:
            from rich.markup import escape

            self.console.print(f"[yellow]{escape(text)}[/yellow]")


def _file_id(path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def record_image(store, record: RunRecord) -> int | None:
    """The history row of a done image (absolute path), exactly once: a row with the same path and sha256 is
    kept as is; rows of an earlier image at that path (a redone job) are replaced. Returns the new id, or None."""
    known = store.images_recorded([record.image]).get(record.image, [])
    if any(sha == record.image_sha256 for _, sha in known):
        return None
    for run_id, _ in known:  # a redone image: the old row describes bytes that are gone
        store.delete(run_id)
    return store.add(record)


# ---------------------------------------------------------------- resume
def resume(out: Path, store=None, summary: Summary | None = None) -> set[str]:
    """Keys of finished jobs whose PNG is whole. Drops unreadable lines, failed rows (redone) and rows whose
    PNG is missing or damaged (redone); records done rows the run store lacks (a store fault postpones that to
    the end of the run)."""
    for folder in (out, out / "images", out / "references"):
        remove_stale_temp_files(folder)
    log = ResultsLog(out / RESULTS)
    rows, bad = log.read()
    check_meaning(out, rows)
    latest = latest_by_key(rows)
    keep = []
    for row in latest.values():
        if row["status"] != "done":
            continue
        if png_ok(out / row["image"], row.get("image_sha256")):
            keep.append(row)
        elif summary is not None:
            summary.redone += 1
    if bad or len(keep) != len(rows) or log.needs_newline() or any(r.get("upgraded") for r in rows):
        log.rewrite([{k: v for k, v in r.items() if k != "upgraded"} for r in keep])
    if store is not None and keep:
        try:
            rerecorded = reconcile_store(out, keep, store)
        except Exception as exc:  # noqa: BLE001 — a store fault: the ledger retries at the end of the run
            rerecorded = 0
            if summary is not None:
                summary.store_error = one_line(f"{type(exc).__name__}: {exc}")
        if summary is not None:
            summary.rerecorded = rerecorded
    return {r["key"] for r in keep}


def check_meaning(out: Path, rows: list[dict]) -> None:
    """Refuse, in one line, to resume a folder whose images an attend ratio of the old meaning made (results rows of
    record schema < 3 whose recipe keeps per-token odds): this vlbench reads the same ratio as a share, so the new
    images would answer another question under the same config names."""
    old = [r for r in rows if r.get("upgraded") and changed_meaning(r.get("recipe"))]
    if old:
        names = ", ".join(sorted({str(r.get("name")) for r in old}))
        raise UserError(f"holds images made before recipe schema 3, whose attend ratios were per-token odds "
                        f"(configs {names}); this vlbench reads a ratio as a share", field="output_dir",
                        value=str(out), fix="run into a new folder (this one's records keep their old meaning)")


def reconcile_store(out: Path, rows: list[dict], store) -> int:
    """Record in the run store every done row it lacks (matched by the image's absolute path and sha256); never
    twice. Returns how many were recorded; a store fault raises."""
    paths = {str((out / r["image"]).resolve()): r for r in rows}
    known = store.images_recorded(list(paths))
    n = 0
    for path, row in paths.items():
        if any(sha == row.get("image_sha256") for _, sha in known.get(path, [])):
            continue
        for run_id, _ in known.get(path, []):
            store.delete(run_id)
        store.add(RunRecord.from_json(row).replace(image=path))
        n += 1
    return n


def copy_references(reference_sets, out: Path) -> None:
    for refs in reference_sets:
        for ref in refs:
            target = out / reference_copy(ref.path, ref.sha256)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_copy(ref.path, target)


# ---------------------------------------------------------------- run.json: what was run, with what, where
def models_of(engine) -> dict:
    spec = engine.models.spec
    return {"zimage": spec.zimage, "vl": spec.vl, "tiny": spec.tiny, "device": str(engine.models.device),
            "dtype": str(engine.models.dtype).removeprefix("torch."),
            "offload": getattr(engine.models, "offload", "none"), "compile": bool(spec.compile),
            **({"fast": True} if getattr(spec, "fast", False) else {})}


def read_info(out: Path) -> dict | None:
    try:
        return json.loads(read_text_file(out / RUN_INFO))
    except (OSError, json.JSONDecodeError):
        return None


def check_same_run(out: Path, experiment, engine) -> None:
    info = read_info(out)
    if not info:
        return
    if info.get("experiment") != experiment.name:
        raise UserError(f"holds a {info.get('experiment')!r} run", field="output_dir", value=str(out),
                        fix=f"use another folder for {experiment.name!r}")
    models, before = models_of(engine), info.get("models", {})
    if before.get("tiny") and models["tiny"]:
        return  # the tiny models' folder depends on the cache location, not on a choice
    for part in ("zimage", "vl"):
        if before.get(part) and before[part] != models[part]:
            raise UserError(f"was run with {part} {before[part]}", field="output_dir", value=str(out),
                            fix="resume with the same models or use another folder")


def start_invocation(out: Path, experiment, engine, parameters: dict | None, summary: Summary) -> dict:
    info = read_info(out) or {}
    invocation = {"started": _now(), "finished": None, "argv": list(sys.argv), "parameters": parameters or {},
                  "environment": engine.environment(), "jobs": summary.jobs, "skipped": summary.skipped,
                  "redone": summary.redone, "rerecorded": summary.rerecorded}
    info.update(experiment=experiment.name, description=experiment.description, question=experiment.question,
                type_file=str(experiment.path), type_source=experiment.source, models=models_of(engine),
                baseline=getattr(experiment, "baseline", None), equivalence=getattr(experiment, "equivalence", None))
    info.setdefault("invocations", []).append(invocation)
    atomic_write_json(out / RUN_INFO, info)
    return invocation


def finish_invocation(out: Path, invocation: dict, engine, summary: Summary) -> None:
    info = read_info(out) or {"invocations": [invocation]}
    entry = info["invocations"][-1]
    entry.update(finished=_now(), done=summary.done, failed=summary.failed, interrupted=summary.interrupted,
                 vl_forwards=summary.vl_forwards, model_load_seconds=dict(engine.models.load_seconds))
    atomic_write_json(out / RUN_INFO, info)


def write_outputs(out: Path, experiment=None) -> None:
    """grid.png from every row in results.jsonl. The report is not written here (the folder writer knows no
    analysis): the caller asks vlbench.analysis.report.write_folder_report once the folder is written."""
    rows, _ = ResultsLog(out / RESULTS).read()
    rows = list(latest_by_key(rows).values())
    info = read_info(out) or {}
    title = info.get("experiment") or (experiment.name if experiment else "")
    if rows:
        write_grid(rows, out, out / GRID, title=f"{title}: {info.get('question', '')}".strip(": "))


# ---------------------------------------------------------------- one writer per folder
def lock(out: Path):
    """One writer per output folder: a second run into the same folder is refused, not interleaved."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    handle = open(out / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UserError("another vlbench run is writing there", field="output_dir", value=str(out),
                        fix="wait for it or use another folder") from None
    return handle


def unlock(handle) -> None:
    if handle is not None:
        handle.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
