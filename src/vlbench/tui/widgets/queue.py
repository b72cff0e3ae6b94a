"""The Queue pane: the model status, the running job's progress, pending runs in order, recent results.

Rows come from the store (running, then pending by position, then the latest finished runs).
Progress events update the bar in place; only state changes re-read the store.
"""

from __future__ import annotations

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

SHOWN_PENDING = 200  # the table shows this many queued runs; the title counts them all
SHOWN_FINISHED = 8


class QueueTable(DataTable):
    # A table of rows: Home and End go to the first and last run (DataTable's scroll sideways).
    BINDINGS = [Binding("home", "scroll_top", "First", show=False), Binding("end", "scroll_bottom", "Last", show=False)]


class QueuePane(Vertical):
    BORDER_TITLE = "Queue"
    BINDINGS = keys.bindings(keys.QUEUE)

    def compose(self) -> ComposeResult:
        yield Static("worker starting…", id="model-status")
        with Horizontal(id="progress-row"):
            yield ProgressBar(total=None, show_eta=False, show_percentage=False, id="progress")
            yield Static("", id="progress-label")
        yield QueueTable(id="queue-table", cursor_type="row", zebra_stripes=False)

    def on_mount(self) -> None:
        table = self.query_one(QueueTable)
        table.add_column("#", key="id", width=5)
        table.add_column("status", key="status", width=9)
        table.add_column("run", key="run")
        self.query_one("#progress-row").display = False

    # ---- data ----
    @property
    def table(self) -> QueueTable:
        return self.query_one(QueueTable)

    @property
    def selected_id(self) -> int | None:
        table = self.table
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key
        except Exception:
            return None
        return int(key.value) if key.value is not None else None

    def selected_row(self) -> RunRow | None:
        run_id = self.selected_id
        return self.app.store.get(run_id) if run_id is not None else None

    def reload(self) -> None:
        store = self.app.store
        queued = store.queue(limit=SHOWN_PENDING)
        finished = store.history(limit=SHOWN_FINISHED, status=FINISHED, sort="finished_at")
        table = self.table
        keep, index = self.selected_id, table.cursor_row
        table.clear()
        for row in [*queued, *finished]:
            table.add_row(str(row.id), status_text(row.status), Text(f"{run_label(row)}  {prompt_line(row.prompt)}"),
                          key=str(row.id))
        if keep is not None and str(keep) in table.rows:
            table.move_cursor(row=table.get_row_index(str(keep)), animate=False)
        elif table.row_count:  # the selected run left the table: stay at the same place
            table.move_cursor(row=min(index, table.row_count - 1), animate=False)
        pending = store.count(status="pending")
        running = sum(1 for r in queued if r.status == "running")
        self.border_subtitle = f"{running} running · {pending} pending"

    # ---- worker events ----
    def set_status(self, text: str) -> None:
        self.query_one("#model-status", Static).update(Text(text))

    def job_started(self, run_id: int, total: int) -> None:
        self.query_one("#progress-row").display = True
        self.query_one(ProgressBar).update(total=total or None, progress=0)
        self.query_one("#progress-label", Static).update(f"run {run_id} · preparing")

    def job_progress(self, run_id: int, step: int, total: int, eta_s: float | None) -> None:
        self.query_one("#progress-row").display = True
        self.query_one(ProgressBar).update(total=total, progress=step)
        eta = f" · ETA {_seconds(eta_s)}" if eta_s is not None else ""
        self.query_one("#progress-label", Static).update(f"run {run_id} · step {step}/{total}{eta}")

    def job_ended(self) -> None:
        self.query_one("#progress-row").display = False

    # ---- actions (bindings in keys.QUEUE; also in the palette) ----
    def action_move(self, delta: int) -> None:
        run_id = self.selected_id
        if run_id is None:
            return
        if not self.app.store.move(run_id, delta):
            self.notify(f"run {run_id}: only pending runs move, and not past the ends", severity="warning")
            return
        self.reload()
        table = self.table
        table.move_cursor(row=table.get_row_index(str(run_id)), animate=False)

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
        if event.row_key.value is not None and event.data_table.has_focus:
            self.post_message(RunHighlighted(int(event.row_key.value), "queue"))

    def on_descendant_focus(self, event) -> None:
        if event.widget is self.table and self.selected_id is not None:
            self.post_message(RunHighlighted(self.selected_id, "queue"))

    @on(DataTable.RowSelected, "#queue-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(OpenRun(int(event.row_key.value)))


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    return f"{int(s // 60)} min {int(s % 60):02d} s"
