"""`vlbench worker`: run the store's queue without a terminal, so a long queue outlives an SSH session.

The same worker as the workbench's thread (vlbench.worker.Worker), in a process of its own. It says
one line when it starts, then writes only to the log file: a closed terminal (SIGHUP, an SSH drop)
changes nothing. SIGTERM or Ctrl-C stops it cleanly: the job in flight goes back to the front of the
queue. A workbench opened while it runs watches and controls it (pause, cancel, reorder) through the
store instead of starting its own worker.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from vlbench import paths
from vlbench.cli import common
from vlbench.errors import UserError
from vlbench.store import Store
from vlbench.worker import PRESENCE, JobFailed, ModelStatus, Worker

HELP = "run the queue headless (survives a closed terminal; the workbench watches it)"
DESCRIPTION = ("Run the run store's queue in this process, without a terminal: start it under tmux, or with "
               "`nohup vlbench worker &`, then open `vlbench` to watch and control it (it says 'viewer' in its "
               "header). Logs go to the data folder's vlbench.log. SIGTERM (kill PID) or Ctrl-C stops it; the job in "
               "flight goes back to the queue.")


def add_arguments(p) -> None:
    p.add_argument("--exit-when-idle", action="store_true",
                   help="stop once the queue is empty (and not paused), e.g. at the end of a scripted batch")
    p.add_argument("--poll", type=float, default=0.5, metavar="SECONDS",
                   help="how often an idle worker looks for new runs (default 0.5)")
    common.add_model_flags(p)


def run(args) -> int:
    if not 0.05 <= args.poll <= 60:
        raise UserError("must be between 0.05 and 60 seconds", field="poll", value=args.poll)
    common.check_data_dir()
    spec = common.model_spec(args)
    worker = Worker(spec, on_event=_log_event, poll_s=args.poll, presence="headless")
    store = Store()
    try:
        other = store.take_owner(PRESENCE, worker.presence_info())  # check and register in one step (issue 26)
        if other is not None:
            what = "a headless worker" if other.get("kind") == "headless" else "a workbench"
            raise UserError(f"{what} (pid {other.get('pid')}) already runs this queue ({store.path})",
                            fix="stop it first; the workbench can watch a headless worker: start `vlbench worker` "
                                "first, then `vlbench`")
    finally:
        store.close()

    stopping = threading.Event()
    reason: list[str] = []

    def stop(signum, frame) -> None:
        reason.append(signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the terminal may go; the queue goes on

    log = logging.getLogger("vlbench.worker")
    log.info("headless worker pid %d started on %s (%s)", os.getpid(), paths.store_path(), spec.describe())
    _say(f"vlbench worker: pid {os.getpid()} runs the queue of {paths.store_path()} ({spec.describe()}); log: "
         f"{paths.log_path()}; stop it with `kill {os.getpid()}`")
    worker.start()
    try:
        while not stopping.wait(1.0):
            if not worker.running:  # the store could not be opened or failed for good: the log says why
                reason.append("worker stopped")
                break
            if args.exit_when_idle and worker.wait_idle(0) and not worker.paused and not worker._unsaved:
                reason.append("queue empty")
                break
    finally:
        worker.stop(timeout=30)
        if worker.running and worker.current_run_id is not None:  # stuck in a model load: give its run back now
            with Store() as store:
                store.release(worker.current_run_id)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("headless worker pid %d stopped (%s)", os.getpid(), ", ".join(reason) or "done")
    _say(f"vlbench worker: stopped ({', '.join(reason) or 'done'})")
    if reason and reason[0] == "SIGINT":  # Ctrl-C: interrupted, as every command (its job is back in the queue)
        return 130
    return 0 if reason and reason[0] in ("queue empty", "SIGTERM") else 1  # kill PID: its normal stop


def _log_event(event: object) -> None:
    """The worker's events go to the log file only (nobody may be at the terminal)."""
    if isinstance(event, ModelStatus):
        logging.getLogger("vlbench.worker").info("%s", event)
    elif isinstance(event, JobFailed):  # in the command line's words
        logging.getLogger("vlbench.worker").info("run %d failed: %s", event.run_id,
                                                 common.failure_text(event.reason, event.data))


def _say(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # the terminal is gone
        pass
