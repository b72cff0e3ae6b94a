"""Run an experiment's jobs on Ray: one actor per GPU (vlbench.executors.ray_actor), each an Engine over its
own models; this process writes every PNG, results row and history entry through the runner's ledger.

`dispatch.Dispatcher` sends an actor the jobs that read what it already holds, and balances the rest as
actors free up. Faults: an actor that dies (process exit, node loss, or a CUDA error that poisons its
context) is replaced (at most `max_restarts` times per slot) and each job it was running is queued again
for another actor, at most `max_attempts` runs in all, then written as a failed row with the reason. A
job's row is appended only once, when its result arrives: nothing finished runs twice, nothing queued is
lost, and an interrupted run resumes like a local one.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

from rich.markup import escape

from vlbench import paths
from vlbench.errors import UserError, one_line
from vlbench.executors.dispatch import Dispatcher
from vlbench.executors.ray_actor import VLBenchActor
from vlbench.executors.ray_connect import cause, connect, plan_actors
from vlbench.files import read_bytes_file
from vlbench.pngs import write_png, write_run_png
from vlbench.records import RunRecord

MAX_ATTEMPTS = 3  # runs of one job whose actor keeps dying (2 retries), then it is written as failed
MAX_RESTARTS = 2  # replacement actors per slot
START_TIMEOUT_S = 300.0  # actors must start (process + imports, not model loads) within this
STOP_POLL_S = 0.5  # a lane checks its stop event this often while it waits for results


class LaneLost(RuntimeError):
    """A lane's actor died for good (out of replacements) with images of its run not done."""


@dataclass
class _Slot:
    index: int
    handle: Any = None
    incarnation: int = 0
    ready: Any = None  # ObjectRef of ready() while the actor starts
    info: dict | None = None  # ready()'s answer
    restarts: int = 0
    dead: bool = False  # out of replacements
    inflight: int = 0
    retrying: int = 0  # retried jobs in flight (they run alone)
    done: int = 0

    @property
    def usable(self) -> bool:
        return not self.dead and self.ready is None and self.handle is not None

    def label(self) -> str:
        info = self.info or {}
        where = info.get("gpu") or info.get("device") or "?"
        return f"actor {self.index} ({info.get('host', '?')}, {where})"


