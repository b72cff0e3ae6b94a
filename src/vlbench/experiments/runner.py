"""Run an experiment: every named recipe × reference × prompt × seed, on one Engine, resumable.

Jobs are ordered so that all jobs reading the same (reference, VL text) extraction run back to
back: the Engine's in-memory cache serves them from one VL forward, and an extraction is dropped
after its last job. Each image is written (tmp file, then os.replace) BEFORE its results row is
appended, so a row marked done always has its PNG; a killed run loses at most the jobs in flight.

PNGs are written on a background thread while the next image generates (one write in flight): a
job's row is appended, on the runner's thread and in job order, only once its PNG is on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from vlbench.errors import UserError
from vlbench.experiments.results import ResultsLog, latest_by_key, reference_copy
from vlbench.experiments.spec import ExperimentType, NamedRecipe

RESULTS, GRID, REPORT, RUN_INFO = "results.jsonl", "grid.png", "report.html", "run.json"


@dataclass(frozen=True)
class Job:
    name: str
    config_index: int
    recipe: Any  # Recipe, with this job's seed
    prompt: str
    reference: Any  # engine.Reference
    key: str
    image: str  # PNG path relative to the output folder

    @property
    def extractions(self) -> tuple[tuple[str, str | None], ...]:
        """The (reference sha256, VL text) extractions this job reads."""
        return tuple((self.reference.sha256, text) for text in vl_texts(self.recipe, self.prompt))


def job_key(name: str, recipe, prompt: str, reference_sha256: str) -> str:
    """Stable across processes: config name + full recipe (seed included) + prompt + reference content."""
    payload = {"name": name, "recipe": recipe.to_dict(), "prompt": prompt, "seed": recipe.seed,
               "reference_sha256": reference_sha256}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def vl_texts(recipe, prompt: str) -> tuple[str | None, ...]:
    """What the VL reads in each extraction a recipe needs (none for pure Qwen3-4B)."""
    if not recipe.uses_vl:
        return ()
    if getattr(recipe, "dual", False):
        values = (recipe.style_vl_text, recipe.content_vl_text)
    else:
        values = (recipe.vl_text,)
    out: list[str | None] = []
    for value in values:
        text = _resolve(value, prompt)
        if text not in out:
            out.append(text)
    return tuple(out)


def _resolve(value: str, prompt: str) -> str | None:
    from vlbench.engine.recipe import VL_TEXT_NONE, VL_TEXT_PROMPT

    return prompt if value == VL_TEXT_PROMPT else None if value == VL_TEXT_NONE else value


def _slug(text: str, limit: int = 32) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "empty"


def image_name(name: str, reference, prompt: str, seed: int) -> str:
    """images/{config}__{reference}-{sha8}__{prompt slug}-{hash6}__s{seed}.png: readable and stable."""
    ref = f"{_slug(Path(reference.path).stem, 24)}-{reference.sha256[:8]}"
    p = f"{_slug(prompt)}-{hashlib.sha256(prompt.encode()).hexdigest()[:6]}"
    return f"images/{name}__{ref}__{p}__s{seed}.png"


def plan(recipes: list[NamedRecipe], references: list, prompts: list[str], seeds: list[int] | None) -> list[Job]:
    """All jobs, ordered so each (reference, VL text) extraction's jobs run together."""
    jobs = []
    for ref in references:
        for prompt in prompts:
            for named in recipes:
                for seed in (seeds if seeds else [named.recipe.seed]):
                    recipe = named.recipe.replace(seed=seed) if seeds else named.recipe
                    jobs.append(Job(named.name, named.index, recipe, prompt, ref,
                                    job_key(named.name, recipe, prompt, ref.sha256),
                                    image_name(named.name, ref, prompt, seed)))
    ref_rank = {r.sha256: i for i, r in enumerate(references)}
    prompt_rank = {p: i for i, p in enumerate(prompts)}
    text_rank: dict[tuple, int] = {}
    for job in jobs:  # first appearance in (reference, prompt, config) order
        for ex in job.extractions:
            text_rank.setdefault(ex, len(text_rank))
    none_needed = (len(text_rank) + 1,)  # pure Qwen3-4B jobs last in their reference's run
    return sorted(jobs, key=lambda j: (ref_rank[j.reference.sha256],
                                       tuple(sorted(text_rank[e] for e in j.extractions)) or none_needed,
                                       j.config_index, prompt_rank[j.prompt], j.recipe.seed))


