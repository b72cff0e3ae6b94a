"""The Preview pane: a run's image at its true aspect ratio, alone, beside its reference, or beside up to
three marked runs.

textual-image picks the terminal's best method (Kitty graphics, Sixel, else half-cell blocks);
`[ui] preview` in config.toml forces one. Every method is given an explicit box of cells that keeps
the image's aspect ratio for the terminal's cell size (`fit_cells`), centred in its frame
(letterboxed): a cell is about twice as tall as it is wide, so an image is never drawn at the
pane's own shape. The module that queries the terminal is imported before the app starts.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Container, Vertical
from textual.widget import Widget
from textual.widgets import Label, Static
from textual_image import widget as image_widgets

from vlbench.metrics import METRICS, format_value
from vlbench.store import RunRow
from vlbench.tui import keys
from vlbench.tui.format import _value, prompt_line, recipe_summary, run_label, varying_fields
from vlbench.tui.wording import failure_text
from vlbench.tui.widgets.pane import Pane

MAX_PICTURES = 4  # the selected run and up to three marked ones


def cell_size() -> tuple[int, int]:
    """The terminal's cell size in pixels (width, height), as textual-image measured it at start."""
    from textual_image._terminal import get_cell_size

    size = get_cell_size()
    return size.width, size.height


def fit_cells(pixels: tuple[int, int], cells: tuple[int, int], cell: tuple[int, int] | None = None) -> tuple[int, int]:
    """The largest box of cells, inside `cells` (width, height), that shows an image of `pixels` (width,
    height) at its own aspect ratio on a terminal whose cells are `cell` pixels (width, height)."""
    (pw, ph), (cw, ch) = pixels, cells
    if pw <= 0 or ph <= 0 or cw <= 0 or ch <= 0:
        return 0, 0
    cell_w, cell_h = cell or cell_size()
    if cell_w <= 0 or cell_h <= 0:  # a terminal that reports no cell size: assume the usual 1:2 cell
        cell_w, cell_h = 10, 20
    scale = min(cw * cell_w / pw, ch * cell_h / ph)
    return max(1, min(cw, round(pw * scale / cell_w))), max(1, min(ch, round(ph * scale / cell_h)))


def _steady(image_class: type[Widget]) -> type[Widget]:
    """The image widget, re-laid out only when the new image's size differs from the old one's.

    textual-image lays the screen out again for every new image (its size may change); in a sweep
    every result has the same size, and a layout of the whole screen is the costliest thing a
    finished run does to the UI. So `show` skips it when the pixel size is unchanged.
    """

    class Steady(image_class, Renderable=image_class._Renderable):
        _same_size = False

        def show(self, path: str | None) -> None:
            size = pixel_size(path)
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


def pixel_size(path: str | None) -> tuple[int, int] | None:
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


class Frame(Container):
    """Where a picture's image is centred; tells its picture when its size changes."""

    def on_resize(self) -> None:
        picture = self.parent
        if isinstance(picture, Picture):
            picture.fit()


class Picture(Vertical):
    """One image with its caption (when beside another), or a line saying why there is none.

    Updated in place (`set`): a new image replaces the old one's pixels, no widgets are re-mounted.
    """

    def __init__(self, image_class: type[Widget], **kwargs) -> None:
        super().__init__(classes="picture", **kwargs)
        self.image_class = image_class
        self._state: tuple = ("", None, "")  # caption, image path, why there is no image
        self.pixels: tuple[int, int] | None = None
        self.cells: tuple[int, int] = (0, 0)  # the box the image is drawn in

    def compose(self) -> ComposeResult:
        yield Label("", classes="picture-caption")
        with Frame(classes="picture-frame"):
            yield self.image_class(None, classes="picture-image")
            yield Static("", classes="picture-missing")

    @property
    def path(self) -> str | None:
        return self._state[1]

    def set(self, caption: str | Text, path: str | None, missing: str) -> None:
        """Show another image; only what differs is touched (each change here costs a screen layout)."""
        exists = bool(path) and Path(path).is_file()
        state = (caption, path if exists else None, "" if exists else missing)
        if state == self._state:
            return
        old_caption, old_path, old_missing = self._state
        self._state = state
        label = self.query_one(".picture-caption", Label)
        if caption != old_caption:
            label.update(caption if isinstance(caption, Text) else Text(caption))
        label.display = bool(caption)
        image = self.query_one(".picture-image")
        if state[1] != old_path:
            self.pixels = pixel_size(state[1])
            self.fit()
            image.show(state[1])
        image.display = exists
        note = self.query_one(".picture-missing", Static)
        if state[2] != old_missing:
            note.update(Text(state[2]))
        note.display = not exists

    def fit(self) -> None:
        """Size the image widget to the largest true-aspect box inside the frame (letterboxed)."""
        frame = self.query_one(Frame)
        cells = fit_cells(self.pixels or (0, 0), (frame.size.width, frame.size.height))
        if cells != self.cells and all(cells):
            self.cells = cells
            image = self.query_one(".picture-image")
            image.styles.width, image.styles.height = cells