class RayExecutor:
    """Starts the actors; called by the runner in place of its in-process loop (`run_experiment(executor=…)`)."""

    def __init__(self, spec, *, address: str | None, owns_ray: bool, console=None,
                 actor_options: dict, threads: int | None, n: int, max_attempts: int = MAX_ATTEMPTS,
                 max_restarts: int = MAX_RESTARTS, faults: dict[str, str] | None = None):
        import ray

        self.ray = ray
        self.spec, self.address, self.owns_ray, self.console = spec, address, owns_ray, console
        self.actor_options, self.threads = actor_options, threads
        self.max_attempts, self.max_restarts = max_attempts, max_restarts
        # tests: job key -> "exit" (the actor dies mid-job, first run only) | "exit-always" | "exit-before" |
        # "cuda-error" (a CUDA error mid-job, first run only: the actor must be replaced)
        self.faults = dict(faults or {})
        self.slots = [_Slot(i) for i in range(n)]
        self.batch = 1  # --batch N: up to N jobs of one shape per actor task, in shared DiT calls (jobs.execute_batch)
        self._cls = ray.remote(VLBenchActor)
        self.stats = {"deaths": 0, "retries": 0, "stolen": 0, "restarts": 0}
        self._stats_lock = threading.Lock()  # lanes update the stats from their threads
        self.last_death = ""
        self.closed = False

    # ---- life cycle ----
    @classmethod
    def start(cls, spec, *, address: str | None = None, actors: int | None = None, console=None,
              max_attempts: int = MAX_ATTEMPTS, max_restarts: int = MAX_RESTARTS, faults: dict | None = None,
              start_timeout: float = START_TIMEOUT_S, threads: int | None = None) -> "RayExecutor":
        """Connect (or start a local instance) and start the actors; every actor has answered when this returns.

        `threads`: torch threads per actor (default: the CPUs Ray grants it, at most 8 beside a GPU). CPU float
        results depend on the thread count: pass this process's count to compare images bit for bit with local.
        """
        import ray

        owns = connect(address, cpus=actors or 1)
        executor = None
        try:
            n, options, auto_threads = plan_actors(ray, spec, actors)
            threads = threads or auto_threads
            actor_spec = asdict(spec)
            if options.get("num_gpus"):
                actor_spec["device"] = "cuda"  # inside an actor, its one GPU is cuda:0
            elif not spec.device or spec.device.startswith("cuda"):
                actor_spec["device"] = "cpu"
            spec = replace(spec, device=actor_spec["device"])
            executor = cls(spec, address=address, owns_ray=owns, console=console, actor_options=options,
                           threads=threads, n=n, max_attempts=max_attempts, max_restarts=max_restarts, faults=faults)
            executor._start_all(start_timeout)
        except BaseException:
            if executor is not None:
                executor.close()  # the actors that did start, and Ray when this call started it
            elif owns:
                ray.shutdown()
            raise
        if console is not None:
            kinds = sorted({s.info.get("gpu") or s.info.get("device") for s in executor.slots})
            hosts = sorted({s.info.get("host") for s in executor.slots})
            console.print(f"[dim]Ray {ray.__version__}: {n} actors ({', '.join(map(str, kinds))}) on "
                          f"{len(hosts)} host{'s' if len(hosts) != 1 else ''} "
                          f"({'local instance' if address is None and owns else address or 'connected'})[/dim]")
        return executor

    def _spawn(self, slot: _Slot) -> None:
        slot.incarnation += 1
        slot.inflight = slot.retrying = 0  # slot.info stays (for labels) until the new actor answers ready()
        slot.handle = self._cls.options(max_restarts=0, max_task_retries=0, **self.actor_options).remote(
            asdict(self.spec), slot.index, self.threads)
        slot.ready = slot.handle.ready.remote()

    def _start_all(self, timeout: float) -> None:
        ray = self.ray
        for slot in self.slots:
            self._spawn(slot)
        try:
            infos = ray.get([s.ready for s in self.slots], timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise UserError(f"Ray could not start {len(self.slots)} actors ({self.actor_options}) within {timeout:.0f} s; "
                            f"the cluster has {_resources(ray.available_resources())} free") from None
        except ray.exceptions.RayError as exc:
            raise UserError(f"a Ray actor failed to start ({cause(exc)})",
                            fix="is vlbench installed on every node, with the same versions?") from None
        for slot, info in zip(self.slots, infos):
            slot.info, slot.ready = info, None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for slot in self.slots:
            if slot.handle is not None:
                try:
                    self.ray.kill(slot.handle, no_restart=True)
                except Exception:  # noqa: BLE001
                    pass
                slot.handle = None
        if self.owns_ray:
            self.ray.shutdown()

    def describe(self) -> dict:
        """For run.json: where the jobs ran."""
        return {"kind": "ray", "ray": self.ray.__version__, "address": self.address or "local", "batch": self.batch,
                "actors": [{k: v for k, v in (s.info or {}).items() if k != "environment"} for s in self.slots],
                "max_attempts": self.max_attempts}

    # ---- running jobs (in place of the runner's LocalExecutor) ----
    def __call__(self, engine, jobs: list, ledger) -> None:
        self._run(jobs, ledger, self.slots, None)

    def _run(self, jobs: list, ledger, slots: list, stop) -> None:
        if self.closed:
            raise RuntimeError("RayExecutor is closed")
        run = _Run(self, ledger, Dispatcher(jobs, self.max_attempts), slots, stop)
        try:
            run.loop()
        finally:
            with self._stats_lock:
                self.stats["stolen"] += run.dispatcher.stolen
            run.abandon()

    def lanes(self) -> "Lanes":
        """The actors as lanes for concurrent runs (a search's trials): each run on one free actor."""
        return Lanes(self)


class Lanes:
    """Concurrent runs over the executor's actors: a run takes a free actor (`acquire`), runs its jobs there alone
    (`lane.run`, what run_experiment calls as its executor) and gives it back (`release`); runs on different
    actors proceed in parallel, one thread each. An actor that dies is replaced as in a sweep; one out of
    replacements ends its run with LaneLost (its finished rows are kept) and leaves the pool."""

    def __init__(self, executor: RayExecutor):
        self.x = executor
        self.slots = [s.index for s in executor.slots if not s.dead]
        self.free: queue.Queue = queue.Queue()
        for index in self.slots:
            self.free.put(index)

    def acquire(self, stop: threading.Event) -> "_Lane | None":
        """A free actor's lane (waits for one), or None once `stop` is set."""
        while not stop.is_set():
            if all(self.x.slots[i].dead for i in self.slots):
                raise UserError(f"every Ray actor died (last: {self.x.last_death})",
                                fix="finished trials are kept: re-run with --resume")
            try:
                index = self.free.get(timeout=STOP_POLL_S)
            except queue.Empty:
                continue
            if not self.x.slots[index].dead:
                return _Lane(self.x, index, stop)
        return None

    def release(self, lane: "_Lane") -> None:
        if not self.x.slots[lane.index].dead:
            self.free.put(lane.index)

    @staticmethod
    def lost(exc: BaseException) -> bool:
        """Whether `exc` ended a run because its actor is gone (the run can be done again on another)."""
        return isinstance(exc, LaneLost)


@dataclass
class _Lane:
    x: RayExecutor
    index: int
    stop: threading.Event

    def run(self, engine, jobs: list, ledger) -> None:
        """run_experiment's executor: the jobs on this lane's actor only; KeyboardInterrupt once `stop` is set."""
        self.x._run(jobs, ledger, [self.x.slots[self.index]], self.stop)


class _Run:
    """One call of the executor: its dispatcher, the jobs in flight and the recording of results."""

    def __init__(self, executor: RayExecutor, ledger, dispatcher: Dispatcher, slots: list | None = None, stop=None):
        self.x, self.ray, self.ledger, self.dispatcher = executor, executor.ray, ledger, dispatcher
        self.slots = executor.slots if slots is None else slots  # a lane: its one actor
        self.stop = stop  # a threading.Event: set -> KeyboardInterrupt at the next wait (a lane's thread)
        self.inflight: dict[Any, tuple[_Slot, int, Any]] = {}  # ObjectRef -> (slot, incarnation, job)
        self.ref_data: dict[str, list] = {}  # reference sha256 -> [ObjectRef of its bytes]

    def abandon(self) -> None:
        """On the way out (done, interrupted or failed): cancel what is still queued on the actors; their rows were
        never written, so a resumed run does those jobs again."""
        for ref in self.inflight:
            try:
                self.ray.cancel(ref)
            except Exception:  # noqa: BLE001
                pass
        self.inflight.clear()
        for slot in self.slots:
            slot.inflight = slot.retrying = 0
            held = [e for e in self.dispatcher.held.get(slot.index, ()) if e[0] != "qwen3"]
            if held and slot.handle is not None and not slot.dead:  # queued behind its jobs: dropped after them
                try:
                    slot.handle.release.remote(held)
                except Exception:  # noqa: BLE001
                    pass

    def loop(self) -> None:
        ray = self.ray
        while True:
            self._fill()
            starting = {s.ready: s for s in self.slots if s.ready is not None and not s.dead}
            if not self.inflight:
                if self.dispatcher.pending() == 0:
                    return
                if not starting:
                    if self.slots is not self.x.slots:
                        raise LaneLost(f"Ray {self.slots[0].label()} died for good (last: {self.x.last_death}); "
                                       f"{self.dispatcher.pending()} images were not run")
                    raise UserError(f"every Ray actor died (last: {self.x.last_death}); {self.dispatcher.pending()} "
                                    "images were not run", fix="finished images are kept: re-run the same command "
                                                               "to resume")
            if self.stop is not None and self.stop.is_set():
                raise KeyboardInterrupt
            ready, _ = ray.wait(list(self.inflight) + list(starting), num_returns=1,
                                timeout=None if self.stop is None else STOP_POLL_S)
            for ref in ready:
                if ref in starting:
                    self._started(starting[ref], ref)
                else:
                    self._finished(ref)

    # ---- dispatch ----
    def _fill(self) -> None:
        """Give every usable actor work: one job each first, then a second queued behind it (its PNG encodes
        while the next generates) while more jobs wait than actors could take. A retried job runs alone on its
        actor: if it kills that actor too, no other job is charged a run for it."""
        usable = [s for s in self.slots if s.usable]
        alive = {s.index for s in usable}
        for depth in (1, 2):
            for slot in sorted(usable, key=lambda s: s.inflight):
                if slot.inflight >= depth or (depth == 2 and (self.dispatcher.pending() <= len(usable)
                                                              or slot.retrying)):
                    continue
                retries = depth == 1 and slot.inflight == 0
                if self.x.batch > 1:  # --batch: up to N jobs of one shape from one group, one task
                    from vlbench.engine.batching import batch_key

                    jobs = self.dispatcher.next_batch_for(slot.index, self.x.batch, batch_key, alive, retries)
                    if jobs:
                        self._submit(slot, jobs)
                    continue
                job = self.dispatcher.next_for(slot.index, alive, retries=retries)
                if job is None:
                    continue
                self._submit(slot, [job])

    def _submit(self, slot: _Slot, jobs: list) -> None:
        """One task on `slot`'s actor: `run` for one job, `run_batch` (shared DiT calls) under --batch."""
        tasks = [self._task(slot, job) for job in jobs]
        ref = slot.handle.run_batch.remote(tasks) if self.x.batch > 1 else slot.handle.run.remote(tasks[0])
        self.inflight[ref] = (slot, slot.incarnation, jobs)
        slot.inflight += 1
        slot.retrying += any(self.dispatcher.is_retry(job) for job in jobs)

    def _task(self, slot: _Slot, job) -> dict:
        refs = {}
        for reference in job.references:
            sha = reference.sha256
            if sha not in self.ref_data:
                data = read_bytes_file(reference.path)
                if hashlib.sha256(data).hexdigest() != sha:
                    raise UserError("the file changed during the run", field="image", value=reference.path,
                                    fix="re-run to resume")
                self.ref_data[sha] = [self.ray.put(data)]
            refs[sha] = (reference.path, self.ref_data[sha])
        fault = self.x.faults.get(job.key)
        if fault and not fault.endswith("-always") and self.dispatcher.attempts[job.key] > 0:
            fault = None  # a one-off fault: its retry runs normally
        return {"record": job.record(self.ledger.experiment).to_json(), "refs": refs, "fault": fault,
                "release": self.dispatcher.release_after(job, slot.index)}

    # ---- results ----
    def _started(self, slot: _Slot, ref) -> None:
        try:
            slot.info = self.ray.get(ref)
            slot.ready = None
        except self.ray.exceptions.RayError as exc:
            slot.ready = None
            self._actor_lost(slot, slot.incarnation, f"could not start: {cause(exc)}")

    def _finished(self, ref) -> None:
        ray = self.ray
        slot, incarnation, jobs = self.inflight.pop(ref)
        if slot.incarnation == incarnation:
            slot.inflight -= 1
            slot.retrying -= any(self.dispatcher.is_retry(job) for job in jobs)
        try:
            got = ray.get(ref)
            results = got if isinstance(got, list) else [got]
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError) as exc:
            self._actor_lost(slot, incarnation, cause(exc))
            for job in jobs:
                self._job_lost(job, slot, cause(exc))
            return
        except ray.exceptions.RayTaskError as exc:  # a bug outside the actor's own error handling
            _log_remote_traceback(jobs[0], slot, str(exc))
            results = [{"record": self._failed(job, cause(exc), "bug")} for job in jobs]
        for job, result in zip(jobs, results):
            if result.get("fatal"):
                error = result["record"].get("error") or "CUDA error"
                self._actor_lost(slot, incarnation, error)
                self._job_lost(job, slot, error)
                continue
            slot.done += 1
            self._record(job, result)

    def _actor_lost(self, slot: _Slot, incarnation: int, reason: str) -> None:
        """`slot`'s actor died (or must die): replace it unless its slot is out of replacements."""
        if slot.incarnation != incarnation or slot.dead:
            return  # already handled for an earlier job of the same actor
        x = self.x
        with x._stats_lock:
            x.stats["deaths"] += 1
        x.last_death = reason
        try:
            self.ray.kill(slot.handle, no_restart=True)
        except Exception:  # noqa: BLE001
            pass
        self.dispatcher.forget(slot.index)
        if slot.restarts < x.max_restarts:
            slot.restarts += 1
            with x._stats_lock:
                x.stats["restarts"] += 1
            x._spawn(slot)
            what = "starting a new one"
        else:
            slot.dead, slot.handle, slot.inflight, slot.retrying = True, None, 0, 0
            what = "no restarts left for it"
        self._say(f"[yellow]Ray {slot.label()} died ({reason}); {what}[/yellow]")

    def _job_lost(self, job, slot: _Slot, reason: str) -> None:
        if self.dispatcher.lost(job, slot.index):
            with self.x._stats_lock:
                self.x.stats["retries"] += 1
            self._say(f"[yellow]{escape(job.name)} (seed {job.recipe.seed}): its actor died; queued again[/yellow]")
            return
        runs = self.dispatcher.attempts[job.key]
        self._record(job, {"record": self._failed(job, f"its Ray actor died in each of {runs} runs (last: {reason})",
                                                  "interrupted")})

    def _failed(self, job, reason: str, kind: str) -> dict:
        return job.record(self.ledger.experiment).replace(status="failed", error=one_line(reason), failure=kind,
                                                          timings={"model_load": 0.0}).to_json()

    def _record(self, job, result: dict) -> None:
        """The actor's record into the ledger: the PNG written (whole or absent) before its row."""
        record = RunRecord.from_json(result["record"])
        if record.status == "done":
            record = write_run_png(self.ledger.out / job.image, result["png"], record, name=job.image)
        self.ledger.append(job, record)

    def _say(self, text: str) -> None:
        console = self.ledger.console or self.x.console
        if console is not None:
            console.print(text)


def _resources(res: dict) -> str:
    keys = [k for k in ("GPU", "CPU") if k in res]
    return ", ".join(f"{res[k]:g} {k}" for k in keys) or "nothing"


def _log_remote_traceback(job, slot: _Slot, text: str) -> None:
    try:
        with open(paths.log_path(), "a", encoding="utf-8") as f:
            f.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} experiment job {job.name} failed "
                    f"on Ray {slot.label()}\n{text}")
    except OSError:
        pass
