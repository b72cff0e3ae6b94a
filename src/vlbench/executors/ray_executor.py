"""Run an experiment's jobs on Ray: one actor per GPU, each an Engine over its own models.

Each actor builds `Engine(Models(spec))` once from the run's ModelSpec (models load on its first job, as
in the local runner) and keeps its extraction cache; `dispatch.Dispatcher` sends it the jobs that read
what it already holds, and balances the rest as actors free up. An actor returns the PNG (encoded with
the same metadata `save_png` writes locally, while its next job generates), the row's figures and the
conditioning summary. This process writes the PNG (tmp + os.replace), then the results row, then the
history entry, exactly as the local runner does; references travel as bytes (`ray.put`), so nothing
depends on a shared filesystem.

Faults: an actor that dies (process exit, node loss, or a CUDA error that poisons its context) is
replaced (at most `max_restarts` times per slot) and each job it was running is queued again for
another actor, at most `max_attempts` runs in all, then written as a failed row with the reason. A
job's row is appended only once, when its result arrives: nothing finished runs twice, nothing queued
is lost, and an interrupted run resumes like a local one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vlbench.errors import UserError
from vlbench.executors.dispatch import Dispatcher

MAX_ATTEMPTS = 3  # runs of one job whose actor keeps dying (2 retries), then it is written as failed
MAX_RESTARTS = 2  # replacement actors per slot
START_TIMEOUT_S = 300.0  # actors must start (process + imports, not model loads) within this


# ---------------------------------------------------------------- the actor
class VLBenchActor:
    """One Ray actor: an Engine over its own models, and the references it has been sent.

    Generation runs on one thread (jobs in arrival order, one at a time); PNG encoding on another, so
    job k's PNG is encoded while job k+1 generates.
    """

    def __init__(self, spec: dict, slot: int, tiny: bool = False, threads: int | None = None):
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from vlbench.engine.engine import Engine, environment
        from vlbench.engine.models import Models
        from vlbench.modelspec import ModelSpec

        if threads:
            torch.set_num_threads(threads)
        model_spec = ModelSpec(**spec)
        if tiny and not (Path(model_spec.zimage).is_dir() and Path(model_spec.vl).is_dir()):
            from vlbench.engine.tiny import ensure_tiny_models  # another host: build its own copy

            built = ensure_tiny_models()
            model_spec = replace(model_spec, zimage=str(built.zimage), vl=str(built.vl))
        _quiet_libraries()
        self.slot = slot
        self.engine = Engine(Models(model_spec))
        self.env = environment(self.engine.models)
        self.refs: dict[str, Any] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="vlbench-ray-"))
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlbench-gen")
        self._png = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlbench-png")

    async def ready(self) -> dict:
        import ray
        import torch

        return {"slot": self.slot, "host": socket.gethostname(), "node": ray.util.get_node_ip_address(),
                "pid": os.getpid(), "device": str(self.engine.models.device), "gpu": self.env.get("gpu"),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": torch.get_num_threads(),
                "environment": self.env}

    async def run(self, task: dict) -> dict:
        loop = asyncio.get_running_loop()
        sha = task["sha"]
        if sha not in self.refs:  # the bytes travel once per actor; the ObjectRef is nested so Ray leaves it to us
            data = await task["ref"][0]
            self.refs[sha] = await loop.run_in_executor(self._gpu, _reference, task["ref_path"], data, sha)
        out = await loop.run_in_executor(self._gpu, self._generate, task)
        image, meta = out.pop("image", None), out.pop("meta", None)
        if image is not None:
            try:
                out["png"] = await loop.run_in_executor(self._png, self._encode, image, meta, task["key"])
            except Exception as exc:  # noqa: BLE001
                out.update(ok=False, error=f"PNG: {_one_line(exc)}")
        return out

    def _generate(self, task: dict) -> dict:
        from vlbench.experiments.runner import _one_line as one_line

        engine = self.engine
        load0, forwards0 = sum(engine.models.load_seconds.values()), engine.vl_forwards
        out: dict[str, Any] = {"key": task["key"], "ok": False, "started_at": time.time(), "slot": self.slot}
        fault = task.get("fault")
        if fault == "exit-before":
            os._exit(3)

        def on_step(i: int, n: int) -> None:  # tests: the process dies, or CUDA breaks, in the middle of this job
            if fault in ("exit", "exit-always"):
                os._exit(3)
            if fault == "cuda-error":
                raise RuntimeError("CUDA error: device-side assert triggered (simulated)")

        try:
            result = engine.run(task["recipe"], task["prompt"], [self.refs[task["sha"]]],
                                on_step=on_step if fault else None)
        except Exception as exc:  # noqa: BLE001 — one bad config must not end the actor
            out["error"] = one_line(exc)
            if not isinstance(exc, UserError):
                out["traceback"] = "".join(traceback.format_exception(exc))
            out["fatal"] = _poisons(exc)
        else:
            cond = {k: v for k, v in result.conditioning.describe().items() if k != "rows"}
            out.update(ok=True, cond=cond, image=result.image, meta={**task["meta"], "conditioning": cond,
                                                                      "environment": self.env},
                       timings={"extraction": 0.0, "blend": 0.0, **result.timings},
                       peak=result.peak_memory_bytes, caption_tokens=int(result.conditioning.embeds.shape[0]))
        out["model_load"] = sum(engine.models.load_seconds.values()) - load0
        out["vl_forwards"] = engine.vl_forwards - forwards0
        for sha, text in task.get("release", ()):  # the head knows no queued job reads it any more
            engine.release_extraction_by_sha((sha,), text)
        return out

    async def release(self, pairs: list) -> int:
        """Drop these (reference sha256, VL text) extractions (a run ended with them still held)."""
        loop = asyncio.get_running_loop()
        engine = self.engine
        return sum([await loop.run_in_executor(self._gpu, engine.release_extraction_by_sha, (sha,), text)
                    for sha, text in pairs])

    def _encode(self, image, meta: dict, key: str) -> bytes:
        """The exact bytes the local runner's save_png writes (same function, then read back)."""
        from vlbench.engine.generate import save_png

        path = self.tmp / f"{key}.png"
        try:
            save_png(image, path, meta)
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)


