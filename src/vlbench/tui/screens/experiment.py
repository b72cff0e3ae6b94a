"""Choose an experiment type to queue: each of its configs × each seed of the form, with the current inputs.

Before anything is queued the dialog says how many runs the highlighted type makes and which of the
form's fields its configs set to other values (an experiment varies the conditioning; the form keeps
its prompt, references, seeds, steps and size): Enter queues exactly that.
"""

from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static, Switch
from textual.widgets.option_list import Option


class ChooseExperiment(ModalScreen[tuple[str, bool] | None]):
    """Dismisses with (type name, quick) or None."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="experiment.cancel"),
        Binding("ctrl+k", "toggle_quick", "Quick", id="experiment.quick"),
    ]

    def __init__(self, types: list, describe: Callable[[str, bool], Text] | None = None) -> None:
        super().__init__()
        self.types = types
        self.describe = describe  # (type name, quick) -> what Enter would queue

    def compose(self) -> ComposeResult:
        with Vertical(id="experiment", classes="dialog"):
            yield Label("Queue an experiment type (Enter)", id="experiment-title")
            yield OptionList(*[Option(Text.assemble(t.name, "  ", (t.description or "", "dim")), id=t.name)
                               for t in self.types], id="experiment-list")
            with Horizontal(id="experiment-quick-row"):
                yield Switch(False, id="experiment-quick")
                yield Label("quick: only the configs marked quick (ctrl+k)")
            yield Static("", id="experiment-plan")
            yield Label("Enter: queue these runs · Esc: cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = 0
        options.focus()
        self._plan()

    def _current(self) -> str | None:
        options = self.query_one(OptionList)
        if options.highlighted is None:
            return None
        return str(options.get_option_at_index(options.highlighted).id)

    def _plan(self) -> None:
        name = self._current()
        plan = self.query_one("#experiment-plan", Static)
        if name is None or self.describe is None:
            plan.update("")
            return
        plan.update(self.describe(name, self.query_one(Switch).value))

    @on(OptionList.OptionHighlighted)
    def _highlighted(self) -> None:
        self._plan()

    @on(Switch.Changed)
    def _quick(self) -> None:
        self._plan()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss((str(event.option.id), self.query_one(Switch).value))

    def action_toggle_quick(self) -> None:
        switch = self.query_one(Switch)
        switch.value = not switch.value

    def action_cancel(self) -> None:
        self.dismiss(None)
