"""The vlbench workbench: five panes over one run store and one background worker.

Inputs and Parameters describe a run; F5 queues it (one run per seed) into the SQLite store; the
worker thread (vlbench.worker) takes runs from the store and posts its events back as messages;
Queue, Preview and History read the store. The UI thread never imports torch: the engine is
built on the worker thread, after the first screen is painted.
"""

from __future__ import annotations

import gc
import logging
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, TextArea

from vlbench.config import Settings
from vlbench.errors import UserError
from vlbench.modelspec import ModelSpec, resolve_model_spec
from vlbench.recipe import Recipe, load_recipe, parse_seeds, save_recipe
from vlbench.store import Store
from vlbench.tui import experiments, keys
from vlbench.tui.commands import VlbenchCommands
from vlbench.tui.messages import InputsChanged, OpenRun, RecipeChanged, RunHighlighted, StoreChanged, WorkerEvent
from vlbench.tui.screens.ask import Ask
from vlbench.tui.screens.confirm import Confirm
from vlbench.tui.screens.experiment import ChooseExperiment
from vlbench.tui.screens.file_picker import FilePicker
from vlbench.tui.screens.help import HelpScreen
from vlbench.tui.screens.jump import PANES, JumpScreen
from vlbench.tui.screens.run_details import RunDetails
from vlbench.tui.suggest import IMAGE_SUFFIXES, RECIPE_SUFFIXES
from vlbench.tui.themes import DEFAULT_THEME, load_themes
from vlbench.tui.widgets.history import HistoryPane
from vlbench.tui.widgets.inputs import InputsPane
from vlbench.tui.widgets.parameters import ParametersPane
from vlbench.tui.widgets.preview import PreviewPane
from vlbench.tui.widgets.queue import QueuePane
from vlbench.tui.wording import render
from vlbench.worker import (JobCancelled, JobDone, JobFailed, JobProgress, JobStarted, ModelStatus, WorkerIdle,
                            WorkerPaused)

log = logging.getLogger("vlbench.tui")
REFRESH_S = 0.2  # worker-driven table refreshes are gathered over this long
SWITCH_INTERVAL_S = 0.001
FOLLOW_S = 0.5  # the Preview shows the latest result at most this often
PREVIEW_S = 0.15  # the Preview follows the Queue/History cursor once it rests this long
# App commands that act on the main screen; disabled while a dialog is open.
_FORM_ACTIONS = {c.action for c in keys.APP} - {"help"}


