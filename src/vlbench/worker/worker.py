"""The worker: one background thread that owns the models, takes runs from the store and executes them.

Each run goes through the one job path (vlbench.jobs.execute); its PNG is written and fsynced before
its row is marked done. The TUI imports this module on its UI thread, so nothing here imports torch,
transformers or diffusers at import time: the engine is imported and built inside the thread. Events are passed
to `on_event` from the worker thread, except WorkerPaused, which pause()/resume() post at once
from the caller's thread (so `on_event` must be safe to call from any thread). No exception ever leaves the loop: a bad job fails with a
one-line reason (tracebacks of bugs go to the log) and the next job runs.

A store fault (locked past its busy timeout, disk full, read-only) never marks a finished image failed
nor strands its run: the write is retried with backoff, then kept in memory and written before the
next claim; a worker that stops with a write still unsaved leaves the run to `Store.recover`, which
queues it again. The worker says where it is in the store's state (PRESENCE): `vlbench worker` runs one
headless, and a workbench opened beside it becomes a `Viewer` of its queue (vlbench.worker.viewer).
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vlbench import paths
from vlbench.engine.build import SPARE_CORE, open_engine
from vlbench.errors import one_line
from vlbench.experiments.batch_export import export_finished, finished_batch, unexported_batches
from vlbench.files import remove_stale_temp_files
from vlbench.jobs import Cancelled, Stopping, classify, execute
from vlbench.logs import attach_log_file
from vlbench.pngs import encode_png, write_run_png
from vlbench.process import process_token
from vlbench.store import RunRow, Store
from vlbench.worker.events import (PRESENCE, BatchExported, BatchExportFailed, JobCancelled, JobDone, JobFailed,
                                   JobProgress, JobStarted, ModelStatus, WorkerIdle, WorkerPaused)

log = logging.getLogger("vlbench.worker")
STORE_RETRY_S = 60.0  # a store write after a job (done, failed, …) is retried with backoff this long, then later
HEARTBEAT_S = 1.0  # a headless worker publishes its state (current run, progress, status) this often


class Worker:
    """Runs queued jobs one at a time on a thread that owns the loaded models."""

    def __init__(self, spec, *, store_path: Path | str | None = None, outputs_dir: Path | str | None = None,
                 on_event: Callable[[object], None] = lambda e: None, engine_factory: Callable[[], Any] | None = None,
                 poll_s: float = 0.5, recover: bool = True, presence: str | None = None, heartbeat_s: float = HEARTBEAT_S, export_batches: bool = True):
        """`presence`: "headless" (`vlbench worker`: publishes its state every `heartbeat_s`) or "workbench"
        (registers once); None registers nothing. `export_batches`: write each finished experiment batch's
        folder (vlbench.experiments.batch_export)."""
        self.spec = spec  # vlbench.modelspec.ModelSpec
        self.store_path = Path(store_path) if store_path is not None else paths.store_path()
        self.outputs_dir = Path(outputs_dir) if outputs_dir is not None else paths.outputs_dir()
        self.poll_s = poll_s
        self._on_event = on_event
        self._engine_factory = engine_factory
        self._recover = recover
        self.engine = None  # built in the thread on the first job
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._paused = threading.Event()
        self._idle = threading.Event()
        self._lock = threading.Lock()
        self._wake_generation = 0
        self._current: int | None = None
        self._cancel_id: int | None = None
        self._last_status_check = 0.0
        self._reported_loads: set[str] = set()
        self._free_memory = False
        self._control: Store | None = None
        self._since = time.time()
        self._reported_paused = False
        self.presence = presence
        self.heartbeat_s = heartbeat_s
        self._unsaved: list[_Write] = []  # store writes that failed past STORE_RETRY_S, oldest first
        self._status = ""  # the last ModelStatus text (published by a headless worker)
        self._progress: list | None = None  # [step, total, eta_s] of the current run
        self._fault_logged = 0.0  # when the loop last logged a store fault (not every second)
        self._space_needed = 0  # after a full disk: bytes that must be free before the next claim
        self.export_batches = export_batches

    # ---- control (any thread) ----
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._main, name="vlbench-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Interrupt the current job at its next step (it goes back to the queue) and join the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._control is not None:
            self._control.close()
            self._control = None

    def pause(self) -> None:
        """Stop claiming new jobs; the current one finishes. WorkerPaused(True) is posted at once. The pause is the
        store's (saved across restarts, seen by a worker in another process)."""
        self._paused.set()
        self._set_store_paused(True)
        self._report_paused()
        self._wake.set()

    def resume(self) -> None:
        self._paused.clear()
        self._set_store_paused(False)
        self._report_paused()
        self.wake()

    def _set_store_paused(self, paused: bool) -> None:
        try:
            self._control_store().set_paused(paused)
        except sqlite3.Error as exc:  # the pause holds in this process; other processes see it once it is written
            log.warning("run store: cannot save the pause (%s)", exc)
            self._emit(ModelStatus(f"run store: {one_line(exc)}; the queue is "
                                   f"{'paused' if paused else 'resumed'} here only until the store is writable"))

    def _control_store(self) -> Store:
        """A Store for the caller's thread (pause/resume come from the UI thread)."""
        if self._control is None:
            self._control = Store(self.store_path)
        return self._control

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def current_run_id(self) -> int | None:
        return self._current

    def cancel_current(self) -> None:
        """The running job stops at its next denoising step and is marked cancelled."""
        with self._lock:
            self._cancel_id = self._current

    def wake(self) -> None:
        """New jobs were queued: look now instead of at the next poll."""
        with self._lock:
            self._wake_generation += 1
            self._idle.clear()
        self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the worker has found the queue empty (after the latest wake). False on timeout."""
        return self._idle.wait(timeout)

    # ---- the thread ----
    def _emit(self, event: object) -> None:
        if isinstance(event, ModelStatus):
            self._status = event.text
        try:
            self._on_event(event)
        except Exception:  # a UI that is shutting down must not take the worker with it
            log.exception("on_event raised for %r", event)

    def _report_paused(self) -> None:
        """Post WorkerPaused when the paused state differs from the last one posted (any thread)."""
        with self._lock:
            paused = self._paused.is_set()
            if paused == self._reported_paused:
                return
            self._reported_paused = paused
        self._emit(WorkerPaused(paused))

    def _main(self) -> None:
        handler = attach_log_file()
        store = None
        beat = None
        try:
            store = Store(self.store_path)
            if self.presence is not None and (other := self._publish(store, started=True)) is not None:
                self._emit(ModelStatus(f"worker not started: pid {other.get('pid')} already runs this queue"))
                return  # issue 26: another process registered first; this one runs nothing
            if self.presence == "headless":
                beat = threading.Thread(target=self._heartbeat, name="vlbench-heartbeat", daemon=True)
                beat.start()
            if self._recover:
                requeued, failed = _persist(store.recover, stop=self._stop)
                if requeued or failed:
                    log.info("recovered %d run(s) left running by a dead worker; %d failed after repeated "
                             "interruptions", requeued, failed)
            remove_stale_temp_files(self.outputs_dir)
            self._loop(store)
        except Exception as exc:  # only the store itself can fail here; nothing to run without it
            log.exception("worker stopped")
            self._emit(ModelStatus(f"worker stopped: {one_line(f'{type(exc).__name__}: {exc}')}"))
        finally:
            if store is not None:
                self._last_writes(store)
                if beat is not None:
                    beat.join(self.heartbeat_s + 6)
                if self.presence is not None:
                    self._unpublish(store)
                store.close()
            if handler is not None:
                logging.getLogger("vlbench").removeHandler(handler)
                handler.close()

    # ---- presence: which process works the queue ----
    def presence_info(self) -> dict:
        return {"token": process_token(), "pid": os.getpid(), "kind": self.presence, "since": self._since,
                "heartbeat": time.time(), "current": self._current, "progress": self._progress,
                "status": self._status, "paused": self._paused.is_set(), "unsaved": len(self._unsaved),
                "log": str(paths.log_path()), "store": str(self.store_path)}

    def _publish(self, store: Store, started: bool = False) -> dict | None:
        """Register (or refresh) this process as the queue's worker; the live other owner's info if one holds it."""
        if started:
            self._since = time.time()
        try:
            return store.take_owner(PRESENCE, self.presence_info())  # issue 26: check and register in one step
        except sqlite3.Error as exc:  # a locked or full store: the next beat tries again
            if started or time.monotonic() - self._fault_logged > 60:
                self._fault_logged = time.monotonic()
                log.warning("run store: cannot publish the worker's state (%s)", exc)
        return None

    def _unpublish(self, store: Store) -> None:
        try:
            info = store.get_state(PRESENCE)
            if isinstance(info, dict) and info.get("token") == process_token():
                store.set_state(PRESENCE, None)
        except sqlite3.Error:
            pass  # a dead owner's presence is ignored by live_worker anyway

    def _heartbeat(self) -> None:
        store = Store(self.store_path)
        try:
            while not self._stop.wait(self.heartbeat_s):
                self._publish(store)
        finally:
            store.close()

    def _loop(self, store: Store) -> None:
        idle_reported = False
        backoff = 0.25
        while not self._stop.is_set():
            try:
                if self._unsaved:  # the store failed after a job: its row is written before anything new runs
                    if not self._flush_unsaved(store):
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, 8.0)
                        continue
                if self._space_needed and not self._space_freed():
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 8.0)
                    continue
                backoff = 0.25
                if store.paused != self._paused.is_set():  # paused or resumed from another process (or at start)
                    (self._paused.set if store.paused else self._paused.clear)()
                self._report_paused()
                if self._paused.is_set():
                    self._wake.wait(self.poll_s)
                    self._wake.clear()
                    continue
                self._wake.clear()
                generation = self._wake_generation
                row = store.claim_next()
                if row is None:
                    if not idle_reported:  # the queue ran dry: finished batches still without a folder get one
                        self._export_batches(store)
                    with self._lock:
                        if generation == self._wake_generation:
                            self._idle.set()
                    if not idle_reported:
                        self._emit(WorkerIdle())
                        idle_reported = True
                    self._wake.wait(self.poll_s)
                    continue
                self._idle.clear()
                idle_reported = False
                self._execute(store, row)
            except sqlite3.Error as exc:  # the store locked past busy_timeout, a full disk: say it once a minute
                if time.monotonic() - self._fault_logged > 60:
                    self._fault_logged = time.monotonic()
                    log.warning("run store: %s; the worker waits for it", one_line(exc))
                    self._emit(ModelStatus(f"run store: {one_line(exc)}; waiting for it"))
                self._stop.wait(1.0)
            except Exception:
                log.exception("worker loop")
                self._stop.wait(1.0)

    def _execute(self, store: Store, row: RunRow) -> None:
        run_id = row.id
        with self._lock:
            self._current = run_id
            self._cancel_id = None
            self._progress = None
        started = time.perf_counter()
        steps = row.recipe.get("steps") if isinstance(row.recipe, dict) else None
        self._emit(JobStarted(run_id, steps if isinstance(steps, int) else 0))
        log.info("run %d started", run_id)
        try:
            out, record = self._run(store, row, started)
        except Cancelled:
            self._store_write(store, _Write(run_id, "cancelled", lambda s: s.cancel(run_id),
                                            lambda s, changed: self._cancelled(run_id)))
        except _Postpone as postpone:  # the disk is full: wait for space, then go on by itself
            log.warning("run %d: %s", run_id, postpone.reason)
            self._emit(ModelStatus(postpone.reason))
            self._space_needed = postpone.need
            self._store_write(store, _Write(run_id, "back in the queue", lambda s: s.release(run_id),
                                            lambda s, changed: None))
        except Stopping:
            self._store_write(store, _Write(run_id, "back in the queue", lambda s: s.release(run_id),
                                            lambda s, changed: log.info("run %d interrupted by stop; back in the "
                                                                        "queue", run_id)))
        except _Failed as failed:
            f = failed.failure
            self._store_write(store, _Write(run_id, "failed", lambda s: s.fail(run_id, f.reason, f.kind, f.data),
                                            lambda s, changed: self._failed(run_id, f, changed)))
        else:
            self._store_write(store, _Write(run_id, "done", lambda s: s.finish(run_id, record),
                                            lambda s, changed: self._done(s, run_id, out, changed, started)))
        finally:
            with self._lock:
                self._current = None
                self._cancel_id = None
                self._progress = None
        if self._free_memory:
            self._free_memory = False
            _empty_cuda_cache()
        if row.batch and row.experiment and not self._unsaved:  # its batch's last run: the folder, grid and report
            self._export_batches(store, run_id)

    def _export_batches(self, store: Store, run_id: int | None = None) -> None:
        """Export the batch `run_id` finished, or (None) every finished batch without its folder. A failure is one
        line (the runs are safe in the store) and the export is tried again the next time the queue runs dry."""
        if not self.export_batches:
            return
        from vlbench.analysis.report import write_folder_report

        try:
            if run_id is None:
                batches = unexported_batches(store)
            else:
                found = finished_batch(store, run_id)
                batches = [found] if found else []
        except sqlite3.Error as exc:
            log.warning("run store: %s; batch exports wait", one_line(exc))
            return
        models = {"zimage": self.spec.zimage, "vl": self.spec.vl, "tiny": self.spec.tiny}
        for batch, experiment in batches:
            if self._stop.is_set():
                return
            try:
                done = export_finished(store, batch, experiment, models, report=write_folder_report)
            except Exception as exc:  # noqa: BLE001 — a full disk, a read-only data folder: say so, go on
                log.exception("exporting batch %s", batch)
                self._emit(BatchExportFailed(batch, experiment, one_line(f"{type(exc).__name__}: {exc}")))
                continue
            if done is not None:
                folder, images = done
                log.info("batch %s (%s): %d images, grid and report in %s", batch, experiment, images, folder)
                self._emit(BatchExported(batch, experiment, str(folder), images))

    # ---- after a job: its row, whatever the store does ----
    def _store_write(self, store: Store, write: "_Write") -> bool:
        """Write a job's outcome; a store fault is retried with backoff for STORE_RETRY_S, then the write waits in
        memory (the loop writes it before claiming anything else). Never marks a finished image failed."""
        try:
            changed = _persist(write.call, store, stop=self._stop)
        except sqlite3.Error as exc:
            self._unsaved.append(write)
            reason = one_line(f"{type(exc).__name__}: {exc}")
            log.warning("run %d: %s, but the run store cannot record it (%s); retrying until it can", write.run_id,
                        write.what, reason)
            self._emit(ModelStatus(f"run store: {reason}; run {write.run_id} is {write.what} (its image is kept) "
                                   "and is recorded when the store is writable"))
            return False
        write.then(store, changed)
        return True

    def _flush_unsaved(self, store: Store) -> bool:
        """Write the postponed outcomes, oldest first; False while the store still refuses."""
        while self._unsaved:
            write = self._unsaved[0]
            try:
                changed = write.call(store)
            except sqlite3.Error:
                return False
            self._unsaved.pop(0)
            log.info("run %d: recorded as %s after the store fault", write.run_id, write.what)
            write.then(store, changed)
        return True

    def _last_writes(self, store: Store) -> None:
        """Stopping: one more try for postponed writes; a run still unrecorded is left to Store.recover."""
        if self._unsaved and not self._flush_unsaved(store):
            for write in self._unsaved:
                log.warning("run %d: %s, but not recorded (the run store still refuses writes); it stays "
                            "'running' until the next worker's recovery queues it again", write.run_id, write.what)

    def _space_freed(self) -> bool:
        """After a full disk: is there room for the next image again? (Checked before each claim.)"""
        try:
            free = shutil.disk_usage(self.outputs_dir).free
        except OSError:
            return False
        if free < self._space_needed:
            return False
        self._space_needed = 0
        log.info("%s has room again: the queue goes on", self.outputs_dir)
        self._emit(ModelStatus(f"{self.outputs_dir} has room again: the queue goes on"))
        return True

    def _done(self, store: Store, run_id: int, out: Path, changed: bool, started: float) -> None:
        if changed:
            seconds = time.perf_counter() - started
            log.info("run %d done in %.2f s", run_id, seconds)
            self._emit(JobDone(run_id, str(out), seconds))
            return
        if store.status(run_id) != "done":  # cancelled while saving: keep no orphan image
            out.unlink(missing_ok=True)
        self._cancelled(run_id)

    def _failed(self, run_id: int, failure, changed: bool) -> None:
        if changed:
            log.warning("run %d failed: %s", run_id, failure.reason)
            self._emit(JobFailed(run_id, failure.reason, failure.data))
        else:
            self._emit(JobCancelled(run_id))

    def _cancelled(self, run_id: int) -> None:
        log.info("run %d cancelled", run_id)
        self._emit(JobCancelled(run_id))

    def _engine(self):
        if self.engine is None:
            if self._engine_factory is not None:
                self.engine = self._engine_factory()
            else:  # `vlbench worker`: the workbench's engine, threads and all
                self.engine = build_engine(self.spec, lambda text: self._emit(ModelStatus(text)))
        return self.engine

    def _run(self, store: Store, row: RunRow, started: float) -> tuple[Path, "RunRecord"]:
        """One run through the job path; its PNG on disk (fsynced) before the row says done."""
        from vlbench.engine.engine import Reference

        run_id = row.id
        try:
            refs = [Reference.open(path) for path in row.reference_paths]
            engine = self._engine()
        except Exception as exc:  # noqa: BLE001 — a bad reference or models that do not load fail this run
            raise _Failed(classify(exc)) from None  # the data and the plain line: each front end words it
        self._check_interrupt(store, run_id, force=True)

        step_times: list[float] = []

        def on_step(step: int, total: int) -> None:
            self._check_interrupt(store, run_id)
            step_times.append(time.perf_counter())
            eta = None
            if len(step_times) >= 2:  # the first step also carries extraction and any model load
                per_step = (step_times[-1] - step_times[0]) / (len(step_times) - 1)
                eta = per_step * max(0, total - step)
            elif step >= total:
                eta = 0.0
            self._progress = [step, total, eta]
            self._emit(JobProgress(run_id, step, total, eta))

        record = row.record().replace(references=[dict(r, sha256=ref.sha256) for r, ref in
                                                  zip(row.references, refs)])
        outcome = execute(engine, record, refs, on_step=on_step)
        if outcome.failure is not None:
            self._after_failure(outcome.failure)
            raise _Failed(outcome.failure)
        self._check_interrupt(store, run_id, force=True)
        self._report_loads(engine)

        out = self.outputs_dir / f"{run_id:06d}.png"
        save_start = time.perf_counter()
        record = outcome.record
        data = encode_png(outcome.image, record.png_metadata())
        try:
            record = write_run_png(out, data, record)  # fsynced before the row says done
        except OSError as exc:  # a full or read-only disk: every next run would fail the same way
            raise _Postpone(f"cannot write {out} ({exc.strerror or exc}); run {run_id} is back in the queue and "
                            f"the queue waits until {self.outputs_dir} has room (it goes on by itself)",
                            need=2 * len(data) + (1 << 20)) from None
        record = record.replace(timings={**record.timings, "save": time.perf_counter() - save_start,
                                         "total": time.perf_counter() - started})
        return out, record

    def _report_loads(self, engine) -> None:
        new_loads = {k: v for k, v in engine.models.load_seconds.items() if k not in self._reported_loads}
        if new_loads:
            self._reported_loads.update(new_loads)
            self._emit(ModelStatus(f"models ready on {engine.models.device} ({_dtype(engine.models.dtype)}); "
                                   f"loaded {', '.join(sorted(new_loads))} in {sum(new_loads.values()):.1f} s"))

    def _after_failure(self, failure) -> None:
        if failure.kind == "out_of_memory":
            self._free_memory = True  # after the except block, when the failed job's tensors are unreachable
        elif failure.fatal:  # a device-side assert poisons this process's CUDA context: every later job would fail
            self._paused.set()
            self._set_store_paused(True)
            self._report_paused()
            self._emit(ModelStatus("GPU error: CUDA is unusable in this process until vlbench restarts; "
                                   f"the queue is paused (details in {paths.log_path()})"))

    def _check_interrupt(self, store: Store, run_id: int, force: bool = False) -> None:
        if self._stop.is_set():
            raise Stopping()
        if self._cancel_id == run_id:
            raise Cancelled()
        now = time.monotonic()
        if force or now - self._last_status_check >= 0.25:  # a cancel through the store, from any process
            self._last_status_check = now
            try:
                status = store.status(run_id)
            except sqlite3.Error:  # an unreadable store cancels nothing: the job goes on
                return
            if status != "running":
                raise Cancelled()


class _Failed(Exception):
    def __init__(self, failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


class _Postpone(Exception):
    """The run cannot finish now (a full disk): it goes back to the queue, which waits until `need` bytes are free."""

    def __init__(self, reason: str, need: int) -> None:
        super().__init__(reason)
        self.reason, self.need = reason, need


@dataclass
class _Write:
    """A job's outcome for the store: `call(store)` writes it (True: the row changed), `then(store, changed)` tells."""

    run_id: int
    what: str  # done, failed, cancelled, back in the queue
    call: Callable[[Store], bool]
    then: Callable[[Store, bool], None]


