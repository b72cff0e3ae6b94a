"""The Queue pane: the model status, the running job's progress, pending runs in order, recent results.

Rows come from the store (running, then pending by position, then the latest finished runs).
Progress events update the bar in place; only state changes re-read the store.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, ProgressBar, Static

from vlbench.store import FINISHED, RunRow
from vlbench.tui import keys
from vlbench.tui.format import prompt_line, run_label, status_text
from vlbench.tui.messages import OpenRun, RunHighlighted

SHOWN_PENDING = 30  # the table shows this many queued runs (a screenful); the title counts them all
SHOWN_FINISHED = 8
PROGRESS_S = 0.1  # the progress line is redrawn at most this often


class QueueTable(DataTable):
    # A table of rows: Home and End go to the first and last run (DataTable's scroll sideways).
    BINDINGS = [Binding("home", "scroll_top", "First", show=False), Binding("end", "scroll_bottom", "Last", show=False)]


class QueuePane(Vertical):
    BORDER_TITLE = "Queue"
    BINDINGS = keys.bindings(keys.QUEUE)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._ids: list[int] = []  # the run in each row (slot)
        self._cells: dict[int, tuple[str, str, str]] = {}  # what each slot shows
        self._progress_shown = 0.0  # when the progress line was last drawn
    def compose(self) -> ComposeResult:
        self._status = Static("worker starting…", id="model-status")
        self._bar = ProgressBar(total=None, show_eta=False, show_percentage=False, id="progress")
        self._label = Static("", id="progress-label")
        self._progress_row = Horizontal(self._bar, self._label, id="progress-row")
        self._table = QueueTable(id="queue-table", cursor_type="row", zebra_stripes=False)
        yield self._status
        yield self._progress_row
        yield self._table

    def on_mount(self) -> None:
        table = self._table
        table.add_column("#", key="id", width=5)
        table.add_column("status", key="status", width=9)
        table.add_column("run", key="run")
        self._progress_row.display = False

    # ---- data ----
    @property
    def table(self) -> QueueTable:
        return self._table

    @property
    def selected_id(self) -> int | None:
        row = self._table.cursor_row
        return self._ids[row] if 0 <= row < len(self._ids) else None

    def selected_row(self) -> RunRow | None:
        run_id = self.selected_id
        return self.app.store.get(run_id) if run_id is not None else None

    def reload(self) -> None:
        store = self.app.store
        queued = store.queue(limit=SHOWN_PENDING)
        finished = store.history(limit=SHOWN_FINISHED, status=FINISHED, sort="finished_at")
        latest = {row.id: row for row in finished}  # a run may finish between the two reads
        rows, seen = [], set()
        for row in [*queued, *finished]:
            if row.id not in seen:
                seen.add(row.id)
                rows.append(latest.get(row.id, row))
        self._show(rows)
        pending = store.count(status="pending")
        running = sum(1 for r in queued if r.status == "running")
        more = pending + running - len(queued)
        subtitle = f"{running} running · {pending} pending" + (f" ({more} not shown)" if more else "")
        if subtitle != self.border_subtitle:
            self.border_subtitle = subtitle

    def _show(self, rows: list[RunRow]) -> None:
        """Rows are slots ("0", "1", ...) whose cells change in place as the queue moves: while a queue
        drains the table keeps its size, so a finished run costs a repaint, not a relayout of the screen."""
        table = self._table
        keep, index = self.selected_id, table.cursor_row
        before = table.row_count
        for slot in range(before, len(rows)):
            table.add_row("", "", "", key=str(slot))
        for slot in range(len(rows), before):
            table.remove_row(str(slot))
        for slot, row in enumerate(rows):
            cells = (str(row.id), row.status, f"{run_label(row)}  {prompt_line(row.prompt)}")
            if self._cells.get(slot) == cells:
                continue
            old = self._cells.get(slot, ("", "", ""))
            for column, value, before in zip(("id", "status", "run"), cells, old):
                if value != before:
                    shown = status_text(value) if column == "status" else Text(value)
                    table.update_cell(str(slot), column, shown)
            self._cells[slot] = cells
        for slot in range(len(rows), len(self._ids)):
            self._cells.pop(slot, None)
        self._ids = [row.id for row in rows]
        if keep in self._ids:  # the cursor follows its run
            if self._ids.index(keep) != table.cursor_row:
                table.move_cursor(row=self._ids.index(keep), animate=False)
        elif rows:  # the selected run left the table: stay at the same place
            table.move_cursor(row=min(index, len(rows) - 1), animate=False)

    # ---- worker events ----
    def set_status(self, text: str) -> None:
        self._status.update(Text(text), layout=False)  # fixed height: a repaint, not a relayout

    def job_started(self, run_id: int, total: int) -> None:
        self._progress_row.display = True
        self._bar.update(total=total or None, progress=0)
        self._label.update(f"run {run_id} · preparing", layout=False)

    def job_progress(self, run_id: int, step: int, total: int, eta_s: float | None) -> None:
        now = time.monotonic()
        if step < total and now - self._progress_shown < PROGRESS_S:
            return  # fast steps (tiny models) would redraw the bar faster than anyone can read it
        self._progress_shown = now
        self._progress_row.display = True
        self._bar.update(total=total, progress=step)
        eta = f" · ETA {_seconds(eta_s)}" if eta_s is not None else ""
        self._label.update(f"run {run_id} · step {step}/{total}{eta}", layout=False)

    def job_ended(self) -> None:
        """The worker is idle: no progress to show until the next run starts."""
        self._progress_row.display = False

    # ---- actions (bindings in keys.QUEUE; also in the palette) ----
    def action_move(self, delta: int) -> None:
        run_id = self.selected_id
        if run_id is None:
            return
        if not self.app.store.move(run_id, delta):
            self.notify(f"run {run_id}: only pending runs move, and not past the ends", severity="warning")
            return
        self.reload()  # the cursor follows the run it was on

    def action_remove(self) -> None:
        run_id = self.selected_id
        if run_id is not None:
            if self.app.store.remove(run_id):
                self.app.store_changed(run_id)
            else:
                self.notify(f"run {run_id}: only pending runs can be removed (c cancels a running one)",
                            severity="warning")

    def action_retry(self) -> None:
        run_id = self.selected_id
        if run_id is not None:
            if self.app.store.retry(run_id):
                self.app.store_changed(run_id, wake=True)
            else:
                self.notify(f"run {run_id}: only failed or cancelled runs can be retried", severity="warning")

    def action_cancel(self) -> None:
        run_id = self.selected_id
        if run_id is not None:
            self.app.cancel_run(run_id)

    def action_mark(self) -> None:
        if self.selected_id is not None:
            self.app.mark_run(self.selected_id)

    # ---- events ----
    @on(DataTable.RowHighlighted, "#queue-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        # Only the user's own moves pick what the Preview shows, not a reload after a store change.
        if event.data_table.has_focus and 0 <= event.cursor_row < len(self._ids):
            self.post_message(RunHighlighted(self._ids[event.cursor_row], "queue"))

    def on_descendant_focus(self, event) -> None:
        if event.widget is self.table and self.selected_id is not None:
            self.post_message(RunHighlighted(self.selected_id, "queue"))

    @on(DataTable.RowSelected, "#queue-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if 0 <= event.cursor_row < len(self._ids):
            self.post_message(OpenRun(self._ids[event.cursor_row]))


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    return f"{int(s // 60)} min {int(s % 60):02d} s"
