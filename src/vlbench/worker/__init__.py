"""What runs a store's queue for a front end, one module per role behind one declared interface:

  events.py  the events posted to a front end (ModelStatus, JobStarted, JobProgress, JobDone, …), PRESENCE (the store
             state naming the process that works the queue) and QueueRunner, the interface both roles offer
  worker.py  Worker: the thread that owns the models and works the queue (the workbench's, or `vlbench worker`)
  viewer.py  Viewer: a workbench's stand-in for a Worker while a headless `vlbench worker` runs the queue;
             live_worker (who works this queue)

`from vlbench.worker import Worker, Viewer, JobDone, …` names them all. Torch-free: the workbench imports this
package on its UI thread; the engine is built inside the worker's thread.
"""

from vlbench.engine.build import cpu_threads
from vlbench.worker.events import (PRESENCE, BatchExported, BatchExportFailed, JobCancelled, JobDone, JobFailed,
                                   JobProgress, JobStarted, ModelStatus, QueueRunner, ViewerFollows, WorkerIdle,
                                   WorkerPaused)
from vlbench.worker.viewer import Viewer, _report_viewed_exports, live_worker
from vlbench.worker.worker import HEARTBEAT_S, STORE_RETRY_S, Worker, build_engine

__all__ = ["PRESENCE", "BatchExported", "BatchExportFailed", "JobCancelled", "JobDone", "JobFailed", "JobProgress",
           "JobStarted", "ModelStatus", "QueueRunner", "ViewerFollows", "WorkerIdle", "WorkerPaused", "Viewer",
           "live_worker", "HEARTBEAT_S", "STORE_RETRY_S", "Worker", "build_engine", "cpu_threads"]
