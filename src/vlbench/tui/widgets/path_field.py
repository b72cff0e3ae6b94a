"""A path field: an Input whose keys act in the order typed, and whose Enter takes a completion it shows.

Used by the reference path in Inputs and by the file picker's path (both with a PathSuggester).
"""

from __future__ import annotations

from vlbench.tui.widgets.ordered_input import OrderedInput


class PathField(OrderedInput):
    """Keys act in the order typed (OrderedInput: ctrl+u then a path no longer left an empty field, and Enter
    submitted what the field held a moment later).

    Enter with a completion shown takes the completion: a folder is entered (the next keys continue inside it),
    a file is submitted (Enter submitted the uncompleted text). Not where a new name is typed (save as): there
    Enter submits what was typed."""

    def __init__(self, *args, complete_on_enter: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.complete_on_enter = complete_on_enter

    async def action_submit(self) -> None:
        suggestion = self._suggestion if self.complete_on_enter else ""
        if suggestion and len(suggestion) > len(self.value) and suggestion.startswith(self.value):
            self.value = suggestion
            self.cursor_position = len(suggestion)
            if suggestion.endswith(("/", "\\")):
                return  # a folder: keep typing inside it
        await super().action_submit()
