"""Normalisation modes on synthetic hidden states (no model): what each mode's help says, computed.

A fake extraction holds two references read jointly (two images of different per-dimension statistics), vision
markers, text rows and a planted attention sink; a fake calibration gives Qwen3-4B's and the VL roles' statistics.
Every check goes through `condition.select` and `condition.normalize`, the functions Engine._select calls.
Tolerances: float32 arithmetic on values of order 1, so per-dimension means and stds are compared at atol 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from vlbench.engine import blend
from vlbench.engine import condition as C
from vlbench.engine.extract import IMAGE, PROMPT, TEMPLATE, VISION_END, VISION_START, Extraction
from vlbench.errors import UserError
from vlbench.recipe import Normalization, Recipe

D = 16
LAYER = -2
ATOL = 1e-5  # float32 on values of order 1
N_A, N_B = 12, 8  # image rows of reference A (3×4 grid) and B (4×2)
ROLES = ([TEMPLATE] * 3 + [VISION_START] + [IMAGE] * N_A + [VISION_END] + [VISION_START] + [IMAGE] * N_B
         + [VISION_END] + [PROMPT] * 5 + [TEMPLATE] * 2)


class FakeStats:
    """calibrate.Stats' interface: get(model, layer, role) -> {"mean", "std", "rms"} ([D], [D], 0-d)."""

    def __init__(self, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.table = {}
        for key in (("qwen3", "text"), ("vl", "image"), ("vl", "image_text"), ("vl", "text")):
            mean = torch.randn(D, generator=g)
            std = torch.rand(D, generator=g) + 0.5
            self.table[key] = {"mean": mean, "std": std, "rms": (mean.square() + std.square()).mean().sqrt()}

    def get(self, model: str, layer: int, role: str, device=None) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in self.table[(model, role)].items()}


@pytest.fixture(scope="module")
def stats():
    return FakeStats()