def _reference(path: str, data: bytes, sha: str):
    """A Reference from the head's bytes, opened exactly as load_image opens a file."""
    import io

    from PIL import Image

    from vlbench.engine.engine import Reference

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return Reference(path, img.convert("RGB"), sha)


def _poisons(exc: BaseException) -> bool:
    """A CUDA error leaves the process's context unusable: the actor must be replaced, not reused."""
    text = f"{type(exc).__name__}: {exc}"
    return type(exc).__name__ == "AcceleratorError" or "CUDA error" in text or "device-side assert" in text


def _quiet_libraries() -> None:
    try:
        import diffusers
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001
        pass


def _one_line(exc: BaseException) -> str:
    from vlbench.experiments.runner import _one_line as one_line

    return one_line(exc)


# ---------------------------------------------------------------- connecting
def connect(address: str | None, cpus: int) -> bool:
    """Join the cluster at `address`, or start a local Ray instance with every visible GPU. Returns whether this
    call started the connection (and so must end it). An unreachable address is a one-line UserError."""
    import ray

    if address is not None:
        _check_reachable(address)
    if ray.is_initialized():
        return False
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    if address is None:
        import torch

        ray.init(address="local", num_gpus=torch.cuda.device_count(), num_cpus=max(os.cpu_count() or 1, cpus),
                 include_dashboard=False, **quiet)
        return True
    try:
        ray.init(address=address, **quiet)
    except Exception as exc:  # noqa: BLE001 — ConnectionError, RuntimeError, version mismatches …
        raise UserError(f"--ray-address {address}: cannot connect ({_one_line(exc)}); check the address, that the "
                        "cluster runs this machine's Ray and Python versions, and, if it uses token authentication, "
                        "export RAY_AUTH_MODE=token here with its token (~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
    return True


def _check_reachable(address: str) -> None:
    """Fail in seconds, not Ray's minutes of retries, when nothing listens at the address."""
    if address.startswith("ray://"):
        hostport = address[len("ray://"):]
    elif address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            hostport = canonicalize_bootstrap_address("auto")
        except ConnectionError:
            raise UserError("--ray-address auto: no running Ray cluster found from this machine; start one with "
                            "`ray start --head`, or drop --ray-address to start a local one") from None
        except Exception:  # noqa: BLE001 — Ray's private helper changed: leave it to ray.init
            return
        if not hostport:
            return
    else:
        hostport = address
    host, _, port = hostport.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address {address}: expected auto, HOST:PORT (the head's GCS port, 6379 by default) "
                        "or ray://HOST:PORT (Ray Client, 10001 by default)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise UserError(f"--ray-address {address}: cannot reach {host}:{port} ({reason}); start the cluster with "
                        "`ray start --head` there, or drop --ray-address to start a local one") from None


def head_engine(spec):
    """This process's Engine for a Ray run: it loads nothing during the sweep (the actors do); the runner reads its
    spec, and diagnostics or metrics after the run use it. A head without CUDA keeps --device cuda for the actors."""
    import torch

    from vlbench.engine.engine import Engine
    from vlbench.engine.models import Models

    if spec.device and spec.device.startswith("cuda") and not torch.cuda.is_available():
        spec = replace(spec, device=None)
    return Engine(Models(spec))


# ---------------------------------------------------------------- the executor
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

    def __init__(self, spec, *, address: str | None, owns_ray: bool, console=None, tiny: bool = False,
                 actor_options: dict, threads: int | None, n: int, max_attempts: int = MAX_ATTEMPTS,
                 max_restarts: int = MAX_RESTARTS, faults: dict[str, str] | None = None):
        import ray

        self.ray = ray
        self.spec, self.address, self.owns_ray, self.console, self.tiny = spec, address, owns_ray, console, tiny
        self.actor_options, self.threads = actor_options, threads
        self.max_attempts, self.max_restarts = max_attempts, max_restarts
        # tests: job key -> "exit" (the actor dies mid-job, first run only) | "exit-always" | "exit-before" |
        # "cuda-error" (a CUDA error mid-job, first run only: the actor must be replaced)
        self.faults = dict(faults or {})
        self.slots = [_Slot(i) for i in range(n)]
        self._cls = ray.remote(VLBenchActor)
        self.stats = {"deaths": 0, "retries": 0, "stolen": 0, "restarts": 0}
        self.last_death = ""
        self.closed = False

    # ---- life cycle ----
    @classmethod
    def start(cls, spec, *, address: str | None = None, actors: int | None = None, console=None, tiny: bool = False,
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
            n, options, auto_threads = _plan_actors(ray, spec, actors)
            threads = threads or auto_threads
            actor_spec = asdict(spec)
            if options.get("num_gpus"):
                actor_spec["device"] = "cuda"  # inside an actor, its one GPU is cuda:0
            elif not spec.device or spec.device.startswith("cuda"):
                actor_spec["device"] = "cpu"
            spec = replace(spec, device=actor_spec["device"])
            executor = cls(spec, address=address, owns_ray=owns, console=console, tiny=tiny, actor_options=options,
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
            asdict(self.spec), slot.index, self.tiny, self.threads)
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
            raise UserError(f"a Ray actor failed to start ({_cause(exc)}); is vlbench installed on every node, "
                            "with the same versions?") from None
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
        return {"kind": "ray", "ray": self.ray.__version__, "address": self.address or "local",
                "actors": [{k: v for k, v in (s.info or {}).items() if k != "environment"} for s in self.slots],
                "max_attempts": self.max_attempts}

    # ---- running jobs (the runner's _execute, over actors) ----
    def __call__(self, engine, experiment, jobs: list, out: Path, log, summary, store, console, on_job_done,
                 already: int) -> None:
        from vlbench.experiments.runner import _Progress, _StoreRecorder

        if self.closed:
            raise RuntimeError("RayExecutor is closed")
        run = _Run(self, engine, experiment, Path(out), log, summary, _StoreRecorder(store, console), console,
                   on_job_done, Dispatcher(jobs, self.max_attempts))
        progress = _Progress(console, total=summary.jobs, completed=already)
        run.progress = progress
        with progress:
            try:
                run.loop()
            finally:
                self.stats["stolen"] += run.dispatcher.stolen
                run.abandon()


class _Run:
    """One call of the executor: its dispatcher, the jobs in flight and the recording of results."""

    def __init__(self, executor: RayExecutor, engine, experiment, out: Path, log, summary, recorder, console,
                 on_job_done, dispatcher: Dispatcher):
        self.x, self.ray = executor, executor.ray
        self.engine, self.experiment, self.out, self.log, self.summary = engine, experiment, out, log, summary
        self.recorder, self.console, self.on_job_done, self.dispatcher = recorder, console, on_job_done, dispatcher
        self.inflight: dict[Any, tuple[_Slot, int, Any]] = {}  # ObjectRef -> (slot, incarnation, job)
        self.ref_data: dict[str, list] = {}  # reference sha256 -> [ObjectRef of its bytes]
        self.progress = None

    def abandon(self) -> None:
        """On the way out (done, interrupted or failed): cancel what is still queued on the actors; their rows were
        never written, so a resumed run does those jobs again."""
        for ref in self.inflight:
            try:
                self.ray.cancel(ref)
            except Exception:  # noqa: BLE001
                pass
        self.inflight.clear()
        for slot in self.x.slots:
            slot.inflight = slot.retrying = 0
            held = [ex for ex in self.dispatcher.held.get(slot.index, ()) if ex[0] != "qwen3"]
            if held and slot.handle is not None and not slot.dead:  # queued behind its jobs: dropped after them
                try:
                    slot.handle.release.remote(held)
                except Exception:  # noqa: BLE001
                    pass

    def loop(self) -> None:
        ray = self.ray
        while True:
            self._fill()
            starting = {s.ready: s for s in self.x.slots if s.ready is not None and not s.dead}
            if not self.inflight:
                if self.dispatcher.pending() == 0:
                    return
                if not starting:
                    raise UserError(f"every Ray actor died (last: {self.x.last_death}); {self.dispatcher.pending()} "
                                    "images were not run. Finished images are kept: re-run the same command to resume")
            ready, _ = ray.wait(list(self.inflight) + list(starting), num_returns=1)
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
        usable = [s for s in self.x.slots if s.usable]
        alive = {s.index for s in usable}
        for depth in (1, 2):
            for slot in sorted(usable, key=lambda s: s.inflight):
                if slot.inflight >= depth or (depth == 2 and (self.dispatcher.pending() <= len(usable)
                                                              or slot.retrying)):
                    continue
                job = self.dispatcher.next_for(slot.index, alive, retries=depth == 1 and slot.inflight == 0)
                if job is None:
                    continue
                self._submit(slot, job)

    def _submit(self, slot: _Slot, job) -> None:
        sha = job.reference.sha256
        if sha not in self.ref_data:
            data = Path(job.reference.path).read_bytes()
            if hashlib.sha256(data).hexdigest() != sha:
                raise UserError(f"--image {job.reference.path}: the file changed during the run; re-run to resume")
            self.ref_data[sha] = [self.ray.put(data)]
        fault = self.x.faults.get(job.key)
        if fault and not fault.endswith("-always") and self.dispatcher.attempts[job.key] > 0:
            fault = None  # a one-off fault: its retry runs normally
        task = {"key": job.key, "recipe": job.recipe, "prompt": job.prompt, "sha": sha, "ref": self.ref_data[sha],
                "ref_path": job.reference.path, "release": self.dispatcher.release_after(job, slot.index),
                "fault": fault,
                "meta": {"experiment": self.experiment.name, "name": job.name, "key": job.key,
                         "recipe": job.recipe.to_dict(), "prompt": job.prompt, "seed": job.recipe.seed,
                         "reference": job.reference.path, "reference_sha256": job.reference.sha256}}
        ref = slot.handle.run.remote(task)
        self.inflight[ref] = (slot, slot.incarnation, job)
        slot.inflight += 1
        slot.retrying += self.dispatcher.is_retry(job)

    # ---- results ----
    def _started(self, slot: _Slot, ref) -> None:
        try:
            slot.info = self.ray.get(ref)
            slot.ready = None
        except self.ray.exceptions.RayError as exc:
            slot.ready = None
            self._actor_lost(slot, slot.incarnation, f"could not start: {_cause(exc)}")

    def _finished(self, ref) -> None:
        ray = self.ray
        slot, incarnation, job = self.inflight.pop(ref)
        if slot.incarnation == incarnation:
            slot.inflight -= 1
            slot.retrying -= self.dispatcher.is_retry(job)
        try:
            result = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError) as exc:
            self._actor_lost(slot, incarnation, _cause(exc))
            self._job_lost(job, slot, _cause(exc))
            return
        except ray.exceptions.RayTaskError as exc:  # a bug outside the actor's own error handling
            result = {"ok": False, "error": _cause(exc), "traceback": str(exc)}
        if result.get("fatal"):
            self._actor_lost(slot, incarnation, result.get("error", "CUDA error"))
            self._job_lost(job, slot, result.get("error", "CUDA error"))
            return
        slot.done += 1
        self._record(job, result, slot)

    def _actor_lost(self, slot: _Slot, incarnation: int, reason: str) -> None:
        """`slot`'s actor died (or must die): replace it unless its slot is out of replacements."""
        if slot.incarnation != incarnation or slot.dead:
            return  # already handled for an earlier job of the same actor
        x = self.x
        x.stats["deaths"] += 1
        x.last_death = reason
        try:
            self.ray.kill(slot.handle, no_restart=True)
        except Exception:  # noqa: BLE001
            pass
        self.dispatcher.forget(slot.index)
        if slot.restarts < x.max_restarts:
            slot.restarts += 1
            x.stats["restarts"] += 1
            x._spawn(slot)
            what = "starting a new one"
        else:
            slot.dead, slot.handle, slot.inflight, slot.retrying = True, None, 0, 0
            what = "no restarts left for it"
        self._say(f"[yellow]Ray {slot.label()} died ({reason}); {what}[/yellow]")

    def _job_lost(self, job, slot: _Slot, reason: str) -> None:
        if self.dispatcher.lost(job, slot.index):
            self.x.stats["retries"] += 1
            self._say(f"[yellow]{job.name} (seed {job.recipe.seed}): its actor died; queued again[/yellow]")
            return
        runs = self.dispatcher.attempts[job.key]
        self._record(job, {"ok": False, "error": f"its Ray actor died in each of {runs} runs (last: {reason})"}, slot)

    def _record(self, job, result: dict, slot: _Slot) -> None:
        """The local runner's bookkeeping for one job: PNG, then results row, then history, progress, callback."""
        summary = self.summary
        row = {"key": job.key, "experiment": self.experiment.name, "name": job.name, "config_index": job.config_index,
               "recipe": job.recipe.to_dict(), "prompt": job.prompt, "seed": job.recipe.seed,
               "reference": job.reference.path, "reference_sha256": job.reference.sha256, "image": None,
               "status": "failed", "error": None, "timings": {}, "peak_vram_bytes": None,
               "caption_tokens": None, "vl_forwards": 0, "finished_at": ""}
        if result.get("ok"):
            _write_atomic(self.out / job.image, result["png"])  # whole or absent, before its row
            row.update(status="done", image=job.image, timings=dict(result["timings"]),
                       peak_vram_bytes=result.get("peak"), caption_tokens=result.get("caption_tokens"))
            summary.done += 1
        else:
            row["error"] = result.get("error") or "failed"
            if result.get("traceback"):
                _log_remote_traceback(job, slot, result["traceback"])
            summary.failed += 1
            summary.failures.append(f"{job.name} ({Path(job.reference.path).name}, seed {job.recipe.seed}): "
                                    f"{row['error']}")
        row["timings"]["model_load"] = float(result.get("model_load", 0.0))
        row["vl_forwards"] = int(result.get("vl_forwards", 0))
        row["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.log.append(row)  # after the PNG: a done row always has its image
        self.engine.vl_forwards += row["vl_forwards"]
        if row["status"] == "done":
            env = (slot.info or {}).get("environment", {})
            self.recorder.record(job, row, self.out, env, result.get("cond"), result.get("started_at", time.time()))
        if self.progress is not None:
            self.progress.advance(row)
        if self.on_job_done is not None:
            self.on_job_done(job, row)

    def _say(self, text: str) -> None:
        console = self.console or self.x.console
        if console is not None:
            console.print(text)


# ---------------------------------------------------------------- helpers
def _plan_actors(ray, spec, actors: int | None) -> tuple[int, dict, int | None]:
    """(how many actors, their Ray resource options, torch threads each)."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    device = spec.device or ""
    if device.startswith("cuda") and gpus == 0:
        raise UserError(f"--device {spec.device}: the Ray cluster has no GPUs; use --device cpu")
    if gpus and device != "cpu":
        n = actors or gpus
        if n > gpus:
            raise UserError(f"--ray-actors {n}: the Ray cluster has {gpus} GPUs; one actor per GPU at most")
        return n, {"num_gpus": 1, "num_cpus": 1}, max(1, min(8, cpus // n))
    n = actors or max(1, min(2, cpus))
    if n > cpus:
        raise UserError(f"--ray-actors {n}: the Ray cluster has {cpus} CPUs; at most one CPU actor per CPU")
    return n, {"num_cpus": 1}, max(1, cpus // n)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.ray.tmp")  # the runner's resume sweeps .*.tmp
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _cause(exc: BaseException) -> str:
    """One line for a Ray error: its first meaningful line, without Ray's boilerplate."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else exc.__class__.__name__
    for ln in lines:
        if "exit" in ln.lower() or "died" in ln.lower() or "error" in ln.lower():
            text = ln
            break
    return f"{exc.__class__.__name__}: {text}"[:300]


def _resources(res: dict) -> str:
    keys = [k for k in ("GPU", "CPU") if k in res]
    return ", ".join(f"{res[k]:g} {k}" for k in keys) or "nothing"


def _log_remote_traceback(job, slot: _Slot, text: str) -> None:
    try:
        from vlbench import paths

        with open(paths.log_path(), "a", encoding="utf-8") as f:
            f.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} experiment job {job.name} failed "
                    f"on Ray {slot.label()}\n{text}")
    except OSError:
        pass
