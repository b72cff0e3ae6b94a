"""issue 27, lever 5: the VL image rows of the caption on a 2-D grid of RoPE positions (their own patch grid).

Z-Image gives every caption row a 3-axis RoPE id (diffusers' ZImageTransformer2DModel.patchify_and_embed): row i of
the caption, padding rows up to the next multiple of 32 included, is (1 + i, 0, 0) (diffusers appends further (0, 0, 0)
ids that its RoPE table cuts off at the padded length); the image latents follow at (L_pad + 1, h, w). With
image_positions grid, an image whose rows start at caption row s and lie on an R × C patch grid (raster order) gets

    row s + r·C + c  ->  (1 + s, r, c)        r < R, c < C

— axis 0 (the caption's sequence axis) is held at the image's first caption position, axes 1 and 2 (which Z-Image
otherwise uses only for the latents' height and width) carry the row and column, as Z-Image-Omni places its
condition images. Text rows and padding rows keep their ids; the latents' ids are untouched. So axis 0 stays inside
the caption's range [1, L_pad], and only the image rows' ids change.

How: while entered, the transformer's `patchify_and_embed` is wrapped (an instance attribute over the class method,
or over the caption buckets' wrapper in fast mode; put back on exit): the original runs, then the caption position
ids of the conditioned caption (matched by tensor identity: the negative and text-only branches keep theirs) are
rewritten. No transformer code is copied; the
transformer's own RoPE embedder reads the ids.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from vlbench.errors import UserError

Grids = list[tuple[int, tuple[int, int]]]  # (first caption row, (rows, columns)) of each image, in caption order


def grid_position_ids(ids: torch.Tensor, length: int, grids: Grids) -> torch.Tensor:
    """diffusers' caption RoPE ids `ids` ([n, 3]) for a caption of `length` rows, with each image's rows rewritten to
    its grid (the formula above); every other id as diffusers made it. Returns a new tensor."""
    ids = ids.clone()
    for start, (rows, cols) in grids:
        if start + rows * cols > length:
            raise ValueError(f"an image grid {rows}×{cols} at row {start} runs past the caption's {length} rows")
        r = torch.arange(rows, dtype=ids.dtype, device=ids.device).repeat_interleave(cols)
        c = torch.arange(cols, dtype=ids.dtype, device=ids.device).repeat(rows)
        block = ids[start:start + rows * cols]
        block[:, 0] = 1 + start
        block[:, 1] = r
        block[:, 2] = c
    return ids


def check_grids(grids: Grids, axes_lens: list[int]) -> None:
    """Refuse a grid past the DiT's RoPE tables on axes 1 and 2 (an IndexError on the CPU, a device assert on a
    GPU)."""
    for _, (rows, cols) in grids:
        if rows > axes_lens[1] or cols > axes_lens[2]:
            raise UserError(f"an image grid of {rows}×{cols} tokens is past this DiT's RoPE axes 1 and 2 "
                            f"({axes_lens[1]}×{axes_lens[2]} positions)", field="image_positions", value="grid",
                            fix="lower max_image_tokens or pool_image_tokens, or use image_positions sequence")


@contextmanager
def grid_positions(transformer, caption: torch.Tensor, grids: Grids) -> Iterator[dict]:
    """While entered, the caption tensor `caption` (the very object handed to the pipeline) has its image rows on
    their grids; any other caption keeps diffusers' ids. Yields a dict counting the items rewritten."""
    check_grids(grids, list(transformer.config.axes_lens))
    original = transformer.patchify_and_embed  # the bound class method, or a wrapper already there (caption buckets)
    before = transformer.__dict__.get("patchify_and_embed")
    stats = {"items": 0}

    def patchify_and_embed(all_image, all_cap_feats, patch_size, f_patch_size):
        out = original(all_image, all_cap_feats, patch_size, f_patch_size)
        cap_pos_ids = out[4]
        for i, feats in enumerate(all_cap_feats):
            if feats is caption:
                cap_pos_ids[i] = grid_position_ids(cap_pos_ids[i], len(feats), grids)
                stats["items"] += 1
        return out

    transformer.patchify_and_embed = patchify_and_embed
    try:
        yield stats
    finally:
        if before is None:
            del transformer.patchify_and_embed  # the class method again
        else:
            transformer.patchify_and_embed = before  # the wrapper that was there (engine/buckets.py, fast mode)
