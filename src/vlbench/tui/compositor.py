"""A screen update draws the widgets that overlap what changed, not every widget inside the rectangle around it.

Textual's Compositor crops a partial update to one rectangle around all the changed regions and draws every widget
that overlaps it. A pane switch changes the footer (the screen's last line) and two panes: that rectangle is the
whole screen, and each switch drew all ~115 visible widgets. Only the changed spans are written to the terminal, so
a widget outside every changed region is drawn for nothing; this compositor skips it (Textual 8.2).

It also does not lay the screen out again for a repaint of a widget out of view (`update_widgets`), and lays out what
a scroll left out of view after a frame rather than when the next key asks (`settle`): a narrow terminal's pane
switch is a scroll.
"""

from __future__ import annotations

from typing import Iterable

from textual._compositor import Compositor
from textual.geometry import Region
from textual.strip import Strip


class ChangedRegionsCompositor(Compositor):
    def __init__(self) -> None:
        super().__init__()
        self._changed: list[Region] | None = None  # the regions of the partial update being drawn

    def update_widgets(self, widgets: set) -> None:
        # Textual marks the map invalid when a widget to repaint is out of view ("new widgets"), and the next
        # question about a region lays out the whole screen: at 80×24 every repaint of a pane not shown did (the
        # Queue's progress while the Preview is shown). A widget already in the map is not new; a change of its
        # layout goes through reflow.
        laid_out = not self._full_map_invalidated and widgets.issubset(self._full_map.keys())
        super().update_widgets(widgets)
        if laid_out:
            self._full_map_invalidated = False

    def settle(self) -> None:
        """Lay out the whole screen now if a scroll left that for later (Textual's reflow_visible lays out only what
        is in view and marks the rest invalid; the first question about a widget out of view then lays out the
        whole screen). Called after a frame, so that the next key does not wait for it."""
        if self.root is not None and self._full_map_invalidated:
            self.full_map  # noqa: B018 (a property that builds the map)

    def render_partial_update(self):
        self._changed = list(self._dirty_regions)
        try:
            return super().render_partial_update()
        finally:
            self._changed = None

    def _get_renders(self, crop: Region | None = None) -> Iterable[tuple[Region, Region, list[Strip]]]:
        changed = self._changed
        if not changed or len(changed) == 1:  # one region is its own rectangle: Textual's way is as good
            yield from super()._get_renders(crop)
            return
        edges = [(x, y, x + width, y + height) for x, y, width, height in changed]
        for widget, (region, clip) in self.visible_widgets.items():
            x, y, width, height = region.intersection(clip)  # what of the widget is on screen
            right, bottom = x + width, y + height
            if width and height and any(x < x2 and x1 < right and y < y2 and y1 < bottom for x1, y1, x2, y2 in edges):
                yield region, clip, widget.render_lines(Region(x - region.x, y - region.y, width, height))
