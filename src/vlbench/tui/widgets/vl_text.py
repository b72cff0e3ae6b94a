"""A VL-text field: the prompt, none (image only), or custom text — for the dual passes' *_vl_text."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Input

from vlbench.tui.widgets.choice import ChoiceField
from vlbench.recipe import VLText
from vlbench.tui.widgets.ordered_input import OrderedInput

VL_TEXT_PROMPT, VL_TEXT_NONE = VLText.PROMPT.value, VLText.NONE.value

MODES = [("prompt", VL_TEXT_PROMPT), ("none", VL_TEXT_NONE), ("custom", "custom")]


class VLTextField(Horizontal):
    class Changed(Message):
        def __init__(self, field: "VLTextField") -> None:
            super().__init__()
            self.field = field

        @property
        def control(self) -> "VLTextField":
            return self.field

    def __init__(self, value: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self._initial = value

    def compose(self) -> ComposeResult:
        custom = self._initial not in (VL_TEXT_PROMPT, VL_TEXT_NONE)
        yield ChoiceField(MODES, "custom" if custom else self._initial)
        yield OrderedInput(self._initial if custom else "", placeholder="text", disabled=not custom, compact=True,
                    validate_on=[])

    @property
    def value(self) -> str:
        mode = self.query_one(ChoiceField).value
        return self.query_one(Input).value if mode == "custom" else str(mode)

    @value.setter
    def value(self, value: str) -> None:
        custom = value not in (VL_TEXT_PROMPT, VL_TEXT_NONE)
        self.query_one(ChoiceField).value = "custom" if custom else value
        if custom:
            self.query_one(Input).value = value

    @on(ChoiceField.Changed)
    def _mode(self, event: ChoiceField.Changed) -> None:
        event.stop()
        self.query_one(Input).disabled = event.value != "custom"
        self.post_message(self.Changed(self))

    @on(Input.Changed)
    def _text(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Changed(self))
