"""A screen update draws the widgets that overlap what changed, not every widget inside the rectangle around it.

Textual's Compositor crops a partial update to one rectangle around all the changed regions and draws every widget
that overlaps it. A pane switch changes the footer (the screen's last line) and two panes: that rectangle is the
whole screen, and each switch drew all ~115 visible widgets. Only the changed spans are written to the terminal, so
a widget outside every changed region is drawn for nothing; this compositor skips it (Textual 8.2).
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
