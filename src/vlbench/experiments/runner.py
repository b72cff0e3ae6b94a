"""Run an experiment: plan its jobs, resume the folder, run what is pending, write the grid (and the caller's report).

The in-process loop (`LocalExecutor`) runs each job through the one job path (vlbench.jobs.execute)
on one Engine; jobs reading the same extraction run back to back and an extraction is dropped after
its last job. PNGs are encoded and written on a background thread while the next image generates
(one write in flight); a job's results row is appended, in job order, only once its PNG is on disk.
`--executor ray` replaces the loop (vlbench.executors.ray_executor); planning, resume and the ledger
stay here and in vlbench.experiments.folder.
"""

from __future__ import annotations

import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from vlbench.experiments import folder as F
from vlbench.experiments.folder import Ledger, Summary
from vlbench.experiments.plan import Job, plan, reference_sets
from vlbench.experiments.spec import ExperimentType, NamedRecipe
from vlbench.jobs import execute, execute_batch
from vlbench.pngs import write_run_png

__all__ = ["Job", "Summary", "run_experiment", "write_outputs"]
log = logging.getLogger("vlbench.experiments")
write_outputs = F.write_outputs


def run_experiment(engine, experiment: ExperimentType, recipes: list[NamedRecipe], references: list,
                   prompts: list[str], out_dir: str | Path, *, seeds: list[int] | None = None,
                   limit: int | None = None, parameters: dict | None = None, store=None, console=None,
                   on_job_done: Callable[[Job, dict], None] | None = None, executor=None,
                   render: Callable = str, report: Callable[[Path], Any] | None = None) -> Summary:
    """Run (or resume) `experiment` into `out_dir`; returns what happened. Writes the grid at the end, then calls
    `report(out)` (the caller's: vlbench.analysis.report.write_folder_report; None writes no report), also on the
    way out of an interrupted or failing run.

    `references`: each a Reference (its own job group) or a tuple of References read together by one job.
    `on_job_done(job, row)` is called after each results row is written (tests interrupt from it).
    `executor(engine, jobs, ledger)` runs the pending jobs (default: LocalExecutor). `store` (a
    vlbench.store.Store) records each finished image in the run history. `render` words input errors.
    """
    sets = reference_sets(references)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    handle = F.lock(out)
    try:
        F.check_same_run(out, experiment, engine)
        jobs = plan(recipes, sets, prompts, seeds)
        summary = Summary(jobs=len(jobs))
        done = F.resume(out, store, summary)
        F.copy_references(sets, out)
        pending = [j for j in jobs if j.key not in done]
        summary.skipped = len(jobs) - len(pending)
        if limit is not None:
            pending = pending[:max(0, limit)]
        invocation = F.start_invocation(out, experiment, engine, parameters, summary)
        progress = _Progress(console, total=summary.jobs, completed=summary.skipped)
        ledger = Ledger(out, experiment.name, summary, store=store, console=console, progress=progress,
                        on_job_done=on_job_done)
        try:
            with progress:
                (executor or LocalExecutor(render))(engine, pending, ledger)
        except KeyboardInterrupt:
            summary.interrupted = True
            raise
        finally:
            _wrap_up(out, experiment, engine, summary, ledger, invocation, failing=sys.exc_info()[0] is not None,
                     report=report)
        return summary
    finally:
        F.unlock(handle)


def _wrap_up(out: Path, experiment, engine, summary: Summary, ledger: Ledger, invocation: dict, failing: bool,
             report: Callable[[Path], Any] | None = None) -> None:
    """run.json, grid and report, also on the way out of an interrupted or failing run. When the run is already
    failing (a full disk, Ctrl-C), a step that fails too is logged, not chained onto the first error."""
    ledger.close()  # the history holds every done image, or the summary says how many it lacks
    for step in (lambda: F.finish_invocation(out, invocation, engine, summary),
                 lambda: F.write_outputs(out, experiment), lambda: report and report(out)):
        try:
            step()
        except Exception:
            if not failing:
                raise
            log.exception("writing %s's run.json, grid or report after the run failed", out)


