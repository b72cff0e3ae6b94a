"""Refactors keep the bytes: the same seed and recipe give the same conditioning tensor and image.

The hashes below were recorded on the tiny models before the one-source-of-truth refactor (issue 11);
a change to any of them is a change of behaviour and must be deliberate (then say which issue changed
what, and re-pin). Same-process determinism is covered elsewhere; this checks across versions.

Issue 12 replaced `length_policy` by one policy per mix: the old `pool` alpha mix of text tokens (equal lengths:
a position-wise mix) is `alpha_policy = "positionwise"` and kept its bytes; the old concat token split of an
intra mix is `split`, now pooling image rows on their patch grid (re-pinned), and the default of every mix is
`attend` (pinned anew).
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
    "alpha_positionwise": ({"alpha": 0.4, "tokens": "text", "alpha_policy": "positionwise"}, (25, 64),
                           "857d5625f290d2e2", "b05e7adee8bfe7d7"),  # the bytes of issue 11's alpha 0.4 pool
    "intra_split": ({"intra_ratio": 0.3, "intra_policy": "split"}, (38, 64), "1d59ee9040d0deb9", "b7582b10eb232b5a"),
    "intra_attend": ({"intra_ratio": 0.3}, (95, 64), "82e3c3503931b11c", "b180bbe1bff96779"),
    "image_pooled": ({"tokens": "image", "pool_image_tokens": 12}, (12, 64), "e2ac796aa0f11169", "3a3d97a08d05bd39"),
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
