"""The worker: one background thread that owns the models, takes runs from the store and executes them.

The TUI imports this module on its UI thread, so nothing here imports torch, transformers or
diffusers at import time: the engine is imported and built inside the thread. Events are passed
to `on_event` from the worker thread, except WorkerPaused, which pause()/resume() post at once
from the caller's thread (so `on_event` must be safe to call from any thread). No exception ever leaves the loop: a bad job fails with a
one-line reason (tracebacks of bugs go to the log) and the next job runs.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vlbench import paths
from vlbench.logs import attach_log_file
from vlbench.store import RunRow, Store, one_line, pid_alive

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
    output_path: str
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


class Cancelled(Exception):
    """Raised from the step callback: the pipeline call unwinds and the run is marked cancelled."""


class _Stopping(Exception):
    """Raised from the step callback when the worker stops: the run goes back to the queue."""


class _NonFinite(Exception):
    """NaN/inf in the conditioning or the image; the message is the run's failure reason."""


class Worker:
    """Runs queued jobs one at a time on a thread that owns the loaded models."""

    def __init__(self, spec, *, store_path: Path | str | None = None, outputs_dir: Path | str | None = None,
                 on_event: Callable[[object], None] = lambda e: None, engine_factory: Callable[[], Any] | None = None,
                 poll_s: float = 0.5, recover: bool = True):
        self.spec = spec  # vlbench.engine.models.ModelSpec
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
        self._environment: dict | None = None
        self._free_memory = False
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

    def pause(self) -> None:
        """Stop claiming new jobs; the current one finishes. WorkerPaused(True) is posted at once."""
        self._paused.set()
        self._report_paused()
        self._wake.set()

    def resume(self) -> None:
        self._paused.clear()
        self._report_paused()
        self.wake()

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
                recovered = store.recover()
                if recovered:
                    log.info("recovered %d run(s) left running by a dead worker", recovered)
            _remove_stale_temp_files(self.outputs_dir)
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
            output_path = self._generate(store, row, started)
        except Cancelled:
            _persist(store.cancel, run_id)
            log.info("run %d cancelled", run_id)
            self._emit(JobCancelled(run_id))
        except _Stopping:
            _persist(store.release, run_id)
            log.info("run %d interrupted by stop; back in the queue", run_id)
        except Exception as exc:
            reason = self._reason(run_id, exc)
            if _persist(store.fail, run_id, reason):
                log.warning("run %d failed: %s", run_id, reason)
                self._emit(JobFailed(run_id, reason))
            else:
                self._emit(JobCancelled(run_id))
        else:
            seconds = time.perf_counter() - started
            log.info("run %d done in %.2f s", run_id, seconds)
            self._emit(JobDone(run_id, output_path, seconds))
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

    def _generate(self, store: Store, row: RunRow, started: float) -> str:
        import numpy as np

        from vlbench.engine.engine import Reference, environment
        from vlbench.engine.generate import save_png
        from vlbench.engine.recipe import Recipe
        from vlbench.errors import UserError

        run_id = row.id
        try:
            recipe = Recipe.from_dict(row.recipe, source=f"run {run_id} recipe")
        except TypeError as exc:
            raise UserError(f"run {run_id} recipe: {exc}") from None
        refs = [Reference.open(path) for path in row.images]
        engine = self._engine()
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

        # NaN latents reach the decoder's float -> uint8 cast; make that cast raise (errstate is per thread).
        with np.errstate(invalid="raise"):
            try:
                result = engine.run(recipe, row.prompt, refs, on_step=on_step)
            except FloatingPointError:
                raise _NonFinite(self._nan_reason(engine, recipe, row.prompt, refs)) from None
        if not _finite(result.conditioning.embeds):
            raise _NonFinite(self._nan_reason(engine, recipe, row.prompt, refs))
        self._check_interrupt(store, run_id, force=True)

        timings = dict(result.timings)
        new_loads = {k: v for k, v in engine.models.load_seconds.items() if k not in self._reported_loads}
        if new_loads:
            self._reported_loads.update(new_loads)
            timings.update({f"load_{k}": v for k, v in new_loads.items()})
            self._emit(ModelStatus(f"models ready on {engine.models.device} ({_dtype(engine.models.dtype)}); "
                                   f"loaded {', '.join(sorted(new_loads))} in {sum(new_loads.values()):.1f} s"))
        if self._environment is None:
            self._environment = environment(engine.models)
        conditioning = compact_conditioning(result.conditioning)

        out = self.outputs_dir / f"{run_id:06d}.png"
        save_start = time.perf_counter()
        metadata = {"run_id": run_id, "recipe": recipe.to_dict(), "prompt": row.prompt, "images": row.images,
                    "seed": recipe.seed, "timings": timings, "environment": self._environment}
        save_png(result.image, out, metadata)  # atomic: a kill leaves the old file or a .tmp, never half a PNG
        timings["save"] = time.perf_counter() - save_start
        timings["total"] = time.perf_counter() - started
        if not _persist(store.finish, run_id, output_path=str(out), timings=timings,
                            peak_memory_bytes=result.peak_memory_bytes, environment=self._environment,
                            conditioning=conditioning):
            if store.status(run_id) != "done":  # cancelled while saving: keep no orphan image
                out.unlink(missing_ok=True)
            raise Cancelled()
        return str(out)

    def _check_interrupt(self, store: Store, run_id: int, force: bool = False) -> None:
        if self._stop.is_set():
            raise _Stopping()
        if self._cancel_id == run_id:
            raise Cancelled()
        now = time.monotonic()
        if force or now - self._last_status_check >= 0.25:  # a cancel through the store, from any process
            self._last_status_check = now
            if store.status(run_id) != "running":
                raise Cancelled()

    def _nan_reason(self, engine, recipe, prompt: str, refs) -> str:
        try:  # the extraction is cached, so re-deriving the conditioning is cheap
            cond = engine.condition(recipe, prompt, refs)
            if not _finite(cond.embeds):
                bad = int((~_isfinite(cond.embeds)).sum())
                return (f"NaN in conditioning: {bad} of {cond.embeds.numel()} values are not finite "
                        f"(layer {recipe.layer}, tokens {recipe.tokens}); try another layer or dtype fp32")
        except Exception:
            log.exception("re-deriving the conditioning to locate a NaN")
        return ("NaN in the image: the generated latents are not finite; try dtype bf16/fp32 instead of fp16, "
                "or another layer or token selection")

    def _reason(self, run_id: int, exc: BaseException) -> str:
        from vlbench.errors import UserError

        if isinstance(exc, (UserError, _NonFinite)):
            return one_line(exc)
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
            self._free_memory = True  # after the except block, when the failed job's tensors are unreachable
            detail = one_line(exc)
            if len(detail) > 200:
                detail = detail[:199] + "…"
            log.warning("run %d: out of memory", run_id, exc_info=exc)
            return (f"out of memory: {detail}; lower width/height or max_image_tokens, "
                    "or free GPU memory")
        log.error("run %d failed with an unexpected error", run_id, exc_info=exc)
        reason = one_line(f"{type(exc).__name__}: {exc}")
        if "device-side assert" in reason or "CUDA error" in reason:
            # A device-side assert poisons this process's CUDA context: every later job would fail too.
            self._paused.set()
            self._report_paused()
            self._emit(ModelStatus("GPU error: CUDA is unusable in this process until vlbench restarts; "
                                   f"the queue is paused (details in {paths.log_path()})"))
            reason += " (CUDA context lost: restart vlbench)"
        return reason


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