class PreviewPane(Pane):
    BORDER_TITLE = "Preview"
    BINDINGS = keys.bindings(keys.PREVIEW)
    can_focus = True

    def __init__(self, preview_method: str = "auto", **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_class = IMAGE_CLASSES.get(preview_method, IMAGE_CLASSES["auto"])
        self.shown: tuple = ()  # what is on screen, so identical updates do not re-render images
        self._caption_lines = 1

    def watch_has_focus(self, has_focus: bool) -> None:
        # Gaining or losing focus changes the pane's own look only: restyle it, not the pictures, frames and captions
        # below it (Widget.watch_has_focus restyles the whole subtree; a third of a switch to or from the Preview).
        # No rule styles the Preview's contents by its focus (test_tui_pane_switch checks the stylesheet).
        self.app.stylesheet.update_nodes([self], animate=True)

    def compose(self) -> ComposeResult:
        yield Static("No run yet. Type a prompt, then F5 (or ctrl+r) queues it.", id="preview-caption")
        with Container(id="preview-images"):
            for i in range(MAX_PICTURES):
                yield Picture(self.image_class, id=f"picture-{i}")

    def on_mount(self) -> None:
        for picture in self.query(Picture):
            picture.display = False

    @property
    def showing(self) -> int | None:
        """The run the Preview shows (the selected one), None before any."""
        return self.shown[0][0] if self.shown and self.shown[0] else None

    @property
    def pictures(self) -> list[Picture]:
        return list(self.query(Picture))

    def show(self, run: RunRow | None, *, reference: bool = False, others: list[RunRow] | None = None) -> None:
        """Show `run`; with `reference`, its first reference beside it; with `others`, those runs beside it."""
        others = [o for o in others or [] if run is None or o.id != run.id][: MAX_PICTURES - 1]
        key = (_state(run), reference, tuple(_state(o) for o in others))
        if key == self.shown:
            return
        self.shown = key
        caption = self.query_one("#preview-caption", Static)
        pictures = self.pictures
        if run is None:
            caption.update("No run selected.")
            self._caption_lines = 1
            for picture in pictures:
                picture.display = False
            return
        if others:
            text = compare_caption([*others, run])
        else:
            text = _caption(run)
        lines = text.count("\n") + 1
        caption.update(Text(text), layout=lines != self._caption_lines)  # same height: repaint only
        self._caption_lines = lines
        shown: list[tuple[str | Text, str | None, str]] = []
        if others:
            for other in others:
                shown.append((picture_caption(other, marked=True), other.image, _missing(other)))
        elif reference:
            ref = run.reference_paths[0] if run.reference_paths else None
            shown.append((f"reference {Path(ref).name if ref else ''}", ref,
                          "no reference image (text only run)" if not ref else f"{ref}: missing"))
        # Alone, the caption above says it all; beside others, each picture names its run.
        shown.append((picture_caption(run) if len(shown) else "", run.image, _missing(run)))
        self._arrange(len(shown))
        for picture, what in zip(pictures, shown):
            picture.set(*what)
            picture.display = True
        for picture in pictures[len(shown):]:
            picture.display = False

    def _arrange(self, n: int) -> None:
        """One picture fills the pane; two sit side by side (or stacked in a tall pane); three or four in 2×2."""
        area = self.query_one("#preview-images")
        cell_w, cell_h = cell_size()
        wide = area.size.width * cell_w >= area.size.height * cell_h
        columns, rows = (1, 1) if n == 1 else ((2, 1) if wide else (1, 2)) if n == 2 else (2, 2)
        if (area.styles.grid_size_columns, area.styles.grid_size_rows) != (columns, rows):
            area.styles.grid_size_columns, area.styles.grid_size_rows = columns, rows


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
        return f"failed: {failure_text(run.error, run.error_data) or 'no reason recorded'}"
    return f"{run.status}…" if run.status in ("pending", "running") else run.status


def _caption(run: RunRow) -> str:
    took = f" · {run.duration:.1f} s" if run.duration is not None else ""
    scores = scores_line(run)
    label = _label(run)
    return (f"#{run.id} {run.status}{took} · seed {run.seed} · {label + ' · ' if label else ''}"
            f"{recipe_summary(run.recipe, 50)}\n{prompt_line(run.prompt, 100)}" + (f"\nscores: {scores}" if scores else ""))


def picture_caption(run: RunRow, marked: bool = False) -> Text:
    """The line above one of several pictures: which run, its seed, its label."""
    text = Text.assemble((f"#{run.id}", "bold"), (" ●" if marked else "", "magenta"), f" seed {run.seed}")
    if _label(run):
        text.append(f" · {_label(run)}")
    return text


def differences(runs: list[RunRow]) -> list[tuple[str, list[str]]]:
    """(what, its value in each run) for everything that differs between these runs: prompt, seed,
    references, recipe fields."""
    out: list[tuple[str, list[str]]] = []
    if len({r.prompt for r in runs}) > 1:
        out.append(("prompt", [prompt_line(r.prompt, 24) for r in runs]))
    if len({r.seed for r in runs}) > 1:
        out.append(("seed", [str(r.seed) for r in runs]))
    if len({tuple(r.reference_paths) for r in runs}) > 1:
        out.append(("references", [", ".join(Path(p).name for p in r.reference_paths) or "none" for r in runs]))
    for name in varying_fields([r.recipe for r in runs]):
        out.append((name, [_value(r.recipe.get(name)) for r in runs]))
    return out


def compare_caption(runs: list[RunRow]) -> str:
    """What differs between the compared runs, one parameter a line: 'layer  -2 | -5 | -10'."""
    ids = " | ".join(f"#{r.id}" for r in runs)
    diff = differences(runs)
    if not diff:
        return f"comparing {ids}: same inputs and recipe"
    lines = [f"comparing {ids}; what differs:"]
    lines += [f"  {name}: {' | '.join(values)}" for name, values in diff[:6]]
    if len(diff) > 6:
        lines.append(f"  … and {len(diff) - 6} more (Enter on a run lists its recipe)")
    return "\n".join(lines)
