"""The comparison grid: which results row goes in which cell (`grid_layout`), then a PIL image of it.

One block per (reference, prompt, seed): the reference on the left, one cell per config. When
exactly two Recipe fields vary across the configs, a block is 2-D (rows: the field with fewer
values, columns: the other). Every results row gets a cell, never silently dropped: a row that would
land on an occupied cell gets an extra line in its block.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlbench.errors import UserError
from vlbench.experiments.results import first_reference, reference_copy, references_key
from vlbench.files import atomic_write
from vlbench.recipe import Recipe

IGNORED = ("seed",)  # a run axis, not a config parameter


@dataclass
class Block:
    title: str
    reference: str  # the run's copy of the reference, relative to the output folder
    row_labels: list[str]
    col_labels: list[str]
    cells: dict[tuple[int, int], int] = field(default_factory=dict)  # (row, col) -> index into rows


@dataclass
class GridLayout:
    axes: tuple[str, str] | None  # (row field, column field) of a 2-D grid; None when 1-D
    columns: list[str]  # config names in column order (1-D) or every config (2-D)
    blocks: list[Block]

    def assigned(self) -> list[int]:
        return sorted(i for b in self.blocks for i in b.cells.values())


def _column_id(row: dict) -> str:
    recipe = {k: v for k, v in row["recipe"].items() if k not in IGNORED}
    return json.dumps([row["name"], recipe], sort_keys=True, default=str)


def _effective(recipe: dict) -> dict:
    try:
        return Recipe.from_dict(recipe).effective()
    except UserError:  # a row of an earlier vlbench whose recipe no longer validates: every field counts
        return recipe


def _fmt(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, float) and value.is_integer():
        return str(value)
    return str(value)


def grid_layout(rows: list[dict]) -> GridLayout:
    """Cell assignments for `rows` (results rows, any status): every row lands in exactly one cell."""
    # columns: distinct (name, recipe minus seed), in type-file order
    first: dict[str, tuple[int, int, dict]] = {}
    for i, row in enumerate(rows):
        first.setdefault(_column_id(row), (row.get("config_index", 0), i, row))
    order = sorted(first, key=lambda c: first[c][:2])
    col_rows = [first[c][2] for c in order]
    labels = [r["name"] for r in col_rows]
    for i, name in enumerate(labels):  # same name, different recipe (an edited type file): tell them apart
        if labels.count(name) > 1:
            labels[i] = f"{name} ({labels[:i].count(name) + 1})"

    # which Recipe fields vary across the columns (among the configs where the field has an effect)
    keys = list(col_rows[0]["recipe"]) if col_rows else []
    effective = [_effective(r["recipe"]) for r in col_rows]
    varying = [k for k in keys if k not in IGNORED
               and len({json.dumps(e[k], default=str) for e in effective if k in e}) > 1]
    axes = None
    if len(varying) == 2:
        pairs = [tuple(json.dumps(r["recipe"].get(k), default=str) for k in varying) for r in col_rows]
        if len(set(pairs)) == len(pairs):
            a, b = varying
            na = len({p[0] for p in pairs})
            nb = len({p[1] for p in pairs})
            axes = (a, b) if na <= nb else (b, a)

    if axes is None:
        position = {c: (0, j) for j, c in enumerate(order)}
        row_labels, col_labels = [""], labels
    else:
        ra, ca = axes
        row_values = _distinct([r["recipe"].get(ra) for r in col_rows])
        col_values = _distinct([r["recipe"].get(ca) for r in col_rows])
        position = {c: (_index(row_values, r["recipe"].get(ra)), _index(col_values, r["recipe"].get(ca)))
                    for c, r in zip(order, col_rows)}
        row_labels = [f"{ra} = {_fmt(v)}" for v in row_values]
        col_labels = [f"{ca} = {_fmt(v)}" for v in col_values]

    # blocks: one per (reference, prompt, seed)
    ref_rank: dict[str, int] = {}
    prompt_rank: dict[str, int] = {}
    for row in rows:
        ref_rank.setdefault(references_key(row), len(ref_rank))
        prompt_rank.setdefault(row["prompt"], len(prompt_rank))
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((references_key(row), row["prompt"], row["seed"]), []).append(i)
    blocks = []
    for refs_key, prompt, seed in sorted(groups, key=lambda k: (ref_rank[k[0]], prompt_rank[k[1]], k[2])):
        members = groups[(refs_key, prompt, seed)]
        ref, sha = first_reference(rows[members[0]])
        block = Block(title=f"{Path(ref).name} · seed {seed} · {prompt}", reference=reference_copy(ref, sha),
                      row_labels=list(row_labels), col_labels=list(col_labels))
        for i in members:
            r, c = position[_column_id(rows[i])]
            while (r, c) in block.cells:  # never drop a row: give it a line of its own
                r += 1
                if r >= len(block.row_labels):
                    block.row_labels.append("(repeat)")
            block.cells[(r, c)] = i
        blocks.append(block)
    return GridLayout(axes=axes, columns=[r["name"] for r in col_rows], blocks=blocks)


def _distinct(values: list) -> list:
    out: list = []
    for v in values:
        if not any(json.dumps(v, default=str) == json.dumps(o, default=str) for o in out):
            out.append(v)
    return out


def _index(values: list, value: Any) -> int:
    key = json.dumps(value, default=str)
    return next(i for i, v in enumerate(values) if json.dumps(v, default=str) == key)


# ---- drawing ----
PAD = 6
LINE = 14
TITLE = 22
BG, FG, DIM, BAD = (255, 255, 255), (20, 20, 20), (110, 110, 110), (170, 30, 30)


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def _one_line(text: str) -> str:
    """A label as one line of visible text: line breaks and tabs become spaces, other control characters
    become "�" (Pillow measures and draws single lines only; a prompt may hold anything)."""
    text = " ".join(str(text).split())
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text)


def _wrap(draw, text: str, font, width: int, max_lines: int = 3) -> list[str]:
    """Word-wrap to `width` pixels (long words break anywhere); the last kept line ends in … when cut."""
    fits = lambda s: draw.textlength(s, font=font) <= width  # noqa: E731
    text = _one_line(text)
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if fits(candidate):
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        for ch in word:  # a word wider than the cell
            if fits(current + ch) or not current:
                current += ch
            else:
                lines.append(current)
                current = ch
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:-1] + "…"
    return lines or [""]


def _thumb(path: Path, size: int):
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        scale = size / max(img.size)
        new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
        return img.resize(new, resample)


def render_grid(rows: list[dict], out_dir: str | Path, layout: GridLayout | None = None, title: str = "",
                cell: int | None = None):
    """The grid as a PIL image. Images are read from `out_dir` (rows hold paths relative to it)."""
    from PIL import Image, ImageDraw

    out_dir = Path(out_dir)
    layout = layout or grid_layout(rows)
    if cell is None:  # the images' own size, kept between 128 and 256 pixels
        sizes = [max(r["recipe"].get("width", 256), r["recipe"].get("height", 256)) for r in rows] or [256]
        cell = min(256, max(128, max(sizes)))
    font, small = _font(12), _font(11)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 0 if layout.axes is None and all(b.row_labels == [""] for b in layout.blocks) else 120
    ncols = max((len(b.col_labels) for b in layout.blocks), default=0)
    width = PAD + label_w + (cell + PAD) * (ncols + 1)
    header_h = max((len(_wrap(scratch, t, small, cell)) for b in layout.blocks for t in b.col_labels), default=1)
    header_h = header_h * LINE + PAD
    caption_h = 2 * LINE
    heights = [TITLE + header_h + len(b.row_labels) * (cell + caption_h + PAD) for b in layout.blocks]
    width = max(width, 320)
    title_lines = _wrap(scratch, title, _font(14), width - 2 * PAD, 3) if title else []
    top = PAD + len(title_lines) * (LINE + 4) + (PAD if title else 0)
    thumbs = _thumbs([out_dir / b.reference for b in layout.blocks if b.row_labels]
                     + [out_dir / rows[i]["image"] for b in layout.blocks for i in b.cells.values()
                        if rows[i]["status"] == "done"], cell)
    canvas = Image.new("RGB", (width, top + sum(heights) + PAD), BG)
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(title_lines):
        draw.text((PAD, PAD + k * (LINE + 4)), line, fill=FG, font=_font(14))
    y = top
    for block, h in zip(layout.blocks, heights):
        draw.line([(0, y), (canvas.width, y)], fill=(200, 200, 200))
        draw.text((PAD, y + 4), _wrap(draw, block.title, font, canvas.width - 2 * PAD, 1)[0], fill=FG, font=font)
        hy = y + TITLE
        x0 = PAD + label_w
        draw.text((x0, hy), "reference", fill=DIM, font=small)
        for c, text in enumerate(block.col_labels):
            for k, line in enumerate(_wrap(draw, text, small, cell)):
                draw.text((x0 + (c + 1) * (cell + PAD), hy + k * LINE), line, fill=FG, font=small)
        gy = hy + header_h
        for r, text in enumerate(block.row_labels):
            ry = gy + r * (cell + caption_h + PAD)
            for k, line in enumerate(_wrap(draw, text, small, label_w - PAD, 4)):
                draw.text((PAD, ry + k * LINE), line, fill=FG, font=small)
            if r == 0:
                _paste(canvas, draw, thumbs[out_dir / block.reference], x0, ry, cell, small, "reference missing")
        for (r, c), i in block.cells.items():
            row = rows[i]
            cx = x0 + (c + 1) * (cell + PAD)
            cy = gy + r * (cell + caption_h + PAD)
            if row["status"] == "done":
                _paste(canvas, draw, thumbs[out_dir / row["image"]], cx, cy, cell, small, "image missing")
                # a 1-D column is headed by the config's name already
                caption, colour = ("" if block.col_labels[c] == row["name"] else row["name"]), FG
            else:
                draw.rectangle([cx, cy, cx + cell - 1, cy + cell - 1], fill=(245, 225, 225))
                for k, line in enumerate(_wrap(draw, f"failed: {row.get('error') or ''}", small, cell - 8, 8)):
                    draw.text((cx + 4, cy + 4 + k * LINE), line, fill=BAD, font=small)
                caption, colour = f"{row['name']} (failed)", BAD
            for k, line in enumerate(_wrap(draw, caption, small, cell, 2)):
                draw.text((cx, cy + cell + 2 + k * LINE), line, fill=colour, font=small)
        y += h
    return canvas


def _thumbs(paths: list[Path], cell: int) -> dict[Path, Any]:
    """Every thumbnail the grid shows, decoded on a few threads (Pillow's PNG decoder and resize release the GIL:
    a 20-image 1024² sweep's grid drops from ~0.8 s of decoding to a fraction); a file that does not decode maps
    to its error."""
    def one(path: Path):
        try:
            return _thumb(path, cell)
        except (OSError, ValueError) as exc:
            return exc

    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, len(unique)))) as pool:
        return dict(zip(unique, pool.map(one, unique)))


def _paste(canvas, draw, thumb, x: int, y: int, cell: int, font, missing: str) -> None:
    if isinstance(thumb, Exception):
        draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline=BAD)
        draw.text((x + 4, y + 4), missing, fill=BAD, font=font)
        return
    canvas.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))


def write_grid(rows: list[dict], out_dir: str | Path, path: str | Path, title: str = "") -> Path:
    """Render and save atomically."""
    path = Path(path)
    image = render_grid(rows, out_dir, title=title)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path
