"""The events a queue runner posts, and the interface the workbench drives it through.

Two roles run a store's queue for a front end: the Worker (vlbench.worker.worker), a thread of this process that
owns the models, and the Viewer (vlbench.worker.viewer), which stands in for it while a headless `vlbench worker`
in another process runs the queue. Both post the events below to `on_event` and offer the QueueRunner interface;
the workbench sees no difference. Torch-free (the workbench imports it on its UI thread).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

PRESENCE = "worker"  # store state: which process works this store's queue (a headless worker, a workbench)


@runtime_checkable
class QueueRunner(Protocol):
    """What a front end calls on whatever runs its queue (a Worker, or a Viewer of a headless worker).
    Control may come from any thread; events go to the `on_event` given at construction."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 10) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def cancel_current(self) -> None: ...

    def wake(self) -> None: ...

    def wait_idle(self, timeout: float | None = None) -> bool: ...

    @property
    def running(self) -> bool: ...

    @property
    def paused(self) -> bool: ...

    @property
    def current_run_id(self) -> int | None: ...


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
    reason: str  # the stored line (no front end's words)
    data: dict | None = None  # the structured error (RunRecord.error_data): the front end words it


@dataclass(frozen=True)
class JobCancelled:
    run_id: int


@dataclass(frozen=True)
class WorkerIdle:
    pass


@dataclass(frozen=True)
class BatchExported:
    """An experiment batch's last run ended and its folder (grid and report, as `vlbench run`'s) is written."""

    batch: str
    experiment: str
    folder: str
    images: int


@dataclass(frozen=True)
class BatchExportFailed:
    batch: str
    experiment: str
    reason: str


@dataclass(frozen=True)
class WorkerPaused:
    paused: bool


@dataclass(frozen=True)
class ViewerFollows:
    """A Viewer's headless worker stopped and another `vlbench worker` now runs the queue: the Viewer follows it."""

    pid: int | None
    log: str
