"""One run's image alone, as large as the terminal allows at its true aspect ratio, its recipe beneath.

z or Enter on the Preview (or ctrl+g z) opens it; o opens the image in the system's viewer, y copies its
path (OSC 52); Escape, z or q closes.
"""

from __future__ import annotations

import json

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Static

from vlbench.store import RunRow
from vlbench.tui.format import prompt_line, run_label
from vlbench.tui.widgets.preview import Picture, _missing


class ImageView(Screen[None]):
    BINDINGS = [
        Binding("escape,z,q", "close", "Close", id="image.close"),
        Binding("o", "app.open_image", "Open externally", id="image.open"),
        Binding("y", "app.copy_path", "Copy path", id="image.copy"),
    ]
    DEFAULT_CSS = """
    ImageView { layout: vertical; }
    ImageView Picture { height: 1fr; }
    #image-summary { height: auto; max-height: 8; padding: 0 1; color: $text-muted; }
    #image-hint { height: 1; padding: 0 1; color: $accent; }
    """

    def __init__(self, run: RunRow, image_class) -> None:
        super().__init__()
        self.run = run
        self.image_class = image_class

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Picture(self.image_class, id="image-picture")
            yield Static(summary(self.run), id="image-summary")
            yield Static("Esc: close · o: open in the system's viewer · y: copy the path (OSC 52)", id="image-hint")

    def on_mount(self) -> None:
        self.query_one(Picture).set("", self.run.image, _missing(self.run))

    def action_close(self) -> None:
        self.dismiss(None)


def summary(run: RunRow) -> Text:
    """The run in a few lines: what it is, its prompt, every recipe field, its image path."""
    took = f" · {run.duration:.1f} s" if run.duration is not None else ""
    label = run_label(run)
    head = f"#{run.id} {run.status}{took} · seed {run.seed}" + (f" · {label}" if label != "·" else "")
    recipe = " ".join(f"{k}={json.dumps(v)}" for k, v in run.recipe.items() if k != "seed")
    return Text("\n".join([head, prompt_line(run.prompt, 200), recipe, run.image or ""]))
