"""issue 27, lever 1: per-block injection — which DiT blocks read the caption's VL rows (recipe field vl_blocks).

Z-Image's caption passes its context-refiner blocks (caption only), then joins the image tokens in the joint
blocks. With vl_blocks, a block outside the selection masks the VL rows' keys for the conditioned item: an additive
-inf on those keys in the key mask the block takes, the mechanism of the attend bias (engine.generate.CaptionBias),
so there every query (image tokens, caption rows) attends to the other caption rows and the image only: Qwen3-4B's
rows carry the caption in those blocks. The VL rows' own queries still run (their outputs feed later blocks).
"""

from __future__ import annotations

from vlbench.engine.generate import JOINT, REFINER, dit_blocks
from vlbench.errors import UserError
from vlbench.recipe import REFINER_BLOCKS, parse_vl_blocks


def resolve(text: str, transformer) -> list[str]:
    """The names (engine.generate.dit_blocks) of the blocks that read the VL rows, in block order.

    An index range i-j takes the joint blocks i … j; a fraction range a-b the joint blocks whose centre (i + 0.5)/n
    lies in [a, b) (b = 1: up to the last); refiner every context-refiner block."""
    blocks = dit_blocks(transformer)
    n = sum(1 for _, group, _ in blocks if group == JOINT)
    chosen: set[str] = set()
    for item in parse_vl_blocks(text):
        if item[0] == REFINER_BLOCKS:
            chosen |= {name for name, group, _ in blocks if group == REFINER}
        elif item[0] == "index":
            _, a, b = item
            if b >= n:
                raise UserError(f"names joint block {b}, and this DiT has {n} (0 … {n - 1})", field="vl_blocks",
                                value=text, fix=f"use indices up to {n - 1}, or fractions of the depth (0-0.33)")
            chosen |= {f"{JOINT}.{i}" for i in range(a, b + 1)}
        else:
            _, a, b = item
            chosen |= {f"{JOINT}.{i}" for i in range(n) if a <= (i + 0.5) / n < b}  # a centre is < 1 always
    names = [name for name, _, _ in blocks if name in chosen]
    if not names:
        raise UserError(f"selects no block of this DiT ({n} joint blocks)", field="vl_blocks", value=text,
                        fix="widen the range")
    if len(names) == len(blocks):
        raise UserError("has no effect: it selects every block of this DiT (the default, not set)", field="vl_blocks",
                        value=text, fix="drop it, or leave some block out")
    return names


def masked(names: list[str], transformer) -> list[str]:
    """The blocks that mask the VL rows: every block not in `names`."""
    return [name for name, _, _ in dit_blocks(transformer) if name not in names]