@dataclass
class Summary:
    jobs: int = 0  # in the plan
    skipped: int = 0  # already done in an earlier run
    done: int = 0  # finished now
    failed: int = 0
    interrupted: bool = False
    vl_forwards: int = 0
    failures: list[str] = field(default_factory=list)  # one line each


def run_experiment(engine, experiment: ExperimentType, recipes: list[NamedRecipe], references: list,
                   prompts: list[str], out_dir: str | Path, *, seeds: list[int] | None = None,
                   limit: int | None = None, parameters: dict | None = None, store=None, console=None,
                   on_job_done: Callable[[Job, dict], None] | None = None, executor=None) -> Summary:
    """Run (or resume) `experiment` into `out_dir`; returns what happened. Writes grid and report at the end.

    `on_job_done(job, row)` is called after each results row is written (tests interrupt from it).
    `executor` runs the pending jobs instead of the in-process loop (`_execute`), called with the same arguments
    (vlbench.executors.ray_executor: Ray actors, one per GPU); planning, resume and run.json stay here.
    `store` (a vlbench.store.Store) records each finished image in the run history.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        log = ResultsLog(out / RESULTS)
        _check_same_run(out, experiment, engine)
        done = _resume(log, out)
        jobs = plan(recipes, references, prompts, seeds)
        _copy_references(references, out)
        pending = [j for j in jobs if j.key not in done]
        summary = Summary(jobs=len(jobs), skipped=len(jobs) - len(pending))
        if limit is not None:
            pending = pending[:max(0, limit)]
        invocation = _start_invocation(out, experiment, engine, parameters, summary)
        forwards0 = engine.vl_forwards
        try:
            (executor or _execute)(engine, experiment, pending, out, log, summary, store, console, on_job_done,
                                   already=summary.skipped)
        except KeyboardInterrupt:
            summary.interrupted = True
            raise
        finally:
            summary.vl_forwards = engine.vl_forwards - forwards0
            _finish_invocation(out, invocation, engine, summary)
            write_outputs(out, experiment)
        return summary
    finally:
        _unlock(lock)


def _execute(engine, experiment, jobs: list[Job], out: Path, log: ResultsLog, summary: Summary, store, console,
             on_job_done, already: int) -> None:
    from vlbench.engine.engine import environment

    last_use: dict[tuple, int] = {}
    for i, job in enumerate(jobs):
        for ex in job.extractions:
            last_use[ex] = i
    env = environment(engine.models)
    recorder = _StoreRecorder(store, console)
    progress = _Progress(console, total=summary.jobs, completed=already)
    writer = _PngWriter()
    pending: _Pending | None = None  # the previous job: its PNG may still be being written

    def finish(p: "_Pending", callbacks: bool = True) -> None:
        """The job's PNG is on disk (or it failed): append its row, then tell the store and the caller."""
        p.wait()
        p.row["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        log.append(p.row)  # after the PNG: a done row always has its image
        if p.row["status"] == "done":
            recorder.record(p.job, p.row, out, env, p.cond, p.started_at)
        progress.advance(p.row)
        if callbacks and on_job_done is not None:
            on_job_done(p.job, p.row)

    try:
        with progress:
            for i, job in enumerate(jobs):
                progress.start(job)
                current = _run_job(engine, experiment, job, out, summary, env, progress, writer)
                for ex in job.extractions:  # free an extraction after its last job (they hold every layer)
                    if last_use[ex] == i:
                        _release_extraction(engine, *ex)
                previous, pending = pending, None
                if previous is not None:
                    finish(previous)  # its PNG was written while this job generated
                pending = current.submit(writer)
            if pending is not None:
                last, pending = pending, None
                finish(last)
    except BaseException:
        # Interrupted (Ctrl-C in a generation, or a caller's callback): the previous job's PNG is written or
        # being written: wait for it and keep its row; the callbacks are not run again on the way out.
        if pending is not None:
            try:
                finish(pending, callbacks=False)
            except BaseException:  # noqa: BLE001 — its PNG failed: no row, the job is redone on resume
                pass
        raise
    finally:
        writer.close()


@dataclass
class _Pending:
    """One finished generation: its row, and the PNG write that must end before the row is appended."""

    job: Job
    row: dict
    started_at: float
    cond: dict | None = None
    image: Any = None
    meta: dict | None = None
    path: Path | None = None
    future: Any = None

    def submit(self, writer: "_PngWriter") -> "_Pending":
        if self.image is not None:
            from vlbench.engine.generate import save_png

            self.future = writer.submit(save_png, self.image, self.path, self.meta)
            self.image = None  # the writer holds it until written; at most one image waits
        return self

    def wait(self) -> None:
        if self.future is not None:
            self.future.result()  # a failed write (disk full) ends the run as it did on the main thread


class _PngWriter:
    """One background thread that writes PNGs (tmp + os.replace), one at a time, in submission order."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlbench-png")

    def submit(self, fn, *args):
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)  # never return with a write still running


def _run_job(engine, experiment, job: Job, out: Path, summary: Summary, env: dict, progress, writer) -> _Pending:
    started_at = time.time()
    load0 = sum(engine.models.load_seconds.values())
    forwards0 = engine.vl_forwards
    row = {"key": job.key, "experiment": experiment.name, "name": job.name, "config_index": job.config_index,
           "recipe": job.recipe.to_dict(), "prompt": job.prompt, "seed": job.recipe.seed,
           "reference": job.reference.path, "reference_sha256": job.reference.sha256, "image": None,
           "status": "failed", "error": None, "timings": {}, "peak_vram_bytes": None,
           "caption_tokens": None, "vl_forwards": 0, "finished_at": ""}
    pending = _Pending(job, row, started_at)
    try:
        result = engine.run(job.recipe, job.prompt, [job.reference], on_step=progress.step)
    except Exception as exc:  # noqa: BLE001 — one bad config must not end a long run
        row["error"] = _one_line(exc)
        if not isinstance(exc, UserError):
            _log_traceback(job, exc)
        summary.failed += 1
        summary.failures.append(f"{job.name} ({Path(job.reference.path).name}, seed {job.recipe.seed}): "
                                f"{row['error']}")
    else:
        cond = {k: v for k, v in result.conditioning.describe().items() if k != "rows"}
        pending.cond = cond
        pending.meta = {"experiment": experiment.name, "name": job.name, "key": job.key,
                        "recipe": job.recipe.to_dict(), "prompt": job.prompt, "seed": job.recipe.seed,
                        "reference": job.reference.path, "reference_sha256": job.reference.sha256,
                        "conditioning": cond, "environment": env}
        pending.image, pending.path = result.image, out / job.image  # tmp + os.replace: whole or absent
        timings = {"extraction": 0.0, "blend": 0.0, **result.timings}
        row.update(status="done", image=job.image, timings=timings,
                   peak_vram_bytes=result.peak_memory_bytes,
                   caption_tokens=int(result.conditioning.embeds.shape[0]))
        summary.done += 1
    row["timings"]["model_load"] = sum(engine.models.load_seconds.values()) - load0
    row["vl_forwards"] = engine.vl_forwards - forwards0
    return pending


def _release_extraction(engine, sha: str, text: str | None) -> None:
    engine.release_extraction_by_sha((sha,), text)


# ---- resume ----
def _resume(log: ResultsLog, out: Path) -> set[str]:
    """Keys of finished jobs. Drops unreadable lines, failed rows (redone) and rows whose PNG is gone."""
    for tmp in list((out / "images").glob(".*.tmp")) + list(out.glob(".*.tmp")):  # writes a kill interrupted
        tmp.unlink(missing_ok=True)
    rows, bad = log.read()
    latest = latest_by_key(rows)
    keep = [r for r in latest.values() if r["status"] == "done" and (out / r["image"]).is_file()]
    if bad or len(keep) != len(rows) or log.needs_newline():
        log.rewrite(keep)
    return {r["key"] for r in keep}


def _copy_references(references: list, out: Path) -> None:
    for ref in references:
        target = out / reference_copy(ref.path, ref.sha256)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(ref.path, tmp)
            os.replace(tmp, target)


# ---- run.json: what was run, with what, where ----
def _models_of(engine) -> dict:
    spec = engine.models.spec
    return {"zimage": spec.zimage, "vl": spec.vl, "device": str(engine.models.device),
            "dtype": str(engine.models.dtype).removeprefix("torch."),
            "offload": getattr(engine.models, "offload", "none"), "compile": bool(getattr(spec, "compile", False))}


def _read_info(out: Path) -> dict | None:
    try:
        return json.loads((out / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _check_same_run(out: Path, experiment: ExperimentType, engine) -> None:
    info = _read_info(out)
    if not info:
        return
    if info.get("experiment") != experiment.name:
        raise UserError(f"--output-dir {out}: holds a {info.get('experiment')!r} run; use another folder for "
                        f"{experiment.name!r}")
    models, before = _models_of(engine), info.get("models", {})
    for part in ("zimage", "vl"):
        if before.get(part) and before[part] != models[part]:
            raise UserError(f"--output-dir {out}: was run with --{part} {before[part]}; resume with the same "
                            "models or use another folder")


def _write_info(out: Path, info: dict) -> None:
    tmp = out / f".{RUN_INFO}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(info, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, out / RUN_INFO)


def _start_invocation(out: Path, experiment: ExperimentType, engine, parameters: dict | None, summary: Summary) -> dict:
    from vlbench.engine.engine import environment

    info = _read_info(out) or {}
    invocation = {"started": _now(), "finished": None, "argv": list(sys.argv), "parameters": parameters or {},
                  "environment": environment(engine.models), "jobs": summary.jobs, "skipped": summary.skipped}
    info.update(experiment=experiment.name, description=experiment.description, question=experiment.question,
                type_file=str(experiment.path), type_source=experiment.source, models=_models_of(engine))
    info.setdefault("invocations", []).append(invocation)
    _write_info(out, info)
    return invocation


def _finish_invocation(out: Path, invocation: dict, engine, summary: Summary) -> None:
    info = _read_info(out) or {"invocations": [invocation]}
    entry = info["invocations"][-1]
    entry.update(finished=_now(), done=summary.done, failed=summary.failed, interrupted=summary.interrupted,
                 vl_forwards=summary.vl_forwards, model_load_seconds=dict(engine.models.load_seconds))
    _write_info(out, info)


def write_outputs(out: Path, experiment: ExperimentType | None = None) -> None:
    """grid.png and report.html from every row in results.jsonl."""
    from vlbench.experiments.grid import write_grid
    from vlbench.report import write_report

    rows, _ = ResultsLog(out / RESULTS).read()
    rows = list(latest_by_key(rows).values())
    info = _read_info(out) or {}
    title = info.get("experiment") or (experiment.name if experiment else "")
    if rows:
        write_grid(rows, out, out / GRID, title=f"{title}: {info.get('question', '')}".strip(": "))
    write_report(out, rows, info)


# ---- the run store ----
class _StoreRecorder:
    """Records finished images in the run history; a store problem never stops the run."""

    def __init__(self, store, console):
        self.store, self.console, self.warned = store, console, False

    def record(self, job: Job, row: dict, out: Path, env: dict, cond: dict, started_at: float) -> None:
        if self.store is None:
            return
        try:
            self.store.record_done(job.prompt, [str(Path(job.reference.path).resolve())], job.recipe.to_dict(),
                                   name=job.name, experiment=row["experiment"], source="cli",
                                   output_path=str((out / job.image).resolve()), timings=row["timings"],
                                   peak_memory_bytes=row["peak_vram_bytes"], environment=env, conditioning=cond,
                                   started_at=started_at)
        except Exception as exc:  # noqa: BLE001
            self._warn(f"run store: {_one_line(exc)}; images are recorded in the output folder only")

    def _warn(self, text: str) -> None:
        if not self.warned:
            self.warned = True
            if self.console is not None:
                self.console.print(f"[yellow]{text}[/yellow]")


# ---- progress on stderr ----
class _Progress:
    def __init__(self, console, total: int, completed: int):
        self.console, self.total, self.completed = console, total, completed
        self.bar = self.task = self.steps = None

    def __enter__(self):
        if self.console is not None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=self.console, transient=False)
            self.bar.__enter__()
            self.task = self.bar.add_task("images", total=self.total, completed=self.completed)
            self.steps = self.bar.add_task("", total=1, visible=False)
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def start(self, job: Job) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=f"{job.name} · seed {job.recipe.seed}")
            self.bar.reset(self.steps, total=job.recipe.steps, description="  steps", visible=True)

    def step(self, i: int, n: int) -> None:
        if self.bar is not None:
            self.bar.update(self.steps, completed=i, total=n)

    def advance(self, row: dict) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)
            if row["status"] != "done":
                self.bar.console.print(f"[red]{row['name']}: failed: {row['error']}[/red]")


# ---- helpers ----
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    if not isinstance(exc, UserError):
        line = f"{exc.__class__.__name__}: {line}" if line else exc.__class__.__name__
    return line[:500]


def _log_traceback(job: Job, exc: BaseException) -> None:
    try:
        from vlbench import paths

        with open(paths.log_path(), "a", encoding="utf-8") as f:
            f.write(f"{_now()} experiment job {job.name} failed\n")
            f.write("".join(traceback.format_exception(exc)))
    except OSError:
        pass


def _lock(out: Path):
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
        raise UserError(f"--output-dir {out}: another vlbench run is writing there; wait for it or use another folder") from None
    return handle


def _unlock(handle) -> None:
    if handle is not None:
        handle.close()
