"""The five panes' base: a bordered column whose border (colour, title, subtitle) says which pane is active.

A pane switch changes two borders. Textual repaints a restyled widget whole, and with it every widget drawn inside
it (the Parameters form is ~90 visible widgets, most of a switch's frame); `outline_only` repaints the border alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from textual.containers import Vertical
from textual.geometry import Region


class Pane(Vertical):
    _outline_only = False

    def refresh(self, *regions: Region, repaint: bool = True, layout: bool = False, recompose: bool = False):
        if self._outline_only and not regions and repaint and not layout and not recompose and self.is_mounted:
            regions = self._outline()
        return super().refresh(*regions, repaint=repaint, layout=layout, recompose=recompose)

    def _outline(self) -> tuple[Region, ...]:
        """The border's four edges, in the content coordinates `refresh` takes."""
        width, height = self.outer_size
        dx, dy = self.content_offset
        edges = (Region(0, 0, width, 1), Region(0, height - 1, width, 1),
                 Region(0, 0, 1, height), Region(width - 1, 0, 1, height))
        return tuple(edge.translate((-dx, -dy)) for edge in edges)


@contextmanager
def outline_only(panes: list[Pane]) -> Iterator[None]:
    """While restyling these panes, a restyle that repaints (and does not lay out) repaints only their border.

    Right only for styles that change nothing but the border: vlbench.tcss's `.-active-pane` rule (the border's
    colour). A change of size or display lays out, and is repainted whole as before."""
    for pane in panes:
        pane._outline_only = True
    try:
        yield
    finally:
        for pane in panes:
            pane._outline_only = False
