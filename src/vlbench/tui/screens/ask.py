"""A one-line question in a modal (e.g. which seeds): Enter answers, Escape cancels."""

from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from vlbench.errors import UserError
from vlbench.tui.widgets.ordered_input import OrderedInput


class Ask(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="ask.cancel")]

    def __init__(self, question: str, value: str = "", hint: str = "",
                 check: Callable[[str], object] | None = None) -> None:
        super().__init__()
        self.question = question
        self.value = value
        self.hint = hint
        self.check = check  # raises UserError for an answer that will not do

    def compose(self) -> ComposeResult:
        with Vertical(id="ask", classes="dialog"):
            yield Label(Text(self.question))
            yield OrderedInput(self.value, id="ask-input")
            yield Label(Text(self.hint), id="ask-hint", classes="dialog-hint")

    @on(Input.Changed, "#ask-input")
    def _changed(self, event: Input.Changed) -> None:
        error = self._error(event.value)
        event.input.set_class(error is not None, "-invalid")
        self.query_one("#ask-hint", Label).update(Text(f"✗ {error}" if error else self.hint))

    @on(Input.Submitted, "#ask-input")
    def _submitted(self, event: Input.Submitted) -> None:
        if self._error(event.value) is None:
            self.dismiss(event.value)

    def _error(self, value: str) -> str | None:
        if self.check is None:
            return None
        try:
            self.check(value)
        except UserError as exc:
            return str(exc)
        return None

    def action_cancel(self) -> None:
        self.dismiss(None)
