"""Refactors keep the outputs: the same seed and recipe give the same conditioning tensor and image, on any machine.

The references are stored in tests/data/pinned/ (`NAME.safetensors`: the fp32 conditioning, `NAME.png`: the RGB
image), made on the tiny models by `tests/data/repin.py`. A change beyond the tolerances below is a change of
behaviour: deliberate changes re-pin with that script, which records the reason in tests/data/pinned/CHANGES.md.
Same-process determinism is covered elsewhere; this checks across versions and machines.

Why a tolerance and not a hash: a byte hash of float output breaks on another CPU (its kernels sum in another
order: AVX2 or AVX-512, oneDNN, the thread count) or on a patch release of torch or transformers, while a
behaviour change, which the test exists to catch, moves the outputs by orders of magnitude more. The bounds:

- Conditioning: `|got - ref| <= ATOL + RTOL * |ref|` elementwise (torch.testing.assert_close's rule), with
  ATOL = 1e-4 and RTOL = 1e-3; the tensors' entries are at most ~0.26 in size. Measured on the tiny models:
  perturbing EVERY weight of every model by a relative 1e-5 (about 80 float32 ulps, far more than any kernel's
  rounding, which stays at a few ulps) moves the conditioning by at most 1.1e-5: ten times inside. A blend weight
  off by 0.05 (alpha 0.45 for 0.4) moves it by 1.6e-2 and layer -3 for -2 by 9.7e-2: a hundred times outside.
- Image (uint8 RGB, 64×64×3 channels): no channel more than PIXEL_LEVELS = 2 levels away, and at most
  PIXEL_SHARE = 2% of the channels different at all. Rounding noise reaches the pixels only as a flip of a value
  that sat within ~1e-5 of a rounding boundary, so it moves a channel by one level, rarely: 1 thread against 2
  changed 1 channel in 12288, the 1e-5 weight perturbation 0.2% of the channels, each by one level. A behaviour
  change moves many: alpha 0.45 for 0.4 gives channels 6 levels off, intra_ratio 0.35 for 0.3 a mean change of
  0.16 levels (>8% of the channels differ), layer -3 for -2 a third of the channels by more than 2 levels.

`test_the_bounds_catch_a_planted_behaviour_change` and `test_the_bounds_admit_rounding_noise` check both sides.

Issue 12 replaced `length_policy` by one policy per mix: the old `pool` alpha mix of text tokens (equal lengths:
a position-wise mix) is `alpha_policy = "positionwise"` and kept its bytes; the old concat token split of an
intra mix is `split`, now pooling image rows on their patch grid (re-pinned), and the default of every mix is
`attend` (pinned anew). Issue 24 moved the references from sha256 prefixes to the stored values (same outputs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vlbench.engine.engine import Reference
from vlbench.recipe import Recipe

PROMPT = "a red cat on a mat"
SIZE = dict(width=64, height=64, steps=2, seed=3)
DATA = Path(__file__).resolve().parent / "data" / "pinned"

ATOL, RTOL = 1e-4, 1e-3  # conditioning: |got - ref| <= ATOL + RTOL * |ref|
PIXEL_LEVELS, PIXEL_SHARE = 2, 0.02  # image: no channel > 2 levels off; at most 2% of channels differ

# name -> recipe fields (the references: DATA / f"{name}.safetensors" and DATA / f"{name}.png")
PINNED = {
    "full": {},
    "text": {"tokens": "text"},
    "image_layer_-5": {"tokens": "image", "layer": -5},
    "qwen3": {"alpha": 0.0},
    "alpha_positionwise": {"alpha": 0.4, "tokens": "text", "alpha_policy": "positionwise"},  # issue 11's 0.4 pool
    "intra_split": {"intra_ratio": 0.3, "intra_policy": "split"},
    "intra_attend": {"intra_ratio": 0.3},
    "image_pooled": {"tokens": "image", "pool_image_tokens": 12},
}


def outputs(engine, ref: Reference, fields: dict) -> tuple[np.ndarray, np.ndarray]:
    """(fp32 conditioning [L, D], uint8 RGB image [H, W, 3]) of one tiny-model run."""
    result = engine.run(Recipe(**fields, **SIZE), PROMPT, [ref])
    embeds = result.conditioning.embeds.detach().float().cpu().contiguous().numpy()
    return embeds, np.asarray(result.image.convert("RGB"))


def reference_image(folder: Path) -> Reference:
    """The one reference image of every pinned run (conftest's 96×64 pattern)."""
    from conftest import make_image

    return Reference.open(make_image(Path(folder) / "ref.png"))


def load_pinned(name: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from safetensors.numpy import load_file

    return load_file(DATA / f"{name}.safetensors")["embeds"], np.asarray(Image.open(DATA / f"{name}.png").convert("RGB"))


def differences(got: tuple[np.ndarray, np.ndarray], pinned: tuple[np.ndarray, np.ndarray]) -> list[str]:
    """What is outside the bounds (empty: the outputs match)."""
    (embeds, image), (ref_embeds, ref_image) = got, pinned
    problems = []
    if embeds.shape != ref_embeds.shape:
        problems.append(f"conditioning shape {embeds.shape} != pinned {ref_embeds.shape}")
    else:
        excess = np.abs(embeds.astype(np.float64) - ref_embeds) - (ATOL + RTOL * np.abs(ref_embeds.astype(np.float64)))
        if not np.isfinite(embeds).all() or (excess > 0).any():
            problems.append(f"conditioning: {(excess > 0).sum()} of {excess.size} entries outside atol {ATOL} + "
                            f"rtol {RTOL}; max |diff| {np.abs(embeds - ref_embeds).max():.3g}")
    if image.shape != ref_image.shape:
        problems.append(f"image shape {image.shape} != pinned {ref_image.shape}")
    else:
        diff = np.abs(image.astype(np.int16) - ref_image.astype(np.int16))
        if diff.max() > PIXEL_LEVELS:
            problems.append(f"image: a channel {diff.max()} levels off (bound {PIXEL_LEVELS})")
        if (diff > 0).mean() > PIXEL_SHARE:
            problems.append(f"image: {(diff > 0).mean():.2%} of channels differ (bound {PIXEL_SHARE:.0%})")
    return problems


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference_image(tmp_path_factory.mktemp("pin"))


@pytest.mark.parametrize("name", list(PINNED))
def test_pinned_tiny_outputs_are_unchanged(engine, ref, name):
    assert differences(outputs(engine, ref, PINNED[name]), load_pinned(name)) == []


@pytest.mark.parametrize("name, planted", [("full", {"layer": -3}),  # the default layer is -2
                                            ("alpha_positionwise", {**PINNED["alpha_positionwise"], "alpha": 0.45})])
def test_the_bounds_catch_a_planted_behaviour_change(engine, ref, name, planted):
    problems = differences(outputs(engine, ref, planted), load_pinned(name))
    assert any(p.startswith("conditioning:") for p in problems), problems
    assert any(p.startswith("image:") for p in problems), problems


def test_the_bounds_catch_a_change_that_only_moves_the_image(engine, ref):
    """intra_ratio 0.35 for 0.3 under the attend policy leaves the tensor and reweights attention: only the image
    shows it, and the share bound catches it."""
    problems = differences(outputs(engine, ref, {"intra_ratio": 0.35}), load_pinned("intra_attend"))
    assert any(p.startswith("image:") for p in problems), problems


def test_the_bounds_admit_rounding_noise(tiny_spec, ref):
    """Every weight of every model scaled by 1 + 1e-5·N(0,1) — a hundred times the rounding a different CPU's
    kernels introduce — still matches: the bounds are not a hash in disguise."""
    import torch

    from vlbench.engine.engine import Engine
    from vlbench.engine.models import Models

    engine = Engine(Models(tiny_spec))
    models = engine.models
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in (models.vl.model, models.pipe.transformer, models.pipe.vae):
            for p in module.parameters():
                p.mul_(1 + 1e-5 * torch.randn(p.shape, generator=generator))
    got = outputs(engine, ref, PINNED["full"])
    assert not np.array_equal(got[0], load_pinned("full")[0])  # the noise did reach the output
    assert differences(got, load_pinned("full")) == []
