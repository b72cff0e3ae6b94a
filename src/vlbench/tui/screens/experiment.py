"""Choose an experiment type to queue: each of its configs × each seed of the form, with the current inputs."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Switch
from textual.widgets.option_list import Option


class ChooseExperiment(ModalScreen[tuple[str, bool] | None]):
    """Dismisses with (type name, quick) or None."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="experiment.cancel"),
        Binding("ctrl+k", "toggle_quick", "Quick", id="experiment.quick"),
    ]

    def __init__(self, types: list) -> None:
        super().__init__()
        self.types = types

    def compose(self) -> ComposeResult:
        with Vertical(id="experiment", classes="dialog"):
            yield Label("Queue an experiment type (Enter)", id="experiment-title")
            yield OptionList(*[Option(Text.assemble(t.name, "  ", (t.description or "", "dim")), id=t.name)
                               for t in self.types], id="experiment-list")
            with Horizontal(id="experiment-quick-row"):
                yield Switch(False, id="experiment-quick")
                yield Label("quick: only the configs marked quick (ctrl+k)")
            yield Label("Enter: queue all its configs · Esc: cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = 0
        options.focus()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss((str(event.option.id), self.query_one(Switch).value))

    def action_toggle_quick(self) -> None:
        switch = self.query_one(Switch)
        switch.value = not switch.value

    def action_cancel(self) -> None:
        self.dismiss(None)