def _isfinite(tensor):
    import torch

    return torch.isfinite(tensor)


def _finite(tensor) -> bool:
    return bool(_isfinite(tensor).all())


def _dtype(dtype) -> str:
    return str(dtype).removeprefix("torch.")


_REPEATED_SPECIAL = re.compile(r"(<\|[^|<>]+\|>)\1{3,}")


def compact_conditioning(cond) -> dict:
    """Conditioning.describe() without its per-row list, role runs instead of one role per position.

    Token ids stay exact (the record must reproduce the input); the decoded text squeezes runs of
    one special token ("<|image_pad|>×256"); role_counts/source_counts summarise the rows.
    """
    info = cond.describe()
    rows = info.pop("rows", [])
    info["role_counts"] = dict(Counter(str(r.get("role", r.get("source"))) for r in rows))
    info["source_counts"] = dict(Counter(str(r.get("source")) for r in rows))
    vl = info.get("vl")
    if vl is not None:
        vl["role_runs"] = _runs(vl.pop("roles", []))
        vl["decoded"] = _REPEATED_SPECIAL.sub(
            lambda m: f"{m.group(1)}×{len(m.group(0)) // len(m.group(1))}", vl.get("decoded") or "")
    info["timings"] = dict(cond.timings)
    return info


def _runs(items: list) -> list[list]:
    out: list[list] = []
    for item in items:
        if out and out[-1][0] == item:
            out[-1][1] += 1
        else:
            out.append([item, 1])
    return out


_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")  # save_png's ".{name}.{pid}.tmp"


def _remove_stale_temp_files(outputs_dir: Path) -> None:
    """A worker killed while saving leaves a temp file; no run refers to it."""
    if not outputs_dir.is_dir():
        return
    for path in outputs_dir.glob(".*.tmp"):
        match = _TEMP.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)


