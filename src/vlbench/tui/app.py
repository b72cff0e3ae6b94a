"""The vlbench workbench: five panes over one run store and one background worker.

Inputs and Parameters describe a run; F5 (or ctrl+r) queues it (one run per seed) into the SQLite
store; the worker thread (vlbench.worker) takes runs from the store and posts its events back as
messages; Queue, Preview and History read the store. The UI thread never imports torch: the engine is
built on the worker thread, after the first screen is painted. The panes follow the terminal's width
(vlbench.tui.layout); the form, theme and layout are saved in the data dir (vlbench.tui.session).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from rich.text import Text
from textual import events, on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.reactive import Reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Header, TextArea

from vlbench.config import Settings
from vlbench.errors import UserError
from vlbench.logs import log_crash
from vlbench.modelspec import ModelSpec, resolve_model_spec
from vlbench.recipe import Recipe, format_value, load_recipe, parse_seeds, read_recipe_file, save_recipe
from vlbench.records import RunRecord
from vlbench.store import FINISHED, Store
from vlbench.tui import experiments, keys, layout
from vlbench.tui.batches import Batches, new_batch_id
from vlbench.tui.commands import VlbenchCommands
from vlbench.tui.compositor import ChangedRegionsCompositor
from vlbench.tui.idle_gc import IdleCollector, TICK_S as GC_TICK_S
from vlbench.tui.messages import (InputsChanged, OpenRun, PlanChecked, RecipeChanged, RunHighlighted, StoreChanged,
                                  WorkerEvent)
from vlbench.tui.plan_checks import PlanChecks, PlannedRun
from vlbench.tui.screens.ask import Ask
from vlbench.tui.screens.confirm import Confirm
from vlbench.tui.screens.experiment import ChooseExperiment
from vlbench.tui.screens.file_picker import FilePicker
from vlbench.tui.screens.help import HelpScreen
from vlbench.tui.screens.image_view import ImageView
from vlbench.tui.screens.jump import JumpScreen
from vlbench.tui.screens.run_details import RunDetails
from vlbench.tui.session import Session, load_session, save_session
from vlbench.tui.suggest import IMAGE_SUFFIXES, RECIPE_SUFFIXES
from vlbench.tui.themes import DEFAULT_THEME, load_themes
from vlbench.tui.widgets.footer import VlbenchFooter
from vlbench.tui.widgets.history import HistoryPane
from vlbench.tui.widgets.inputs import InputsPane
from vlbench.tui.widgets.pane import outline_only
from vlbench.tui.widgets.pane_bar import PaneBar
from vlbench.tui.widgets.parameters import ParametersPane
from vlbench.tui.widgets.preview import MAX_PICTURES, PreviewPane
from vlbench.tui.widgets.queue import QueuePane
from vlbench.tui.wording import failure_text, render
from vlbench.worker import (BatchExported, BatchExportFailed, JobCancelled, JobDone, JobFailed, JobProgress, JobStarted,
                            ModelStatus, Viewer, ViewerFollows, Worker, WorkerIdle, WorkerPaused,
                            build_engine as worker_engine, live_worker)

log = logging.getLogger("vlbench.tui")
REFRESH_S = 0.2  # worker-driven table refreshes are gathered over this long
SWITCH_INTERVAL_S = 0.001
FOLLOW_S = 0.5  # the Preview shows the latest result at most this often
PREVIEW_S = 0.15  # the Preview follows the Queue/History cursor once it rests this long
SESSION_S = 1.0  # the session is saved this long after the last change (and when the app closes)
# App commands that act on the main screen; disabled while a dialog is open.
_FORM_ACTIONS = {c.action.split("(")[0] for c in keys.APP + keys.PANES} - {"help"}


class MainScreen(Screen):
    """The five panes' screen. Moving focus repaints the two widgets it concerns, not the whole screen: Textual's
    `Screen.focused` reactive repaints everything on each change (half of a Tab's time, more while generating).
    An update draws only the widgets that overlap what changed (vlbench.tui.compositor)."""

    focused: Reactive[Widget | None] = Reactive(None, repaint=False)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._compositor = ChangedRegionsCompositor()

    def settle_after_refresh(self) -> None:
        """After the next frame, lay out what a scroll left out of view (ChangedRegionsCompositor.settle): a narrow
        pane switch scrolls, and the focus moving at the next switch would otherwise wait for that layout."""
        self.call_after_refresh(self._compositor.settle)


class VlbenchApp(App[int]):
    CSS_PATH = Path(__file__).with_name("vlbench.tcss")  # absolute: subclasses elsewhere find it too
    TITLE = "vlbench"
    COMMANDS = App.COMMANDS | {VlbenchCommands}
    HORIZONTAL_BREAKPOINTS = layout.BREAKPOINTS
    THEME_TOAST_SECONDS = 2.0  # how long ctrl+t's "theme: NAME" toast shows
    BINDINGS = [
        *keys.bindings(keys.APP), *keys.bindings(keys.PANES),
        # Tab moves focus before the next key is handed to a widget: keys typed in one burst right after Tab
        # (a paste, a fast typist, a tmux send-keys) go to the new field, not the one Tab left (Textual
        # forwards keys to the focused widget before a non-priority binding of the app has run).
        Binding("tab", "focus_next", "Next field", show=False, priority=True),
        Binding("shift+tab", "focus_previous", "Previous field", show=False, priority=True),
    ]

    def __init__(self, settings: Settings | None = None, models: ModelSpec | None = None, *,
                 store_path: Path | str | None = None, outputs_dir: Path | str | None = None,
                 start_worker: bool = True, engine_factory: Callable[[Callable[[str], None]], Any] | None = None,
                 paused: bool = False, session: bool = True):
        super().__init__()

        keys.alt_digits()  # alt+1..5 reach the panes under tmux too
        if "TEXTUAL_ANIMATIONS" not in os.environ:
            # Over SSH every frame of a smooth scroll is sent; jumping to the top of Parameters scrolled for ~1 s.
            self.animation_level = "none"
        self.settings = settings or Settings()
        self.models = models or resolve_model_spec(self.settings.models.to_dict())
        self.store = Store(store_path)
        self.outputs_dir = outputs_dir
        self.start_worker = start_worker
        self.engine_factory = engine_factory  # tests may inject one; default: build_engine(self.models, …)
        self.job_worker = None  # vlbench.worker.Worker, started after the first paint
        self.start_paused = paused  # --paused: the queue is paused before the worker starts
        self.use_session = session
        self.paused = False
        self.recipe: Recipe | None = None
        self.recipe_error: str | None = None
        self.seeds: list[int] = []
        self.selected_run: int | None = None
        self.marks: list[int] = []  # runs marked for comparison (m), oldest first, at most MAX_PICTURES - 1
        self.follow = True  # the Preview shows each new result; off while a run in History is selected
        self.show_reference = False
        self.comparing = False
        self.layout_mode = "wide"
        self.active_pane = "inputs"  # the pane with focus; in a narrow terminal the only one shown
        self._focus_targets: dict[str, Widget] = {}  # the widget each pane's key focuses
        self.batches = Batches(self.store)
        self.experiment_types: list | None = None  # loaded on first use
        self.plan_checks = PlanChecks(self.models)  # issue 25.10: plans are checked when queued, on a thread
        self._plans: dict[int, list] = {}  # ticket -> [enqueue, done, error]: applied in the order they were queued
        self._next_ticket = 0
        self._session_timer = None
        self._session: Session | None = None  # changed since it was last written
        # The saved session, read now (its pane is laid out by compose); the rest is restored on mount.
        self._saved, self._saved_problem = load_session() if session else (None, None)
        self._session_ready = False  # nothing is saved before the saved session is back on screen
        self._theme_note = None
        self._changed_runs: set[int] = set()  # runs the worker moved on, shown at the next refresh
        self._show_latest = False
        self._refresh_timer = None
        self._preview_timer = None
        self._heap_frozen = False
        self.idle_gc = IdleCollector()
        self._signals: list = []  # (signal, the handler before) this app handles while it runs
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
            known = set(keys.by_id())
            for unknown in sorted(set(self.settings.keys) - known):
                self.startup_problems.append(f"config [keys] {unknown}: no such command id (F1 lists them)")
            self.set_keymap(self.settings.keys)

    # ---- layout ----
    def get_default_screen(self) -> Screen:
        return MainScreen(id="_default")

    def compose(self) -> ComposeResult:
        # The panes are kept as attributes: worker events reach them many times a second, and a DOM
        # query per event costs more than the update itself.
        self.inputs = InputsPane(id="inputs")
        self.parameters = ParametersPane(self.settings.recipe, id="parameters")
        self.preview = PreviewPane(self.settings.ui.preview, id="preview")
        self.queue_pane = QueuePane(id="queue")
        self.history = HistoryPane(id="history")
        self.pane_bar = PaneBar(id="pane-bar")
        self.panes = {"inputs": self.inputs, "parameters": self.parameters, "queue": self.queue_pane,
                      "preview": self.preview, "history": self.history}
        # The saved session's pane is active from the start: set later, its class would restyle a whole column
        # before the first paint.
        if self._saved is not None and self._saved.pane in self.panes:
            self.active_pane = self._saved.pane
        self.panes[self.active_pane].add_class("-active-pane", update=False)
        self.pane_bar.active = self.active_pane
        yield Header()
        yield self.pane_bar
        # One grid: vlbench.tcss places the panes for each width (layout.BREAKPOINTS).
        with Container(id="main") as self.main_area:
            with Vertical(id="left") as self.left_column:
                yield self.inputs
                yield self.parameters
            yield self.preview
            yield self.queue_pane
            yield self.history
        yield VlbenchFooter()

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
            self.notify(f"{_runs(requeued)} recovered from an interrupted session (queued again)", timeout=10)
        if failed:
            self.notify(f"{_runs(failed)} interrupted twice — possibly crashing the worker — marked failed, not "
                        "retried (r in History queues it again)", severity="warning", timeout=15)
        if self.start_paused:
            self.store.set_paused(True)
        self.show_paused(self.store.paused)
        if self.use_session:
            self.restore_session()
        self._session_ready = True
        self.theme_changed_signal.subscribe(self, lambda _theme: self.session_changed())
        for problem in self.startup_problems:
            self.notify(problem, severity="warning")
        self.queue_pane.reload()
        self.history.reload()
        self.layout_mode = layout.mode_for(self.size.width)
        self.action_focus_pane(self.active_pane)
        # The widgets, styles and modules of the first screen live as long as the app: a full garbage
        # collection walking them took ~30 ms every second or so of typing (a slow Tab, a late key). Frozen, and
        # the full collections of what comes later run while the user is idle (vlbench.tui.idle_gc).
        self.call_after_refresh(self._collect_when_idle)
        self._catch_hangup()
        if self.start_worker:
            self.call_after_refresh(self.start_job_worker)  # after the first paint: torch loads on its thread
            # the queue-time checks' files, read before the first F5 needs them (on their thread: they import torch)
            self.call_after_refresh(self.plan_checks.submit, None)
        else:
            self.queue_pane.set_status("worker not started")

    # ---- issue 25.8: full garbage collections while the user is idle, not in a key's time ----
    def _collect_when_idle(self) -> None:
        self.idle_gc.take_over()
        self.set_interval(GC_TICK_S, self.idle_gc.tick, name="idle-gc")

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, (events.InputEvent, events.Paste)):
            self.idle_gc.input_seen()
        await super().on_event(event)

    # ---- the worker ----
    def start_job_worker(self) -> None:
        factory = self.engine_factory or (lambda on_status: build_engine(self.models, on_status))

        def post(event: object) -> None:  # called on the worker thread
            self.post_message(WorkerEvent(event))

        # ---- issue 13: a headless worker (`vlbench worker`) runs this store's queue: watch and control it ----
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
                                 engine_factory=engine_factory, recover=False,
                                 presence="workbench")  # issue 13: `vlbench worker` refuses to run beside it
        self.job_worker.start()
        self.queue_pane.set_status(f"worker ready · models load with the first run ({self.models.describe()})")
        if not self.models.tiny:  # real models on a box where CUDA is unusable: say so now, not after minutes
            threading.Thread(target=self._check_cuda, args=(post,), name="cuda-check", daemon=True).start()

    def _check_cuda(self, post) -> None:
        """Off the UI thread (imports torch): post the CPU-fallback warning, if any, as a ModelStatus."""
        try:
            from vlbench.engine.models import startup_warning

            warning = startup_warning(self.models)
        except Exception:  # noqa: BLE001 — a check that fails must not take the workbench down
            log.exception("CUDA check failed")
            return
        if warning:
            post(ModelStatus(f"warning: {warning}"))

    def stop_job_worker(self, timeout: float = 3.0) -> None:
        """Stop the worker; its running job goes back to the front of the queue (no interruption is counted).

        A job stops at its next step; one still inside a step or a model load when `timeout` runs out is given
        back here, so that a process about to exit never leaves its run 'running' for the next start to
        count as a crash."""
        worker, self.job_worker = self.job_worker, None
        if worker is None:
            return
        current = worker.current_run_id if isinstance(worker, Worker) else None  # a Viewer's job is not ours
        worker.stop(timeout)
        if current is not None and worker.running:
            try:
                if self.store.release(current):
                    log.info("run %d: the worker did not stop within %.0f s; back in the queue", current, timeout)
            except sqlite3.Error as exc:
                log.warning("run %d: cannot give it back to the queue (%s); the next start recovers it", current,
                            exc)

    # ---- issue 25: a closed terminal (SIGHUP, an SSH drop) or SIGTERM gives the running job back, then exits ----
    def _catch_hangup(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGHUP, signal.SIGTERM):
                previous = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._hang_up, sig)
                self._signals.append((sig, previous))
        except (RuntimeError, ValueError, NotImplementedError, AttributeError):  # not the main thread; Windows
            pass

    def _release_signals(self) -> None:
        """Put back the handlers the app found (asyncio's removal would leave the default)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        while self._signals:
            sig, previous = self._signals.pop()
            loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)

    def _hang_up(self, sig) -> None:
        log.warning("%s: the terminal is gone or the workbench was told to stop; the running job goes back to the "
                    "queue", sig.name)
        self.save_session()
        self.stop_job_worker()  # before anything writes to a terminal that may no longer exist
        self.exit(return_code=128 + int(sig))

    def on_unmount(self) -> None:
        # Messages already queued may still read the store, so it is closed by whoever ran the app (close()).
        self.save_session()  # the last state seen (the panes are gone by now)
        self.stop_job_worker()
        self._release_signals()
        self.idle_gc.give_back()

    def exit(self, *args, **kwargs) -> None:
        self.save_session()  # while the panes are still there to read
        super().exit(*args, **kwargs)

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
                    self.idle_gc.take_over()
                    self._heap_frozen = True
                follow = self.follow and not self.comparing
                if follow:
                    self.selected_run = run_id  # the Preview follows the latest result
                self.runs_changed(run_id, show=follow)
            case JobFailed(run_id=run_id, reason=reason, data=data):
                self.notify(f"run {run_id} failed: {failure_text(reason, data)}", severity="error", timeout=8)
                self.runs_changed(run_id)
            case JobCancelled(run_id=run_id):
                self.runs_changed(run_id)
            case BatchExported(experiment=experiment, folder=folder, images=images):  # by whichever worker ran it
                self.notify(f"{experiment} finished ({images} images): grid and report in {folder}", timeout=15)
            case BatchExportFailed(experiment=experiment, reason=reason):
                self.notify(f"{experiment}: the grid and report could not be written ({reason}); the runs are in "
                            "the history, and the export is tried again when the queue next runs dry",
                            severity="error", timeout=10)
            case WorkerPaused(paused=paused):
                self.show_paused(paused)
            case WorkerIdle():
                queue.job_ended()
            case ViewerFollows(pid=pid):  # `vlbench worker` was started again: the header names the new one
                self.sub_title = f"{self.models.describe()} · VIEWER of headless worker pid {pid}"

    def show_paused(self, paused: bool) -> None:
        self.paused = paused
        resume = keys.footer_label(keys.by_id()["pause"], self._keymap.get("pause"))
        self.queue_pane.border_title = f"Queue · paused ({resume})" if paused else "Queue"
        self.queue_pane._show_summary()

    def queue_summary_changed(self, text: str) -> None:
        """The Queue's one-line state (pending, ETA, paused): the pane bar repeats it in a narrow terminal."""
        if self.layout_mode == "narrow":
            self.pane_bar.show(status=text)
        else:
            self.pane_bar.status = text

    # ---- the store ----
    def store_changed(self, run_id: int | None = None, wake: bool = False) -> None:
        """The user queued, moved, removed or deleted runs: re-read the store now."""
        self.post_message(StoreChanged(run_id))
        if wake and self.job_worker is not None:
            self.job_worker.wake()

    def on_store_changed(self, message: StoreChanged) -> None:
        self.queue_pane.reload(exact=True)
        self.history.reload()
        if message.run_id is not None and (message.run_id == self.selected_run or message.run_id in self.marks):
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
        if self._show_latest or changed & {self.selected_run, *self.marks}:
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
        self.session_changed()

    def on_inputs_changed(self, message: InputsChanged) -> None:
        if message.vl_text is not None:
            self.parameters.set_external("vl_text", message.vl_text)
        self.session_changed()

    @on(TextArea.Changed, "#prompt")
    def _prompt_changed(self) -> None:
        self.session_changed()

    def on_run_highlighted(self, message: RunHighlighted) -> None:
        # The cursor moves at key-repeat speed; the image follows once it rests (PREVIEW_S).
        same = message.run_id == self.selected_run and self._preview_timer is None
        self.selected_run = message.run_id
        if message.source == "history" and self.follow:
            self.set_follow(False)  # a run chosen in History stays in the Preview while new results arrive
        if same and self.preview.showing == message.run_id:
            # Focus coming back to the Queue or History names the run the Preview shows already: no store read
            # (the worker's changes to it reach the Preview through runs_changed).
            return
        if self._preview_timer is not None:
            self._preview_timer.stop()
        self._preview_timer = self.set_timer(PREVIEW_S, self.update_preview)

    def set_follow(self, on: bool) -> None:
        self.follow = on
        self.preview.border_subtitle = "following the latest result" if on else "f: follow the latest result"
        self.session_changed()

    def action_toggle_follow(self) -> None:
        self.set_follow(not self.follow)
        if self.follow:
            latest = self.store.history(limit=1, status="done", sort="finished_at")
            if latest:
                self.selected_run = latest[0].id
                self.update_preview()
        self.notify("the Preview follows each new result" if self.follow else
                    "the Preview stays on the selected run", timeout=2)

    def unselect(self) -> None:
        """Escape in History: no run selected, the Preview follows the latest result again."""
        if not self.follow:
            self.action_toggle_follow()

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
        others = []
        if self.comparing:
            others = [r for r in (self.store.get(m) for m in self.marks if m != self.selected_run) if r is not None]
        self.preview.show(run, reference=self.show_reference and not others, others=others)

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

    def queue_runs(self, seeds: list[int] | None = None) -> None:
        """One run per seed (default: the seed field's seeds) of the form's prompt, references and recipe, queued
        once the plan passes its checks (check_then_queue)."""
        form = self._runs_for()
        if form is None:
            return
        prompt, refs, recipe = form
        seeds = seeds or self.parameters.seeds
        refs = [str(Path(r).expanduser().resolve()) for r in refs]  # a relaunch elsewhere still finds them
        items = [dict(prompt=prompt, images=refs, recipe=recipe.replace(seed=seed).to_dict(), source="tui")
                 for seed in seeds]

        def enqueue() -> None:
            ids = self.store.enqueue_many(items, batch=new_batch_id() if len(items) > 1 else None)
            self.notify(f"queued run {ids[0]}" if len(ids) == 1 else f"queued {len(ids)} runs ({ids[0]}–{ids[-1]})")
            self.store_changed(ids[0], wake=True)

        self.check_then_queue([PlannedRun(item["recipe"], prompt, tuple(refs)) for item in items[:1]], enqueue)

    # ---- issue 25.10: what the models' files decide (layers, text lengths, sizes, top-k) is checked at queue time ----
    def check_then_queue(self, runs: list[PlannedRun], enqueue: Callable[[], None]) -> None:
        """Check the plan on the checks' thread (vlbench.tui.plan_checks: the UI thread neither imports torch nor
        waits), then `enqueue` it, or refuse it in one line naming the field and the fix with nothing queued. Plans
        are applied in the order they were queued."""
        ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
        self._plans[ticket] = [enqueue, False, None]
        if not self.plan_checks.files_ready:
            self.notify("checking the plan against the models' files…", timeout=2)
        self.plan_checks.submit(runs, lambda error: self.post_message(PlanChecked(ticket, error)))

    def on_plan_checked(self, message: PlanChecked) -> None:
        plan = self._plans.get(message.ticket)
        if plan is None:
            return
        plan[1:] = [True, message.error]
        while self._plans:
            first = min(self._plans)
            enqueue, done, error = self._plans[first]
            if not done:
                return
            del self._plans[first]
            if not self.showing:
                continue
            if error is None:
                enqueue()
            else:
                self.parameters.refuse(error.field, render(error))
                self.notify(f"cannot queue: {render(error)} (nothing was queued)", severity="error", timeout=10)

    def after_typing(self, callback: Callable[[], Any]) -> None:
        """Run `callback` once the focused widget has handled the keys already sent to it.

        F5 and ctrl+r are priority keys: the app runs them as they arrive, while the characters typed just before
        (a fast typist, a paste, tmux send-keys) may still wait in the prompt's queue. Reading the form from that
        queue reads it whole."""
        focused = self.focused
        if focused is not None and focused.is_attached:
            focused.call_later(callback)
        else:
            callback()

    def action_queue(self) -> None:
        self.after_typing(self.queue_runs)

    def action_queue_seeds(self) -> None:
        self.after_typing(self._ask_seeds)

    def _ask_seeds(self) -> None:
        if self.parameters.validate() is None:  # the dialog would only end in the same refusal
            self.notify(f"cannot queue: {self.parameters.error}", severity="error")
            return
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
        self.after_typing(self._choose_experiment)

    def _choose_experiment(self) -> None:
        types = self._experiment_types()
        if not types:
            self.notify("no experiment types are available in this installation", severity="warning")
            return

        if self._runs_for() is None:  # nothing could be queued: say why now, not after choosing
            return

        def chosen(choice: tuple[str, bool] | None) -> None:
            if choice is not None:
                self.queue_experiment(*choice)

        self.push_screen(ChooseExperiment(types, self.describe_experiment), chosen)

    def describe_experiment(self, name: str, quick: bool) -> Text:
        """What queueing this type now would do: how many runs, and which form fields its configs change."""
        experiment = next((t for t in self._experiment_types() if t.name == name), None)
        recipe = self.parameters.recipe
        if experiment is None or recipe is None:
            return Text("the form is invalid: fix it first", style="red")
        seeds = self.parameters.seeds
        try:
            runs = experiments.expand(experiment, quick, recipe, seeds)
        except UserError as exc:
            return Text(render(exc), style="red")
        configs = len({config for config, _ in runs})
        text = Text.assemble(("queues ", ""), (f"{len(runs)} runs", "bold"),
                             f" ({configs} configs × {len(seeds)} seed{'s' if len(seeds) != 1 else ''}; prompt, "
                             "references, seeds, steps and size from the form)")
        changed = experiments.overrides(recipe, runs)
        if changed:
            text.append("\nsets these form fields:", style="bold")
            for field, (mine, values) in changed.items():
                shown = ", ".join(format_value(field, v) or "not set" for v in values[:6])
                more = f", … ({len(values)} values)" if len(values) > 6 else ""
                text.append(f"\n  {field}: form {format_value(field, mine) or 'not set'} → {shown}{more}")
        else:
            text.append("\nkeeps every form field as it is")
        return text

    def queue_experiment(self, name: str, quick: bool = False) -> None:
        experiment = next((t for t in self._experiment_types() if t.name == name), None)
        form = self._runs_for()
        if experiment is None or form is None:
            return
        prompt, refs, recipe = form
        try:
            runs = experiments.expand(experiment, quick, recipe, self.parameters.seeds)
        except UserError as exc:
            self.notify(render(exc), severity="error")
            return
        refs = [str(Path(r).expanduser().resolve()) for r in refs]
        index = {c.name: i for i, c in enumerate(experiment.configs)}
        records = [RunRecord(prompt=prompt, references=[{"path": p, "sha256": None} for p in refs], recipe=r,
                             seed=r.get("seed", 0), name=config, experiment=name, config_index=index.get(config),
                             source="tui") for config, r in runs]

        def enqueue() -> None:
            ids = self.store.enqueue_many(records, batch=new_batch_id())
            self.notify(f"queued {len(ids)} runs of {name}" + (" (quick)" if quick else "") +
                        ": its grid and report are written when the last one ends")
            if ids:
                self.store_changed(ids[0], wake=True)

        # each config checked once (the seed changes nothing the files judge)
        distinct = {config: r for config, r in runs}
        self.check_then_queue([PlannedRun(r, prompt, tuple(refs)) for r in distinct.values()], enqueue)

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if len(self.screen_stack) > 1 and action in _FORM_ACTIONS:
            # a dialog is open: its keys only (the full-screen image has two of the app's)
            return isinstance(self.screen, ImageView) and action in ("open_image", "copy_path")
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
        """Put a past run's prompt, references and recipe in the form; asks first when the form holds a prompt
        that would be lost (issue 25: `l` overwrote the form without asking)."""
        run = self.store.get(run_id)
        if run is None:
            return
        try:
            recipe = Recipe.from_dict(run.recipe)
        except UserError as exc:
            self.notify(f"run {run_id}: its recipe no longer loads ({render(exc)})", severity="error")
            return
        typed = self.inputs.prompt
        if typed and typed != run.prompt.strip():
            self.push_screen(Confirm(f"Replace the form (its prompt, references and parameters) with run {run_id}'s?"),
                             lambda yes: self._load_run(run_id, run, recipe) if yes else None)
            return
        self._load_run(run_id, run, recipe)

    def _load_run(self, run_id: int, run, recipe: Recipe) -> None:
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

    def cancel_runs(self, run_ids: list[int]) -> None:
        """Cancel every pending or running run of these (a batch)."""
        cancelled = [r for r in run_ids if self.store.cancel(r)]
        if self.job_worker is not None and self.job_worker.current_run_id in cancelled:
            self.job_worker.cancel_current()
        self.notify(f"cancelled {_runs(len(cancelled))}" if cancelled else "nothing left to cancel there")
        if cancelled:
            self.store_changed(cancelled[0])

    def cancel_all(self) -> None:
        pending = self.store.count(status=("pending", "running"))
        if not pending:
            self.notify("the queue is empty")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                current = self.job_worker.current_run_id if self.job_worker is not None else None
                n = self.store.cancel_all()
                if current is not None:
                    self.job_worker.cancel_current()
                self.notify(f"cancelled {_runs(n)}")
                self.store_changed()

        self.push_screen(Confirm(f"Cancel every queued run ({pending})? The running one stops at its next step."),
                         answered)

    def mark_run(self, run_id: int) -> None:
        """Mark a run for comparison (up to MAX_PICTURES - 1 marks, the oldest dropped); marking it again unmarks."""
        before = set(self.marks)
        if run_id in self.marks:
            self.marks.remove(run_id)
            self.notify(f"unmarked run {run_id}", timeout=2)
        else:
            self.marks = [*self.marks, run_id][-(MAX_PICTURES - 1):]
            compare = keys.footer_label(keys.by_id()["compare"], self._keymap.get("compare"))
            self.notify(f"marked run {run_id} ({len(self.marks)} marked): select another run, {compare} compares",
                        timeout=3)
        self.history.show_marks(before | set(self.marks))
        self.queue_pane.reload()
        if self.comparing:
            self.update_preview()

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
        """Pause or resume the queue. The pause is the store's: saved across restarts, seen by every worker."""
        pause = not self.paused
        if self.job_worker is not None:
            self.job_worker.pause() if pause else self.job_worker.resume()
        else:  # the worker has not started (yet): it reads the store's pause when it does
            self.store.set_paused(pause)
        self.notify("queue paused: the running job finishes, nothing new starts (saved across restarts)" if pause
                    else "queue resumed")
        self.show_paused(pause)

    def action_toggle_reference(self) -> None:
        self.show_reference = not self.show_reference
        self.comparing = False
        self.update_preview()

    def action_compare(self) -> None:
        if not self.marks:
            self.notify("mark a run first (m in Queue or History), then select another", severity="warning")
            return
        self.comparing = not self.comparing
        self.update_preview()

    def _selected_row(self):
        run = self.store.get(self.selected_run) if self.selected_run is not None else None
        if run is None:
            self.notify("no run selected (Queue or History)", severity="warning")
        elif not run.image or not Path(run.image).is_file():
            self.notify(f"run {run.id} has no image ({run.status})", severity="warning")
            return None
        return run

    def action_fullscreen(self) -> None:
        run = self._selected_row()
        if run is not None:
            self.push_screen(ImageView(run, self.preview.image_class))

    def action_open_image(self) -> None:
        """The image in the system's viewer (on the machine vlbench runs on: over SSH, the remote one)."""
        run = self._selected_row()
        if run is None:
            return
        opener = next((c for c in ("xdg-open", "open") if shutil.which(c)), None)
        if opener is None:
            self.notify("no image viewer here (xdg-open / open): y copies the path instead", severity="warning")
            return
        subprocess.Popen([opener, run.image], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        self.notify(f"opening {run.image}", timeout=3)

    def action_copy_path(self) -> None:
        run = self._selected_row()
        if run is not None:
            self.copy_to_clipboard(run.image)  # OSC 52: the terminal on the user's side sets its clipboard
            self.notify(f"copied {run.image} (OSC 52; under tmux it needs set-clipboard on)", timeout=4)

    async def action_quit(self) -> None:
        running = self.job_worker.current_run_id if self.job_worker is not None else None
        if running is None:
            self.exit()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.exit()

        self.push_screen(Confirm(f"Run {running} is generating. Quit anyway? (It goes back to the queue and runs "
                                 "again at the next start.)"), answered)

    def action_add_reference(self) -> None:
        refs = self.inputs.references
        start = Path(refs[-1]).parent if refs else Path.cwd()

        def picked(path: str | None) -> None:
            if path:
                self.inputs.add_reference(path)

        self.push_screen(FilePicker("Add a reference image", start=start, suffixes=IMAGE_SUFFIXES), picked)

    def action_open_recipe(self) -> None:
        def picked(path: str | None) -> None:
            if path:
                self.open_recipe_file(path)

        self.push_screen(FilePicker("Open a recipe (TOML)", suffixes=RECIPE_SUFFIXES), picked)

    def open_recipe_file(self, path: str) -> None:
        """Merge a recipe file into the form (the fields it names); when it cannot merge with what the form holds
        (a field of the form would have no effect with the file's), offer to replace the form: the file over the
        defaults (config.toml's [recipe])."""
        try:
            values = read_recipe_file(path)
            # over the form: the fields the file does not name stay as they are (checked as one recipe)
            load_recipe(path, base=self.parameters.recipe or Recipe(**self.settings.recipe))
        except UserError as merge_error:
            try:
                replaced = load_recipe(path, base=Recipe(**self.settings.recipe))
            except UserError as exc:  # the file is wrong on its own
                self.notify(render(exc), severity="error")
                return

            def answer(yes: bool | None) -> None:
                if yes:
                    self._show_recipe(replaced)
                    self.notify(f"loaded {path} over the defaults (the form was replaced)")

            self.push_screen(Confirm(f"{path} does not merge into the form: {render(merge_error)}. Replace the form "
                                     "with the file over the defaults?"), answer)
            return
        self.parameters.set_fields(values)
        if "vl_text" in values:
            self.inputs.vl_text = values["vl_text"]
        named = ", ".join(values) or "no fields"
        self.notify(f"loaded {path}: {named}" + ("" if len(values) > 8 else " (the rest of the form is kept)"))

    def _show_recipe(self, recipe: Recipe) -> None:
        self.parameters.set_recipe(recipe)
        self.inputs.vl_text = recipe.vl_text

    def action_reset_form(self) -> None:
        """Every Parameters field back to the defaults (config.toml's [recipe]); references and prompt stay."""
        self._show_recipe(Recipe(**self.settings.recipe))
        self.notify("the form is back to the defaults (config.toml's [recipe])")

    def action_save_recipe(self) -> None:
        self.after_typing(self._save_recipe)

    def _save_recipe(self) -> None:
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
        from textual.notifications import Notification, Notify

        if self._theme_note is not None and self._theme_note in self._notifications:
            self._unnotify(self._theme_note)  # one toast, replaced: pressing ctrl+t five times leaves one
        self._theme_note = Notification(f"theme: {self.theme}", "", "information", self.THEME_TOAST_SECONDS,
                                        markup=False)
        self.post_message(Notify(self._theme_note))

    def action_jump(self) -> None:
        def chosen(target: str | None) -> None:
            if not target:
                return
            kind, _, name = target.partition(":")
            if kind == "pane":
                self.action_focus_pane(name)
            else:
                self.call_next(self.run_action, name)

        self.push_screen(JumpScreen(), chosen)

    def action_focus_pane(self, name: str) -> None:
        if name not in self.panes:
            return
        targets = {"inputs": "#prompt", "parameters": "#param-form Input", "queue": "#queue-table",
                   "preview": "#preview", "history": "#history-table"}
        # Found once: a query walks the whole DOM (the Parameters form is most of it) on every switch.
        target = self._focus_targets.get(name)
        if target is None or not target.is_attached:
            target = self._focus_targets[name] = self.query(targets[name]).first()
        self.show_pane(name)
        # At once, not later (Widget.focus): keys typed right after the switch go to the pane switched to.
        self.screen.set_focus(target)

    # ---- the layout: which pane is active (has focus; in a narrow terminal, the one shown) ----
    # The breakpoint classes on the Screen and the -active-pane class on one pane say it all (vlbench.tcss):
    # a resize restyles everything at once, with no moment where a hidden pane holds the focus.
    def on_resize(self, event: events.Resize) -> None:
        self.layout_mode = layout.mode_for(event.size.width)
        narrow = self.layout_mode == "narrow"
        for pane in self.panes.values():  # in a narrow terminal Tab stays in the pane that is shown
            pane.trap_focus(narrow)
        self.pane_bar.show(status=self.queue_pane.summary_text())
        self.call_after_refresh(self._scroll_to_pane)

    def _scroll_to_pane(self) -> None:
        """In a narrow terminal the panes lie side by side (vlbench.tcss): scroll #main to the active one."""
        page = layout.NARROW_PAGES.index(self.active_pane) if self.layout_mode == "narrow" else 0
        self.main_area.scroll_to(x=page * self.main_area.scrollable_content_region.width, y=0, animate=False,
                                 force=True, immediate=True)

    def show_pane(self, name: str) -> None:
        """Make this the active pane: highlighted; in a narrow terminal, the one that fills the screen."""
        if name == self.active_pane and self.panes[name].has_class("-active-pane"):
            return
        panes = [self.panes[self.active_pane], self.panes[name]]
        self.panes[self.active_pane].remove_class("-active-pane", update=False)
        self.active_pane = name
        self.panes[name].add_class("-active-pane", update=False)
        # Restyle the two panes, not their descendants: Textual's add_class/remove_class restyles the whole
        # subtree (every field of Parameters, every row widget), which was most of a pane switch's 250-500 ms.
        # Correct because no rule selects a descendant by this class (vlbench.tcss; test_tui_pane_switch checks it).
        # Of the two panes only the border changes (.-active-pane): the rest of them is not drawn again.
        # In a narrow terminal every pane is drawn as the active one (vlbench.tcss): nothing to restyle. Leaving the
        # narrow layout (a class on the Screen) and a theme change restyle every node, with the classes as they are.
        if self.layout_mode != "narrow":
            with outline_only(panes):
                self.stylesheet.update_nodes(panes, animate=False)
        else:  # the panes lie side by side: the one shown is scrolled to, not laid out
            self._scroll_to_pane()
            if isinstance(self.screen, MainScreen):
                self.screen.settle_after_refresh()
        self.pane_bar.show(active=name)
        self.session_changed()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        for name, pane in self.panes.items():
            if pane in event.widget.ancestors_with_self:
                self.show_pane(name)
                return

    # ---- the session: the form, theme and layout, back at the next start ----
    def session_state(self) -> Session:
        return Session(prompt=self.query_one("#prompt", TextArea).text, references=self.inputs.references,
                       vl_text=self.inputs.vl_text, parameters=self.parameters.raw_values(), theme=self.theme,
                       pane=self.active_pane, follow=self.follow)

    def session_changed(self) -> None:
        if not self._session_ready or not self.use_session or not self.showing:
            return
        self._session = self.session_state()  # what a shutdown saves, whichever way the app ends
        if self._session_timer is not None:
            self._session_timer.stop()
        self._session_timer = self.set_timer(SESSION_S, self.save_session)

    def save_session(self) -> None:
        if self._session_timer is not None:
            self._session_timer.stop()
        self._session_timer = None
        if not self._session_ready or not self.use_session:
            return
        try:
            if self.showing:
                self._session = self.session_state()
            if self._session is not None:
                save_session(self._session)
                self._session = None
        except OSError as exc:  # a full disk must not take the workbench down
            log.warning("session not saved: %s", exc)
        except Exception:  # noqa: BLE001 — this also runs while the app exits after a crash: never raise there
            log.exception("session not saved")

    def restore_session(self) -> None:
        session, problem = self._saved, self._saved_problem
        if problem:
            self.notify(problem, severity="warning")
        if session is None:
            return
        self.inputs.prompt = session.prompt  # the cursor at its end
        missing = [r for r in session.references if not Path(r).is_file()]
        self.inputs.references = [r for r in session.references if r not in missing]
        if missing:
            self.notify(f"reference {missing[0]}: no longer there; left out of the form"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""), severity="warning")
        if session.vl_text is not None:
            self.inputs.vl_text = session.vl_text
        skipped = self.parameters.set_raw(session.parameters)
        if session.vl_text is not None:
            self.parameters.set_external("vl_text", session.vl_text)
        if skipped:
            self.notify(f"saved form: {', '.join(skipped)} no longer fit(s) the form; left at the default",
                        severity="warning")
        if session.theme and session.theme in self.available_themes:
            self.theme = session.theme
        self.set_follow(session.follow)  # (its pane was made active by compose)

    # ---- the command palette ----
    def get_system_commands(self, screen):
        """Textual's own palette commands, less "Theme": every theme is listed by name ("Theme: …")."""
        for command in super().get_system_commands(screen):
            if command.title != "Theme":
                yield command

    def get_key_display(self, binding: Binding) -> str:
        """The footer shows a command's function key and the alternative that survives tmux ("f5 ^r")."""
        command = keys.by_id().get(binding.id or "")
        if command is not None and command.keys:
            return keys.footer_label(command, self._keymap.get(command.id))
        return super().get_key_display(binding)

    def palette_commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        out: list[tuple[str, str, Callable[[], Any]]] = [
            ("Reset the form to the defaults", "every Parameters field as config.toml's [recipe] sets it "
                                               "(references and prompt stay)", self.action_reset_form)]
        for c in keys.APP:
            if c.action == "queue_experiment" and not self._experiment_types():
                continue
            out.append((c.title.rstrip("…"), f"{c.help} · {keys.with_go(c, self._keymap.get(c.id))}",
                        lambda a=c.action: self.run_action(a)))
        for pane, commands, where in ((self.queue_pane, keys.QUEUE, "Queue"),
                                      (self.history, keys.HISTORY, "History")):
            for c in commands:
                out.append((f"{where}: {c.title}", f"{c.help} · {keys.display_keys(c.keys)}",
                            lambda a=c.action, p=pane: self.run_action(a, p)))
        for c in keys.PANES:
            out.append((f"Go to {c.title}", f"focus the {c.title} pane · {keys.with_go(c, self._keymap.get(c.id))}",
                        lambda p=keys.pane_of(c): self.action_focus_pane(p)))
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
        log_crash(error)
        super()._handle_exception(error)


def _runs(n: int) -> str:
    return f"{n} run" + ("s" if n != 1 else "")


def build_engine(spec: ModelSpec, on_status: Callable[[str], None]):
    """The Engine the workbench's worker runs: the one every worker builds (vlbench.worker.build_engine, which sets
    the thread policy). Worker thread only (imports torch)."""
    return worker_engine(spec, on_status)
