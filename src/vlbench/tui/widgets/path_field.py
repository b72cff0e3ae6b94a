"""A path field: an Input whose keys act in the order typed, and whose Enter takes a completion it shows.

Used by the reference path in Inputs and by the file picker's path (both with a PathSuggester).
"""

from __future__ import annotations

from textual import events
from textual.widgets import Input


class PathField(Input):
    """Textual inserts a typed character in the Input's own `_on_key`, at once, but runs the Input's bound keys
    (ctrl+u, backspace, arrows, Enter…) only when the key has bubbled up to the App through the queue of every
    ancestor (Textual issue #6605). Keys that arrive in one burst (tmux send-keys, a paste, a fast typist on a
    loaded machine) were therefore applied out of order: ctrl+u then a path left an empty field (the path was
    typed, then wiped), and Enter submitted what the field held a moment later. Here the field runs its own
    bindings as each key arrives, in the order typed; keys it has no binding for bubble on as before.

    Enter with a completion shown takes the completion: a folder is entered (the next keys continue inside it),
    a file is submitted (Enter submitted the uncompleted text). Not where a new name is typed (save as): there
    Enter submits what was typed."""

    def __init__(self, *args, complete_on_enter: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.complete_on_enter = complete_on_enter

    async def _on_key(self, event: events.Key) -> None:
        if event.is_printable:
            return  # Input._on_key inserts it
        # The focused widget's bindings come first in the App's binding chain, and priority bindings have run
        # before the key was forwarded here: running them now changes when they run, not which one does.
        for binding in self._bindings.key_to_bindings.get(event.key, ()):
            if not binding.priority and await self.app.run_action(binding.action, self):
                self._restart_blink()
                event.stop()
                event.prevent_default()
                return

    async def action_submit(self) -> None:
        suggestion = self._suggestion if self.complete_on_enter else ""
        if suggestion and len(suggestion) > len(self.value) and suggestion.startswith(self.value):
            self.value = suggestion
            self.cursor_position = len(suggestion)
            if suggestion.endswith(("/", "\\")):
                return  # a folder: keep typing inside it
        await super().action_submit()
