"""The Inputs pane: reference images, the prompt, and what the VL reads as text.

A reference is typed (with completion) and added with Enter, or picked with F2; each gets its
own vision block. A reference is checked when it is added: a file that is missing or that is not an
image is refused there, in the workbench's words, not when its run fails. References are kept as
absolute paths (a relaunch from another folder still finds them). The VL text is the recipe's
`vl_text`: the prompt, none (image only) or custom.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Input, Label, OptionList, TextArea
from textual.widgets.option_list import Option

from vlbench.errors import UserError
from vlbench.recipe import VLText
from vlbench.tui.messages import InputsChanged
from vlbench.tui.screens.confirm import Confirm
from vlbench.tui.suggest import IMAGE_SUFFIXES, PathSuggester
from vlbench.tui.widgets.choice import ChoiceField
from vlbench.tui.widgets.pane import Pane
from vlbench.tui.widgets.path_field import PathField
from vlbench.tui.wording import render
from vlbench.tui.widgets.ordered_input import OrderedInput, OrderedTextArea

VL_TEXT_PROMPT, VL_TEXT_NONE = VLText.PROMPT.value, VLText.NONE.value
VL_MODES = [("the prompt", VL_TEXT_PROMPT), ("none (image only)", VL_TEXT_NONE), ("custom text", "custom")]


def check_image(path: str) -> str:
    """The reference's absolute path, or a UserError naming it: no such file, a folder, not an image."""
    resolved = Path(path).expanduser()
    if resolved.is_dir():
        raise UserError("is a folder; pick an image file", field="image", value=path)
    if not resolved.is_file():
        raise UserError("no such file", field="image", value=path)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(resolved) as im:
            im.verify()  # the header and the data's integrity, without decoding the pixels
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        why = "not an image" if isinstance(exc, UnidentifiedImageError) else f"a damaged image ({exc})"
        raise UserError(f"{why}; pick a PNG, JPEG, WebP, … file", field="image", value=path) from None
    return str(resolved.resolve())


class ReferenceOption(Option):
    """One reference, on one row: its file name, then its folder (cut at the list's edge). A path wrapped over
    several rows left room for 2 or 3 references in the list's rows (issue 25: 5+ references showed 4 or fewer)."""

    def __init__(self, path: str) -> None:
        where = Path(path)
        text = Text.assemble((where.name, "bold"), f"  {where.parent}")  # one row: #ref-list does not wrap
        super().__init__(text)
        self.path = path


class ReferenceList(OptionList):
    """The references added. Removing one takes a highlight the user chose (↑/↓), or asks which first."""

    BINDINGS = [Binding("delete,backspace,x", "remove", "Remove ref", id="inputs.remove_reference")]
    chosen = False  # the user moved the highlight since the list got focus

    def on_focus(self) -> None:
        self.chosen = False
        if self.highlighted is None and self.option_count:
            self.highlighted = self.option_count - 1  # visible before anything is removed

    def action_cursor_up(self) -> None:
        self.chosen = True
        super().action_cursor_up()

    def action_cursor_down(self) -> None:
        self.chosen = True
        super().action_cursor_down()

    def action_first(self) -> None:
        self.chosen = True
        super().action_first()

    def action_last(self) -> None:
        self.chosen = True
        super().action_last()

    def action_remove(self) -> None:
        index = self.highlighted
        if index is None:
            self.notify("↑/↓ picks the reference to remove", severity="warning")
            return
        if self.chosen:
            self._remove(index)
            return

        name = Path(self.get_option_at_index(index).path).name
        self.app.push_screen(Confirm(f"Remove reference {name}? (↑/↓ picks another)"),
                             lambda yes: self._remove(index) if yes else None)

    def _remove(self, index: int) -> None:
        if index < self.option_count:
            self.remove_option_at_index(index)
        self.set_class(self.option_count == 0, "-empty")
        self.chosen = True
        self.post_message(InputsChanged(None))


