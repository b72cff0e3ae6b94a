"""An Input whose keys act in the order typed (every text field of the workbench is one).

Textual inserts a typed character in the Input's own `_on_key`, at once, but runs the Input's bound keys (ctrl+u,
backspace, delete, arrows, home/end, Enter…) only when the key has bubbled up to the App through the queue of every
ancestor (Textual issue #6605). Keys that arrive in one burst (a paste, tmux send-keys, a fast typist over SSH, a
loaded machine) were therefore applied out of order: "ab", backspace, "c" gave "abc" with the "c" deleted, i.e. "ab";
ctrl+u then a path left an empty field; Enter submitted what the field held a moment later. Here the field runs its
own bindings as each key arrives, in the order typed; keys it has no binding for bubble on as before.
"""

from __future__ import annotations

from textual import events
from textual.widgets import Input


class OrderedInput(Input):
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
