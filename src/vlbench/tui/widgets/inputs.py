"""The Inputs pane: reference images, the prompt, and what the VL reads as text.

A reference is typed (with completion) and added with Enter, or picked with F2; each gets its
own vision block. The VL text is the recipe's `vl_text`: the prompt, none (image only) or custom.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label, OptionList, TextArea

from vlbench.recipe import VLText

VL_TEXT_PROMPT, VL_TEXT_NONE = VLText.PROMPT.value, VLText.NONE.value
from vlbench.tui.messages import InputsChanged
from vlbench.tui.suggest import IMAGE_SUFFIXES, PathSuggester
from vlbench.tui.widgets.choice import ChoiceField

VL_MODES = [("the prompt", VL_TEXT_PROMPT), ("none (image only)", VL_TEXT_NONE), ("custom text", "custom")]


class ReferenceList(OptionList):
    BINDINGS = [Binding("delete,backspace,x", "remove", "Remove ref", id="inputs.remove_reference")]

    def action_remove(self) -> None:
        if self.highlighted is not None:
            self.remove_option_at_index(self.highlighted)
            self.set_class(self.option_count == 0, "-empty")


class InputsPane(Vertical):
    BORDER_TITLE = "Inputs"

    def compose(self) -> ComposeResult:
        yield Label("reference image(s) — Enter adds, F2 browses", classes="field-label")
        yield Input(placeholder="path/to/reference.png", id="ref-path", suggester=PathSuggester(IMAGE_SUFFIXES),
                    compact=True)
        yield ReferenceList(id="ref-list", classes="-empty")
        yield Label("prompt", classes="field-label")
        yield TextArea(id="prompt", soft_wrap=True, show_line_numbers=False, compact=True)
        yield Label("VL text", classes="field-label")
        with Horizontal(id="vl-row"):
            yield ChoiceField(VL_MODES, VL_TEXT_PROMPT, id="vl-mode")
            yield Input(placeholder="text the VL reads", id="vl-custom", disabled=True, compact=True)

    # ---- values ----
    @property
    def prompt(self) -> str:
        return self.query_one("#prompt", TextArea).text.strip()

    @prompt.setter
    def prompt(self, text: str) -> None:
        self.query_one("#prompt", TextArea).load_text(text)

    @property
    def references(self) -> list[str]:
        refs = [str(option.prompt) for option in self.query_one(ReferenceList).options]
        typed = self.query_one("#ref-path", Input).value.strip()
        if typed and Path(typed).expanduser().is_file() and str(Path(typed).expanduser()) not in refs:
            refs.append(str(Path(typed).expanduser()))  # typed but not yet added: still meant
        return refs

    @references.setter
    def references(self, paths: list[str]) -> None:
        refs = self.query_one(ReferenceList)
        refs.clear_options()
        refs.add_options([Text(p) for p in paths])
        refs.set_class(not paths, "-empty")
        self.query_one("#ref-path", Input).value = ""

    @property
    def vl_text(self) -> str:
        mode = self.query_one("#vl-mode", ChoiceField).value
        if mode == "custom":
            return self.query_one("#vl-custom", Input).value
        return str(mode)

    @vl_text.setter
    def vl_text(self, value: str) -> None:
        custom = value not in (VL_TEXT_PROMPT, VL_TEXT_NONE)
        self.query_one("#vl-mode", ChoiceField).value = "custom" if custom else value
        if custom:
            self.query_one("#vl-custom", Input).value = value

    def add_reference(self, path: str) -> bool:
        resolved = Path(path).expanduser()
        field = self.query_one("#ref-path", Input)
        if not resolved.is_file():
            field.add_class("-invalid")
            self.notify(f"reference {path}: no such file", severity="error")
            return False
        refs = self.query_one(ReferenceList)
        if str(resolved) not in [str(o.prompt) for o in refs.options]:
            refs.add_option(Text(str(resolved)))
        refs.remove_class("-empty")
        field.value = ""
        field.remove_class("-invalid")
        return True

    # ---- events ----
    @on(Input.Submitted, "#ref-path")
    def _add_typed(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.add_reference(event.value.strip())

    @on(Input.Changed, "#ref-path")
    def _typed(self, event: Input.Changed) -> None:
        event.input.remove_class("-invalid")

    @on(ChoiceField.Changed, "#vl-mode")
    def _mode(self, event: ChoiceField.Changed) -> None:
        custom = self.query_one("#vl-custom", Input)
        custom.disabled = event.value != "custom"
        if event.value == "custom" and self.app.focused is event.control:
            custom.focus()
        self.post_message(InputsChanged(self.vl_text))

    @on(Input.Changed, "#vl-custom")
    def _custom(self) -> None:
        self.post_message(InputsChanged(self.vl_text))
