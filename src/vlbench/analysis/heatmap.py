"""Heat maps of the VL text's attention to a reference's image tokens (issue 17), drawn over the reference.

Torch-free (PIL and numpy): the workbench, the report and `vlbench embed` call it with what a run record
holds — `conditioning["vl"]["image_attention"]` (per image: its token grid and weights, raster order; see
engine.image_attention_record) — and the reference image. The grid covers the whole reference (Qwen3-VL's
processor resizes, it never crops), so each token's cell is stretched over the matching region of the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from vlbench.recipe import ImageAttention

from vlbench.pixels import as_rgb
from vlbench.records import vl_extractions

# "inferno"-like anchors: 0 (dark) -> 1 (bright yellow); linear between them
_ANCHORS = ((0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)), (0.75, (249, 142, 9)),
            (1.0, (252, 255, 164)))


def colormap(values):
    """[..] values in [0, 1] -> [.., 3] uint8 RGB."""
    import numpy as np

    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    xs = [a for a, _ in _ANCHORS]
    rgb = np.stack([np.interp(v, xs, [c[i] for _, c in _ANCHORS]) for i in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def render(reference, weights: Sequence[float], grid: Sequence[int], opacity: float = 0.6,
           kept: Iterable[int] | None = None):
    """The reference (a PIL image or a path) with its image tokens' attention weights over it, as an RGB PIL image of
    the reference's size. `weights` in raster order over `grid` (rows, columns); colour = weight / the largest
    weight (the most-attended token brightest); each token a rectangle (nearest upsampling, no smoothing).
    `kept` (token indices, e.g. top-k): the other tokens are drawn darkened."""
    import numpy as np
    from PIL import Image

    rows, cols = int(grid[0]), int(grid[1])
    w = np.asarray(list(weights), dtype=np.float64)
    if rows < 1 or cols < 1 or w.shape != (rows * cols,):
        raise ValueError(f"{len(w)} weights do not fill a {rows}×{cols} token grid")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and >= 0")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError("opacity must be in [0, 1]")
    if isinstance(reference, (str, Path)):
        with Image.open(reference) as img:
            base = as_rgb(img, str(reference))[0]  # upright, as the VL read it (its token grid is of this image)
    else:
        base = reference.convert("RGB")
    top = w.max()
    colors = colormap((w / top if top > 0 else w).reshape(rows, cols))
    if kept is not None:
        mask = np.zeros(rows * cols, dtype=bool)
        mask[list(kept)] = True
        colors = np.where(mask.reshape(rows, cols, 1), colors, (colors * 0.25).astype(np.uint8))
    overlay = Image.fromarray(colors, "RGB").resize(base.size, Image.Resampling.NEAREST)
    return Image.blend(base, overlay, opacity)


def top_k(weights: Sequence[float], k: int) -> list[int]:
    """Indices of the k largest weights (ties: the earlier token), in raster order — what topk keeps."""
    order = sorted(range(len(weights)), key=lambda j: (-weights[j], j))[:k]
    return sorted(order)


def from_conditioning(conditioning: dict, references: Sequence, recipe: dict | None = None) -> list:
    """One heat map per image of a run's conditioning (a RunRecord's `conditioning`, or Conditioning.describe()):
    `references` the reference images (PIL or paths) in the run's order. Each extraction that read attention
    (records.vl_extractions: "vl", then under multi_image separate "vl_ref2", … each reference's own) takes the next
    references, one per image it holds. With a `recipe` dict using image_attention topk, the tokens it kept
    are marked. [] when the run read no attention."""
    entries = [im for _, vl in vl_extractions(conditioning) for im in (vl.get("image_attention") or {}).get("images", [])]
    if len(entries) > len(references):
        raise ValueError(f"{len(entries)} images in the attention record, {len(references)} references given")
    k = None
    if recipe and recipe.get("image_attention") == ImageAttention.TOPK:
        k = recipe.get("image_top_k")
    return [render(ref, im["weights"], im["grid"], kept=top_k(im["weights"], k) if k else None)
            for ref, im in zip(references, entries)]