def pasted_paths(text: str) -> list[str]:
    """The paths in a paste: one a line, or on one line several that a file manager dropped (shell-quoted, each
    an existing file); one path otherwise (spaces and all)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        return [line.strip("'\"") for line in lines]
    if not lines:
        return []
    try:
        words = shlex.split(lines[0])
    except ValueError:
        return [lines[0]]
    if len(words) > 1 and all(Path(w).expanduser().is_file() for w in words):
        return words
    return [lines[0].strip("'\"")] if len(words) == 1 else [lines[0]]


class ReferencePath(PathField):
    """The reference path field (keys in the order typed, Enter takes a shown completion: PathField). A paste of
    several paths (one a line, or dropped files) adds each of them (a single-line field kept only the first)."""

    def _on_paste(self, event: events.Paste) -> None:
        paths = pasted_paths(event.text)
        if len(paths) > 1:
            event.stop()
            event.prevent_default()
            pane = next((a for a in self.ancestors if isinstance(a, InputsPane)), None)
            if pane is not None:
                added = sum(1 for p in paths if pane.add_reference(p))
                self.notify(f"added {added} of {len(paths)} pasted references")
        # One path: Input's own handler (Textual calls each class's _on_paste unless the default is prevented).


REFS_LABEL = "references: Enter adds · F2 or ^f browses"
REF_ROWS = 6  # rows of the reference list (#ref-list's max-height); more scroll


class InputsPane(Pane):
    BORDER_TITLE = "Inputs"

    def on_inputs_changed(self, message: InputsChanged) -> None:
        """Say how many references there are once the list scrolls (issue 25: the 5th and later were out of sight).
        The message goes on to the app."""
        count = self.query_one(ReferenceList).option_count
        more = f"references: {count}, the list scrolls (↑/↓ in it) · Enter adds · F2 or ^f browses"
        self.query_one("#refs-label", Label).update(more if count > REF_ROWS else REFS_LABEL)

    def compose(self) -> ComposeResult:
        yield Label(REFS_LABEL, classes="field-label", id="refs-label")
        yield ReferencePath(placeholder="path/to/reference.png", id="ref-path", suggester=PathSuggester(IMAGE_SUFFIXES),
                            compact=True)
        yield ReferenceList(id="ref-list", classes="-empty")
        yield Label("prompt", classes="field-label")
        yield OrderedTextArea(id="prompt", soft_wrap=True, show_line_numbers=False, compact=True)
        yield Label("VL text", classes="field-label")
        with Horizontal(id="vl-row"):
            yield ChoiceField(VL_MODES, VL_TEXT_PROMPT, id="vl-mode")
            yield OrderedInput(placeholder="text the VL reads", id="vl-custom", disabled=True, compact=True)

    # ---- values ----
    @property
    def prompt(self) -> str:
        return self.query_one("#prompt", TextArea).text.strip()

    @prompt.setter
    def prompt(self, text: str) -> None:
        area = self.query_one("#prompt", TextArea)
        area.load_text(text)
        area.move_cursor(area.document.end)  # a restored or loaded prompt is typed on from its end

    @property
    def references(self) -> list[str]:
        refs = [option.path for option in self.query_one(ReferenceList).options]
        typed = self.query_one("#ref-path", Input).value.strip()
        if typed:  # typed but not yet added: still meant, if it is an image
            try:
                path = check_image(typed)
            except UserError:
                return refs
            if path not in refs:
                refs.append(path)
        return refs

    @references.setter
    def references(self, paths: list[str]) -> None:
        refs = self.query_one(ReferenceList)
        refs.clear_options()
        refs.add_options([ReferenceOption(p) for p in paths])
        refs.set_class(not paths, "-empty")
        self.query_one("#ref-path", Input).value = ""
        self.post_message(InputsChanged(None))

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
        field = self.query_one("#ref-path", Input)
        try:
            resolved = check_image(path)
        except UserError as exc:
            field.add_class("-invalid")
            self.notify(render(exc), severity="error")
            return False
        refs = self.query_one(ReferenceList)
        if resolved not in [o.path for o in refs.options]:
            refs.add_option(ReferenceOption(resolved))
        refs.remove_class("-empty")
        field.value = ""
        field.remove_class("-invalid")
        self.post_message(InputsChanged(None))
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
