"""The worker: one background thread that owns the models, takes runs from the store and executes them.

Each run goes through the one job path (vlbench.jobs.execute); its PNG is written and fsynced before
its row is marked done. The TUI imports this module on its UI thread, so nothing here imports torch,
transformers or diffusers at import time: the engine is imported and built inside the thread. Events are passed
to `on_event` from the worker thread, except WorkerPaused, which pause()/resume() post at once
from the caller's thread (so `on_event` must be safe to call from any thread). No exception ever leaves the loop: a bad job fails with a
one-line reason (tracebacks of bugs go to the log) and the next job runs.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vlbench import paths
from vlbench.errors import UserError, one_line
from vlbench.files import remove_stale_temp_files
from vlbench.jobs import Cancelled, Stopping
from vlbench.logs import attach_log_file
from vlbench.store import RunRow, Store

log = logging.getLogger("vlbench.worker")


# ---- events (posted from the worker thread) ----
@dataclass(frozen=True)
class ModelStatus:
    text: str  # "loading Qwen3-VL from …", "models ready …", GPU trouble


@dataclass(frozen=True)
class JobStarted:
    run_id: int
    total_steps: int


@dataclass(frozen=True)
class JobProgress:
    run_id: int
    step: int
    total: int
    eta_s: float | None  # None until two steps have been timed


@dataclass(frozen=True)
class JobDone:
    run_id: int
    image: str
    seconds: float


@dataclass(frozen=True)
class JobFailed:
    run_id: int
    reason: str


@dataclass(frozen=True)
class JobCancelled:
    run_id: int


@dataclass(frozen=True)
class WorkerIdle:
    pass


@dataclass(frozen=True)
class WorkerPaused:
    paused: bool


class Worker:
    """Runs queued jobs one at a time on a thread that owns the loaded models."""

    def __init__(self, spec, *, store_path: Path | str | None = None, outputs_dir: Path | str | None = None,
                 on_event: Callable[[object], None] = lambda e: None, engine_factory: Callable[[], Any] | None = None,
                 poll_s: float = 0.5, recover: bool = True, render: Callable[[UserError], str] | None = None):
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
        if render is None:  # the workbench's words: the headless worker's runs are read there too
            from vlbench.tui.wording import render
        self._render = render
        self._reported_paused = False

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
        self._control_store().set_paused(True)
        self._report_paused()
        self._wake.set()

    def resume(self) -> None:
        self._paused.clear()
        self._control_store().set_paused(False)
        self._report_paused()
        self.wake()

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
        try:
            store = Store(self.store_path)
            if self._recover:
                requeued, failed = store.recover()
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
                store.close()
            if handler is not None:
                logging.getLogger("vlbench").removeHandler(handler)
                handler.close()

    def _loop(self, store: Store) -> None:
        idle_reported = False
        while not self._stop.is_set():
            try:
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
            except Exception:  # e.g. the store locked for longer than busy_timeout: log, wait, go on
                log.exception("worker loop")
                self._stop.wait(1.0)

    def _execute(self, store: Store, row: RunRow) -> None:
        run_id = row.id
        with self._lock:
            self._current = run_id
            self._cancel_id = None
        started = time.perf_counter()
        steps = row.recipe.get("steps") if isinstance(row.recipe, dict) else None
        self._emit(JobStarted(run_id, steps if isinstance(steps, int) else 0))
        log.info("run %d started", run_id)
        try:
            image = self._run(store, row, started)
        except Cancelled:
            _persist(store.cancel, run_id)
            log.info("run %d cancelled", run_id)
            self._emit(JobCancelled(run_id))
        except Stopping:
            _persist(store.release, run_id)
            log.info("run %d interrupted by stop; back in the queue", run_id)
        except _Failed as failed:
            if _persist(store.fail, run_id, failed.failure.reason, failed.failure.kind):
                log.warning("run %d failed: %s", run_id, failed.failure.reason)
                self._emit(JobFailed(run_id, failed.failure.reason))
            else:
                self._emit(JobCancelled(run_id))
        else:
            seconds = time.perf_counter() - started
            log.info("run %d done in %.2f s", run_id, seconds)
            self._emit(JobDone(run_id, image, seconds))
        finally:
            with self._lock:
                self._current = None
                self._cancel_id = None
        if self._free_memory:
            self._free_memory = False
            _empty_cuda_cache()

    def _engine(self):
        if self.engine is None:
            if self._engine_factory is not None:
                self.engine = self._engine_factory()
            else:
                from vlbench.engine.engine import Engine
                from vlbench.engine.models import Models

                _quiet_libraries()
                self.engine = Engine(Models(self.spec, on_status=lambda text: self._emit(ModelStatus(text))))
        return self.engine

    def _run(self, store: Store, row: RunRow, started: float) -> str:
        """One run through the job path; its PNG on disk (fsynced) before the row says done."""
        from vlbench.engine.engine import Reference
        from vlbench.jobs import classify, execute
        from vlbench.pngs import encode_png, write_png

        run_id = row.id
        try:
            refs = [Reference.open(path) for path in row.reference_paths]
            engine = self._engine()
        except Exception as exc:  # noqa: BLE001 — a bad reference or models that do not load fail this run
            raise _Failed(classify(exc, self._render)) from None
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
            self._emit(JobProgress(run_id, step, total, eta))

        record = row.record().replace(references=[dict(r, sha256=ref.sha256) for r, ref in
                                                  zip(row.references, refs)])
        outcome = execute(engine, record, refs, on_step=on_step, render=self._render)
        if outcome.failure is not None:
            self._after_failure(outcome.failure)
            raise _Failed(outcome.failure)
        self._check_interrupt(store, run_id, force=True)
        self._report_loads(engine)

        out = self.outputs_dir / f"{run_id:06d}.png"
        save_start = time.perf_counter()
        record = outcome.record
        sha = write_png(out, encode_png(outcome.image, record.png_metadata()))  # fsynced before the row says done
        record = record.replace(image=str(out), image_sha256=sha,
                                timings={**record.timings, "save": time.perf_counter() - save_start,
                                         "total": time.perf_counter() - started})
        if not _persist(store.finish, run_id, record):
            if store.status(run_id) != "done":  # cancelled while saving: keep no orphan image
                out.unlink(missing_ok=True)
            raise Cancelled()
        return str(out)

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
            self._control_store().set_paused(True)
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
            if store.status(run_id) != "running":
                raise Cancelled()


class _Failed(Exception):
    def __init__(self, failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


# ---- helpers ----
def _persist(write: Callable, *args: Any, **kwargs: Any):
    """A store write that must not be lost to a briefly locked database (busy_timeout is 5 s a try)."""
    import sqlite3

    for attempt in range(4):
        try:
            return write(*args, **kwargs)
        except sqlite3.OperationalError:
            if attempt == 3:
                raise
            log.warning("run store busy; retrying %s", write.__name__)
            time.sleep(0.5)


def _quiet_libraries() -> None:
    """Library progress bars would scribble over the TUI; ModelStatus events replace them."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


def _empty_cuda_cache() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _dtype(dtype) -> str:
    return str(dtype).removeprefix("torch.")
