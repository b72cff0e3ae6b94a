"""The Queue pane: the model status, the running job's progress, the queue's total ETA, then the runs.

Rows come from the store: running, then pending by position, then the latest finished runs (those the
user has not cleared away). The runs of one batch (F6 seeds, F7 an experiment) share one row with
their progress (n/N), expandable with Enter or space; every run shows its seed and the recipe fields
that set it apart within its batch. Progress events update the bar in place; only state changes
re-read the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, ProgressBar, Static

from vlbench.store import FINISHED, RunRow
from vlbench.tui import keys
from vlbench.tui.format import STATUS_STYLE, prompt_line, run_label
from vlbench.tui.messages import OpenRun, RunHighlighted
from vlbench.tui.screens.confirm import Confirm
from vlbench.tui.widgets.pane import Pane
from vlbench.tui.widgets.table import SteadyTable

SHOWN_PENDING = 30  # the table shows this many queued runs at first (a screenful), a page more as the cursor nears
# the end of them (so every run can be reached and reordered); the title counts them all
MARGIN = 3
SHOWN_FINISHED = 8
PROGRESS_S = 0.1  # the progress line is redrawn at most this often
IDLE_TOTAL = 1  # the progress bar's total while no run is in progress (determinate: nothing animates)
ETA_S = 2.0  # the steps still queued (a JSON read of every pending run) are summed at most this often
CLEARED = "queue_cleared_at"  # state: finished runs before this time are no longer shown in the Queue
DISMISSED = "queue_dismissed"  # state: finished runs taken out of the Queue one by one (History keeps them)
GLYPH = {"pending": "·", "running": "▶", "done": "✓", "failed": "✗", "cancelled": "–"}


@dataclass(frozen=True)
class Entry:
    """One row of the table: a run, or a batch of runs (kind 'batch', `key` its batch id)."""

    kind: str  # "run" | "batch"
    key: int | str
    cells: tuple[Text, Text, Text]
    run: RunRow | None = None


class QueueTable(SteadyTable):
    # A table of rows: Home and End go to the first and last run (DataTable's scroll sideways).
    BINDINGS = [Binding("home", "scroll_top", "First", show=False), Binding("end", "scroll_bottom", "Last", show=False)]


class QueuePane(Pane):
    BORDER_TITLE = "Queue"
    BINDINGS = keys.bindings(keys.QUEUE)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._entries: list[Entry] = []  # what each row (slot) shows
        self._shown: dict[int, tuple] = {}  # the cells each slot shows, compared before touching the table
        self._progress_shown = 0.0  # when the progress line was last drawn
        self.expanded: set[str] = set()  # batches shown run by run
        self.sec_per_step: float | None = None  # measured on the running job: the queue's ETA
        self._job_left_s: float = 0.0
        self._pending = (0, 0)  # (runs, steps) waiting
        self._pending_read = 0.0  # when the steps still queued were last summed
        self._summary_shown = ""
        self.status_text = "worker starting…"  # what the status line says (the models, the worker)
        self.running_id: int | None = None  # the run generating now
        self.shown_pending = SHOWN_PENDING  # queued runs read from the store; grows a page at a time
        self._not_shown = 0  # queued runs beyond them
        self._queued_rows = 0  # rows of the table that show queued runs or batches (the finished ones follow)

    def compose(self) -> ComposeResult:
        self._status = Static("worker starting…", id="model-status")
        self._summary = Static("", id="queue-summary")
        self._label = Static("", id="progress-label")
        # Determinate (total=1) until a run starts: an indeterminate bar animates at 15 frames a second, hidden or not,
        # and each frame asks where the bar is on screen, which after a layout change lays the screen out again.
        self._bar = ProgressBar(total=IDLE_TOTAL, show_eta=False, show_percentage=False, id="progress")
        self._progress_row = Horizontal(self._label, self._bar, id="progress-row")
        self._table = QueueTable(id="queue-table", cursor_type="row", zebra_stripes=False)
        yield self._status
        yield self._summary
        yield self._progress_row
        yield self._table

    def on_mount(self) -> None:
        table = self._table
        table.add_column("#", key="id", width=7)
        table.add_column("seed", key="seed", width=5)
        table.add_column("run · what differs · prompt", key="run")
        self._progress_row.display = False

    # ---- data ----
    @property
    def table(self) -> QueueTable:
        return self._table

    @property
    def selected(self) -> Entry | None:
        row = self._table.cursor_row
        return self._entries[row] if 0 <= row < len(self._entries) else None

    @property
    def selected_id(self) -> int | None:
        entry = self.selected
        return entry.key if entry is not None and entry.kind == "run" else None  # type: ignore[return-value]

    def selected_row(self) -> RunRow | None:
        run_id = self.selected_id
        return self.app.store.get(run_id) if run_id is not None else None

    def _selected_runs(self) -> list[int]:
        """The selected run, or every loaded run of the selected batch."""
        entry = self.selected
        if entry is None:
            return []
        if entry.kind == "run":
            return [entry.key]  # type: ignore[list-item]
        return [r.id for r in self.app.store.batch_runs(str(entry.key))]

    def reload(self, exact: bool = False) -> None:
        """Re-read the store. While a queue drains this runs several times a second: the queue's step total (for
        its ETA) is re-summed every ETA_S, or at once with `exact` (the user queued or removed runs)."""
        store = self.app.store
        queued = store.queue(limit=self.shown_pending)
        cleared = store.get_state(CLEARED, 0.0) or 0.0
        dismissed = set(store.get_state(DISMISSED, []) or [])
        finished = [r for r in store.history(limit=SHOWN_FINISHED + len(dismissed), status=FINISHED,
                                             sort="finished_at")
                    if (r.finished_at or 0) > cleared and r.id not in dismissed][:SHOWN_FINISHED]
        latest = {row.id: row for row in finished}  # a run may finish between the two reads
        rows, seen = [], set()
        for row in [*queued, *finished]:
            if row.id not in seen:
                seen.add(row.id)
                rows.append(latest.get(row.id, row))
        counts = store.batch_counts(r.batch for r in rows if r.batch)
        self._show(self._entries_for(rows, {b: c for b, c in counts.items() if sum(c.values()) > 1}))
        pending = store.count(status="pending")
        running = sum(1 for r in queued if r.status == "running")
        more = pending + running - len(queued)
        self._not_shown = max(0, more)
        self._queued_rows = sum(1 for e in self._entries if e.kind == "batch" or e.run is not None
                                and e.run.status in ("pending", "running"))
        subtitle = f"{running} running · {pending} pending" + (f" ({more} not shown)" if more else "")
        if subtitle != self.border_subtitle:
            self.border_subtitle = subtitle
        now = time.monotonic()
        if not pending:
            self._pending = (0, 0)
        elif exact or now - self._pending_read >= ETA_S or not self._pending[0]:
            self._pending, self._pending_read = store.pending_steps(), now
        else:  # between two sums: the runs that finished since leave with the average run's steps
            runs, steps = self._pending
            self._pending = (pending, round(steps * pending / runs))
        self._show_summary()

    def _entries_for(self, rows: list[RunRow], batches: dict[str, dict[str, int]]) -> list[Entry]:
        marks = set(getattr(self.app, "marks", ()))
        names = self.app.batches
        out: list[Entry] = []
        members: dict[str, list[RunRow]] = {}
        for row in rows:
            if row.batch in batches:
                members.setdefault(row.batch, []).append(row)
        placed: set[str] = set()
        for row in rows:
            batch = row.batch if row.batch in batches else None
            if batch is not None:
                if batch in placed:
                    continue
                placed.add(batch)
                out.append(self._batch_entry(batch, members[batch], batches[batch]))
                if batch not in self.expanded:
                    continue
                for member in members[batch]:
                    out.append(self._run_entry(member, names.distinguishing(member, 80), member.id in marks, "  "))
                continue
            out.append(self._run_entry(row, names.distinguishing(row, 80), row.id in marks))
        return out

    def _run_entry(self, row: RunRow, differ: str, marked: bool, indent: str = "") -> Entry:
        style = STATUS_STYLE.get(row.status, "")
        ident = Text.assemble(("●" if marked else " ", "bold magenta"), (f"{GLYPH.get(row.status, '?')} ", style),
                              (f"{row.id}", style))
        label = run_label(row)
        text = Text(indent)
        if label != "·":
            text.append(label + "  ", style="bold")
        if differ:
            text.append(differ + "  ", style="cyan")
        text.append(prompt_line(row.prompt, 60), style="dim" if row.status == "pending" else "")
        return Entry("run", row.id, (ident, Text(str(row.seed)), text), row)

    def _batch_entry(self, batch: str, members: list[RunRow], counts: dict[str, int]) -> Entry:
        total = sum(counts.values())
        done, failed = counts.get("done", 0), counts.get("failed", 0) + counts.get("cancelled", 0)
        running = counts.get("running", 0)
        first = members[0]
        what = first.experiment or f"{total} runs"
        open_ = batch in self.expanded
        state = "running" if running else "pending" if counts.get("pending") else "done"
        ident = Text.assemble((" ▾ " if open_ else " ▸ ", "bold"), (GLYPH[state], STATUS_STYLE.get(state, "")))
        text = Text.assemble((what, "bold"), f"  {done}/{total} done")
        if failed:
            text.append(f" · {failed} failed/cancelled", style="red")
        fields = self.app.batches.fields(batch)
        if fields:
            text.append(f"  varies: {', '.join(fields)}", style="cyan")
        text.append(f"  {prompt_line(first.prompt, 40)}", style="dim")
        return Entry("batch", batch, (ident, Text("×" if len({m.seed for m in members}) > 1 else str(first.seed)),
                                      text))

    def _show(self, entries: list[Entry]) -> None:
        """Rows are slots ("0", "1", ...) whose cells change in place as the queue moves: while a queue
        drains the table keeps its size, so a finished run costs a repaint, not a relayout of the screen."""
        table = self._table
        selected = self.selected
        keep = (selected.kind, selected.key) if selected is not None else None
        index = table.cursor_row
        before = table.row_count
        for slot in range(before, len(entries)):
            table.add_row("", "", "", key=str(slot))
        for slot in range(len(entries), before):
            table.remove_row(str(slot))
            self._shown.pop(slot, None)
        for slot, entry in enumerate(entries):
            plain = tuple((c.plain, str(c.spans)) for c in entry.cells)
            if self._shown.get(slot) == plain:
                continue
            old = self._shown.get(slot, ((None,),) * 3)
            for column, cell, was in zip(("id", "seed", "run"), entry.cells, old):
                if (cell.plain, str(cell.spans)) != was:
                    table.update_cell(str(slot), column, cell)
            self._shown[slot] = plain
        self._entries = entries
        keys_now = [(e.kind, e.key) for e in entries]
        if keep in keys_now:  # the cursor follows its run
            if keys_now.index(keep) != table.cursor_row:
                table.move_cursor(row=keys_now.index(keep), animate=False)
        elif entries:  # the selected run left the table: stay at the same place
            table.move_cursor(row=min(index, len(entries) - 1), animate=False)

    # ---- worker events ----
    def set_status(self, text: str) -> None:
        self.status_text = text
        self._status.update(Text(text), layout=False)  # fixed height: a repaint, not a relayout

    def job_started(self, run_id: int, total: int) -> None:
        self.running_id = run_id
        self._progress_row.display = True
        self._bar.update(total=total or None, progress=0)
        self._label.update(f"#{run_id} preparing", layout=False)

    def job_progress(self, run_id: int, step: int, total: int, eta_s: float | None) -> None:
        self.running_id = run_id
        if self.status_text.startswith(("loading ", "preparing ")):  # the steps run: every load of this job is over
            self.set_status(f"models loaded · generating #{run_id}")
        if eta_s is not None and step < total:
            self.sec_per_step = eta_s / max(1, total - step)
        self._job_left_s = eta_s or 0.0
        now = time.monotonic()
        if step < total and now - self._progress_shown < PROGRESS_S:
            return  # fast steps (tiny models) would redraw the bar faster than anyone can read it
        self._progress_shown = now
        self._progress_row.display = True
        self._bar.update(total=total, progress=step)
        eta = f" · ETA {seconds(eta_s)}" if eta_s is not None else ""
        self._label.update(f"#{run_id} {step}/{total}{eta}", layout=False)
        self._show_summary()

    def job_ended(self) -> None:
        """The worker is idle: no progress to show until the next run starts."""
        self.running_id = None
        self._progress_row.display = False
        self._bar.update(total=IDLE_TOTAL, progress=0)  # hidden: no animation (an unknown total animates)
        self._job_left_s = 0.0
        self._show_summary()

    def eta_s(self) -> float | None:
        """Seconds until the queue is empty, at the running job's pace (None before a step was timed)."""
        runs, steps = self._pending
        if self.sec_per_step is None:
            return None if runs else (self._job_left_s or None)
        return self._job_left_s + steps * self.sec_per_step

    def summary_text(self) -> str:
        runs, _ = self._pending
        paused = " · paused" if getattr(self.app, "paused", False) else ""
        if not runs:
            if self.running_id is not None:  # the last run is generating: the queue is not empty yet
                left = f" · ETA {seconds(self._job_left_s)}" if self.sec_per_step is not None else ""
                return f"1 running, none pending{left}{paused}"
            return f"queue empty{paused}"
        eta = self.eta_s()
        return f"{runs} pending · ETA {seconds(eta)}{paused}" if eta is not None else f"{runs} pending{paused}"

    def _show_summary(self) -> None:
        text = self.summary_text()
        if text != self._summary_shown:
            self._summary_shown = text
            self._summary.update(Text(text), layout=False)
            self.app.queue_summary_changed(text)

    # ---- actions (bindings in keys.QUEUE; also in the palette) ----
    def action_move(self, delta: int) -> None:
        run_id = self.selected_id
        if run_id is None:
            return
        if not self.app.store.move(run_id, delta):
            self.notify(f"run {run_id}: only pending runs move, and not past the ends", severity="warning")
            return
        self.reload()  # the cursor follows the run it was on

    def action_move_top(self) -> None:
        runs = self._selected_runs()
        if runs and self.app.store.move_to_front(runs):
            self.reload()
        elif runs:
            self.notify("only pending runs move", severity="warning")

    def action_remove(self) -> None:
        entry = self.selected
        if entry is None:
            return
        runs = self._selected_runs()
        if entry.kind == "batch" and len(runs) > 1:  # a whole batch: ask first

            self.app.push_screen(Confirm(f"Remove the batch's {len(runs)} runs from the Queue? (pending ones are "
                                         "dropped; finished ones stay in History)"),
                                 lambda yes: self._remove(runs) if yes else None)
            return
        store = self.app.store
        if len(runs) == 1 and store.status(runs[0]) == "pending":  # a pending run is gone for good: ask first

            self.app.push_screen(Confirm(f"Remove pending run {runs[0]} from the Queue? (it is dropped, not run)"),
                                 lambda yes: self._remove(runs) if yes else None)
            return
        self._remove(runs)

    def _remove(self, runs: list[int]) -> None:
        store = self.app.store
        removed = [r for r in runs if store.remove(r)]
        finished = [r for r in runs if r not in removed and store.status(r) in FINISHED]
        if finished:  # a finished run leaves the Queue only: History keeps it
            dismissed = list(store.get_state(DISMISSED, []) or [])
            store.set_state(DISMISSED, (dismissed + finished)[-500:])
        if not removed and not finished:
            self.notify("a running run cannot be removed: c cancels it", severity="warning")
            return
        if finished and not removed:
            self.notify(f"{_runs(len(finished))} cleared from the Queue (History keeps them)", timeout=3)
        self.app.store_changed(runs[0])

    def action_clear_finished(self) -> None:
        self.app.store.set_state(CLEARED, time.time())
        self.app.store.set_state(DISMISSED, [])
        self.notify("finished runs cleared from the Queue (History keeps them)", timeout=3)
        self.reload()

    def action_retry(self) -> None:
        runs = self._selected_runs()
        retried = [r for r in runs if self.app.store.retry(r)]
        if retried:
            self.app.store_changed(retried[0], wake=True)
        elif runs:
            self.notify("only failed or cancelled runs can be retried", severity="warning")

    def action_cancel(self) -> None:
        entry = self.selected
        if entry is None:
            return
        if entry.kind == "run":
            self.app.cancel_run(entry.key)
        else:
            self.app.cancel_runs(self._selected_runs())

    def action_cancel_all(self) -> None:
        self.app.cancel_all()

    def action_toggle_batch(self) -> None:
        entry = self.selected
        if entry is not None and entry.kind == "batch":
            self.expanded ^= {str(entry.key)}
            self.reload()

    def action_mark(self) -> None:
        if self.selected_id is not None:
            self.app.mark_run(self.selected_id)

    # ---- events ----
    @on(DataTable.RowHighlighted, "#queue-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if self._not_shown and event.cursor_row >= self._queued_rows - MARGIN:  # near the last queued run shown
            self.shown_pending += SHOWN_PENDING
            self.reload()
        # Only the user's own moves pick what the Preview shows, not a reload after a store change.
        if event.data_table.has_focus and self.selected_id is not None:
            self.post_message(RunHighlighted(self.selected_id, "queue"))

    def on_descendant_focus(self, event) -> None:
        if event.widget is self.table and self.selected_id is not None:
            self.post_message(RunHighlighted(self.selected_id, "queue"))

    @on(DataTable.RowSelected, "#queue-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        entry = self.selected
        if entry is None:
            return
        if entry.kind == "batch":
            self.action_toggle_batch()
        else:
            self.post_message(OpenRun(int(entry.key)))


def _runs(n: int) -> str:
    return f"{n} run" + ("s" if n != 1 else "")


def seconds(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
