"""The pane bar of a narrow terminal: one line naming every pane and its key, the shown one highlighted,
and the queue's state on the right (the Queue pane itself is out of sight most of the time)."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from vlbench.tui import keys


class PaneBar(Widget):
    DEFAULT_CSS = """
    PaneBar { height: 1; width: 1fr; background: $panel; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.active = "inputs"
        self.status = ""

    def show(self, active: str | None = None, status: str | None = None) -> None:
        changed = (active is not None and active != self.active) or (status is not None and status != self.status)
        self.active = active if active is not None else self.active
        self.status = status if status is not None else self.status
        if changed:
            self.refresh()

    def render(self) -> Text:
        keymap = getattr(self.app, "_keymap", {})
        rebound = any(keymap.get(c.id, c.keys) != c.keys for c in keys.PANES)
        text = Text(" ^g " if rebound else " alt+", style="dim")  # ctrl+g and the digit work whatever is rebound
        for c in keys.PANES:
            active = keys.pane_of(c) == self.active
            text.append(f"{c.go}", style="bold")
            text.append(f" {c.title} ", style="bold reverse" if active else "")
            text.append(" ")
        if self.status:
            room = self.size.width - text.cell_len - 1
            if room > 8:
                status = self.status if len(self.status) <= room else self.status[: room - 1] + "…"
                text.append(" " * max(1, room - len(status)))
                text.append(status, style="italic")
        return text
