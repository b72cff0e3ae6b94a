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

from vlbench.metrics import METRICS, format_value
from vlbench.store import RunRow
from vlbench.tui.format import prompt_line, recipe_summary, run_label



def _steady(image_class: type[Widget]) -> type[Widget]:
    """The image widget, re-laid out only when the new image's size differs from the old one's.

    textual-image lays the screen out again for every new image (its size may change); in a sweep
    every result has the same size, and a layout of the whole screen is the costliest thing a
    finished run does to the UI. So `show` skips it when the pixel size is unchanged.
    """

    class Steady(image_class, Renderable=image_class._Renderable):
        _same_size = False

        def show(self, path: str | None) -> None:
            size = _pixel_size(path)
            self._same_size = size is not None and size == (self._image_width, self._image_height)
            try:
                self.image = path
            finally:
                self._same_size = False

        def refresh(self, *regions, repaint: bool = True, layout: bool = False, recompose: bool = False):
            return super().refresh(*regions, repaint=repaint, layout=layout and not self._same_size,
                                   recompose=recompose)

    Steady.__name__ = f"Steady{image_class.__name__}"
    return Steady


def _pixel_size(path: str | None) -> tuple[int, int] | None:
    if not path:
        return None
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except OSError:
        return None


IMAGE_CLASSES = {
    "auto": _steady(image_widgets.Image),
    "halfcell": _steady(image_widgets.HalfcellImage),
    "unicode": _steady(image_widgets.UnicodeImage),
    "sixel": _steady(image_widgets.SixelImage),
    "tgp": _steady(image_widgets.TGPImage),
}


class Picture(Vertical):
    """One image with its caption (when beside another), or a line saying why there is none.

    Updated in place (`set`): a new image replaces the old one's pixels, no widgets are re-mounted.
    """

    def __init__(self, image_class: type[Widget]) -> None:
        super().__init__(classes="picture")
        self.image_class = image_class
        self._state: tuple = ("", None, "")  # caption, image path, why there is no image

    def compose(self) -> ComposeResult:
        yield Label("", classes="picture-caption")
        yield self.image_class(None, classes="picture-image")
        yield Static("", classes="picture-missing")

    def set(self, caption: str, path: str | None, missing: str) -> None:
        """Show another image; only what differs is touched (each change here costs a screen layout)."""
        exists = bool(path) and Path(path).is_file()
        state = (caption, path if exists else None, "" if exists else missing)
        if state == self._state:
            return
        old_caption, old_path, old_missing = self._state
        self._state = state
        label = self.query_one(".picture-caption", Label)
        if caption != old_caption:
            label.update(Text(caption))
        label.display = bool(caption)
        image = self.query_one(".picture-image")
        if state[1] != old_path:
            image.show(state[1])
        image.display = exists
        note = self.query_one(".picture-missing", Static)
        if state[2] != old_missing:
            note.update(Text(state[2]))
        note.display = not exists


class PreviewPane(Vertical):
    BORDER_TITLE = "Preview"
    can_focus = True

    def __init__(self, preview_method: str = "auto", **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_class = IMAGE_CLASSES.get(preview_method, IMAGE_CLASSES["auto"])
        self.shown: tuple = ()  # what is on screen, so identical updates do not re-render images
        self._caption_lines = 1

    def compose(self) -> ComposeResult:
        yield Static("No run yet. Type a prompt, then F5 queues it.", id="preview-caption")
        with Horizontal(id="preview-images"):
            yield Picture(self.image_class)
            yield Picture(self.image_class)

    def on_mount(self) -> None:
        for picture in self.query(Picture):
            picture.display = False

    def show(self, run: RunRow | None, *, reference: bool = False, other: RunRow | None = None) -> None:
        """Show `run`; with `reference`, its first reference beside it; with `other`, that run beside it."""
        key = (_state(run), reference, _state(other))
        if key == self.shown:
            return
        self.shown = key
        caption = self.query_one("#preview-caption", Static)
        left, right = self.query(Picture)
        if run is None:
            caption.update("No run selected.")
            self._caption_lines = 1
            left.display = right.display = False
            return
        text = _caption(run, other)
        lines = text.count("\n") + 1
        caption.update(Text(text), layout=lines != self._caption_lines)  # same height: repaint only
        self._caption_lines = lines
        beside = None
        if other is not None:
            beside = (f"#{other.id} (marked) {_label(other)}", other.image, _missing(other))
        elif reference:
            ref = run.reference_paths[0] if run.reference_paths else None
            beside = (f"reference {Path(ref).name if ref else ''}", ref,
                      "no reference image (text only run)" if not ref else f"{ref}: missing")
        if beside is not None:
            left.set(*beside)
        # Alone, the caption above says it all; beside another, each picture names its run.
        right.set(f"#{run.id} {_label(run)}" if beside else "", run.image, _missing(run))
        left.display = beside is not None
        right.display = True


def _label(run: RunRow) -> str:
    label = run_label(run)
    return "" if label == "·" else label


def _state(run: RunRow | None) -> tuple:
    if run is None:
        return ()
    return (run.id, run.status, run.image, tuple(sorted((k, str(v)) for k, v in run.metrics.items())))


def scores_line(run: RunRow) -> str:
    """The run's metric values (vlbench score), e.g. 'SigLIP 0.214 · DINOv2 0.631'; '' when unscored."""
    return " · ".join(f"{METRICS[m].label} {format_value(run.metrics[m])}" for m in METRICS if m in run.metrics)


def _missing(run: RunRow) -> str:
    if run.status == "done":
        return f"image missing: {run.image}" if run.image else "no image recorded"
    if run.status == "failed":
        return f"failed: {run.error or 'no reason recorded'}"
    return f"{run.status}…" if run.status in ("pending", "running") else run.status


def _caption(run: RunRow, other: RunRow | None) -> str:
    def one(r: RunRow) -> str:
        took = f" · {r.duration:.1f} s" if r.duration is not None else ""
        scores = scores_line(r)
        return (f"#{r.id} {r.status}{took} · seed {r.seed} · {recipe_summary(r.recipe, 50)}\n"
                f"{prompt_line(r.prompt, 100)}" + (f"\nscores: {scores}" if scores else ""))
    if other is not None:
        return f"left: {one(other)}\nright: {one(run)}"
    return one(run)
