"""The Queue's and History's table: Textual's DataTable, which keeps its drawn rows when only its focus changes.

DataTable caches the rows it draws under keys that hold its look (the focus, as `_pseudo_class_state`, and the
base style), but empties every cache on any style update, and gaining or losing focus is one: each pane switch into
or out of the Queue or History drew every visible row again from its cells (tens of milliseconds; issue 25.8).
Here the caches are emptied only when the styles may have changed under them: another theme or stylesheet, or
styles for a look that differ from those its rows were drawn with. A switch back to a look seen before reuses its
rows. Likewise a Resize that does not change the size (a table shown again in a narrow terminal, where the panes
take turns) keeps them; DataTable drops them on every Resize.
"""

from __future__ import annotations

from textual import events
from textual.widget import Widget
from textual.widgets import DataTable


class SteadyTable(DataTable):
    def __init__(self, *args, **kwargs) -> None:
        self._looks: dict[object, tuple] = {}  # pseudo-class state -> the styles its cached rows were drawn with
        self._styled_by: tuple | None = None  # the theme and stylesheet those styles came from
        self._drawn_size = None  # the size the cached rows were drawn for
        super().__init__(*args, **kwargs)

    def _look(self) -> tuple:
        # What drawing a row reads from the stylesheet: the table's own style and its component styles.
        return (self.rich_style,
                *(self.get_component_rich_style(name) for name in sorted(self.COMPONENT_CLASSES)))

    def notify_style_update(self) -> None:
        Widget.notify_style_update(self)  # the widget's own style caches, read afresh by _look
        styled_by = (self.app.theme, id(self.app.stylesheet))
        try:
            state, look = self.get_pseudo_class_state(), self._look()
        except KeyError:  # the first styling: component styles come after it
            state = look = None
        seen = self._looks.get(state)
        if look is not None and styled_by == self._styled_by and (seen is None or seen == look):
            # The cached rows are still right. What is cached by style alone, not by look (the styles a cell is
            # drawn with), is recomputed; the rows are drawn again, from the caches.
            self._looks[state] = look
            self._get_styles_to_render_cell.cache_clear()
            self.refresh()
            return
        self._looks = {state: look} if look is not None else {}
        self._styled_by = styled_by if look is not None else None
        super().notify_style_update()  # every cache emptied

    def _on_resize(self, event: events.Resize) -> None:
        if event.size == self._drawn_size:
            event.prevent_default()  # not DataTable's handler, which would throw every drawn row away
        self._drawn_size = event.size