class VlbenchApp(App[int]):
    CSS_PATH = Path(__file__).with_name("vlbench.tcss")  # absolute: subclasses elsewhere find it too
    TITLE = "vlbench"
    COMMANDS = App.COMMANDS | {VlbenchCommands}
    BINDINGS = keys.bindings(keys.APP)

    def __init__(self, settings: Settings | None = None, models: ModelSpec | None = None, *,
                 store_path: Path | str | None = None, outputs_dir: Path | str | None = None,
                 start_worker: bool = True, engine_factory: Callable[[Callable[[str], None]], Any] | None = None):
        super().__init__()
        self.settings = settings or Settings()
        self.models = models or resolve_model_spec(self.settings.models.to_dict())
        self.store = Store(store_path)
        self.outputs_dir = outputs_dir
        self.start_worker = start_worker
        self.engine_factory = engine_factory  # tests may inject one; default: build_engine(self.models, …)
        self.job_worker = None  # vlbench.worker.Worker, started after the first paint
        self.paused = False
        self.recipe: Recipe | None = None
        self.recipe_error: str | None = None
        self.seeds: list[int] = []
        self.selected_run: int | None = None
        self.marked_run: int | None = None
        self.show_reference = False
        self.comparing = False
        self.experiment_types: list | None = None  # loaded on first use
        self._changed_runs: set[int] = set()  # runs the worker moved on, shown at the next refresh
        self._show_latest = False
        self._refresh_timer = None
        self._preview_timer = None
        self._heap_frozen = False
        self._preview_shown = 0.0  # when the Preview last followed a finished run
        self.sub_title = self.models.describe()
        themes, self.startup_problems = load_themes()
        for theme in themes:
            self.register_theme(theme)
        wanted = self.settings.ui.theme or DEFAULT_THEME
        if wanted in self.available_themes:
            self.theme = wanted
        else:
            self.startup_problems.append(f"theme {wanted!r}: not found; using {self.theme}")
        if self.settings.keys:
            known = {c.id for c in keys.APP + keys.QUEUE + keys.HISTORY}
            for unknown in sorted(set(self.settings.keys) - known):
                self.startup_problems.append(f"config [keys] {unknown}: no such command id (F1 lists them)")
            self.set_keymap(self.settings.keys)

    # ---- layout ----
    def compose(self) -> ComposeResult:
        # The panes are kept as attributes: worker events reach them many times a second, and a DOM
        # query per event costs more than the update itself.
        self.inputs = InputsPane(id="inputs")
        self.parameters = ParametersPane(self.settings.recipe, id="parameters")
        self.preview = PreviewPane(self.settings.ui.preview, id="preview")
        self.queue_pane = QueuePane(id="queue")
        self.history = HistoryPane(id="history")
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield self.inputs
                yield self.parameters
            with Vertical(id="right"):
                with Horizontal(id="top"):
                    yield self.preview
                    yield self.queue_pane
                yield self.history
        yield Footer()

    @property
    def showing(self) -> bool:
        """The main screen is up (False while the app shuts down, when late events must be dropped)."""
        return self.is_running and self.queue_pane.is_attached

    def on_mount(self) -> None:
        # ---- issue 13: a store write-locked by another process must not stop the workbench from opening ----
        try:
            requeued, failed = self.store.recover()
        except sqlite3.Error as exc:
            requeued = failed = 0
            self.startup_problems.append(f"run store: {exc}; runs an earlier session left running are recovered "
                                         "at the next start")
        # ---- end issue 13 ----
        if requeued:
            self.notify(f"{requeued} run(s) recovered from an interrupted session: queued again")
        if failed:
            self.notify(f"{failed} run(s) interrupted twice — possibly crashing the worker — marked failed "
                        "(r in History retries one)", severity="warning", timeout=10)
        for problem in self.startup_problems:
            self.notify(problem, severity="warning")
        self.queue_pane.reload()
        self.history.reload()
        self.query_one("#prompt", TextArea).focus()
        if self.start_worker:
            self.call_after_refresh(self.start_job_worker)  # after the first paint: torch loads on its thread
        else:
            self.queue_pane.set_status("worker not started")

    # ---- the worker ----
    def start_job_worker(self) -> None:
        from vlbench.worker import Worker

        factory = self.engine_factory or (lambda on_status: build_engine(self.models, on_status))

        def post(event: object) -> None:  # called on the worker thread
            self.post_message(WorkerEvent(event))

        # ---- issue 13: a headless worker (`vlbench worker`) runs this store's queue: watch and control it ----
        from vlbench.worker import Viewer, live_worker

        headless = live_worker(self.store)
        if headless is not None and headless.get("kind") == "headless":
            self.job_worker = Viewer(self.store.path, headless, on_event=post)
            self.job_worker.start()
            self.sub_title = f"{self.models.describe()} · VIEWER of headless worker pid {headless.get('pid')}"
            self.queue_pane.set_status(f"viewer: `vlbench worker` (pid {headless.get('pid')}) runs the queue; pause, "
                                       f"cancel and reorder act on it · its log: {headless.get('log')}")
            return
        # ---- end issue 13 ----

        def engine_factory():
            return factory(lambda text: post(ModelStatus(text)))

        # The worker thread runs Python (the pipeline's loop, tiny models' small ops) between the native
        # kernels; a thread waiting for the GIL gets it after the switch interval (5 ms by default), and a
        # key press takes several such waits. 1 ms keeps keys quick while the worker computes.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self.job_worker = Worker(self.models, store_path=self.store.path, outputs_dir=self.outputs_dir, on_event=post,
                                 engine_factory=engine_factory, recover=False, render=render,
                                 presence="workbench")  # issue 13: `vlbench worker` refuses to run beside it
        self.job_worker.start()
        self.queue_pane.set_status(f"worker ready · models load with the first run ({self.models.describe()})")
        if not self.models.tiny:  # real models on a box where CUDA is unusable: say so now, not after minutes
            threading.Thread(target=self._check_cuda, args=(post,), name="cuda-check", daemon=True).start()

    def _check_cuda(self, post) -> None:
        """Off the UI thread (imports torch): post the CPU-fallback warning, if any, as a ModelStatus."""
        from vlbench.worker import ModelStatus

        try:
            from vlbench.engine.models import startup_warning

            warning = startup_warning(self.models)
        except Exception:  # noqa: BLE001 — a check that fails must not take the workbench down
            log.exception("CUDA check failed")
            return
        if warning:
            post(ModelStatus(f"warning: {warning}"))

    def stop_job_worker(self, timeout: float = 3.0) -> None:
        if self.job_worker is not None:
            self.job_worker.stop(timeout)
            self.job_worker = None

    def on_unmount(self) -> None:
        # Messages already queued may still read the store, so it is closed by whoever ran the app (close()).
        self.stop_job_worker()

    def close(self) -> None:
        """After the app has exited: release the store's connections."""
        self.stop_job_worker()
        self.store.close()

    def on_worker_event(self, message: WorkerEvent) -> None:
        if not self.showing:  # the app is closing; events still in flight have nowhere to go
            return
        queue = self.queue_pane
        match message.event:
            case ModelStatus(text=text):
                queue.set_status(text)
                log.info("model status: %s", text)
                if text.startswith("warning:"):  # loud: the header keeps it until the app closes
                    self.sub_title = f"{self.models.describe()} · WARNING: {text.removeprefix('warning: ')}"
            case JobStarted(run_id=run_id, total_steps=total):
                queue.job_started(run_id, total)
                self.runs_changed(run_id)
            case JobProgress(run_id=run_id, step=step, total=total, eta_s=eta):
                queue.job_progress(run_id, step, total, eta)
            case JobDone(run_id=run_id):
                if not self._heap_frozen:
                    # The loaded libraries leave millions of long-lived objects; a full garbage collection
                    # would walk them all while holding the GIL (a visible pause). Exempt them from now on.
                    gc.freeze()
                    self._heap_frozen = True
                if not self.comparing:
                    self.selected_run = run_id  # the Preview follows the latest result
                self.runs_changed(run_id, show=True)
            case JobFailed(run_id=run_id, reason=reason):
                self.notify(f"run {run_id} failed: {reason}", severity="error", timeout=8)
                self.runs_changed(run_id)
            case JobCancelled(run_id=run_id):
                self.runs_changed(run_id)
            case WorkerPaused(paused=paused):
                self.show_paused(paused)
            case WorkerIdle():
                queue.job_ended()

    def show_paused(self, paused: bool) -> None:
        self.paused = paused
        self.queue_pane.border_title = "Queue (paused — F8 resumes)" if paused else "Queue"

    # ---- the store ----
    def store_changed(self, run_id: int | None = None, wake: bool = False) -> None:
        """The user queued, moved, removed or deleted runs: re-read the store now."""
        self.post_message(StoreChanged(run_id))
        if wake and self.job_worker is not None:
            self.job_worker.wake()

    def on_store_changed(self, message: StoreChanged) -> None:
        self.queue_pane.reload()
        self.history.reload()
        if message.run_id is not None and message.run_id in (self.selected_run, self.marked_run):
            self.update_preview()

    def runs_changed(self, run_id: int, show: bool = False) -> None:
        """The worker moved a run to another state. Tiny models finish several runs a second, so these
        refreshes are gathered and applied at most every REFRESH_S: keys stay fast while a queue drains."""
        self._changed_runs.add(run_id)
        self._show_latest = self._show_latest or show
        if self._refresh_timer is None:
            self._refresh_timer = self.set_timer(REFRESH_S, self._apply_run_changes)

    def _apply_run_changes(self) -> None:
        changed, self._changed_runs = self._changed_runs, set()
        self._refresh_timer = None
        if not self.showing:
            return
        self.queue_pane.reload()
        self.history.refresh_runs(changed)
        if self._show_latest or changed & {self.selected_run, self.marked_run}:
            # A new image costs a layout and a full render: while a fast queue drains, at most every FOLLOW_S.
            now = time.monotonic()
            if now - self._preview_shown >= FOLLOW_S:
                self._preview_shown, self._show_latest = now, False
                self.update_preview()
            elif self._refresh_timer is None:
                self._refresh_timer = self.set_timer(FOLLOW_S - (now - self._preview_shown), self._apply_run_changes)

    # ---- state from the panes ----
    def on_recipe_changed(self, message: RecipeChanged) -> None:
        self.recipe, self.recipe_error, self.seeds = message.recipe, message.error, message.seeds

    def on_inputs_changed(self, message: InputsChanged) -> None:
        self.parameters.set_external("vl_text", message.vl_text)

    def on_run_highlighted(self, message: RunHighlighted) -> None:
        # The cursor moves at key-repeat speed; the image follows once it rests (PREVIEW_S).
        self.selected_run = message.run_id
        if self._preview_timer is not None:
            self._preview_timer.stop()
        self._preview_timer = self.set_timer(PREVIEW_S, self.update_preview)

    def on_open_run(self, message: OpenRun) -> None:
        run = self.store.get(message.run_id)
        if run is None:
            return

        def chosen(what: str | None) -> None:
            if what == "requeue":
                self.requeue(run.id)
            elif what == "load":
                self.load_run(run.id)

        self.push_screen(RunDetails(run), chosen)

    def update_preview(self) -> None:
        self._preview_timer = None
        if not self.showing:
            return
        run = self.store.get(self.selected_run) if self.selected_run is not None else None
        other = None
        if self.comparing and self.marked_run is not None and self.marked_run != self.selected_run:
            other = self.store.get(self.marked_run)
        self.preview.show(run, reference=self.show_reference and other is None, other=other)

    # ---- queueing ----
    def _runs_for(self) -> tuple[str, list[str], Recipe] | None:
        """Prompt, references and recipe of the form, or None after telling the user what is missing."""
        recipe = self.parameters.validate()  # read the form now: a change may still be on its way as a message
        if recipe is None:
            self.notify(f"cannot queue: {self.parameters.error}", severity="error")
            return None
        prompt, refs = self.inputs.prompt, self.inputs.references
        if not prompt and not refs:
            self.notify("cannot queue: type a prompt (Inputs) or add a reference image", severity="error")
            self.query_one("#prompt", TextArea).focus()
            return None
        try:
            recipe.check_inputs(len(refs))
        except UserError as exc:
            self.notify(f"cannot queue: {render(exc)} (F2 adds a reference)", severity="error")
            return None
        return prompt, refs, recipe

    def queue_runs(self, seeds: list[int] | None = None) -> list[int]:
        """One run per seed (default: the seed field's seeds) of the form's prompt, references and recipe."""
        form = self._runs_for()
        if form is None:
            return []
        prompt, refs, recipe = form
        seeds = seeds or self.parameters.seeds
        refs = [str(Path(r).expanduser().resolve()) for r in refs]  # a relaunch elsewhere still finds them
        items = [dict(prompt=prompt, images=refs, recipe=recipe.replace(seed=seed).to_dict(), source="tui")
                 for seed in seeds]
        ids = self.store.enqueue_many(items)
        self.notify(f"queued run {ids[0]}" if len(ids) == 1 else f"queued {len(ids)} runs ({ids[0]}–{ids[-1]})")
        self.store_changed(ids[0], wake=True)
        return ids

    def action_queue(self) -> None:
        self.queue_runs()

    def action_queue_seeds(self) -> None:
        current = ", ".join(str(s) for s in self.seeds) if len(self.seeds) > 1 else \
            (f"{self.seeds[0]}-{self.seeds[0] + 7}" if self.seeds else "0-7")

        def answered(text: str | None) -> None:
            if text:
                self.queue_runs(parse_seeds(text))

        self.push_screen(Ask("Queue the current recipe over these seeds:", current,
                             "e.g. 1,2,3 or 0-7 · Enter queues · Esc cancels", parse_seeds), answered)

    def _experiment_types(self) -> list:
        if self.experiment_types is None:
            self.experiment_types = experiments.types()
        return self.experiment_types

    def action_queue_experiment(self) -> None:
        types = self._experiment_types()
        if not types:
            self.notify("no experiment types are available in this installation", severity="warning")
            return

        def chosen(choice: tuple[str, bool] | None) -> None:
            if choice is not None:
                self.queue_experiment(*choice)

        self.push_screen(ChooseExperiment(types), chosen)

    def queue_experiment(self, name: str, quick: bool = False) -> list[int]:
        experiment = next((t for t in self._experiment_types() if t.name == name), None)
        form = self._runs_for()
        if experiment is None or form is None:
            return []
        prompt, refs, recipe = form
        try:
            runs = experiments.expand(experiment, quick, recipe, self.parameters.seeds)
        except UserError as exc:
            self.notify(render(exc), severity="error")
            return []
        refs = [str(Path(r).expanduser().resolve()) for r in refs]
        ids = self.store.enqueue_many([dict(prompt=prompt, images=refs, recipe=r, name=config, experiment=name,
                                            source="tui") for config, r in runs])
        self.notify(f"queued {len(ids)} runs of {name}" + (" (quick)" if quick else ""))
        if ids:
            self.store_changed(ids[0], wake=True)
        return ids

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if len(self.screen_stack) > 1 and action in _FORM_ACTIONS:
            return False  # a dialog is open: its keys only
        return True

    # ---- run operations (panes, details and palette call these) ----
    def requeue(self, run_id: int) -> None:
        try:
            new_id = self.store.requeue(run_id)
        except KeyError:
            self.notify(f"run {run_id}: no longer in the store", severity="error")
            return
        self.notify(f"queued run {new_id} (same as {run_id})")
        self.store_changed(new_id, wake=True)

    def load_run(self, run_id: int) -> None:
        run = self.store.get(run_id)
        if run is None:
            return
        try:
            recipe = Recipe.from_dict(run.recipe)
        except UserError as exc:
            self.notify(f"run {run_id}: its recipe no longer loads ({render(exc)})", severity="error")
            return
        self.parameters.set_recipe(recipe, [run.seed])
        self.inputs.prompt = run.prompt
        self.inputs.references = run.reference_paths
        self.inputs.vl_text = recipe.vl_text
        self.notify(f"loaded run {run_id} into the form")

    def delete_run(self, run_id: int) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                if self.store.delete(run_id, delete_output=True):
                    self.notify(f"deleted run {run_id}")
                    self.store_changed(run_id)
                else:
                    self.notify(f"run {run_id}: a running run cannot be deleted (cancel it first)",
                                severity="warning")

        self.push_screen(Confirm(f"Delete run {run_id} and its image?"), answered)

    def cancel_run(self, run_id: int) -> None:
        if not self.store.cancel(run_id):
            self.notify(f"run {run_id}: only pending or running runs can be cancelled", severity="warning")
            return
        if self.job_worker is not None and self.job_worker.current_run_id == run_id:
            self.job_worker.cancel_current()
        self.store_changed(run_id)

    def mark_run(self, run_id: int) -> None:
        self.marked_run = run_id
        self.notify(f"marked run {run_id}: select another run and press F4 to compare")

    # ---- app actions (keys.APP) ----
    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.settings.keys, str(self.settings.path or "config.toml")))

    def action_cancel_running(self) -> None:
        current = self.job_worker.current_run_id if self.job_worker is not None else None
        if current is None:
            self.notify("no run is running")
            return
        self.cancel_run(current)

    def action_pause(self) -> None:
        if self.job_worker is None:
            return
        if self.job_worker.paused:
            self.job_worker.resume()
            self.notify("worker resumed")
        else:
            self.job_worker.pause()
            self.notify("worker paused: the running job finishes, nothing new starts")
        self.show_paused(self.job_worker.paused)

    def action_toggle_reference(self) -> None:
        self.show_reference = not self.show_reference
        self.comparing = False
        self.update_preview()

    def action_compare(self) -> None:
        if self.marked_run is None:
            self.notify("mark a run first (m in Queue or History), then select another", severity="warning")
            return
        self.comparing = not self.comparing
        self.update_preview()

    def action_add_reference(self) -> None:
        refs = self.inputs.references
        start = Path(refs[-1]).parent if refs else Path.cwd()

        def picked(path: str | None) -> None:
            if path:
                self.inputs.add_reference(path)

        self.push_screen(FilePicker("Add a reference image", start=start, suffixes=IMAGE_SUFFIXES), picked)

    def action_open_recipe(self) -> None:
        def picked(path: str | None) -> None:
            if not path:
                return
            try:
                recipe = load_recipe(path)
            except UserError as exc:
                self.notify(render(exc), severity="error")
                return
            self.parameters.set_recipe(recipe)
            self.inputs.vl_text = recipe.vl_text
            self.notify(f"loaded {path}")

        self.push_screen(FilePicker("Open a recipe (TOML)", suffixes=RECIPE_SUFFIXES), picked)

    def action_save_recipe(self) -> None:
        recipe = self.parameters.validate()
        if recipe is None:
            self.notify(f"cannot save: {self.parameters.error}", severity="error")
            return

        def write(path: Path) -> None:
            try:
                save_recipe(recipe, path)
            except OSError as exc:
                self.notify(f"{path}: cannot write ({exc.strerror})", severity="error")
                return
            self.notify(f"saved {path}")

        def picked(text: str | None) -> None:
            if not text:
                return
            path = Path(text).expanduser()
            if path.suffix != ".toml":
                path = path.with_suffix(".toml")
            if path.exists():
                self.push_screen(Confirm(f"{path} exists. Overwrite it?"), lambda yes: write(path) if yes else None)
            else:
                write(path)

        self.push_screen(FilePicker("Save the recipe as (TOML)", start=Path.cwd() / "recipe.toml",
                                    suffixes=RECIPE_SUFFIXES, save=True), picked)

    def action_next_theme(self) -> None:
        names = sorted(self.available_themes)
        self.theme = names[(names.index(self.theme) + 1) % len(names)] if self.theme in names else names[0]
        self.notify(f"theme: {self.theme}", timeout=2)

    def action_jump(self) -> None:
        self.push_screen(JumpScreen(), lambda pane: self.action_focus_pane(pane) if pane else None)

    def action_focus_pane(self, name: str) -> None:
        targets = {"inputs": "#prompt", "parameters": "#param-form Input", "queue": "#queue-table",
                   "preview": "#preview", "history": "#history-table"}
        self.query(targets[name]).first().focus()

    # ---- the command palette ----
    def palette_commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        out: list[tuple[str, str, Callable[[], Any]]] = []
        for c in keys.APP:
            if c.action == "queue_experiment" and not self._experiment_types():
                continue
            out.append((c.title.rstrip("…"), f"{c.help} · {keys.display_keys(c.keys)}",
                        lambda a=c.action: self.run_action(a)))
        for pane, commands, where in ((self.queue_pane, keys.QUEUE, "Queue"),
                                      (self.history, keys.HISTORY, "History")):
            for c in commands:
                out.append((f"{where}: {c.title}", f"{c.help} · {keys.display_keys(c.keys)}",
                            lambda a=c.action, p=pane: self.run_action(a, p)))
        for _, _, pane, title in PANES:
            out.append((f"Go to {title}", f"focus the {title} pane", lambda p=pane: self.action_focus_pane(p)))
        for t in self._experiment_types():
            out.append((f"Queue experiment: {t.name}", t.description,
                        lambda n=t.name: self.queue_experiment(n)))
        for name in sorted(self.available_themes):
            out.append((f"Theme: {name}", "switch the workbench's colours",
                        lambda n=name: setattr(self, "theme", n)))
        return out

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = True) -> None:
        """Notifications quote paths, prompts and errors: never read them as markup."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    # ---- crashes: the traceback goes to the log file, the terminal is restored by Textual ----
    def _handle_exception(self, error: Exception) -> None:
        from vlbench.tui.launch import log_crash

        log_crash(error)
        super()._handle_exception(error)


def build_engine(spec: ModelSpec, on_status: Callable[[str], None]):
    """An Engine whose Models load each part on first use. Worker thread only (imports torch)."""
    import os

    import torch

    from vlbench.engine.engine import Engine
    from vlbench.engine.models import Models
    from vlbench.logs import quiet_libraries

    quiet_libraries()
    on_cpu = spec.device == "cpu" or (spec.device is None and not torch.cuda.is_available())
    if on_cpu and (os.cpu_count() or 1) > 1:  # torch's intra-op threads would take every core: keys would wait
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1)))
    if spec.tiny:
        on_status("preparing the tiny random models…")
    return Engine(Models(spec, on_status=on_status))
