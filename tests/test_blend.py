"""blend.py as a specification: exact endpoints, continuity, real averaging, explicit length policies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vlbench.engine.blend import (
    LENGTH_POLICIES,
    concat,
    concat_counts,
    dim_stats,
    map_length,
    mix,
    mix_sequences,
    normalize_global,
    normalize_per_dim,
    outlier_dims,
    pool,
    ratio_curve,
    resample,
    rms,
    sink_positions,
    truncate,
)

PROPERTY = settings(max_examples=50, deadline=None)
POSITION_WISE = ("truncate", "pool", "resample")

seeds = st.integers(0, 2**31 - 1)
lengths = st.integers(1, 40)
widths = st.integers(1, 6)
ratios = st.floats(0.0, 1.0)
float_dtypes = st.sampled_from([torch.float32, torch.bfloat16])


def seq(seed: int, rows: int, width: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, width, generator=g) * scale).to(dtype)


def window_means(x: torch.Tensor, length: int) -> torch.Tensor:
    """Reference area pooling in float64: mean of the piecewise-constant rows over each fractional window."""
    x = x.double()
    n = x.shape[0]
    cumulative = torch.cat([torch.zeros(1, x.shape[1], dtype=x.dtype), x.cumsum(0)])

    def integral(t: float) -> torch.Tensor:  # ∫_0^t of row floor(s) ds
        i = min(int(t), n - 1)
        return cumulative[i] + (t - i) * x[i]

    edges = [j * n / length for j in range(length + 1)]
    return torch.stack([(integral(b) - integral(a)) / (b - a) for a, b in zip(edges, edges[1:])])


# ---- mix ----


@PROPERTY
@given(seeds, lengths, widths, float_dtypes)
def test_mix_endpoints_are_the_pure_inputs_exactly(seed, rows, width, dtype):
    base, other = seq(seed, rows, width, dtype), seq(seed + 1, rows, width, dtype)
    assert torch.equal(mix(base, other, 0.0), base)
    assert torch.equal(mix(base, other, 1.0), other)
    assert torch.equal(mix(base, other, torch.zeros(rows)), base)
    assert torch.equal(mix(base, other, torch.ones(rows)), other)
    assert mix(base, other, 0.5).dtype == dtype


@PROPERTY
@given(seeds, lengths, widths)
def test_mix_per_position_ratio_picks_rows_exactly(seed, rows, width):
    base, other = seq(seed, rows, width), seq(seed + 1, rows, width)
    pick = (torch.arange(rows) % 2).float()  # 0, 1, 0, 1, ...
    out = mix(base, other, pick)
    assert torch.equal(out[pick == 0], base[pick == 0])
    assert torch.equal(out[pick == 1], other[pick == 1])


@PROPERTY
@given(seeds, lengths, widths, ratios)
def test_mix_is_the_linear_formula(seed, rows, width, r):
    base, other = seq(seed, rows, width), seq(seed + 1, rows, width)
    torch.testing.assert_close(mix(base, other, r), (1 - r) * base + r * other)


@PROPERTY
@given(seeds, lengths, widths, st.floats(0.0, 0.99))
def test_mix_is_continuous_in_ratio(seed, rows, width, r):
    base, other = seq(seed, rows, width), seq(seed + 1, rows, width)
    step = 1e-3
    change = (mix(base, other, r + step) - mix(base, other, r)).abs().max()
    assert change <= step * (other - base).abs().max() + 1e-5


def test_mix_of_mixed_dtypes_returns_the_base_dtype():
    base, other = seq(0, 5, 3, torch.bfloat16), seq(1, 5, 3, torch.float32)
    assert mix(base, other, 0.3).dtype == torch.bfloat16
    assert torch.equal(mix(base, other, 1.0), other.to(torch.bfloat16))


# ---- mix_sequences ----


@PROPERTY
@given(seeds, lengths, lengths, widths, st.sampled_from(POSITION_WISE), float_dtypes)
def test_position_wise_policies_are_exact_at_both_ends(seed, base_len, other_len, width, policy, dtype):
    base, other = seq(seed, base_len, width, dtype), seq(seed + 1, other_len, width, dtype)
    out0, info = mix_sequences(base, other, 0.0, policy)
    out1, _ = mix_sequences(base, other, 1.0, policy)
    assert torch.equal(out0, base)
    assert torch.equal(out1, map_length(other, base_len, policy, base=base))
    assert info == {"policy": policy, "base_len": base_len, "other_len": other_len, "out_len": base_len}


@PROPERTY
@given(seeds, lengths, lengths, widths, st.sampled_from(POSITION_WISE), st.floats(0.0, 0.99))
def test_position_wise_policies_are_continuous_in_ratio(seed, base_len, other_len, width, policy, r):
    base, other = seq(seed, base_len, width), seq(seed + 1, other_len, width)
    mapped = map_length(other, base_len, policy, base=base)
    step = 1e-3
    change = (mix_sequences(base, other, r + step, policy)[0] - mix_sequences(base, other, r, policy)[0]).abs().max()
    assert change <= step * (mapped - base).abs().max() + 1e-5


@PROPERTY
@given(seeds, lengths, lengths, widths, float_dtypes)
def test_concat_is_exact_at_both_ends(seed, base_len, other_len, width, dtype):
    base, other = seq(seed, base_len, width, dtype), seq(seed + 1, other_len, width, dtype)
    out0, info0 = mix_sequences(base, other, 0.0, "concat")
    out1, info1 = mix_sequences(base, other, 1.0, "concat")
    assert torch.equal(out0, base) and (info0["base_kept"], info0["other_kept"]) == (base_len, 0)
    assert torch.equal(out1, other) and (info1["base_kept"], info1["other_kept"]) == (0, other_len)


@PROPERTY
@given(seeds, lengths, lengths, widths, ratios, ratios)
def test_concat_token_counts_are_monotone_and_pooled(seed, base_len, other_len, width, r1, r2):
    r1, r2 = sorted((r1, r2))
    kb1, ko1 = concat_counts(base_len, other_len, r1)
    kb2, ko2 = concat_counts(base_len, other_len, r2)
    assert kb1 >= kb2 and ko1 <= ko2
    assert kb1 + ko1 >= 1  # never an empty caption
    base, other = seq(seed, base_len, width), seq(seed + 1, other_len, width)
    out, info = mix_sequences(base, other, r1, "concat")
    assert (info["base_kept"], info["other_kept"], info["out_len"]) == (kb1, ko1, kb1 + ko1)
    parts = ([pool(base, kb1)] if kb1 else []) + ([pool(other, ko1)] if ko1 else [])
    assert torch.equal(out, torch.cat(parts))


def test_concat_keeps_a_ratio_share_of_each_sequence():
    base, other = seq(0, 20, 4), seq(1, 1000, 4)
    out = concat(base, other, 0.25)
    assert concat_counts(20, 1000, 0.25) == (15, 250)
    assert out.shape == (265, 4)


# ---- pool ----


@PROPERTY
@given(seeds, lengths, lengths, widths)
def test_pool_is_the_area_average_of_each_fractional_window(seed, rows, length, width):
    x = seq(seed, rows, width)
    out = pool(x, length)
    assert out.shape == (length, width)
    torch.testing.assert_close(out, window_means(x, length).float(), atol=1e-5, rtol=1e-5)


@PROPERTY
@given(seeds, lengths, lengths, widths)
def test_pool_keeps_constants_and_the_mean(seed, rows, length, width):
    constant = seq(seed, 1, width).expand(rows, width)
    torch.testing.assert_close(pool(constant, length), constant[:1].expand(length, width))
    x = seq(seed, rows, width)
    torch.testing.assert_close(pool(x, length).mean(0), x.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pool(x, 1)[0], x.mean(0))
    assert pool(x, rows) is x


def test_pool_1041_to_13_averages_every_window():
    # DESIGN §4: the earlier "interpolate" sampled 13 neighbour pairs out of 1041 rows
    x = seq(0, 1041, 8)
    out = pool(x, 13)
    torch.testing.assert_close(out, window_means(x, 13).float(), atol=1e-5, rtol=1e-5)
    aligned = seq(1, 1040, 8)  # 80 whole rows per window
    expected = torch.stack([aligned[80 * j : 80 * (j + 1)].mean(0) for j in range(13)])
    torch.testing.assert_close(pool(aligned, 13), expected)


def test_pool_upsampling_splits_rows_by_overlap():
    x = torch.tensor([[0.0], [3.0]])
    assert torch.equal(pool(x, 3), torch.tensor([[0.0], [1.5], [3.0]]))
    assert torch.equal(pool(x, 4), torch.tensor([[0.0], [0.0], [3.0], [3.0]]))


# ---- resample ----


def test_resample_shrinking_averages_unlike_plain_linear():
    alternating = torch.tensor([(-1.0) ** i for i in range(1041)])[:, None].repeat(1, 3)
    out = resample(alternating, 13)
    plain = F.interpolate(alternating.T[None, :, None, :], size=(1, 13), mode="bilinear", align_corners=False)
    assert out.abs().max() < 0.01  # ~ the mean, 0
    assert plain.abs().max() > 0.5  # plain linear picks neighbour pairs


def test_resample_growing_interpolates_linearly():
    x = torch.tensor([[0.0], [1.0]])
    assert torch.equal(resample(x, 4), torch.tensor([[0.0], [0.25], [0.75], [1.0]]))


@PROPERTY
@given(seeds, lengths, lengths, widths)
def test_resample_shape_constants_and_identity(seed, rows, length, width):
    x = seq(seed, rows, width)
    assert resample(x, length).shape == (length, width)
    assert resample(x, rows) is x
    constant = x[:1].expand(rows, width)
    torch.testing.assert_close(resample(constant, length), x[:1].expand(length, width))


# ---- truncate ----


def test_truncate_keeps_the_first_rows_and_fills_from_the_base():
    other, base = seq(0, 10, 4), seq(1, 6, 4)
    assert torch.equal(truncate(other, 6), other[:6])
    long_base = seq(2, 14, 4)
    filled = truncate(other, 14, long_base)
    assert torch.equal(filled, torch.cat([other, long_base[10:]]))
    out, _ = mix_sequences(long_base, other, 0.7, "truncate")
    assert torch.equal(out[10:], long_base[10:])  # past other's end the mix stays the base
    with pytest.raises(ValueError, match="fill"):
        truncate(base, 10)


# ---- robustness ----


@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1e4), (torch.bfloat16, 1e4), (torch.bfloat16, 1.0)])
def test_extreme_finite_inputs_give_finite_outputs(dtype, scale):
    base = (torch.sign(seq(0, 30, 16)) * scale).to(dtype)  # every value ±scale
    other = seq(1, 500, 16, dtype, scale)
    outputs = [mix(base, base.flip(0), 0.3), pool(other, 7), pool(base, 90), resample(other, 7), resample(base, 90)]
    outputs += [mix_sequences(base, other, 0.4, policy)[0] for policy in LENGTH_POLICIES]
    mean, std = dim_stats(other)
    outputs += [mean, std, rms(base), normalize_global(other, 1.0)]
    outputs.append(normalize_per_dim(other, mean, std, torch.zeros_like(mean), torch.ones_like(std)))
    for out in outputs:
        assert torch.isfinite(out.float()).all()
    assert mix(base, other[:30], 0.3).dtype == dtype and pool(other, 7).dtype == dtype


INVALID = {
    "mix of 1-D input": lambda: mix(torch.zeros(4), torch.zeros(4), 0.5),
    "mix of unequal shapes": lambda: mix(torch.zeros(4, 2), torch.zeros(5, 2), 0.5),
    "ratio above 1": lambda: mix(torch.zeros(4, 2), torch.zeros(4, 2), 1.5),
    "negative ratio": lambda: mix(torch.zeros(4, 2), torch.zeros(4, 2), -0.1),
    "NaN ratio": lambda: mix(torch.zeros(4, 2), torch.zeros(4, 2), float("nan")),
    "per-position ratio of wrong length": lambda: mix(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(3)),
    "per-position ratio out of range": lambda: mix(torch.zeros(4, 2), torch.zeros(4, 2), torch.full((4,), 2.0)),
    "pool to zero rows": lambda: pool(torch.zeros(4, 2), 0),
    "pool to a float length": lambda: pool(torch.zeros(4, 2), 2.0),
    "pool of 3-D input": lambda: pool(torch.zeros(1, 4, 2), 2),
    "pool of no rows": lambda: pool(torch.zeros(0, 2), 2),
    "resample to negative length": lambda: resample(torch.zeros(4, 2), -1),
    "truncate with a badly shaped fill": lambda: truncate(torch.zeros(2, 2), 4, torch.zeros(3, 2)),
    "unknown policy": lambda: mix_sequences(torch.zeros(4, 2), torch.zeros(4, 2), 0.5, "squash"),
    "concat as a position-wise map": lambda: map_length(torch.zeros(4, 2), 3, "concat"),
    "mismatched widths": lambda: mix_sequences(torch.zeros(4, 2), torch.zeros(4, 3), 0.5, "pool"),
    "per-position ratio for concat": lambda: concat(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4)),
    "unknown ratio shape": lambda: ratio_curve(4, 0.0, 1.0, "wobble"),
    "ratio curve of zero length": lambda: ratio_curve(0, 0.0, 1.0, "linear"),
    "negative target rms": lambda: normalize_global(torch.ones(4, 2), -1.0),
    "per-dim stats of wrong width": lambda: normalize_per_dim(torch.ones(4, 2), *[torch.ones(3)] * 4),
    "sink factor of zero": lambda: sink_positions(torch.ones(4, 2), 0.0),
    "outlier ratio below 1": lambda: outlier_dims(torch.ones(4, 2), torch.ones(2), 0.5),
    "outlier ref_std of wrong width": lambda: outlier_dims(torch.ones(4, 2), torch.ones(3)),
}


@pytest.mark.parametrize("call", INVALID.values(), ids=INVALID.keys())
def test_invalid_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_concat_policy_error_points_to_concat():
    with pytest.raises(ValueError, match=r"concat\(\)"):
        map_length(torch.zeros(4, 2), 3, "concat")


# ---- ratio curves ----


@PROPERTY
@given(st.integers(2, 50), ratios, ratios, st.sampled_from(["linear", "ease-in", "ease-out"]))
def test_ratio_curve_runs_from_start_to_end(length, start, end, shape):
    curve = ratio_curve(length, start, end, shape)
    assert curve.shape == (length,) and curve.dtype == torch.float32
    assert curve[0] == torch.tensor(start, dtype=torch.float32)
    assert curve[-1] == torch.tensor(end, dtype=torch.float32)
    steps = curve.diff() * (1 if end >= start else -1)
    assert (steps >= -1e-7).all()  # monotone from start towards end


def test_ratio_curve_shapes_and_clamping():
    linear, ease_in, ease_out = (ratio_curve(5, 0.0, 1.0, shape) for shape in ("linear", "ease-in", "ease-out"))
    assert torch.equal(linear, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert torch.equal(ease_in, linear**2)
    assert torch.equal(ease_out, 1 - (1 - linear) ** 2)
    assert torch.equal(ratio_curve(4, 0.3, 0.9, "constant"), torch.full((4,), 0.3))
    assert torch.equal(ratio_curve(1, 0.4, 0.9, "linear"), torch.tensor([0.4]))
    assert torch.equal(ratio_curve(3, -1.0, 2.0, "linear"), torch.tensor([0.0, 0.5, 1.0]))


# ---- statistics and normalisation ----


@PROPERTY
@given(seeds, st.integers(2, 40), widths)
def test_per_dim_normalisation_onto_own_stats_is_identity(seed, rows, width):
    x = seq(seed, rows, width, scale=5.0) + 3.0
    mean, std = dim_stats(x)
    torch.testing.assert_close(normalize_per_dim(x, mean, std, mean, std), x, atol=1e-4, rtol=1e-4)
    ref_mean, ref_std = torch.linspace(-2, 2, width), torch.linspace(0.5, 4, width)
    moved_mean, moved_std = dim_stats(normalize_per_dim(x, mean, std, ref_mean, ref_std))
    torch.testing.assert_close(moved_mean, ref_mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(moved_std, ref_std, atol=1e-4, rtol=1e-3)


def test_dim_stats_are_population_stats_in_float32():
    x = seq(0, 10, 3, torch.bfloat16)
    mean, std = dim_stats(x)
    assert mean.dtype == std.dtype == torch.float32
    torch.testing.assert_close(std, x.float().std(0, unbiased=False))


@PROPERTY
@given(seeds, lengths, widths, st.floats(0.0, 100.0))
def test_global_normalisation_hits_the_target_rms(seed, rows, width, target):
    x = seq(seed, rows, width, scale=30.0)
    torch.testing.assert_close(rms(normalize_global(x, target)), torch.tensor(target), atol=1e-4, rtol=1e-5)


def test_global_normalisation_of_zeros_is_unchanged():
    zeros = torch.zeros(4, 3)
    assert torch.equal(normalize_global(zeros, 5.0), zeros)


def test_sink_positions_find_a_planted_massive_row():
    x = seq(0, 50, 32)
    x[0, 4] = 3000.0  # Qwen3-like: the first token, a few massive dims
    x[17, 396 % 32] = -2500.0
    assert sink_positions(x) == [0, 17]
    assert sink_positions(seq(1, 50, 32)) == []


def test_outlier_dims_find_too_large_and_too_small_dims():
    x = seq(0, 200, 16)
    x[:, 4] *= 0.01  # image tokens far smaller than the reference (DESIGN §4)
    x[:, 9] *= 50.0
    assert outlier_dims(x, torch.ones(16)) == {"too_large": [9], "too_small": [4]}
