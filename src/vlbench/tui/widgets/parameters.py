"""The Parameters pane: one row per Recipe field, built from the dataclass, validated as you type.

Validation is the Recipe's own: every change builds a Recipe from the form; a field whose text
does not parse, or that the Recipe's UserError names, gets the `-invalid` class and the message
shows at the foot of the pane. While anything is invalid `recipe` is None and nothing can be queued.
The seed field takes several seeds ("1,2,3" or "0-7"): the recipe carries the first.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widget import Widget
from textual.widgets import Input, Label, Static

from vlbench.recipe import Recipe
from vlbench.errors import UserError
from vlbench.tui.messages import RecipeChanged
from vlbench.tui.recipe_fields import INPUTS_FIELDS, FieldSpec, format_value, parse_value, recipe_fields
from vlbench.tui.wording import render
from vlbench.tui.widgets.choice import BLANK, ChoiceField
from vlbench.tui.widgets.pane import Pane
from vlbench.tui.widgets.vl_text import VLTextField
from vlbench.tui.widgets.ordered_input import OrderedInput

MAX_ERROR_LINES = 3  # errors under the form, one line each (a long one wraps: #param-error holds 6 lines)


class FieldRow(Horizontal):
    """A field's name and its editor; `-invalid` while the value is rejected."""

    def __init__(self, spec: FieldSpec, editor: Widget) -> None:
        super().__init__(classes="field-row", id=f"row-{spec.name}")
        self.spec = spec
        self.editor = editor

    def compose(self) -> ComposeResult:
        yield Label(self.spec.name, classes="field-name")
        yield self.editor


class ParamForm(VerticalScroll):
    """The form's scroll. Focus never stays on a field scrolled out of view (PageDown/PageUp, the wheel): typing
    would edit it blind; it moves to the first (scrolling down) or last (up) field in view."""

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if round(old_value) != round(new_value):
            self.call_after_refresh(self.focus_in_view)

    def focus_in_view(self) -> None:
        if not self.is_attached:
            return
        focused = self.screen.focused
        if focused is None or self not in focused.ancestors:
            return
        view = self.scrollable_content_region
        if view.contains_region(focused.region):
            return
        shown = [w for w in self.query("*") if w.focusable and w.region.height and view.contains_region(w.region)]
        if shown:
            self.screen.set_focus(shown[0] if focused.region.y < view.y else shown[-1], scroll_visible=False)


