"""The footer: the keys of the focused widget and of the app, on one line, drawn by one widget.

Textual's Footer is a container of one FooterKey widget per key and recomposes itself whenever the set of keys
changes, which is on most pane switches (each pane shows its own letters): removing and mounting ~16 widgets,
styling each and laying out the whole screen took about half of a pane switch (issue 25.8). This widget draws the
same line -- the same keys, labels, styles and the command palette's key on the right -- as one Text, so a change is
a repaint of one line. Clicking a key presses it (a disabled one rings the bell), hovering shows its help, as with
Textual's Footer.
"""

from __future__ import annotations

from typing import NamedTuple

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.strip import Strip
from textual.widget import Widget


class FooterEntry(NamedTuple):
    key: str  # the key pressed when the entry is clicked
    display: str  # how the key is shown (App.get_key_display)
    description: str
    enabled: bool
    tooltip: str


class VlbenchFooter(Widget, can_focus=False):
    ALLOW_SELECT = False
    COMPONENT_CLASSES = {"footer--key", "footer--description", "footer--hover", "footer--palette-border"}
    # The colours and paddings of Textual's Footer and FooterKey (the app's themes set the footer-* variables).
    DEFAULT_CSS = """
    VlbenchFooter {
        dock: bottom;
        height: 1;
        width: 1fr;
        text-wrap: nowrap;
        text-overflow: clip;
        color: $footer-foreground;
        background: $footer-background;
        & > .footer--key {
            color: $footer-key-foreground;
            background: $footer-key-background;
            text-style: bold;
        }
        & > .footer--description {
            color: $footer-description-foreground;
            background: $footer-description-background;
        }
        & > .footer--hover {
            background: $block-hover-background;
        }
        & > .footer--palette-border {
            color: $foreground 20%;
        }
    }
    """

    def __init__(self, *, id: str | None = None, show_command_palette: bool = True) -> None:
        super().__init__(id=id)
        self.show_command_palette = show_command_palette
        self.entries: tuple[FooterEntry, ...] = ()
        self.palette: FooterEntry | None = None
        self._spans: list[tuple[int, int, FooterEntry]] = []  # (first column, end column, entry) as last drawn
        self._hover: FooterEntry | None = None
        # The line as drawn for each set of keys: a pane switch comes back to a set seen before, and drawing a Text
        # of ~40 styled spans costs milliseconds.
        self._drawn: dict[tuple, tuple[Strip, list]] = {}

    # ---- the keys ----
    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self.bindings_changed)
        self.bindings_changed(self.screen)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def bindings_changed(self, screen) -> None:
        if not screen.app.app_focus or not self.is_attached or screen is not self.screen:
            return  # as Textual's Footer: kept as it was while the terminal has lost focus
        active = screen.active_bindings
        first: dict[str, tuple[Binding, bool, str]] = {}  # one key per action: the first binding shown
        for _node, binding, enabled, tooltip in active.values():
            if binding.show:
                first.setdefault(binding.action, (binding, enabled, tooltip))
        entries = tuple(self._entry(binding, enabled, tooltip) for binding, enabled, tooltip in first.values())
        palette = None
        if self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE:
            found = active.get(self.app.COMMAND_PALETTE_BINDING)
            if found is not None:
                _node, binding, enabled, tooltip = found
                palette = self._entry(binding, enabled, binding.tooltip or binding.description)
        if (entries, palette) != (self.entries, self.palette):
            self.entries, self.palette = entries, palette
            self.refresh()

    def _entry(self, binding: Binding, enabled: bool, tooltip: str) -> FooterEntry:
        return FooterEntry(binding.key, self.app.get_key_display(binding), binding.description, enabled,
                           tooltip or binding.description)

    def labels(self) -> list[str]:
        """What the footer shows for each key, left to right ("f5 ^r Queue"), the palette's last."""
        shown = [*self.entries, *([self.palette] if self.palette else [])]
        return [f"{e.display} {e.description}".strip() for e in shown]

    # ---- drawing ----
    def render_line(self, y: int) -> Strip:
        key = (self.entries, self.palette, self._hover, self.size, self.app.theme)
        drawn = self._drawn.get(key)
        if drawn is None:
            if len(self._drawn) >= 32:
                self._drawn.clear()
            drawn = self._drawn[key] = (super().render_line(y), self._spans)  # render() sets _spans
        strip, self._spans = drawn
        return strip

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._drawn.clear()  # another theme or stylesheet: other colours

    def render(self) -> Text:
        width = self.size.width
        key_style = self.get_component_rich_style("footer--key")
        description_style = self.get_component_rich_style("footer--description")
        hover = self.get_component_rich_style("footer--hover", partial=True)
        dim = Style(dim=True)
        line = Text(no_wrap=True, overflow="crop")
        spans: list[tuple[int, int, FooterEntry]] = []

        def item(entry: FooterEntry, key: str, description: str) -> None:
            start = line.cell_len
            line.append(key, key_style)
            if entry.description:
                line.append(description, description_style)
            if not entry.enabled:
                line.stylize(dim, start)
            if entry == self._hover:
                line.stylize_before(hover, start)
            spans.append((start, line.cell_len, entry))

        # FooterKey's paddings: " key " and "description " (the palette's key is compact: "key description").
        for entry in self.entries:
            item(entry, f" {entry.display} ", f"{entry.description} ")
        if self.palette is not None:
            palette = self.palette
            room = width - (1 + len(palette.display) + (1 + len(palette.description) if palette.description else 0)
                            + 1)  # the border on its left, the padding on its right
            line.truncate(max(0, room), pad=True)
            spans = [(a, min(b, room), e) for a, b, e in spans if a < room]
            line.append("▏", self.get_component_rich_style("footer--palette-border"))
            item(palette, palette.display, f" {palette.description}")
            line.append(" ")
        self._spans = spans
        return line

    # ---- the mouse: as on Textual's FooterKey ----
    def _entry_at(self, x: int) -> FooterEntry | None:
        return next((entry for start, end, entry in self._spans if start <= x < end), None)

    def on_mouse_move(self, event: events.MouseMove) -> None:
        entry = self._entry_at(event.x)
        if entry != self._hover:
            self._hover = entry
            self.tooltip = entry.tooltip if entry is not None and entry.tooltip else None
            self.refresh()

    def on_leave(self, event: events.Leave) -> None:
        if self._hover is not None:
            self._hover = None
            self.tooltip = None
            self.refresh()

    def on_mouse_down(self, event: events.MouseDown) -> None:
        entry = self._entry_at(event.x)
        if entry is None:
            return
        if entry.enabled:
            self.app.simulate_key(entry.key)
        else:
            self.app.bell()
