"""Jump to a pane: ctrl+g, then its number or initial (as Posting's jump mode). Escape stays put."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label

PANES = [("1", "i", "inputs", "Inputs"), ("2", "p", "parameters", "Parameters"), ("3", "q", "queue", "Queue"),
         ("4", "v", "preview", "Preview"), ("5", "h", "history", "History")]


class JumpScreen(ModalScreen[str | None]):
    BINDINGS = [
        *[Binding(f"{number},{letter}", f"jump('{pane}')", title, id=f"jump.{pane}")
          for number, letter, pane, title in PANES],
        Binding("escape,ctrl+g", "jump('')", "Stay", id="jump.cancel"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="jump", classes="dialog"):
            yield Label("Jump to", id="jump-title")
            for number, letter, _, title in PANES:
                yield Label(f"  {number}  {title}  ({letter})")
            yield Label("Esc: stay", classes="dialog-hint")

    def action_jump(self, pane: str) -> None:
        self.dismiss(pane or None)
