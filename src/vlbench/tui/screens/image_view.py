"""One run's image alone, as large as the terminal allows at its true aspect ratio, its recipe beneath.

z or Enter on the Preview (or ctrl+g z) opens it; o opens the image in the system's viewer, y copies its
path (OSC 52); a steps through the attention heat maps of a run with image_attention (the VL text's attention over
each reference, vlbench.analysis.heatmap) and back to the image; Escape, z or q closes.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Static

from vlbench.analysis import heatmap
from vlbench.files import atomic_write
from vlbench.paths import cache_dir
from vlbench.records import vl_extractions
from vlbench.store import RunRow
from vlbench.tui.format import prompt_line, run_label
from vlbench.tui.widgets.preview import Picture, _missing


class ImageView(Screen[None]):
    BINDINGS = [
        Binding("escape,z,q", "close", "Close", id="image.close", tooltip="close the full-screen view"),
        Binding("o", "app.open_image", "Open externally", id="image.open",
                tooltip="open the image in the system's viewer"),
        Binding("y", "app.copy_path", "Copy path", id="image.copy", tooltip="copy the image path (OSC 52)"),
        Binding("a", "attention", "Attention map", id="image.attention",
                tooltip="the attention heat map of each reference (runs with image_attention), then the image again"),
    ]  # F1 lists these (screens/help.py)
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
        self.showing = 0  # 0: the run's image; i: heat map i (1-based)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Picture(self.image_class, id="image-picture")
            yield Static(summary(self.run), id="image-summary")
            yield Static("Esc: close · o: open in the system's viewer · y: copy the path (OSC 52) · a: attention "
                         "heat map", id="image-hint")

    def on_mount(self) -> None:
        self.query_one(Picture).set("", self.run.image, _missing(self.run))

    def action_close(self) -> None:
        self.dismiss(None)

    def action_attention(self) -> None:
        """The next heat map of this run (one per reference), then the image again."""
        picture = self.query_one(Picture)
        try:
            maps = attention_maps(self.run)
        except (OSError, ValueError) as exc:  # a reference moved or its record does not fit it
            self.notify(f"no heat map: {exc}", severity="warning")
            return
        if not maps:
            self.notify("this run read no attention: its recipe has image_attention none", severity="warning")
            return
        self.showing = (self.showing + 1) % (len(maps) + 1)
        if self.showing == 0:
            picture.set("", self.run.image, _missing(self.run))
        else:
            picture.set(f"attention of the VL text over reference {self.showing} of {len(maps)} (a: next)",
                        str(maps[self.showing - 1]), "")


def attention_maps(run: RunRow) -> list[Path]:
    """The run's heat maps as PNG files under the cache dir (drawn once from its record and its references);
    [] when the run read no attention."""
    count = sum(len((vl.get("image_attention") or {}).get("images", [])) for _, vl in vl_extractions(run.conditioning))
    if not count:
        return []
    folder = cache_dir() / "heatmaps"
    paths = [folder / f"run-{run.id}-{i}.png" for i in range(1, count + 1)]
    if all(p.is_file() for p in paths):
        return paths
    missing = [p for p in run.reference_paths if not Path(p).is_file()]
    if missing:
        raise OSError(f"the reference {missing[0]} is not there any more")
    folder.mkdir(parents=True, exist_ok=True)
    for path, img in zip(paths, heatmap.from_conditioning(run.conditioning, run.reference_paths, run.recipe)):
        atomic_write(path, lambda tmp, img=img: img.save(tmp, format="PNG"))
    return paths


def summary(run: RunRow) -> Text:
    """The run in a few lines: what it is, its prompt, every recipe field, its image path."""
    took = f" · {run.duration:.1f} s" if run.duration is not None else ""
    label = run_label(run)
    head = f"#{run.id} {run.status}{took} · seed {run.seed}" + (f" · {label}" if label != "·" else "")
    recipe = " ".join(f"{k}={json.dumps(v)}" for k, v in run.recipe.items() if k != "seed")
    return Text("\n".join([head, prompt_line(run.prompt, 200), recipe, run.image or ""]))
