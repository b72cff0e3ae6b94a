"""Every workbench command, once: its key binding, footer label, palette title and help line.

Bindings, the command palette and the help screen (F1) are all made from these lists, and the
`id` is what `[keys]` in config.toml overrides. Global commands use function keys and ctrl
chords so they work while a text field has focus; pane commands are plain letters, active only
while that pane's table has focus.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Command:
    id: str  # binding id: the config [keys] name
    keys: str  # Textual key names, comma-separated
    action: str  # action on the owner (the app or the pane)
    title: str  # footer label and palette title
    help: str  # palette help and help-screen text
    show: bool = True  # in the footer
    priority: bool = False  # before the focused widget sees the key


APP = [
    Command("help", "f1,question_mark", "help", "Help", "list every key binding"),
    Command("queue", "f5,ctrl+enter", "queue", "Queue", "queue the current recipe (one run per seed)", priority=True),
    # Function keys are priority bindings: TextArea has its own F6 and F7 (select line / all).
    Command("queue_seeds", "f6", "queue_seeds", "Seeds…", "queue the current recipe over a list or range of seeds",
            priority=True),
    Command("queue_experiment", "f7", "queue_experiment", "Experiment…",
            "queue every config of an experiment type (with the current inputs and seeds)", priority=True),
    Command("add_reference", "f2", "add_reference", "Add ref…", "pick a reference image from the file system",
            priority=True),
    Command("toggle_reference", "f3", "toggle_reference", "Show ref", "show the run's reference beside its image",
            priority=True),
    Command("compare", "f4", "compare", "Compare", "compare the marked run (m) with the selected one side by side",
            priority=True),
    Command("pause", "f8", "pause", "Pause", "pause or resume the worker (the running job finishes)",
            priority=True),
    Command("cancel_running", "f9", "cancel_running", "Cancel job", "cancel the running job at its next step",
            show=False, priority=True),
    Command("open_recipe", "ctrl+o", "open_recipe", "Open recipe", "load a recipe TOML file into Parameters",
            show=False),
    Command("save_recipe", "ctrl+s", "save_recipe", "Save recipe", "save the Parameters as a recipe TOML file",
            show=False),
    Command("next_theme", "ctrl+t", "next_theme", "Theme", "switch to the next theme", show=False),
    Command("jump", "ctrl+g", "jump", "Jump", "jump to a pane: then 1-5 or i, p, q, v, h", priority=True),
]

QUEUE = [
    Command("queue.move_up", "shift+up,u", "move(-1)", "Up", "move the selected pending run up"),
    Command("queue.move_down", "shift+down,d", "move(1)", "Down", "move the selected pending run down"),
    Command("queue.remove", "delete,x", "remove", "Remove", "remove the selected pending run"),
    Command("queue.retry", "r", "retry", "Retry", "queue a failed or cancelled run again"),
    Command("queue.cancel", "c", "cancel", "Cancel", "cancel the selected run (running: at its next step)"),
    Command("queue.mark", "m", "mark", "Mark", "mark the selected run for comparison", show=False),
]

HISTORY = [
    Command("history.filter", "slash", "focus_filter", "Filter", "filter runs by prompt, name or experiment"),
    Command("history.status", "t", "cycle_status", "Status", "show one status only (cycles)", show=False),
    Command("history.sort", "s", "cycle_sort", "Sort", "sort by another column (cycles)"),
    Command("history.order", "o", "flip_order", "Order", "flip the sort order", show=False),
    Command("history.requeue", "r", "requeue", "Re-queue", "queue a new run with the same inputs and recipe"),
    Command("history.load", "l", "load", "Load", "load the run's recipe and inputs into the form"),
    Command("history.mark", "m", "mark", "Mark", "mark the selected run for comparison"),
    Command("history.delete", "delete,x", "delete", "Delete", "delete the run from the history"),
]

# Textual's own bindings, listed on the help screen.
BUILTIN = [
    ("ctrl+p", "command palette: every command, themes"),
    ("ctrl+q", "quit (queued runs stay queued)"),
    ("tab / shift+tab", "next / previous field"),
    ("enter", "in Queue or History: the run's details"),
    ("→", "in a path field: accept the completion"),
]


def bindings(commands: list[Command]) -> list[Binding]:
    return [Binding(c.keys, c.action, c.title, show=c.show, priority=c.priority, id=c.id, tooltip=c.help)
            for c in commands]


def display_keys(keys: str) -> str:
    names = {"question_mark": "?", "slash": "/", "delete": "del", "ctrl+enter": "ctrl+⏎"}
    return " / ".join(names.get(k.strip(), k.strip()) for k in keys.split(","))