# ---- helpers ----
def _persist(write: Callable, *args: Any, stop: threading.Event | None = None, budget_s: float | None = None,
             **kwargs: Any):
    """A store write that must not be lost to a store fault: retried with backoff (0.25 s doubling to 8 s) for
    `budget_s` (default STORE_RETRY_S; each try also waits busy_timeout, 5 s, for a lock), or until `stop` is set;
    then it raises."""
    deadline = time.monotonic() + (STORE_RETRY_S if budget_s is None else budget_s)
    delay = 0.25
    while True:
        try:
            return write(*args, **kwargs)
        except sqlite3.Error as exc:
            if time.monotonic() + delay > deadline or (stop is not None and stop.is_set()):
                raise
            log.warning("run store: %s; retrying %s in %.2g s", one_line(exc), getattr(write, "__name__", "a write"),
                        delay)
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
            delay = min(delay * 2, 8.0)


def build_engine(spec, on_status: Callable[[str], None]):
    """The Engine every worker runs (the workbench's thread, `vlbench worker`): open_engine with the workers' thread
    policy (SPARE_CORE: on CPU, the cores less one). Worker thread only (imports torch)."""
    if spec.tiny:
        on_status("preparing the tiny random models…")
    return open_engine(spec, on_status=on_status, threads=SPARE_CORE)


def _empty_cuda_cache() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _dtype(dtype) -> str:
    return str(dtype).removeprefix("torch.")