@pytest.fixture(scope="module")
def ex():
    """Three layers of hidden states: reference A's image rows around mean 2 (std ~2), B's around -1 (std ~0.5),
    a sink at position 0 (one dimension 500)."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, len(ROLES), D, generator=g)
    a = [i for i, r in enumerate(ROLES) if r == IMAGE][:N_A]
    b = [i for i, r in enumerate(ROLES) if r == IMAGE][N_A:]
    h[:, a] = h[:, a] * 2.0 + 2.0 + torch.linspace(-1, 1, D)
    h[:, b] = h[:, b] * 0.5 - 1.0 + torch.linspace(1, -1, D)
    h[:, 0, 3] = 500.0  # an attention sink (massive activation)
    return Extraction(hidden_states=h, input_ids=list(range(len(ROLES))), roles=ROLES, decoded="", vl_text="p",
                      image_sizes=[(4, 3), (2, 4)], image_token_counts=[N_A, N_B])


def seq_of(ex: Extraction, tokens: str) -> C.Seq:
    positions = ex.positions(tokens)
    return C.select(ex, positions, [LAYER] * len(positions))


def references(seq: C.Seq) -> list[list[int]]:
    """The rows of each image (its segment), in order."""
    return [list(range(s.start, s.start + s.n)) for s in seq.segments if s.grid is not None]


def dim_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.double().mean(0), x.double().std(0, correction=0)


def test_the_synthetic_references_differ_in_their_own_statistics(ex):
    seq = seq_of(ex, "full")
    a, b = references(seq)
    assert (len(a), len(b)) == (N_A, N_B) and blend.sink_positions(seq.embeds) == [0]
    (mean_a, std_a), (mean_b, std_b) = dim_stats(seq.embeds[a]), dim_stats(seq.embeds[b])
    assert (mean_a - mean_b).abs().min() > 0.5 and (std_a / std_b).min() > 1.5


# ---------------------------------------------------------------- each help line, computed
# each check: (the Seq before, the rows after, the stats, each reference's rows without sinks) -> the phrase holds
def _own_mean_kept(before, after, stats, refs):
    return all(torch.allclose(dim_stats(after[r])[0], dim_stats(before.embeds[r])[0], atol=ATOL, rtol=0) for r in refs)


def _qwen3_std(before, after, stats, refs):
    std = stats.get("qwen3", -2, "text")["std"].double()
    return all(torch.allclose(dim_stats(after[r])[1], std, atol=ATOL, rtol=0) for r in refs)


def _qwen3_mean(before, after, stats, refs):
    mean = stats.get("qwen3", -2, "text")["mean"].double()
    return all(torch.allclose(dim_stats(after[r])[0], mean, atol=ATOL, rtol=0) for r in refs)


def _same_mean_for_every_reference(before, after, stats, refs):
    means = [dim_stats(after[r])[0] for r in refs]
    return all(torch.allclose(m, means[0], atol=ATOL, rtol=0) for m in means[1:])


def _text_rows_as_they_are(before, after, stats, refs):
    image = {i for r in refs for i in r}
    others = [i for i in range(before.length) if i not in image]
    return torch.equal(after[others], before.embeds[others])


def _shifted_by_one_constant_vector(before, after, stats, refs):
    """per-dim-scale − per-dim is μ_role − μ_qwen3 on every image row, whichever reference it came from."""
    image = [i for r in refs for i in r]
    per_dim = C.normalize(before, Normalization.PER_DIM, stats).embeds
    shift = stats.get("vl", LAYER, "image")["mean"] - stats.get("qwen3", -2, "text")["mean"]
    return torch.allclose(after[image] - per_dim[image], shift.expand(len(image), D), atol=ATOL, rtol=0)


# mode -> [(a phrase of its help, the check that makes the phrase true)]
CLAIMS = {
    Normalization.PER_REF_MEAN: [("each reference's own per-dimension mean kept", _own_mean_kept),
                                 ("mean: the reference's own", _own_mean_kept), ("std: Qwen3-4B's", _qwen3_std),
                                 ("text rows as they are", _text_rows_as_they_are)],
    Normalization.INSTANCE: [("given Qwen3-4B's calibrated mean and std", _qwen3_mean),
                             ("given Qwen3-4B's calibrated mean and std", _qwen3_std),
                             ("every reference ends with the same per-dimension mean", _same_mean_for_every_reference),
                             ("text rows as they are", _text_rows_as_they_are)],
    Normalization.PER_DIM_SCALE: [("per-dim shifted by one constant vector", _shifted_by_one_constant_vector),
                                  ("shared by every reference, not each reference's own means",
                                   lambda *a: not _own_mean_kept(*a))],
}


@pytest.mark.parametrize("mode", list(CLAIMS))
def test_each_modes_help_is_what_it_computes(ex, stats, mode):
    seq = seq_of(ex, "full")
    out = C.normalize(seq, mode, stats)
    refs = [[i for i in r if i not in blend.sink_positions(seq.embeds)] for r in references(seq)]
    for phrase, check in CLAIMS[mode]:
        assert phrase in mode.help, (mode, phrase)
        assert check(seq, out.embeds, stats, refs), (mode, phrase)


def test_per_ref_mean_keeps_each_references_own_means_and_instance_removes_them(ex, stats):
    """The brief's test in numbers: two references of different means; per-ref-mean's output has, for each, its own
    per-dimension means (atol 1e-5); instance's per-dimension means are equal across references."""
    seq = seq_of(ex, "image")
    a, b = references(seq)
    kept = C.normalize(seq, Normalization.PER_REF_MEAN, stats).embeds
    removed = C.normalize(seq, Normalization.INSTANCE, stats).embeds
    for rows in (a, b):
        torch.testing.assert_close(dim_stats(kept[rows])[0], dim_stats(seq.embeds[rows])[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(dim_stats(removed[a])[0], dim_stats(removed[b])[0], atol=ATOL, rtol=0)
    assert (dim_stats(kept[a])[0] - dim_stats(kept[b])[0]).abs().min() > 0.5  # the references stay apart
    # the two arms differ only in the mean: the same standardised rows under it
    for rows in (a, b):
        z_kept = (kept[rows] - dim_stats(kept[rows])[0].float()) / dim_stats(kept[rows])[1].float()
        z_removed = (removed[rows] - dim_stats(removed[rows])[0].float()) / dim_stats(removed[rows])[1].float()
        torch.testing.assert_close(z_kept, z_removed, atol=1e-4, rtol=0)


def test_per_reference_statistics_are_each_images_own_not_the_selections(ex, stats):
    """Pooling both references' rows into one statistic would leave neither with its own mean."""
    seq = seq_of(ex, "image")
    a, b = references(seq)
    joint = blend.normalize_per_dim(seq.embeds, *blend.dim_stats(seq.embeds), blend.dim_stats(seq.embeds)[0],
                                    stats.get("qwen3", -2, "text")["std"])
    kept = C.normalize(seq, Normalization.PER_REF_MEAN, stats).embeds
    assert not torch.allclose(kept, joint, atol=1e-3)
    assert not torch.allclose(dim_stats(joint[a])[0], dim_stats(seq.embeds[a])[0], atol=1e-2)


def test_every_pair_of_the_normalization_sweeps_arms_conditions_differently(ex, stats):
    from vlbench.experiments.spec import load_type

    outputs = {}
    for named in load_type("normalization_sweep").recipes():
        seq = seq_of(ex, named.recipe.tokens)
        outputs[named.name] = C.normalize(seq, named.recipe.normalization, stats).embeds
    assert list(outputs) == ["none", "per-dim", "instance", "per-ref-mean"]
    names = list(outputs)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            gap = (outputs[first] - outputs[second]).abs().max()
            assert gap > 0.1, (first, second, float(gap))


def test_sinks_markers_and_provenance(ex, stats):
    seq = seq_of(ex, "full")
    for mode in (Normalization.INSTANCE, Normalization.PER_REF_MEAN):
        out = C.normalize(seq, mode, stats)
        assert torch.equal(out.embeds[0], seq.embeds[0])  # the sink
        marks = [i for i, r in enumerate(seq.rows) if r["role"] in (VISION_START, VISION_END)]
        assert torch.equal(out.embeds[marks], seq.embeds[marks])
        got = {(r["role"], r["normalized"]) for r in out.rows}
        assert (IMAGE, mode.value) in got and (PROMPT, "untouched") in got and (TEMPLATE, "sink, untouched") in got
        assert not any(r["role"] != IMAGE and r["normalized"] == mode.value for r in out.rows)


# ---------------------------------------------------------------- where the modes are meaningless: one line
@pytest.mark.parametrize("mode", ["instance", "per-ref-mean"])
@pytest.mark.parametrize("fields", [{"tokens": "text"}, {"tokens": "prompt"}],
                         ids=["text", "prompt"])
def test_a_per_reference_mode_without_image_rows_is_refused_in_one_line(mode, fields):
    with pytest.raises(UserError) as err:
        Recipe(normalization=mode, **fields)
    assert err.value.field == "normalization" and "has no effect" in err.value.problem
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("mode", ["instance", "per-ref-mean"])
def test_a_per_reference_mode_without_a_reference_is_refused_before_any_model_runs(mode):
    recipe = Recipe(normalization=mode)  # tokens full: image rows once a reference is given
    recipe.check_inputs(1)
    with pytest.raises(UserError, match=f"normalization {mode}: moves each reference's image rows, and no reference"):
        recipe.check_inputs(0)
    Recipe(normalization=mode, intra_ratio=0.5)  # the intra mix's image selection: accepted
    Recipe(normalization=mode, dual=True)  # the style pass selects image rows


def test_earlier_modes_compute_what_they_did(ex, stats):
    """Old records keep their meaning: per-dim and per-dim-scale by their formulas, row by row."""
    seq = seq_of(ex, "image")
    src, ref = stats.get("vl", LAYER, "image"), stats.get("qwen3", -2, "text")
    torch.testing.assert_close(C.normalize(seq, Normalization.PER_DIM, stats).embeds,
                               (seq.embeds - src["mean"]) / (src["std"] + 1e-6) * ref["std"] + ref["mean"])
    torch.testing.assert_close(C.normalize(seq, Normalization.PER_DIM_SCALE, stats).embeds,
                               (seq.embeds - src["mean"]) / (src["std"] + 1e-6) * ref["std"] + src["mean"])
