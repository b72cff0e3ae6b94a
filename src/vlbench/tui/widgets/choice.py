"""A one-line choice: ← and → step through the options, a letter jumps to one, Enter lists them all.

Lighter than Textual's Select (one widget instead of six), which matters in a form of thirty
fields that must paint in well under a second; and stepping with arrows suits a sweep of values.
"""

from __future__ import annotations

from typing import Any, Sequence

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

BLANK = object()  # no value (an optional field left unset)


class ChoiceField(Widget, can_focus=True):
    BINDINGS = [
        Binding("left", "step(-1)", "Previous", show=False),
        Binding("right", "step(1)", "Next", show=False),
        Binding("enter,space", "open", "Choose…", show=False),
    ]
    DEFAULT_CSS = """
    ChoiceField { height: 1; width: 1fr; background: $boost; }
    ChoiceField:focus { background: $primary 30%; }
    ChoiceField.-invalid { background: $error 25%; }
    """

    value: reactive[Any] = reactive(BLANK, init=False)

    class Changed(Message):
        def __init__(self, field: "ChoiceField", value: Any) -> None:
            super().__init__()
            self.field = field
            self.value = value

        @property
        def control(self) -> "ChoiceField":
            return self.field

    def __init__(self, options: Sequence[tuple[str, Any]], value: Any = BLANK, *, allow_blank: bool = False,
                 blank_label: str = "not set", **kwargs) -> None:
        super().__init__(**kwargs)
        self.options = [(str(label), v) for label, v in options]
        if allow_blank:
            self.options.insert(0, (blank_label, BLANK))
        self.set_reactive(ChoiceField.value, value if value is not None else BLANK)

    def _index(self) -> int:
        for i, (_, v) in enumerate(self.options):
            if v == self.value or (v is BLANK and self.value is BLANK):
                return i
        return -1

    @property
    def label(self) -> str:
        i = self._index()
        return self.options[i][0] if i >= 0 else str(self.value)

    def render(self) -> Text:
        text = Text(self.label, style="dim" if self.value is BLANK else "")
        text.pad_right(max(0, self.size.width - len(text) - 2))
        text.append("◂▸", style="dim")
        return text

    def watch_value(self, value: Any) -> None:
        self.post_message(self.Changed(self, value))

    def action_step(self, delta: int) -> None:
        i = self._index()
        self.value = self.options[(i + delta) % len(self.options)][1]

    def action_open(self) -> None:
        def chosen(index: int | None) -> None:
            if index is not None:
                self.value = self.options[index][1]
            self.focus()

        self.app.push_screen(ChoiceMenu([label for label, _ in self.options], max(0, self._index())), chosen)

    def on_key(self, event: events.Key) -> None:
        """A letter jumps to the next option that starts with it."""
        if event.character and event.character.isprintable() and not event.character.isspace():
            n = len(self.options)
            start = self._index()
            for step in range(1, n + 1):
                label, value = self.options[(start + step) % n]
                if label.lower().startswith(event.character.lower()):
                    self.value = value
                    event.stop()
                    return

    def on_click(self) -> None:
        self.focus()
        self.action_open()


class ChoiceMenu(ModalScreen[int | None]):
    """Every option of a ChoiceField; Enter picks, Escape keeps the old value."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="choice.cancel")]
    DEFAULT_CSS = """
    ChoiceMenu { align: center middle; }
    #choice-menu { width: auto; min-width: 30; max-width: 80; height: auto; max-height: 80%;
                   border: round $primary; background: $surface; padding: 0 1; }
    #choice-menu OptionList { border: none; height: auto; max-height: 20; }
    """

    def __init__(self, labels: list[str], index: int) -> None:
        super().__init__()
        self.labels = labels
        self.index = index

    def compose(self) -> ComposeResult:
        with Vertical(id="choice-menu"):
            yield OptionList(*[Option(Text(label)) for label in self.labels])
            yield Label("Enter: choose · Esc: cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = self.index
        options.focus()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option_index)

    def action_cancel(self) -> None:
        self.dismiss(None)
