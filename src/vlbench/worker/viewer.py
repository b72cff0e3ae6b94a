"""The Viewer: the workbench's stand-in for a Worker while a headless `vlbench worker` (another process) runs the
store's queue. It reads the store and the headless worker's published state (PRESENCE) and posts the same events
(vlbench.worker.events) a Worker would; control (pause, cancel, reorder) goes through the store.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

from vlbench.errors import one_line
from vlbench.experiments.batch_export import EXPORTED, exported_folder
from vlbench.process import owner_alive, process_token
from vlbench.store import FINISHED, RunRow, Store
from vlbench.worker.events import (PRESENCE, BatchExported, JobCancelled, JobDone, JobFailed, JobProgress,
                                   JobStarted, ModelStatus, ViewerFollows, WorkerIdle, WorkerPaused)

log = logging.getLogger("vlbench.worker")


# ---- a headless worker, seen from another process ----
def live_worker(store: Store) -> dict | None:
    """The presence of the live process working this store's queue (`vlbench worker`, or a workbench), or None.

    Liveness is the owner's (host, pid, start time): a killed worker's stale entry is ignored."""
    try:
        info = store.get_state(PRESENCE)
    except sqlite3.Error:
        return None
    if not isinstance(info, dict) or info.get("token") == process_token() or not owner_alive(info.get("token")):
        return None
    return info


class Viewer:
    """Stands in for a Worker in a workbench while a headless worker (`vlbench worker`) runs the queue.

    Control goes through the store (pause, cancel, reorder work across processes); the events a Worker would
    post (started, progress, done, failed, cancelled, paused, idle, status) are read from the store and the
    headless worker's published state, every `poll_s`."""

    def __init__(self, store_path: Path | str, info: dict, on_event: Callable[[object], None] = lambda e: None,
                 poll_s: float = 0.5):
        self.store_path = Path(store_path)
        self.info = info
        self.pid = info.get("pid")
        self.poll_s = poll_s
        self._on_event = on_event
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._control: Store | None = None
        self._paused = bool(info.get("paused"))
        self._current: int | None = None
        self.alive = True

    # the Worker interface the workbench uses
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._main, name="vlbench-viewer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._control is not None:
            self._control.close()
            self._control = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def current_run_id(self) -> int | None:
        return self._current

    def pause(self) -> None:
        self._set_paused(True)

    def resume(self) -> None:
        self._set_paused(False)

    def cancel_current(self) -> None:
        if self._current is not None:  # the headless worker sees it at its next step
            self._store().cancel(self._current)

    def wake(self) -> None:
        pass  # the headless worker polls the store itself

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self._idle.wait(timeout)

    def _store(self) -> Store:
        if self._control is None:
            self._control = Store(self.store_path)
        return self._control

    def _set_paused(self, paused: bool) -> None:
        try:
            self._store().set_paused(paused)
        except sqlite3.Error as exc:
            self._emit(ModelStatus(f"run store: {one_line(exc)}; the headless worker did not get the "
                                   f"{'pause' if paused else 'resume'}"))
            return
        self._paused = paused
        self._emit(WorkerPaused(paused))

    def _emit(self, event: object) -> None:
        try:
            self._on_event(event)
        except Exception:  # noqa: BLE001
            log.exception("on_event raised for %r", event)

    # polling
    def _main(self) -> None:
        store = Store(self.store_path)
        seen_until = time.time()  # runs finished after this are reported
        reported: set[int] = set()
        batches: dict[str, tuple[str, float]] = {}  # experiment batches with a run reported: until their export
        progress = status = None
        idle = False
        try:
            self._emit(WorkerPaused(self._paused))
            while not self._stop.is_set():
                try:
                    info = store.get_state(PRESENCE)
                    if not (isinstance(info, dict) and info.get("token") == self.info.get("token")
                            and owner_alive(info.get("token"))):
                        if _restarted(info):  # `vlbench worker` started again: follow the new one
                            self.info, self.pid, self.alive = info, info.get("pid"), True
                            status = None  # its own status is shown next
                            self._emit(ViewerFollows(self.pid, str(info.get("log") or "")))
                            self._emit(ModelStatus(f"viewer: `vlbench worker` (pid {self.pid}) runs the queue "
                                                   f"(started again); pause, cancel and reorder act on it"))
                        else:
                            if self.alive:
                                self.alive = False
                                self._emit(ModelStatus(f"the headless worker (pid {self.pid}) has stopped: nothing "
                                                       "runs the queue; start `vlbench worker` again (this view "
                                                       "follows it), or restart the workbench to run it here"))
                            info = {}
                            if self._current is not None:  # its job stopped with it: no frozen progress bar
                                self._current, progress = None, None
                                self._emit(WorkerIdle())
                    paused = store.paused
                    if paused != self._paused:
                        self._paused = paused
                        self._emit(WorkerPaused(paused))
                    if info.get("status") and info["status"] != status:
                        status = info["status"]
                        self._emit(ModelStatus(status))
                    current = info.get("current")
                    if current != self._current:
                        self._current = current
                        if current is not None:
                            row = store.get(current)
                            steps = row.recipe.get("steps") if row is not None and isinstance(row.recipe, dict) else 0
                            self._emit(JobStarted(current, steps if isinstance(steps, int) else 0))
                            idle = False
                            self._idle.clear()
                    if current is not None and info.get("progress") and info["progress"] != progress:
                        progress = info["progress"]
                        step, total, eta = progress
                        self._emit(JobProgress(current, step, total, eta))
                    for row in store.history(status=FINISHED, sort="finished_at", limit=100):
                        if row.finished_at is None or row.finished_at < seen_until - 5:
                            break
                        if row.id in reported or row.source != "tui" and row.claimed_by is None:
                            continue
                        reported.add(row.id)
                        self._emit(_finished_event(row))
                        if row.batch and row.experiment:
                            batches.setdefault(row.batch, (row.experiment, time.monotonic()))
                    _report_viewed_exports(self, store, batches)
                    seen_until = max(seen_until, time.time() - 5)
                    if current is None and not store.count(status="pending") and not idle:
                        idle = True
                        self._idle.set()
                        self._emit(WorkerIdle())
                except sqlite3.Error as exc:
                    self._emit(ModelStatus(f"run store: {one_line(exc)}"))
                self._stop.wait(self.poll_s)
        finally:
            store.close()


def _restarted(info: object) -> bool:
    """A live headless worker of another process owns the store's queue (a Viewer may follow it)."""
    return (isinstance(info, dict) and info.get("kind") == "headless" and bool(info.get("token"))
            and info.get("token") != process_token() and owner_alive(info.get("token")))


def _report_viewed_exports(viewer, store: Store, batches: dict[str, tuple[str, float]]) -> None:
    """The headless worker wrote a batch's folder: the same event the workbench's own worker sends."""
    for batch, (experiment, since) in list(batches.items()):
        folder = exported_folder(store.get_state(EXPORTED + batch))
        if folder is not None:
            del batches[batch]
            images = store.batch_counts([batch]).get(batch, {}).get("done", 0)
            viewer._emit(BatchExported(batch, experiment, folder, images))
        elif time.monotonic() - since > 600:  # not finished, or its export failed (the worker's log says why)
            del batches[batch]


def _finished_event(row: RunRow) -> object:
    if row.status == "done":
        return JobDone(row.id, row.image or "", row.duration or 0.0)
    if row.status == "failed":
        return JobFailed(row.id, row.error or "failed", row.error_data)
    return JobCancelled(row.id)
