"""Queue-time checks of the workbench (issue 25.10): what the models' files decide about a plan, before it is queued.

A layer past the VL's depth, a prompt over the caption budget or Qwen3-4B's text limit, a size past the DiT's
positions, top-k above a reference's image tokens: `vlbench run` refuses these from the models' configs and
tokenizers before any weight loads (vlbench.engine.precheck). The workbench makes the same checks when a plan is
queued (F5, the seeds dialog, an F7 batch), once per plan rather than once per run at run time, and queues nothing
of a refused plan.

The UI thread never imports torch and never waits: `PlanChecks.submit` runs the checks on a thread of their own, in
the order they were submitted, and reads the files once per model spec. A daemon thread, like the CUDA check's: a
Textual thread worker runs on asyncio's default executor, which the app's exit waits for, so quitting during the
first read (torch importing, seconds to a minute) would hang. Where they cannot be read here (a hub id not downloaded, the
tiny models not built yet) the plan is queued as before and the engine checks each run, as it always does.
This module is torch-free at import.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from vlbench.engine.precheck import check_plan, read_model_files
from vlbench.engine.tiny import built_tiny_models, is_tiny
from vlbench.errors import UserError
from vlbench.recipe import ImageAttention, Recipe

log = logging.getLogger("vlbench.tui")


@dataclass(frozen=True)
class PlannedRun:
    """One run of a plan, as the checks see it: the recipe's fields, the prompt, the references' paths."""

    recipe: dict[str, Any]
    prompt: str
    references: tuple[str, ...]


class PlanChecks:
    """The model files of one spec, read on first use (on a thread) and kept; the plan checks over them."""

    def __init__(self, spec) -> None:
        self.spec = spec
        self._files = None
        self._lock = threading.Lock()  # one read of the files, however many checks wait for it
        self.reads = 0  # times the files were read (tests: once per spec)
        self._jobs: deque = deque()  # (runs or None, done or None), checked in this order
        self._jobs_lock = threading.Lock()
        self._draining = False

    def submit(self, runs: list[PlannedRun] | None, done: Callable[[UserError | None], None] | None = None) -> None:
        """Check `runs` on the checks' thread and call `done(refusal or None)` there (None runs: read the files
        only, ahead of the first plan). Returns at once."""
        with self._jobs_lock:
            self._jobs.append((runs, done))
            if not self._draining:
                self._draining = True
                threading.Thread(target=self._drain, name="plan-checks", daemon=True).start()

    def _drain(self) -> None:
        while True:
            with self._jobs_lock:
                if not self._jobs:
                    self._draining = False
                    return
                runs, done = self._jobs.popleft()
            error = None
            try:
                if runs is None:
                    self.model_files()
                else:
                    error = self.check(runs)
            except Exception:  # noqa: BLE001 — a check that breaks must not lose the plan: the engine checks each run
                log.exception("queue-time checks failed; the plan is queued and checked per run")
                error = None
            if done is not None:
                done(error)

    @property
    def files_ready(self) -> bool:
        """The files are read: a check takes milliseconds, not the seconds a first read takes."""
        return self._files is not None

    def model_files(self):
        """The spec's ModelFiles, or None when they cannot be read here. Thread only (imports transformers)."""
        with self._lock:
            if self._files is None:
                spec = readable_spec(self.spec)
                if spec is None:
                    return None

                self.reads += 1
                self._files = read_model_files(spec)  # None (not kept): a later plan tries again
            return self._files

    def check(self, runs: list[PlannedRun]) -> UserError | None:
        """The first refusal of the plan (each distinct check made once, however many runs share it), or None.
        Thread only (imports torch)."""
        files = self.model_files()
        if files is None:
            return None

        opened: dict[str, Any] = {}

        def references(run: PlannedRun, recipe: Recipe) -> list:
            if recipe.image_attention != ImageAttention.TOPK:
                return [None] * len(run.references)  # only top-k reads the images; the others count them
            from vlbench.engine.engine import Reference

            for path in run.references:
                if path not in opened:
                    opened[path] = Reference.open(path)
            return [opened[p] for p in run.references]

        try:
            jobs = []
            for run in runs:
                recipe = Recipe.from_dict(run.recipe)
                jobs.append((recipe, run.prompt, references(run, recipe)))
            check_plan(files, jobs)
        except UserError as exc:
            return exc
        except OSError:  # a reference gone since it was added: the worker says so for its run
            return None
        return None


def readable_spec(spec):
    """The spec with directories to read: the tiny models' only when already built (building them is the worker's
    job, with its status line), else None."""
    if not getattr(spec, "tiny", False):
        return spec

    if spec.zimage and spec.vl and is_tiny(spec.zimage) and is_tiny(spec.vl):
        return spec
    models = built_tiny_models()
    if models is None:
        return None

    return replace(spec, zimage=str(models.zimage), vl=str(models.vl))


def planned(prompt: str, references: list[str], recipes: list[dict]) -> list[PlannedRun]:
    refs = tuple(str(Path(r)) for r in references)
    return [PlannedRun(recipe, prompt, refs) for recipe in recipes]
