"""The Queue's and History's table: Textual's DataTable, which keeps its drawn rows when only its focus changes.

DataTable caches the rows it draws under keys that hold its look (the focus, as `_pseudo_class_state`, and the
base style), but empties every cache on any style update, and gaining or losing focus is one: each pane switch into
or out of the Queue or History drew every visible row again from its cells (tens of milliseconds; issue 25.8).
Here the caches are emptied only when the styles may have changed under them: another theme or stylesheet, or
styles for a look that differ from those its rows were drawn with. A switch back to a look seen before reuses its
rows. Likewise a Resize that does not change the size (a table shown again after it was hidden) keeps them;
DataTable drops them on every Resize.

The lines a widget draws (its rows inside its background, tint and scrollbar gutter) are cached once more, by
Textual's StylesCache, which a restyle empties too: a focus change drew every visible line of the table again
(the focus tints the table's background, so every line does change on screen). Here each look keeps its own
StylesCache (`LookCaches`): every repaint Textual asks for reaches all of them, so a look's lines are as fresh as
if it had been the only one, and a focus change back to a look seen before takes its lines from its own cache.
Gaining or losing focus changes the look alone (Widget._on_focus and _on_blur: the pseudo-class, the restyle it
causes, a repaint); while the table handles it, the repaints it asks for are of the screen, not of any look's lines.
"""

from __future__ import annotations

from textual import events
from textual._styles_cache import StylesCache
from textual.widget import Widget
from textual.widgets import DataTable


class LookCaches:
    """Textual's StylesCache for a widget, one per look (pseudo-class state): what is dirty in one is dirty in all.

    `held` (while the widget's focus changes, or a restyle to a look seen before repaints it): the repaint is of the
    screen, not of the content, which no cache has to draw again. A look not seen before starts with an empty cache;
    styles that changed under a look (`forget`) empty them all."""

    def __init__(self, widget: "SteadyTable") -> None:
        self._widget = widget
        self._caches: dict[object, tuple[StylesCache, tuple]] = {}  # look -> its cache, the content it was drawn of
        self.held = False
        self.switched = False  # the focus changed since the last frame

    def _current(self) -> StylesCache:
        state, content = self._widget.get_pseudo_class_state(), self._widget._content()
        cache, drawn_of = self._caches.get(state) or (StylesCache(), content)
        if self.switched and drawn_of != content:
            # The table changed since this look was drawn. Every repaint asked for meanwhile reached this cache, but
            # not all changes ask for one: a table hidden (display: none) has no size, and its repaints cover
            # nothing. Drawn again whole. (Between focus changes, the repaints Textual asks
            # for are what changed, as with its one cache.)
            cache.clear()
        self.switched = False
        self._caches[state] = (cache, content)
        return cache

    def render_widget(self, widget: Widget, crop):
        return self._current().render_widget(widget, crop)

    def set_dirty(self, *regions) -> None:
        if not self.held:
            for cache, _ in self._caches.values():
                cache.set_dirty(*regions)

    def clear(self) -> None:
        if not self.held:
            for cache, _ in self._caches.values():
                cache.clear()

    def forget(self) -> None:
        """Every look's lines dropped (the styles changed under them)."""
        self._caches.clear()


class SteadyTable(DataTable):
    def __init__(self, *args, **kwargs) -> None:
        self._looks: dict[object, tuple] = {}  # pseudo-class state -> the styles its cached rows were drawn with
        self._styled_by: tuple | None = None  # the theme and stylesheet those styles came from
        self._drawn_size = None  # the size the cached rows were drawn for
        super().__init__(*args, **kwargs)
        self._styles_cache = LookCaches(self)

    def _content(self) -> tuple:
        # What the lines show, as DataTable's own line cache keys it (plus the size and where it is scrolled to).
        return (self.size, self.virtual_size, self.scroll_offset, self.cursor_coordinate, self.hover_coordinate,
                self.cursor_type, self._show_hover_cursor, self._update_count, self.row_count, self.show_header,
                self.show_cursor)

    def _look(self) -> tuple:
        # What drawing a row reads from the stylesheet: the table's own style and its component styles; and what
        # drawing a line around the row reads (StylesCache.render_widget).
        styles = self.styles
        return (self.rich_style,
                *(self.get_component_rich_style(name) for name in sorted(self.COMPONENT_CLASSES)),
                self.background_colors, self.opacity, styles.padding, styles.border, styles.outline,
                styles.tint, styles.background_tint, styles.text_opacity, styles.color, styles.text_style,
                styles.scrollbar_gutter, styles.border_title_align, styles.border_subtitle_align,
                tuple(id(f) for f in self.get_line_filters()))

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
            self._get_styles_to_render_cell.cache_clear()
            if seen is None:
                self._looks[state] = look
                self.refresh()  # a look not drawn before: its lines are drawn (into a cache of their own)
                return
            held, self._styles_cache.held = self._styles_cache.held, True
            try:
                self.refresh()  # the screen shows another look: repainted, from the lines cached for it
            finally:
                self._styles_cache.held = held
            return
        self._looks = {state: look} if look is not None else {}
        self._styles_cache.forget()
        self._styled_by = styled_by if look is not None else None
        super().notify_style_update()  # every cache emptied

    def _on_focus(self, event: events.Focus) -> None:
        self._look_only(Widget._on_focus, event)

    def _on_blur(self, event: events.Blur) -> None:
        self._look_only(Widget._on_blur, event)

    def _look_only(self, handler, event) -> None:
        # Textual calls each class's handler down the MRO: Widget's is called here, held, and not again after.
        event.prevent_default()
        self._styles_cache.switched = True
        held, self._styles_cache.held = self._styles_cache.held, True
        try:
            handler(self, event)
        finally:
            self._styles_cache.held = held

    def _on_resize(self, event: events.Resize) -> None:
        if event.size == self._drawn_size:
            event.prevent_default()  # not DataTable's handler, which would throw every drawn row away
        self._drawn_size = event.size
