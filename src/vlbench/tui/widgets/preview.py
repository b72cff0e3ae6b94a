"""The Preview pane: a run's image inline, optionally beside its reference or another run.

textual-image picks the terminal's best method (Kitty graphics, Sixel, else half-cell blocks);
`[ui] preview` in config.toml forces one. Its module queries the terminal when imported, so this
module is imported before the app starts.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Label, Static
from textual_image import widget as image_widgets

from vlbench.store import RunRow
from vlbench.tui.format import prompt_line, recipe_summary, run_label

IMAGE_CLASSES = {
    "auto": image_widgets.Image,
    "halfcell": image_widgets.HalfcellImage,
    "unicode": image_widgets.UnicodeImage,
    "sixel": image_widgets.SixelImage,
    "tgp": image_widgets.TGPImage,
}


class Picture(Vertical):
    """One image with its caption, or a line saying why there is none."""

    def __init__(self, caption: str, path: str | None, image_class: type[Widget], missing: str) -> None:
        super().__init__(classes="picture")
        self.caption = caption
        self.path = path
        self.image_class = image_class
        self.missing = missing

    def compose(self) -> ComposeResult:
        yield Label(Text(self.caption), classes="picture-caption")
        if self.path and Path(self.path).is_file():
            yield self.image_class(self.path, classes="picture-image")
        else:
            yield Static(Text(self.missing), classes="picture-missing")


class PreviewPane(Vertical):
    BORDER_TITLE = "Preview"
    can_focus = True

    def __init__(self, preview_method: str = "auto", **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_class = IMAGE_CLASSES.get(preview_method, image_widgets.Image)
        self.shown: tuple = ()  # what is on screen, so identical updates do not re-render images

    def compose(self) -> ComposeResult:
        yield Static("No run yet. Type a prompt, then F5 queues it.", id="preview-caption")
        yield Horizontal(id="preview-images")

    def show(self, run: RunRow | None, *, reference: bool = False, other: RunRow | None = None) -> None:
        """Show `run`; with `reference`, its first reference beside it; with `other`, that run beside it."""
        key = (_state(run), reference, _state(other))
        if key == self.shown:
            return
        self.shown = key
        caption = self.query_one("#preview-caption", Static)
        box = self.query_one("#preview-images", Horizontal)
        box.remove_children()
        if run is None:
            caption.update("No run selected.")
            return
        caption.update(Text(_caption(run, other)))
        pictures = []
        if other is not None:
            pictures.append(Picture(f"#{other.id} (marked) {_label(other)}", other.output_path,
                                    self.image_class, _missing(other)))
        elif reference:
            ref = run.images[0] if run.images else None
            pictures.append(Picture(f"reference {Path(ref).name if ref else ''}", ref, self.image_class,
                                    "no reference image (text only run)" if not ref else f"{ref}: missing"))
        pictures.append(Picture(f"#{run.id} {_label(run)}", run.output_path, self.image_class, _missing(run)))
        box.mount_all(pictures)


def _label(run: RunRow) -> str:
    label = run_label(run)
    return "" if label == "·" else label


def _state(run: RunRow | None) -> tuple:
    return (run.id, run.status, run.output_path) if run is not None else ()


def _missing(run: RunRow) -> str:
    if run.status == "done":
        return f"image missing: {run.output_path}" if run.output_path else "no image recorded"
    if run.status == "failed":
        return f"failed: {run.error or 'no reason recorded'}"
    return f"{run.status}…" if run.status in ("pending", "running") else run.status


def _caption(run: RunRow, other: RunRow | None) -> str:
    def one(r: RunRow) -> str:
        took = f" · {r.duration:.1f} s" if r.duration is not None else ""
        return (f"#{r.id} {r.status}{took} · seed {r.seed} · {recipe_summary(r.recipe, 50)}\n"
                f"{prompt_line(r.prompt, 100)}")
    if other is not None:
        return f"left: {one(other)}\nright: {one(run)}"
    return one(run)
