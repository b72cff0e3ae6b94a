"""Text fields whose keys act in the order typed (every Input of the workbench is an OrderedInput, the prompt an
OrderedTextArea).

Textual inserts a typed character in the Input's own `_on_key`, at once, but runs the Input's bound keys (ctrl+u,
backspace, delete, arrows, home/end, Enter…) only when the key has bubbled up to the App through the queue of every
ancestor (Textual issue #6605). Keys that arrive in one burst (a paste, tmux send-keys, a fast typist over SSH, a
loaded machine) were therefore applied out of order: "ab", backspace, "c" gave "abc" with the "c" deleted, i.e. "ab";
ctrl+u then a path left an empty field; Enter submitted what the field held a moment later. Here the field runs its
own bindings as each key arrives, in the order typed; keys it has no binding for bubble on as before.
"""

from __future__ import annotations

from textual import events
from textual.widget import Widget
from textual.widgets import Input, TextArea


async def run_own_binding(widget: Widget, event: events.Key) -> None:
    """Run the widget's own (non-priority) binding of this key now, as the key arrives. The focused widget's
    bindings come first in the App's binding chain, and priority bindings have run before the key was forwarded
    here: running them now changes when they run, not which one does."""
    for binding in widget._bindings.key_to_bindings.get(event.key, ()):
        if not binding.priority and await widget.app.run_action(binding.action, widget):
            widget._restart_blink()
            event.stop()
            event.prevent_default()
            return


class OrderedInput(Input):
    async def _on_key(self, event: events.Key) -> None:
        if not event.is_printable:  # Input._on_key inserts a printable one
            await run_own_binding(self, event)


class OrderedTextArea(TextArea):
    async def _on_key(self, event: events.Key) -> None:
        if not (event.is_printable or event.key in ("enter", "tab", "escape")):  # TextArea._on_key handles those
            await run_own_binding(self, event)