class LocalExecutor:
    """The in-process loop over one Engine, with the PNG writes of the last images in flight behind the next
    generation. `batch` > 1 (`--batch N`): consecutive jobs of one shape (vlbench.engine.batching.batch_key) run
    N at a time in shared DiT calls (jobs.execute_batch); rows stay one per image, in job order."""

    def __init__(self, render: Callable = str, batch: int = 1, ready: dict | None = None):
        """`ready`: job key -> Outcome generated beforehand (vlbench search --batch); those jobs are not run."""
        self.render = render
        self.batch = max(1, int(batch))
        self.ready = dict(ready or {})

    def __call__(self, engine, jobs: list[Job], ledger: Ledger) -> None:
        last_use: dict[tuple, int] = {}
        for i, job in enumerate(jobs):
            for ex in job.extractions:
                last_use[ex] = i
        progress = ledger.progress
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlbench-png")
        pending: list[_Pending] = []  # the previous jobs: their PNGs may still be being written

        def finish(p: _Pending, callbacks: bool = True) -> None:
            ledger.append(p.job, p.wait(), callback=callbacks)

        try:
            for group in batch_groups(jobs, self.batch):
                progress.start(jobs[group[0]])
                if all(jobs[i].key in self.ready for i in group):
                    outcomes = [self.ready.pop(jobs[i].key) for i in group]
                elif len(group) == 1:
                    job = jobs[group[0]]
                    outcomes = [execute(engine, job.record(ledger.experiment), list(job.references),
                                        on_step=progress.step, render=self.render)]
                    record = outcomes[0].record
                    if self.batch > 1 and record.status == "done":  # --batch given: every record says its batch
                        record.environment = {**record.environment, "batch": {"size": 1, "position": 0}}
                else:
                    outcomes = execute_batch(engine, [jobs[i].record(ledger.experiment) for i in group],
                                             [list(jobs[i].references) for i in group], on_step=progress.step,
                                             render=self.render, pad_to=self.batch)
                for i in group:
                    for ex in jobs[i].extractions:  # free an extraction after its last job (they hold every layer)
                        if last_use[ex] == i:
                            engine.release_extraction_by_sha(*ex)
                previous, pending = pending, []
                for p in previous:
                    finish(p)  # its PNG was written while these jobs generated
                pending = [_Pending(jobs[i], o.record, ledger.out).submit(writer, o.image)
                           for i, o in zip(group, outcomes)]
            last, pending = pending, []
            for p in last:
                finish(p)
        except BaseException:
            # Interrupted (Ctrl-C in a generation, or a caller's callback): the previous jobs' PNGs are written or
            # being written: wait for them and keep their rows; the callbacks are not run again on the way out.
            for p in pending:
                try:
                    finish(p, callbacks=False)
                except BaseException:  # noqa: BLE001 — its PNG failed: no row, the job is redone on resume
                    break  # rows stay in job order: none after a missing one
            raise
        finally:
            writer.shutdown(wait=True)  # never return with a write still running


def batch_groups(jobs: list[Job], size: int) -> list[list[int]]:
    """Indices of `jobs`, in order, cut into runs of at most `size` consecutive jobs of one batch shape
    (vlbench.engine.batching.batch_key; a job with none is alone)."""
    if size <= 1:
        return [[i] for i in range(len(jobs))]
    from vlbench.engine.batching import batch_key

    groups: list[list[int]] = []
    last = None
    for i, job in enumerate(jobs):
        key = batch_key(job.recipe)
        if groups and key is not None and key == last and len(groups[-1]) < size:
            groups[-1].append(i)
        else:
            groups.append([i])
        last = key
    return groups


class _Pending:
    """One finished job: its record, and the PNG write that must end before its row is appended."""

    def __init__(self, job: Job, record, out: Path):
        self.job, self.record, self.out, self.future = job, record, out, None

    def submit(self, writer, image) -> "_Pending":
        if image is not None:
            self.future = writer.submit(write_run_png, self.out / self.job.image, image, self.record,
                                        name=self.job.image)
        return self

    def wait(self):
        if self.future is None:
            return self.record
        return self.future.result()  # a failed write (disk full) ends the run as it did on the main thread


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

    def start(self, job: Any) -> None:
        if self.bar is not None:
            from rich.markup import escape

            self.bar.update(self.task, description=f"{escape(job.name)} · seed {job.recipe.seed}")
            self.bar.reset(self.steps, total=job.recipe.steps, description="  steps", visible=True)

    def step(self, i: int, n: int) -> None:
        if self.bar is not None:
            self.bar.update(self.steps, completed=i, total=n)

    def advance(self, row: dict) -> None:
        if self.bar is not None:
            from rich.markup import escape

            self.bar.advance(self.task)
            if row["status"] != "done":
                self.bar.console.print(f"[red]{escape(row['name'])}: failed: {escape(row['error'])}[/red]")