class ParametersPane(Pane):
    BORDER_TITLE = "Parameters"

    def __init__(self, defaults: dict[str, Any] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        base = Recipe(**(defaults or {}))
        self.defaults = base
        self.external: dict[str, Any] = {"vl_text": base.vl_text}  # fields edited in other panes
        self.recipe: Recipe | None = base
        self.seeds: list[int] = [base.seed]
        self.error: str | None = None
        self._rows: dict[str, FieldRow] = {}
        self._invalid: set[str] = set()
        self._shown_error: str | None = ""

    def compose(self) -> ComposeResult:
        section = None
        with ParamForm(id="param-form"):
            for spec in recipe_fields():
                if spec.name in INPUTS_FIELDS:
                    continue
                if spec.section and spec.section != section:
                    section = spec.section
                    yield Label(Text(section), classes="section")
                row = FieldRow(spec, self._editor(spec, getattr(self.defaults, spec.name)))
                if spec.help:
                    row.tooltip = Text(spec.help)
                self._rows[spec.name] = row
                yield row
        yield Static("", id="param-help")
        yield Static("", id="param-error")

    def _editor(self, spec: FieldSpec, value: Any) -> Widget:
        wid = f"p-{spec.name}"
        if spec.kind == "choice":
            return ChoiceField([(name, name) for name in spec.choices], value, allow_blank=spec.optional, id=wid)
        if spec.kind == "bool":  # reads as true/false in any terminal, like the TOML it becomes
            return ChoiceField([("false", False), ("true", True)], bool(value), id=wid)
        if spec.kind == "vl_text":
            return VLTextField(value, id=wid)
        placeholder = "not set" if spec.optional else ("e.g. 1,2,3 or 0-7" if spec.kind == "seeds" else "")
        # validate_on=[]: the Recipe validates; Input's own (validator-less) checks would reset -invalid.
        return OrderedInput(format_value(spec, value), placeholder=placeholder, id=wid, compact=True, validate_on=[])

    # ---- reading and writing the form ----
    def _raw(self, spec: FieldSpec) -> Any:
        editor = self._rows[spec.name].editor
        if isinstance(editor, ChoiceField):
            return None if editor.value is BLANK else editor.value
        if isinstance(editor, VLTextField):
            return editor.value
        return editor.value  # Input

    def set_recipe(self, recipe: Recipe, seeds: list[int] | None = None) -> None:
        """Show a recipe (a past run's) in the form: every field."""
        self.set_fields(recipe.to_dict(), seeds)

    def set_fields(self, values: dict[str, Any], seeds: list[int] | None = None) -> None:
        """Set these fields (e.g. the ones a partial recipe file names); every other field stays as it is."""
        for name, value in values.items():
            row = self._rows.get(name)
            if row is None:
                if name in self.external:
                    self.external[name] = value
                continue
            spec, editor = row.spec, row.editor
            if isinstance(editor, ChoiceField):
                editor.value = value if value is not None else BLANK
            elif isinstance(editor, VLTextField):
                editor.value = value
            elif spec.kind == "seeds":
                editor.value = ", ".join(str(s) for s in (seeds or [value]))
            else:
                editor.value = format_value(spec, value)
        self.validate()

    def raw_values(self) -> dict[str, Any]:
        """Every field as its editor holds it (text as typed, even when invalid): what a session saves."""
        return {name: self._raw(row.spec) for name, row in self._rows.items()}

    def set_raw(self, values: dict[str, Any]) -> list[str]:
        """Put back what raw_values() gave; returns the fields whose saved value no longer fits the form."""
        skipped = []
        for name, value in values.items():
            row = self._rows.get(name)
            if row is None:
                skipped.append(name)
                continue
            editor = row.editor
            if isinstance(editor, ChoiceField):
                if value is None and any(v is BLANK for _, v in editor.options):
                    editor.value = BLANK
                elif any(v == value and type(v) is type(value) for _, v in editor.options):
                    editor.value = value
                else:
                    skipped.append(name)
            elif isinstance(value, str):
                editor.value = value
            else:
                skipped.append(name)
        self.validate()
        return skipped

    def set_external(self, name: str, value: Any) -> None:
        self.external[name] = value
        self.validate()

    def validate(self) -> Recipe | None:
        """Build the Recipe from the form; mark what is wrong. Returns the recipe or None."""
        values: dict[str, Any] = dict(self.external)
        bad: dict[str, str] = {}
        seeds: list[int] = []
        for name, row in self._rows.items():
            spec = row.spec
            raw = self._raw(spec)
            try:
                if spec.kind == "seeds":
                    seeds = parse_value(spec, str(raw))
                    values[name] = seeds[0]
                elif isinstance(raw, str):
                    values[name] = parse_value(spec, raw)
                else:
                    values[name] = raw
            except UserError as exc:
                bad[name] = render(exc)
        recipe = None
        if not bad:
            try:
                recipe = Recipe(**values)
            except UserError as exc:
                bad[exc.field if exc.field in self._rows else ""] = render(exc)
        for name in self._invalid.symmetric_difference(bad):  # only what changed: restyling is not free
            if name in self._rows:
                self._rows[name].set_class(name in bad, "-invalid")
                self._rows[name].editor.set_class(name in bad, "-invalid")
        self._invalid = set(bad)
        self.error = "; ".join(bad.values()) or None  # every invalid field's error, not only the first (issue 25)
        self.recipe = recipe
        self.seeds = seeds if recipe is not None else []
        self._show_error(list(bad.values()))
        self.post_message(RecipeChanged(recipe, self.error, self.seeds))
        return recipe

    def _show_error(self, errors: list[str]) -> None:
        """One line per invalid field under the form (at most MAX_ERROR_LINES; the rest counted)."""
        if len(errors) > MAX_ERROR_LINES:
            errors = errors[:MAX_ERROR_LINES - 1] + [f"… and {len(errors) - MAX_ERROR_LINES + 1} more invalid fields "
                                                     "(marked in the form)"]
        shown = "\n".join(f"✗ {e}" for e in errors) or None
        if shown != self._shown_error:
            self._shown_error = shown
            error = self.query_one("#param-error", Static)
            error.update(Text(shown or ""))
            error.set_class(shown is None, "-hidden")

    def refuse(self, field: str | None, message: str) -> None:
        """A plan the models' files refused at queue time (issue 25.10): its field is marked and the refusal shown
        under the form until the form is next read (a field that is not the form's, the prompt, is named in the
        message alone)."""
        row = self._rows.get(field or "")
        if row is not None:
            row.add_class("-invalid")
            row.editor.add_class("-invalid")
            self._invalid.add(row.spec.name)  # the next validate() clears it
        self._show_error([message])

    # ---- events ----
    def on_mount(self) -> None:
        self.validate()

    @on(Input.Changed)
    @on(ChoiceField.Changed)
    @on(VLTextField.Changed)
    def _changed(self, event) -> None:
        event.stop()
        self.validate()
        focused = self.screen.focused if self.is_attached else None
        if focused is not None and event.control in focused.ancestors_with_self:  # the help line follows the value
            self._show_help(focused)

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        self._show_help(event.widget)

    def _show_help(self, widget: Widget) -> None:
        """The help line of the field `widget` edits, for the value it holds now (a choice's own help)."""
        row = next((n for n in widget.ancestors_with_self if isinstance(n, FieldRow)), None)
        help_line = self.query_one("#param-help", Static)
        if row is not None:
            spec = row.spec
            text = spec.help
            if spec.kind == "choice" and spec.choice_help:
                current = self._raw(spec)
                if current in spec.choices and spec.choice_help[spec.choices.index(current)]:
                    text = f"{current}: {spec.choice_help[spec.choices.index(current)]}"
            default = format_value(spec, spec.default) or ("not set" if spec.optional else "empty")
            applies = f" · has an effect only {spec.when}" if spec.when else ""
            # A fixed-height line: a repaint, not a layout of the whole screen, on every Tab.
            help_line.update(Text(f"{spec.name}: {text} · default {default}{applies}" if text else spec.name),
                             layout=False)
