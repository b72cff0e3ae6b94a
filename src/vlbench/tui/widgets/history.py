"""The History pane: past runs from the store, newest first, read a page at a time.

The table never holds the whole store: it loads PAGE rows and the next page when the cursor comes
within MARGIN rows of the end, so 100 000 runs open as fast as 100. Filtering (text, status) and
sorting are the store's (indexed SQL); the title counts the matches. Metric columns (from `vlbench
score`) appear once a loaded run has metrics, and the sort key then cycles through them too. The first
columns are the ones a narrow pane must still show: the run (its status as colour, ● when marked), its
seed, and the recipe fields that set it apart within its batch. Runs queued while the cursor is further
down are announced in the title ("↑ 3 new") instead of appearing out of sight.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.timer import Timer
from textual.widgets import DataTable, Input, Label

from vlbench.metrics import METRICS, format_value
from vlbench.store import METRIC_SORT_PREFIX, SORTS, STATUSES, RunRow
from vlbench.tui import keys
from vlbench.tui.format import STATUS_STYLE, prompt_line, run_label, size, status_text, when
from vlbench.tui.messages import OpenRun, RunHighlighted
from vlbench.tui.widgets.choice import ChoiceField
from vlbench.tui.widgets.pane import Pane
from vlbench.tui.widgets.table import SteadyTable
from vlbench.tui.widgets.ordered_input import OrderedInput

PAGE = 200
MARGIN = 40
STATUS_CHOICES = [("all", "all"), *[(s, s) for s in STATUSES]]
SORT_KEYS = tuple(SORTS)


class HistoryTable(SteadyTable):
    # A table of rows: Home and End go to the first and last run (DataTable's scroll sideways).
    BINDINGS = [Binding("home", "scroll_top", "First", show=False), Binding("end", "scroll_bottom", "Last", show=False)]


class HistoryPane(Pane):
    BORDER_TITLE = "History"
    BINDINGS = keys.bindings(keys.HISTORY)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.text = ""
        self.status = "all"
        self.sort = "created_at"
        self.descending = True
        self.loaded = 0
        self.exhausted = False
        self.metric_columns: list[str] = []  # metric names shown, in METRICS order
        self._filter_timer: Timer | None = None
        self._top_id: int | None = None  # the newest run the user has seen at the top
        self.new_above = 0  # runs added above the cursor since
        self._placed: tuple[str, float] | None = None  # (run, when) the code last put the cursor on

    def compose(self) -> ComposeResult:
        with Horizontal(id="history-bar"):
            yield OrderedInput(placeholder="filter: prompt, name or experiment  (/)", id="history-filter", compact=True)
            yield ChoiceField(STATUS_CHOICES, "all", id="history-status")
            yield Label("", id="history-sort")
        yield HistoryTable(id="history-table", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one(HistoryTable)
        for label, key, width in [("#", "id", 7), ("seed", "seed", 6), ("run · what differs", "run", 30),
                                  ("status", "status", 9), ("prompt", "prompt", 30), ("time", "time", 11),
                                  ("steps", "steps", 5), ("size", "size", 9)]:
            table.add_column(label, key=key, width=width)
        self._show_sort()

    @property
    def table(self) -> HistoryTable:
        return self.query_one(HistoryTable)

    @property
    def selected_id(self) -> int | None:
        table = self.table
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key
        return int(key.value) if key.value is not None else None

    # ---- paging ----
    def _query(self, offset: int, limit: int) -> list[RunRow]:
        return self.app.store.history(offset=offset, limit=limit, text=self.text or None,
                                      status=None if self.status == "all" else self.status,
                                      sort=self.sort, descending=self.descending)

    def reload(self, keep_cursor: bool = True) -> None:
        """Re-read from the top: as many rows as were loaded (at least a page), cursor kept on its run."""
        table = self.table
        keep = self.selected_id if keep_cursor else None
        row_index = table.cursor_row
        want = max(PAGE, min(self.loaded, 5 * PAGE)) if keep_cursor else PAGE  # a new filter starts at the top
        rows = self._query(0, want)
        table.clear()
        self.loaded = 0
        self._add(rows)
        self.exhausted = len(rows) < want
        browsing = table.has_focus or not getattr(self.app, "follow", True)
        if keep is not None and browsing and str(keep) in table.rows:
            table.move_cursor(row=table.get_row_index(str(keep)), animate=False)
        elif table.row_count:
            table.move_cursor(row=min(row_index, table.row_count - 1) if keep_cursor and browsing else 0,
                              animate=False)
        self._placed_cursor()
        self._new_above(rows)
        self._count()

    def _placed_cursor(self) -> None:
        """The cursor was moved by code (a reload), not by the user: its highlight must not pick a run."""
        table = self.table
        if table.row_count:
            key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
            self._placed = (str(key), time.monotonic())

    def _new_above(self, rows: list[RunRow]) -> None:
        """Count the runs that arrived above the cursor (newest-first views only) and say so in the title."""
        newest = max((r.id for r in rows), default=None)
        if self._top_id is None or self.table.cursor_row == 0 or not self.descending or \
                self.sort not in ("created_at", "id"):
            self._top_id, self.new_above = newest, 0
        else:
            self.new_above = sum(1 for r in rows if r.id > self._top_id)
        title = f"History · ↑ {self.new_above} new (Home)" if self.new_above else "History"
        if title != self.border_title:
            self.border_title = title

    def refresh_runs(self, run_ids: set[int]) -> None:
        """The worker moved runs to another state (it never adds runs): update the rows loaded in place.

        Only a view that filters or sorts by state changes shape, and is read again.
        """
        table = self.table
        if self.status != "all" or self.sort in ("finished_at", "status"):
            self.reload()
            return
        for run_id in run_ids:
            if str(run_id) in table.rows:  # a run further down than the pages loaded shows when reached
                row = self.app.store.get(run_id)
                if row is not None:
                    table.update_cell(str(run_id), "status", status_text(row.status))
                    table.update_cell(str(run_id), "id", self._ident(row))

    def load_more(self) -> None:
        if self.exhausted:
            return
        rows = self._query(self.loaded, PAGE)
        self._add(rows)
        self.exhausted = len(rows) < PAGE

    def _add(self, rows: list[RunRow]) -> None:
        table = self.table
        self._metric_columns(rows)
        for row in rows:
            key = str(row.id)
            if key in table.rows:  # a run that moved between pages while new ones were added
                continue
            # User text goes in as Text: a DataTable reads plain strings as markup.
            table.add_row(self._ident(row), str(row.seed), self._run_text(row), status_text(row.status),
                          Text(prompt_line(row.prompt, 40)), when(row.created_at), str(row.recipe.get("steps", "")),
                          size(row.recipe),
                          *(Text(format_value(row.metrics.get(m)), justify="right") for m in self.metric_columns),
                          key=key)
        self.loaded += len(rows)

    def _ident(self, row: RunRow) -> Text:
        marked = row.id in getattr(self.app, "marks", ())
        return Text.assemble(("● " if marked else "  ", "bold magenta"),
                             (str(row.id), STATUS_STYLE.get(row.status, "")))

    def _run_text(self, row: RunRow) -> Text:
        label = run_label(row)
        text = Text()
        if label != "·":
            text.append(label + " ", style="bold")
        text.append(self.app.batches.distinguishing(row, 60), style="cyan")
        return text

    def show_marks(self, run_ids: set[int]) -> None:
        """Redraw the id cell of these runs (marked or unmarked)."""
        for run_id in run_ids:
            if str(run_id) in self.table.rows:
                row = self.app.store.get(run_id)
                if row is not None:
                    self.table.update_cell(str(run_id), "id", self._ident(row))

    def _metric_columns(self, rows: list[RunRow]) -> None:
        """Add a column for each metric a run about to be shown has (columns are never taken away)."""
        present = {m for row in rows for m in row.metrics if m in METRICS}
        for name in [m for m in METRICS if m in present and m not in self.metric_columns]:
            self.table.add_column(METRICS[name].label, key=f"metric-{name}", width=max(7, len(METRICS[name].label)),
                                  default=Text("—", justify="right"))
            self.metric_columns.append(name)
        self.metric_columns.sort(key=list(METRICS).index)

    def _count(self) -> None:
        total = self.app.store.count(text=self.text or None, status=None if self.status == "all" else self.status)
        subtitle = f"{total:,} run{'s' if total != 1 else ''}"
        if subtitle != self.border_subtitle:
            self.border_subtitle = subtitle

    def _show_sort(self) -> None:
        name = self.sort.removeprefix(METRIC_SORT_PREFIX)
        self.query_one("#history-sort", Label).update(f"sort: {name} {'↓' if self.descending else '↑'}")

    @property
    def sort_keys(self) -> tuple[str, ...]:
        """The store's sorts, then one per metric column shown (runs without the metric sort last)."""
        return SORT_KEYS + tuple(METRIC_SORT_PREFIX + m for m in self.metric_columns)

    # ---- actions (bindings in keys.HISTORY; also in the palette) ----
    def action_focus_filter(self) -> None:
        self.query_one("#history-filter", Input).focus()

    def action_cycle_status(self) -> None:
        values = [v for _, v in STATUS_CHOICES]
        self.query_one("#history-status", ChoiceField).value = values[(values.index(self.status) + 1) % len(values)]

    def action_cycle_sort(self) -> None:
        keys = self.sort_keys
        self.sort = keys[(keys.index(self.sort) + 1) % len(keys)] if self.sort in keys else keys[0]
        self._show_sort()
        self.reload(keep_cursor=False)

    def action_flip_order(self) -> None:
        self.descending = not self.descending
        self._show_sort()
        self.reload(keep_cursor=False)

    def action_requeue(self) -> None:
        if self.selected_id is not None:
            self.app.requeue(self.selected_id)

    def action_load(self) -> None:
        if self.selected_id is not None:
            self.app.load_run(self.selected_id)

    def action_mark(self) -> None:
        if self.selected_id is not None:
            self.app.mark_run(self.selected_id)

    def action_delete(self) -> None:
        if self.selected_id is not None:
            self.app.delete_run(self.selected_id)

    def action_unselect(self) -> None:
        """Escape: in the filter, clear it; on the table, leave the run (the Preview follows new results)."""
        field = self.query_one("#history-filter", Input)
        if field.has_focus:
            if field.value:
                field.value = ""
                self.text = ""
                self.reload(keep_cursor=False)
            self.table.focus()
            return
        if self.table.row_count:
            self.table.move_cursor(row=0, animate=False)
            self._placed_cursor()
        self.app.unselect()

    # ---- events ----
    @on(Input.Changed, "#history-filter")
    def _filter(self, event: Input.Changed) -> None:
        event.stop()
        self.text = event.value.strip()
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(0.15, lambda: self.reload(keep_cursor=False))

    @on(Input.Submitted, "#history-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        event.stop()
        self.table.focus()

    @on(ChoiceField.Changed, "#history-status")
    def _status(self, event: ChoiceField.Changed) -> None:
        event.stop()
        if event.value != self.status:
            self.status = str(event.value)
            self.reload(keep_cursor=False)

    @on(DataTable.RowHighlighted, "#history-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.row_key is None or event.cursor_row < 0:
            return  # an empty table (a fresh store, a filter with no match): a key moved no cursor
        if event.cursor_row >= self.table.row_count - MARGIN:
            self.load_more()
        key = event.row_key.value
        if key is None or event.cursor_row != self.table.cursor_row:
            return  # a position the cursor already left (a reload clears the table, then places it)
        # Only the user's own moves pick what the Preview shows, not a reload after a store change.
        placed, self._placed = self._placed, None
        if placed is not None and placed[0] == key and time.monotonic() - placed[1] < 1.0:
            return
        if event.cursor_row == 0 and self.new_above:
            self._top_id, self.new_above = int(key), 0
            self.border_title = "History"
        if event.data_table.has_focus:
            self.post_message(RunHighlighted(int(key), "history"))

    def on_descendant_focus(self, event) -> None:
        if event.widget is self.table and self.selected_id is not None:
            self.post_message(RunHighlighted(self.selected_id, "history"))

    @on(DataTable.RowSelected, "#history-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key is not None and event.row_key.value is not None:
            self.post_message(OpenRun(int(event.row_key.value)))
