"""Every workbench command, once: its keys, footer label, palette title, help line and ctrl+g letter.

Bindings, the command palette, the help screen (F1), the footer's key labels and the ctrl+g menu are
all made from these lists, and the `id` is what `[keys]` in config.toml overrides. Global commands
use function keys *and* a key that survives tmux and SSH clients (which often eat F-keys): a ctrl
chord where a free one exists, else `go`, the letter typed after ctrl+g. Pane commands are plain
letters, active only while that pane has focus.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Command:
    id: str  # binding id: the config [keys] name
    keys: str  # Textual key names, comma-separated ("" = only through ctrl+g and the palette)
    action: str  # action on the owner (the app or the pane)
    title: str  # footer label and palette title
    help: str  # palette help and help-screen text
    show: bool = True  # in the footer
    priority: bool = False  # before the focused widget sees the key
    go: str = ""  # the key after ctrl+g (the "go" menu); works in every terminal


GO = "ctrl+g"  # the menu key: panes and commands by one more letter

APP = [
    Command("help", "f1,question_mark", "help", "Help", "list every key binding", go="question_mark"),
    # ctrl+enter reaches the app only where the terminal reports it (not under tmux): ctrl+r always does.
    Command("queue", "f5,ctrl+r,ctrl+enter", "queue", "Queue", "queue the current recipe (one run per seed)",
            priority=True, go="r"),
    # Function keys are priority bindings: TextArea has its own F6 and F7 (select line / all).
    Command("queue_seeds", "f6,ctrl+n", "queue_seeds", "Seeds…", "queue the current recipe over a list or range of seeds",
            priority=True, go="n"),
    Command("queue_experiment", "f7", "queue_experiment", "Experiment…",
            "queue every config of an experiment type (with the current inputs and seeds)", priority=True, go="e"),
    Command("add_reference", "f2,ctrl+f", "add_reference", "Add ref…", "pick a reference image from the file system",
            priority=True, go="a"),
    Command("toggle_reference", "f3", "toggle_reference", "Show ref", "show the run's reference beside its image",
            priority=True, go="b"),
    Command("compare", "f4", "compare", "Compare",
            "compare the marked runs (m, up to 3) with the selected one, side by side", priority=True, go="c"),
    Command("pause", "f8", "pause", "Pause", "pause or resume the worker (the running job finishes; saved across "
            "restarts)", priority=True, go="s"),
    Command("cancel_running", "f9", "cancel_running", "Cancel job", "cancel the running job at its next step",
            show=False, priority=True, go="k"),
    Command("fullscreen", "", "fullscreen", "Full screen", "the selected run's image alone, with its recipe",
            show=False, go="z"),
    Command("follow", "", "toggle_follow", "Follow latest", "the Preview follows each new result (on/off)",
            show=False, go="f"),
    Command("open_image", "", "open_image", "Open image externally",
            "open the selected run's image in the system's viewer (xdg-open / open, on this machine)", show=False,
            go="x"),
    Command("copy_path", "", "copy_path", "Copy output path",
            "copy the selected run's image path to the clipboard (OSC 52: works over SSH)", show=False, go="y"),
    # Priority: the dialog opens as the key arrives (Textual then mounts it, its field focused, before it hands on
    # the next key), so a path typed right after ctrl+o goes to its field. A non-priority binding ran only once the
    # key had bubbled up from the focused widget: the keys typed behind it went into the prompt.
    Command("open_recipe", "ctrl+o", "open_recipe", "Open recipe",
            "load a recipe TOML file into Parameters (fields it does not set stay as they are)", show=False, go="o",
            priority=True),
    Command("save_recipe", "ctrl+s", "save_recipe", "Save recipe", "save the Parameters as a recipe TOML file",
            show=False, go="w"),
    Command("next_theme", "ctrl+t", "next_theme", "Next theme", "switch to the next theme (saved for next time)",
            show=False, go="t"),
    Command("jump", GO, "jump", "Go", "the go menu: a pane (1-5 or i p q v h) or a command by one letter",
            priority=True),
]

# One key per pane (alt+digit), and its ctrl+g digit or initial; in a narrow terminal the pane fills the screen.
PANE_NAMES = [("inputs", "Inputs", "i"), ("parameters", "Parameters", "p"), ("queue", "Queue", "q"),
              ("preview", "Preview", "v"), ("history", "History", "h")]
PANES = [Command(f"pane.{name}", f"alt+{n}", f"focus_pane('{name}')", title, f"go to {title}", show=False,
                 priority=True, go=str(n)) for n, (name, title, _) in enumerate(PANE_NAMES, 1)]
PANE_LETTERS = {name: letter for name, _, letter in PANE_NAMES}


def pane_of(command: Command) -> str:
    """The pane a PANES command goes to."""
    return command.id.removeprefix("pane.")


QUEUE = [
    Command("queue.move_up", "shift+up,u", "move(-1)", "Up", "move the selected pending run up"),
    Command("queue.move_down", "shift+down,d", "move(1)", "Down", "move the selected pending run down"),
    Command("queue.move_top", "t", "move_top", "Top", "move the selected pending run (or batch) to the front"),
    Command("queue.remove", "delete,x", "remove", "Remove",
            "remove the selected pending run (asks first); a finished one leaves the Queue (History keeps it)"),
    Command("queue.retry", "r", "retry", "Retry", "queue a failed or cancelled run again"),
    Command("queue.cancel", "c", "cancel", "Cancel", "cancel the selected run or batch (running: at its next step)"),
    Command("queue.cancel_all", "C", "cancel_all", "Cancel all", "cancel every pending run (asks first)",
            show=False),
    Command("queue.clear_finished", "X", "clear_finished", "Clear done",
            "clear finished runs from the Queue (History keeps them)", show=False),
    Command("queue.expand", "space", "toggle_batch", "Expand", "expand or collapse the selected batch", show=False),
    Command("queue.mark", "m", "mark", "Mark", "mark the selected run for comparison (again: unmark)", show=False),
]

HISTORY = [
    Command("history.filter", "slash", "focus_filter", "Filter",
            "filter runs by prompt, name or experiment (Esc clears)"),
    Command("history.status", "t", "cycle_status", "Status", "show one status only (cycles)", show=False),
    Command("history.sort", "s", "cycle_sort", "Sort", "sort by another column (cycles)"),
    Command("history.order", "o", "flip_order", "Order", "flip the sort order", show=False),
    Command("history.requeue", "r", "requeue", "Re-queue", "queue a new run with the same inputs and recipe"),
    Command("history.load", "l", "load", "Load", "load the run's recipe and inputs into the form"),
    Command("history.mark", "m", "mark", "Mark", "mark the selected run for comparison (again: unmark)"),
    Command("history.delete", "delete,x", "delete", "Delete", "delete the run from the history"),
    Command("history.unselect", "escape", "unselect", "Unselect",
            "leave the run: the Preview follows the latest result again", show=False),
]

# The Preview's letters run the app's commands (the "app." actions) on the selected run.
PREVIEW = [
    Command("preview.fullscreen", "z,enter", "app.fullscreen", "Zoom", "the image alone, full screen, with its recipe"),
    Command("preview.follow", "f", "app.toggle_follow", "Follow", "follow the latest result (on/off)"),
    Command("preview.reference", "b", "app.toggle_reference", "Ref", "show the run's reference beside it (F3)"),
    Command("preview.compare", "c", "app.compare", "Compare", "compare the marked runs with the selected one (F4)"),
    Command("preview.open", "o", "app.open_image", "Open", "open the image in the system's viewer", show=False),
    Command("preview.copy", "y", "app.copy_path", "Copy path", "copy the image path (OSC 52)", show=False),
]

# Keys that belong to widgets and dialogs rather than commands, listed on the help screen.
BUILTIN = [
    ("ctrl+p", "anywhere", "command palette: every command, themes"),
    ("ctrl+q", "anywhere", "quit (queued runs stay queued; asks while a run is generating)"),
    ("tab / shift+tab", "anywhere", "next / previous field"),
    ("enter", "Queue, History", "the run's details (on a batch row: expand or collapse)"),
    ("→", "path fields", "accept the completion"),
    ("← / →", "choice fields", "step through the options"),
    ("a letter", "choice fields", "jump to the next option starting with it"),
    ("enter / space", "choice fields", "list every option"),
    ("del / backspace / x", "reference list", "remove the highlighted reference"),
    ("ctrl+k", "experiment dialog", "quick: only the configs marked quick"),
    ("y / n", "questions", "yes / no"),
    ("escape", "dialogs, full screen", "close"),
]

_NAMES = {"question_mark": "?", "slash": "/", "delete": "del", "ctrl+enter": "ctrl+⏎", "space": "space",
          "shift+up": "shift+↑", "shift+down": "shift+↓", "escape": "esc", "enter": "⏎"}


def alt_digits() -> None:
    """Read ESC followed by a digit as alt+digit, the way xterm, tmux, screen and most SSH clients send it.

    Textual maps those sequences to the characters macOS Option+digit types in WezTerm ("\\x1b3" -> "£"),
    so under tmux alt+3 typed a pound sign into the focused field instead of reaching a binding. Without
    the mapping Textual's parser reads the ESC as the alt modifier (after its ESCDELAY) -- what every other
    ESC+key already gets. Idempotent; touches only the ten digit sequences.
    """
    from textual import _ansi_sequences

    for digit in "1234567890":
        if isinstance(_ansi_sequences.ANSI_SEQUENCES_KEYS.get(f"\x1b{digit}"), str):
            del _ansi_sequences.ANSI_SEQUENCES_KEYS[f"\x1b{digit}"]


def bindings(commands: list[Command]) -> list[Binding]:
    return [Binding(c.keys, c.action, c.title, show=c.show, priority=c.priority, id=c.id, tooltip=c.help)
            for c in commands if c.keys]


def by_id() -> dict[str, Command]:
    return {c.id: c for c in APP + PANES + QUEUE + HISTORY + PREVIEW}


def every_command() -> list[tuple[str, list[Command]]]:
    """(where, commands) in help-screen order."""
    return [("anywhere", APP), ("anywhere", PANES), ("Queue", QUEUE), ("History", HISTORY), ("Preview", PREVIEW)]


def key_name(key: str) -> str:
    key = key.strip()
    return _NAMES.get(key, key)


def display_keys(keys: str) -> str:
    return " / ".join(key_name(k) for k in keys.split(",") if k.strip())


def with_go(command: Command, keys: str | None = None) -> str:
    """Every way to run a command: its keys (or their override), then ctrl+g and its letter."""
    shown = display_keys(command.keys if keys is None else keys)
    go = f"{GO} {key_name(command.go)}" if command.go else ""
    return " / ".join(p for p in (shown, go) if p)


def footer_label(command: Command, keys: str | None = None) -> str:
    """The footer's short form: the function key and one alternative that survives tmux, e.g. 'f5 ^r'."""
    names = [k.strip() for k in (command.keys if keys is None else keys).split(",") if k.strip()]
    fkeys = [k for k in names if k.startswith("f") and k[1:].isdigit()]
    other = [k for k in names if k not in fkeys and k != "ctrl+enter"]
    parts = fkeys[:1]
    if other:
        parts.append(_short(other[0]))
    elif command.go:
        parts.append(f"^g {key_name(command.go)}")
    return " ".join(parts) if parts else _short(names[0]) if names else ""


def _short(key: str) -> str:
    name = key_name(key)
    return "^" + name[5:] if name.startswith("ctrl+") else name
