"""Refactors keep the bytes: the same seed and recipe give the same conditioning tensor and image.

The hashes below were recorded on the tiny models before the one-source-of-truth refactor (issue 11);
a change to any of them is a change of behaviour and must be deliberate (then say which issue changed
what, and re-pin). Same-process determinism is covered elsewhere; this checks across versions.
"""

from __future__ import annotations

import hashlib

import pytest

from vlbench.engine.engine import Reference
from vlbench.recipe import Recipe

PROMPT = "a red cat on a mat"
SIZE = dict(width=64, height=64, steps=2, seed=3)

# name -> (recipe fields, conditioning shape, sha256[:16] of the fp32 tensor, sha256[:16] of the RGB pixels)
PINNED = {
    "full": ({}, (97, 64), "7a2012f07ca3daf7", "acfc81851d7fbbaf"),
    "text": ({"tokens": "text"}, (25, 64), "b2a62bf42f0653fb", "74d6acc68e915a28"),
    "image_layer_-5": ({"tokens": "image", "layer": -5}, (70, 64), "1688bc3f6b11d56a", "87de35d7fc2fea60"),
    "qwen3": ({"alpha": 0.0}, (25, 64), "219ec67f14fd712a", "633403b21f251b8f"),
    "alpha_pool": ({"alpha": 0.4, "tokens": "text", "length_policy": "pool"}, (25, 64), "857d5625f290d2e2",
                   "b05e7adee8bfe7d7"),
    "intra_concat": ({"intra_ratio": 0.3}, (39, 64), "658a78431c5111d6", "7d803513f3ef469c"),
    "dual": ({"dual": True}, (48, 64), "4b016af9cdca58bb", "f4e07ce7a4c49093"),
}


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    from conftest import make_image

    return Reference.open(make_image(tmp_path_factory.mktemp("pin") / "ref.png"))


@pytest.mark.parametrize("name", list(PINNED))
def test_pinned_tiny_outputs_are_unchanged(engine, ref, name):
    fields, shape, cond_hash, image_hash = PINNED[name]
    result = engine.run(Recipe(**fields, **SIZE), PROMPT, [ref])
    embeds = result.conditioning.embeds.detach().float().contiguous()
    assert tuple(embeds.shape) == shape
    assert hashlib.sha256(embeds.numpy().tobytes()).hexdigest()[:16] == cond_hash
    assert hashlib.sha256(result.image.tobytes()).hexdigest()[:16] == image_hash
