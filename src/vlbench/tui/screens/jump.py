"""The go menu (ctrl+g): a pane by its number or initial, or any global command by one letter.

Posting's jump mode, extended: it is also the way to every F-key command in a terminal (or an SSH
client, or tmux) that does not pass function keys. The letters come from keys.py. Escape stays put.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Label

from vlbench.tui import keys


class JumpScreen(ModalScreen[str | None]):
    """Dismisses with "pane:<name>", "action:<app action>" or None."""

    BINDINGS = [
        *[Binding(f"{c.go},{keys.PANE_LETTERS[keys.pane_of(c)]}", f"choose('pane:{keys.pane_of(c)}')", c.title,
                  id=f"go.{c.id}") for c in keys.PANES],
        *[Binding(c.go, f"choose('action:{c.action}')", c.title, id=f"go.{c.id}") for c in keys.APP if c.go],
        Binding(f"escape,{keys.GO}", "choose('')", "Stay", id="go.cancel"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="jump", classes="dialog"):
            yield Label("Go to a pane, or run a command", id="jump-title")
            with Horizontal(id="jump-columns"):
                with Vertical(classes="jump-column"):
                    for c in keys.PANES:
                        letter = keys.PANE_LETTERS[keys.pane_of(c)]
                        yield Label(Text.assemble((f" {c.go} ", "bold"), f" {c.title} ",
                                                  (f"({letter}, {keys.key_name(c.keys)})", "dim")))
                with Vertical(classes="jump-column"):
                    for c in keys.APP:
                        if c.go:
                            yield Label(Text.assemble((f" {keys.key_name(c.go)} ", "bold"), f" {c.title.rstrip('…')}"))
            yield Label("Esc: stay", classes="dialog-hint")

    def action_choose(self, target: str) -> None:
        self.dismiss(target or None)
