"""Pane switches (issue 25.8): alt+1..5 makes the pane active and focused at every width, and touches only what
changes: the two panes' own styles (not every field below them), the footer's one line (not a widget per key),
no store read, and the Queue's and History's rows as already drawn (not drawn again from their cells).

Behaviour only; the time a switch takes is measured by benchmarks/tui_bench.py (section pane_switch).
"""

from __future__ import annotations

import pytest

from test_tui import FAST, make_app, run
from test_tui_workbench import pane_regions
from vlbench.recipe import Recipe
from vlbench.tui import layout

PANES = ("inputs", "parameters", "queue", "preview", "history")
SIZES = [(160, 48), (100, 30), (80, 24)]  # wide, medium, narrow
# Every pane from every other one, then back to the start: each pane is left and entered more than once.
ROUND = ["parameters", "queue", "history", "preview", "inputs", "queue", "parameters", "history", "inputs",
         "preview", "queue", "history", "parameters", "inputs"]


def fill(app, n: int = 60) -> None:
    """Runs in the Queue and the History (half finished), so that both tables have rows to draw."""
    ids = app.store.enqueue_many([dict(prompt=f"run {i}", images=[], recipe=Recipe(**FAST).to_dict())
                                  for i in range(n)])
    app.store._conn().execute("UPDATE runs SET status = 'done', started_at = created_at, "
                              "finished_at = created_at + 1 WHERE id <= ?", (ids[n // 2],))
    app.store_changed()


async def switch(pilot, name: str) -> None:
    await pilot.press(f"alt+{PANES.index(name) + 1}")
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_the_switched_pane_is_active_focused_and_shown_at_every_width(size):
    async def go():
        app = make_app()
        async with app.run_test(size=size) as pilot:
            fill(app)
            await pilot.pause()
            narrow = layout.mode_for(size[0]) == "narrow"
            for name in ROUND:
                await switch(pilot, name)
                pane = app.panes[name]
                assert app.active_pane == name
                assert [n for n, p in app.panes.items() if p.has_class("-active-pane")] == [name]
                assert app.focused is not None and pane in app.focused.ancestors_with_self, (name, app.focused)
                shown = list(pane_regions(app))  # drawn on the screen
                if narrow:  # one pane fills the screen; the pane bar names the shown one
                    assert shown == [name] and pane.region.width == size[0]
                    assert app.pane_bar.active == name
                else:
                    assert set(shown) == set(PANES)
                # the highlight is the pane's border, drawn in the theme's primary colour only on the active pane (in a
                # narrow terminal the one drawn, which is the active one)
                primary = app.current_theme.primary
                for other in shown:
                    p = app.panes[other]
                    assert (p.styles.border_top[1].hex.lower() == primary.lower()) == (other == name), other
        app.close()

    run(go())


def test_a_switch_restyles_the_two_panes_not_the_widgets_inside_them():
    """Textual's add_class/remove_class restyles a node's whole subtree: the Parameters form is ~150 widgets. No rule
    selects a descendant by -active-pane, so the switch restyles only the two panes whose class changed (and the
    widgets that gain or lose focus, as any focus change does)."""

    from textual.widget import Widget

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            fill(app)
            await pilot.pause()
            restyled: list = []
            apply = app.stylesheet.apply

            def spy(node, *args, **kwargs):
                restyled.append(node)
                return apply(node, *args, **kwargs)

            app.stylesheet.apply = spy
            try:
                for name in ROUND:
                    before, left = app.focused, app.active_pane
                    restyled.clear()
                    await switch(pilot, name)
                    # the two panes whose class changed, and what any change of focus restyles: the widgets that lost
                    # and gained it, with what they hold
                    allowed = {app.panes[left], app.panes[name]}
                    for widget in (before, app.focused):
                        if widget is not None:
                            allowed.update(widget.walk_children(with_self=True))
                    stray = {n for n in restyled if isinstance(n, Widget) and n not in allowed  # (not components)
                             and not (type(n).__name__.startswith("ScrollBar") and n.parent in allowed)}
                    assert not stray, (left, name, sorted({f"{type(n).__name__}#{n.id}" for n in stray}))
                    parameters = set(app.parameters.walk_children())
                    if app.focused not in parameters and before not in parameters:
                        assert not parameters & set(restyled), (left, name)
            finally:
                app.stylesheet.apply = apply
        app.close()

    run(go())


@pytest.mark.parametrize("size", [(160, 48), (80, 24)], ids=["160x48", "80x24"])
def test_a_switch_reads_no_store_and_draws_no_table_row_again(size):
    """After one visit to each pane, switching reads nothing from the store (the Queue and History gaining focus name
    the run the Preview shows already) and draws no row of the Queue or History from its cells: DataTable empties its
    caches on every style update (focus is one) and every Resize (a table shown again at 80×24)."""
    from textual.widgets import DataTable

    async def go():
        app = make_app()
        async with app.run_test(size=size) as pilot:
            fill(app)
            await pilot.pause()
            for name in ROUND + ROUND[:5]:  # each pane visited, each table drawn focused and not
                await switch(pilot, name)
            await pilot.pause(0.3)  # the Preview's wait for a resting cursor (PREVIEW_S)
            reads, cells, previews = [], [], []
            conn, render_cell, update_preview = app.store._conn, DataTable._render_cell, app.update_preview

            def counted_conn():
                reads.append(previews[-1] if previews and previews[-1][1] is None else "a pane switch")
                return conn()

            def counted_cell(table, *args, **kwargs):
                cells.append(table.id)
                return render_cell(table, *args, **kwargs)

            def counted_preview():
                previews.append([app.preview.showing, None])
                update_preview()
                previews[-1][1] = app.preview.showing

            app.store._conn = counted_conn
            DataTable._render_cell = counted_cell
            app.update_preview = counted_preview
            try:
                for name in ROUND:
                    await switch(pilot, name)
                    await pilot.pause(0.25)  # the Preview follows a resting cursor (PREVIEW_S)
            finally:
                app.store._conn = conn
                DataTable._render_cell = render_cell
                app.update_preview = update_preview
            assert app.active_pane == ROUND[-1]
            # The only reads: the Preview fetching a run it did not show (the Queue's and History's cursors are on
            # different runs, and the Preview follows the focused one).
            assert "a pane switch" not in reads, reads
            assert previews, "the Preview follows the focused table's cursor"
            assert all(shown != new for shown, new in previews), previews
            assert not cells, f"table cells drawn again: {sorted(set(cells))}"
        app.close()

    run(go())


def test_kept_table_rows_are_the_rows_drawn_afresh_focused_blurred_and_after_a_theme_change():
    """The rows a table keeps across focus changes look exactly as drawn from scratch: the cursor row focused and
    not, and after ctrl+t (another theme: every kept row is dropped)."""

    def drawn(table) -> list:
        table._pseudo_class_state = table.get_pseudo_class_state()  # as render_lines sets it before each frame
        return [[(s.text, s.style) for s in table.render_line(y)] for y in range(min(6, table.size.height))]

    def fresh(table) -> list:
        table._clear_caches()
        return drawn(table)

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            fill(app)
            await pilot.pause()
            for table_pane in ("queue", "history"):
                await switch(pilot, table_pane)
                table = app.focused
                focused = drawn(table)
                await switch(pilot, "parameters")
                blurred = drawn(table)
                assert blurred != focused, "the cursor row looks different without focus"
                assert blurred == fresh(table)
                await switch(pilot, table_pane)
                assert drawn(table) == focused == fresh(table)
                await pilot.press("ctrl+t")  # the next theme
                await pilot.pause()
                themed = drawn(table)
                assert themed != focused
                assert themed == fresh(table)
                await switch(pilot, "parameters")
                assert drawn(table) == fresh(table)
        app.close()

    run(go())


def test_the_footer_is_one_widget_that_shows_the_focused_panes_keys():
    """The footer follows the focus without mounting a widget per key; clicking a key presses it."""
    from vlbench.tui import keys
    from vlbench.tui.widgets.footer import VlbenchFooter

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            fill(app)
            await pilot.pause()
            footer = app.query_one(VlbenchFooter)
            nodes = len(list(app.screen.walk_children()))
            shown = {}
            for name in ("inputs", "queue", "history", "preview", "parameters"):
                await switch(pilot, name)
                shown[name] = [entry.description for entry in footer.entries]
                assert not footer.children
                text = str(footer.render())
                room = footer.size.width - len(f"▏{footer.palette.display} {footer.palette.description} ")
                line = "".join(f" {entry.display} {entry.description} " for entry in footer.entries)
                assert text[:room] == line[:room].ljust(room), text  # what does not fit is cut, as Textual's Footer
                assert text.rstrip().endswith(f"{footer.palette.display} {footer.palette.description}"), text
            assert len(list(app.screen.walk_children())) == nodes, "no widget mounted or removed"
            app_titles = {c.title for c in keys.APP}
            for name, commands in {"queue": keys.QUEUE, "history": keys.HISTORY, "preview": keys.PREVIEW}.items():
                titles = {c.title for c in commands if c.show}
                assert titles <= set(shown[name]), name
                assert not (titles - app_titles) & set(shown["inputs"]), name
            assert "Help" in shown["inputs"] and footer.palette.description == "palette"
            # a click on "Help" opens the help screen, as Textual's Footer does
            x = next(start for start, _end, entry in footer._spans if entry.description == "Help")
            await pilot.click(VlbenchFooter, offset=(x + 1, 0))
            await pilot.pause()
            assert type(app.screen).__name__ == "HelpScreen"
        app.close()

    run(go())


def test_no_rule_styles_a_widget_by_a_pane_class_or_the_previews_focus():
    """What makes the restyles above correct: switching sets -active-pane and moves focus to or from
    the Preview, and then restyles only the nodes that changed (Textual would restyle all below them). That is right
    as long as no rule selects a descendant by those classes, or by the Preview's focus."""
    from textual.css.model import CombinatorType, SelectorType

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            preview = app.preview
            preview_names = set(preview._css_type_names)
            found = []
            for rule in app.stylesheet.rules:
                for selector_set in rule.selector_set:
                    selectors = selector_set.selectors
                    subject = max((i for i, s in enumerate(selectors) if s.combinator != CombinatorType.SAME),
                                  default=0)
                    for selector in selectors[:subject]:  # the ancestors' part of the selector
                        if selector.type == SelectorType.CLASS and selector.name == "-active-pane":
                            found.append(selector_set.css)
                        could_be_preview = (selector.type == SelectorType.UNIVERSAL
                                            or (selector.type == SelectorType.TYPE and selector.name in preview_names)
                                            or (selector.type == SelectorType.ID and selector.name == preview.id))
                        if could_be_preview and selector.pseudo_classes & {"focus", "focus-within"}:
                            found.append(selector_set.css)
            assert not found, found
        app.close()

    run(go())


class Terminal:
    """What a terminal shows after the updates the app wrote: a character and a style per cell."""

    def __init__(self, width: int, height: int) -> None:
        self.cells: list[list[tuple[str, str] | None]] = [[None] * width for _ in range(height)]

    def write(self, segments) -> None:
        from rich.cells import cell_len
        from rich.segment import ControlType

        x = y = 0
        for segment in segments:
            if segment.control:
                for code in segment.control:
                    if code[0] == ControlType.CURSOR_MOVE_TO:
                        x, y = code[1] - 1, code[2] - 1
                continue
            if segment.text == "\n":  # each line of an update starts with a cursor move
                continue
            style = str(segment.style or "")
            for char in segment.text:
                self.cells[y][x] = (char, style)
                x += 1
                if cell_len(char) == 2:
                    self.cells[y][x] = ("", style)
                    x += 1

    def apply(self, update) -> None:
        self.write(update.__rich_console__(None, None))

    @classmethod
    def drawn_afresh(cls, screen) -> "Terminal":
        """The screen drawn from scratch, every widget (Textual's own full render)."""
        from rich.control import Control

        width, height = screen.size
        terminal = cls(width, height)
        for y, strip in enumerate(screen._compositor.render_strips()):
            terminal.write([Control.move_to(0, y).segment, *strip])
        return terminal

    def rows_unlike(self, other: "Terminal") -> list[int]:
        return [y for y, (mine, theirs) in enumerate(zip(self.cells, other.cells)) if mine != theirs]


def _mirror_frames(app, size, seen=lambda update: None) -> Terminal:
    """A Terminal that applies every frame the app's screen writes from now on (each update also handed to `seen`),
    cursors kept from blinking (a blink changes a frame between drawing and comparing); one full frame requested to
    start from."""
    from textual.widgets import Input, TextArea

    for field in [*app.query(Input), *app.query(TextArea)]:
        field.cursor_blink = False
    terminal = Terminal(*size)
    display = app._display

    def shown(screen, update) -> None:
        if update is not None and screen is app.screen:
            terminal.apply(update)
            seen(update)
        display(screen, update)

    app._display = shown
    app.screen.refresh()
    return terminal


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_what_switches_write_to_the_terminal_is_the_screen_drawn_afresh(size):
    """A switch's frame draws only the widgets that overlap what changed (vlbench.tui.compositor) and, of the two
    panes, only the border (widgets.pane.outline_only). Applied one after another as a terminal applies them, the
    frames leave exactly the screen Textual draws from scratch: nothing left over from the pane before, no border in
    the old colour, no field or row missing."""
    from textual._compositor import ChopsUpdate

    async def go():
        app = make_app()
        async with app.run_test(size=size) as pilot:
            fill(app)
            await pilot.pause()
            partial = []
            terminal = _mirror_frames(app, size, lambda update: partial.append(isinstance(update, ChopsUpdate)))
            await pilot.pause()
            assert not terminal.rows_unlike(Terminal.drawn_afresh(app.screen))
            for name in ROUND:
                partial.clear()
                await switch(pilot, name)
                await pilot.pause(0.2)  # the Preview follows a resting cursor
                unlike = terminal.rows_unlike(Terminal.drawn_afresh(app.screen))
                assert not unlike, (name, unlike[:5])
                # the switch was drawn in parts (a narrow terminal lays out the pane it shows: drawn whole)
                assert partial and (any(partial) or layout.mode_for(size[0]) == "narrow"), (name, partial)
        app.close()

    run(go())


def _drawn_from_scratch(screen) -> Terminal:
    """The screen drawn with every cache emptied first: each widget's lines, and the tables' rows, drawn anew."""
    from textual.widgets import DataTable

    for widget in screen.walk_children(with_self=True):
        if isinstance(widget, DataTable):
            widget._clear_caches()
        widget._styles_cache.clear()
    return Terminal.drawn_afresh(screen)


@pytest.mark.parametrize("size", [(160, 48), (80, 24)], ids=["160x48", "80x24"])
def test_a_table_changed_while_another_pane_is_active_shows_its_changes_when_switched_back_to(size):
    """The Queue's and History's tables keep the lines drawn for each look (focused, blurred: widgets.table.
    LookCaches), and a switch back shows the kept ones. Whatever changed meanwhile (the cursor moved, a cell written,
    rows added, the table scrolled) is on screen after the switch back, exactly as drawn with no cache at all."""
    from textual.coordinate import Coordinate

    async def go():
        app = make_app()
        async with app.run_test(size=size) as pilot:
            fill(app)
            await pilot.pause()
            terminal = _mirror_frames(app, size)
            for name in ROUND[:6]:  # each table drawn focused and blurred: both looks kept
                await switch(pilot, name)
            await pilot.pause(0.3)

            def move_cursor(table):
                table.move_cursor(row=(table.cursor_row + 3) % table.row_count)

            def write_cell(table):
                table.update_cell_at(Coordinate(table.cursor_row, 0), "changed")  # the focused look's cursor row

            def add_rows(_):
                fill(app, 5)

            def scroll(table):
                table.scroll_to(y=table.scroll_y + 4, animate=False)

            for change in (move_cursor, write_cell, add_rows, scroll):
                for pane, table_id in (("queue", "#queue-table"), ("history", "#history-table")):
                    await switch(pilot, pane)
                    await switch(pilot, "parameters")
                    await pilot.pause(0.3)
                    change(app.query_one(table_id))
                    await pilot.pause(0.3)
                    await switch(pilot, pane)
                    await pilot.pause(0.3)
                    fresh = _drawn_from_scratch(app.screen)
                    unlike = terminal.rows_unlike(fresh)
                    assert not unlike, (change.__name__, pane, unlike[:5], [
                        (x, mine, theirs) for x, (mine, theirs) in enumerate(zip(terminal.cells[unlike[0]],
                                                                                 fresh.cells[unlike[0]]))
                        if mine != theirs][:3])
        app.close()

    run(go())


def test_a_switch_back_to_a_table_draws_none_of_its_lines_again():
    """A switch into or out of the Queue or History shows the table's lines kept for that look (widgets.table.
    LookCaches), not each line drawn again around its row (the table's background tint changes with its focus)."""
    from textual._styles_cache import StylesCache

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            fill(app)
            await pilot.pause()
            for name in ROUND + ROUND[:5]:
                await switch(pilot, name)
            await pilot.pause(0.3)
            tables = {app.query_one("#queue-table"), app.query_one("#history-table")}
            drawn, render_line = [], StylesCache.render_line

            def counted(cache, styles, *args, **kwargs):
                if styles.node in tables:
                    drawn.append(styles.node.id)
                return render_line(cache, styles, *args, **kwargs)

            StylesCache.render_line = counted
            try:
                for name in ROUND:
                    await switch(pilot, name)
                    await pilot.pause(0.25)
            finally:
                StylesCache.render_line = render_line
            assert app.active_pane == ROUND[-1]
            assert not drawn, f"table lines drawn again: {len(drawn)} ({sorted(set(drawn))})"
        app.close()

    run(go())


def test_a_cursor_move_in_a_focused_table_draws_its_rows_again_not_the_table():
    """Between focus changes a table's kept lines follow the repaints Textual asks for (widgets.table.LookCaches):
    the cursor moving down a row draws the row it left and the row it reached, not every visible line."""
    from textual._styles_cache import StylesCache

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            fill(app)
            await pilot.pause()
            await switch(pilot, "history")
            table = app.focused
            table.move_cursor(row=0)
            await pilot.pause(0.3)
            drawn, render_line = [], StylesCache.render_line

            def counted(cache, styles, *args, **kwargs):
                if styles.node is table:
                    drawn.append(args[0])  # the line
                return render_line(cache, styles, *args, **kwargs)

            StylesCache.render_line = counted
            try:
                for _ in range(3):
                    await pilot.press("down")
                    await pilot.pause(0.1)
            finally:
                StylesCache.render_line = render_line
            assert table.cursor_row == 3
            assert drawn and len(drawn) < table.size.height, (len(drawn), table.size.height)
        app.close()

    run(go())


def test_a_narrow_switch_scrolls_to_the_pane_and_lays_nothing_out():
    """At 80×24 the panes lie side by side, each one screen wide, and a switch scrolls #main to the one it shows: the
    screen is not laid out again, and no widget is shown or hidden. (The panes took turns being displayed: each switch
    into Parameters laid out the screen, and sent each of the form's ~150 widgets a Show and a Resize, and later a
    Hide: most of the switch's time.)"""
    from textual import events
    from textual._compositor import Compositor
    from textual.geometry import Region

    async def go():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            fill(app)
            await pilot.pause()
            for name in ROUND:  # each pane laid out and drawn once
                await switch(pilot, name)
            layouts, shown = [], []
            reflow, post = Compositor.reflow, type(app.parameters).post_message

            def counted_reflow(compositor, parent, size):
                layouts.append(parent)
                return reflow(compositor, parent, size)

            def counted_post(widget, message):
                if isinstance(message, (events.Show, events.Hide)):
                    shown.append((type(widget).__name__, type(message).__name__))
                return post(widget, message)

            Compositor.reflow = counted_reflow
            type(app.parameters).post_message = counted_post
            try:
                for name in ROUND:
                    await switch(pilot, name)
                    pane = app.panes[name]
                    assert list(pane_regions(app)) == [name]
                    assert pane.region == Region(0, pane.region.y, 80, pane.region.height) and pane.region.height >= 20
                    assert app.main_area.scroll_x == layout.NARROW_PAGES.index(name) * 80
            finally:
                Compositor.reflow = reflow
                type(app.parameters).post_message = post
            assert not layouts, f"the screen laid out {len(layouts)} times in {len(ROUND)} switches"
            assert not shown, shown
            # Tab stays in the pane that is shown (the others are laid out beside it, off the screen)
            await switch(pilot, "parameters")
            for _ in range(60):
                await pilot.press("tab")
                assert app.parameters in app.focused.ancestors_with_self, app.focused
        app.close()

    run(go())


def test_an_idle_workbench_animates_nothing():
    """No widget redraws itself on a timer while nothing runs. The Queue's progress bar, hidden between runs, had an
    unknown total: it animated at 15 frames a second, and each frame asked where the bar is on the screen, which after
    a pane switch at 80×24 laid out the whole screen again."""

    async def go():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()

            def animated() -> list[str]:
                return [type(w).__name__ for w in app.screen.walk_children() if w.auto_refresh is not None]

            assert not animated()
            app.queue_pane.job_started(1, 0)  # a run whose step count is not known yet: the bar animates
            await pilot.pause()
            assert animated() == ["Bar"]
            app.queue_pane.job_ended()
            await pilot.pause()
            assert not animated()
        app.close()

    run(go())


def test_a_repaint_out_of_view_lays_nothing_out_and_what_a_scroll_left_is_laid_out_after_the_frame():
    """A repaint of a widget out of view (the Queue's progress while the Preview fills a 80×24 screen) made Textual
    mark its layout invalid, and the next question about any widget's region laid out the whole screen again; a
    scroll (a pane switch at 80×24) leaves what is out of view to be laid out when the next key asks. vlbench's
    compositor keeps the layout through repaints of widgets it holds, lays out only in a reflow (a change of layout:
    a widget shown, hidden or mounted), and settles what a scroll left after the frame (vlbench.tui.compositor)."""
    from textual._compositor import Compositor
    from textual.widgets import Static

    async def go():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            fill(app)
            await pilot.pause()
            arranged, reflows = [], []  # layouts of the whole screen outside a reflow; reflows
            arrange, reflow = Compositor._arrange_root, Compositor.reflow

            def counted_arrange(compositor, root, size, visible_only=True):
                if not visible_only and not reflows[-1:] == ["running"]:
                    arranged.append(root)
                return arrange(compositor, root, size, visible_only)

            def counted_reflow(compositor, parent, size):
                reflows.append("running")
                try:
                    return reflow(compositor, parent, size)
                finally:
                    reflows[-1] = "done"

            Compositor._arrange_root, Compositor.reflow = counted_arrange, counted_reflow
            try:
                error = app.parameters.query_one("#param-error")
                for total in (5, 7, 9):  # the Queue (out of view) changes its layout and repaints: its progress row
                    app.queue_pane.job_started(1, total)
                    await pilot.pause()
                    app.queue_pane.job_progress(1, 2, total, 1.0)
                    await pilot.pause(0.15)
                    app.queue_pane.job_ended()
                    await pilot.pause()
                    error.update(f"an error {total}")  # a widget of Parameters (out of view) shown, then hidden
                    error.remove_class("-hidden")
                    await pilot.pause()
                    assert not app.screen._compositor._full_map_invalidated
                    error.add_class("-hidden")
                    await pilot.pause()
                    note = Static(f"a new widget {total}")  # mounted out of view: laid out by the reflow, once
                    await app.queue_pane.mount(note)
                    await pilot.pause()
                    assert not app.screen._compositor._full_map_invalidated
                    await note.remove()
                    await pilot.pause()
                assert len(reflows) >= 9 and not arranged, (len(arranged), len(reflows))
                for name in ROUND:
                    await switch(pilot, name)
                    await pilot.pause()
                    assert not app.screen._compositor._full_map_invalidated, name  # laid out after the frame
            finally:
                Compositor._arrange_root, Compositor.reflow = arrange, reflow
        app.close()

    run(go())
