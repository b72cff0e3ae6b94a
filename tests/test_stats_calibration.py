"""The default interval and test of `vlbench stats`, calibrated by simulation (the table in docs/stats.md comes
from benchmarks/stats_calibration.py, which runs these same functions with more draws).

Two configs' paired differences on a prompts × references × seeds design, seed noise sd 1 in every model:
- M1: a config × cell interaction, sd 1 (cells independent);
- M2: config × prompt sd 0.7 + config × reference sd 0.7 + config × cell sd 0.5;
sizes 4×4×3, 8×6×4 and 12×6×4 (the `default` eval set), each also with 10 % of each config's images missing at
random (a pair needs both); null (true difference 0) and non-null (1 sd of the config × cell term: 1 in M1,
0.5 in M2). Each scenario is fitted exactly as `vlbench stats` fits one comparison (vlbench.analysis.crossed), batched.

Monte Carlo error: with DRAWS = 6000 draws a rate near 0.95 (or 0.05) has a standard error of
sqrt(0.95·0.05/6000) ≈ 0.0028, near 0.98 ≈ 0.0018. The coverage and false-positive bounds are at least 4 standard
errors from the simulated values in the published table, so they do not hang on the generator's (fixed) seed.
The equivalence test has exact level 0.05 at the margin under M2, so its simulated error rate there is
0.05 ± 0.0028 and its bound allows 3 standard errors above 0.05.
"""

from __future__ import annotations

import numpy as np
import pytest

from vlbench.analysis import crossed

DRAWS = 6000
SIZES = [(4, 4, 3), (8, 6, 4), (12, 6, 4)]
MODELS = {"M1": (0.0, 0.0, 1.0), "M2": (0.7, 0.7, 0.5)}  # sd of config × prompt, × reference, × cell
MISSING = (0.0, 0.1)
MARGIN = 1.0  # the equivalence margin of the error-rate check, in units of the differences
MC_SE = (0.05 * 0.95 / DRAWS) ** 0.5  # Monte Carlo standard error of a rate near 0.05 (or 0.95)


def simulate(model: str, P: int, R: int, S: int, missing: float, rng: np.random.Generator,
             draws: int = DRAWS) -> tuple[np.ndarray, np.ndarray]:
    """-> (cell means [draws, P, R], cell present [draws, P, R]) of the paired differences config − baseline
    under the null (true difference 0).

    A pair needs both configs' images, so a cell keeps Binomial(S, (1 − missing)²) of its S pairs; the mean of k
    pairs' seed noise is N(0, 1/k), drawn as such (the same distribution as averaging k unit normals)."""
    sp, sr, sc = MODELS[model]
    counts = np.full((draws, P, R), S) if not missing else rng.binomial(S, (1 - missing) ** 2, (draws, P, R))
    noise = rng.standard_normal((draws, P, R)) / np.sqrt(np.maximum(counts, 1))
    means = (sp * rng.standard_normal((draws, P, 1)) + sr * rng.standard_normal((draws, 1, R))
             + sc * rng.standard_normal((draws, P, R)) + noise)
    return np.where(counts > 0, means, 0.0), counts > 0


def fit(means, present):
    """The default method for P, R ≥ 4: -> (estimate, variance, df)."""
    a = crossed.anova(means, present)
    var, df, _, _ = crossed.crossed_variance(a)
    return a.estimate, var, df


def cell_t(means, present):
    """The cell-mean t test (cells as independent units), exact under M1 with complete cells."""
    k = present.sum((-1, -2))
    m = np.where(present, means, 0.0).sum((-1, -2)) / k
    ss = (np.where(present, means - m[..., None, None], 0.0) ** 2).sum((-1, -2))
    return m, ss / (k - 1) / k, k - 1


def scenario(model, size, missing, seed=0, draws=DRAWS):
    """One row of the calibration table.

    Every fitted quantity is location-equivariant (the estimate shifts with the data, the variance and df do
    not), so the null draws serve every true difference: a true difference delta is the null's estimate + delta.
    Coverage is therefore the same at every delta."""
    P, R, S = size
    rng = np.random.default_rng([seed, P, R, S, int(missing * 100), list(MODELS).index(model)])
    means, present = simulate(model, P, R, S, missing, rng, draws)
    est, var, df = fit(means, present)
    lo, hi, p = crossed.t_interval(est, var, df)
    effect = MODELS[model][2]  # 1 sd of the config × cell term
    _, _, p_alt = crossed.t_interval(est + effect, var, df)
    cm, cv, cdf = cell_t(means, present)
    _, _, p_cell = crossed.t_interval(cm + effect, cv, cdf)
    _, _, p_cell_null = crossed.t_interval(cm, cv, cdf)
    # equivalence at the margin: the true difference is exactly +MARGIN or −MARGIN, so "equivalent" is an error
    errors = [np.mean(crossed.tost_p(est + sign * MARGIN, var, df, MARGIN) < 0.05) for sign in (1.0, -1.0)]
    return {"coverage": float(np.mean((lo <= 0) & (0 <= hi))), "fpr": float(np.mean(p < 0.05)),
            "power": float(np.mean(p_alt < 0.05)), "power_cell_t": float(np.mean(p_cell < 0.05)),
            "fpr_cell_t": float(np.mean(p_cell_null < 0.05)), "equivalence_error": float(max(errors))}


CASES = [(m, s, miss) for m in MODELS for s in SIZES for miss in MISSING]


@pytest.fixture(scope="module")
def table():
    return {case: scenario(*case) for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}-miss{c[2]}")
def test_the_default_interval_covers_and_the_test_holds_its_level(table, case):
    model, size, _ = case
    row = table[case]
    floor = 0.90 if (model, size) == ("M2", (4, 4, 3)) else 0.93
    assert floor <= row["coverage"] <= 0.99, row
    assert row["fpr"] <= 0.065, row
    # a test of exact level 0.05 at the margin: its simulated rate is 0.05 ± MC_SE, so the bound allows 3 MC_SE
    assert row["equivalence_error"] <= 0.05 + 3 * MC_SE, row
    assert row["power"] > row["fpr"]  # the non-null is found more often than the null


def test_the_cell_mean_t_test_is_what_the_robustness_costs_and_why_it_is_not_the_default(table):
    """Under M1 the cell t test is exact and more powerful; under M2 it rejects a true null far above 0.05."""
    for size in SIZES:
        assert table[("M2", size, 0.0)]["fpr_cell_t"] > 0.2
        assert table[("M1", size, 0.0)]["power_cell_t"] >= table[("M1", size, 0.0)]["power"]


def test_the_4x4x3_design_is_flagged_approximate_and_the_default_set_is_not():
    def values(P, R, S):
        rng = np.random.default_rng(0)
        return {(f"p{p}", f"r{r}", s): float(rng.normal()) for p in range(P) for r in range(R) for s in range(S)}

    small, default = crossed.infer(values(4, 4, 3)), crossed.infer(values(12, 6, 4))
    assert small["method"] == default["method"] == crossed.CROSSED
    assert small["approximate"] and "few prompts/references: approximate" in crossed.design_label(small)
    assert not default["approximate"] and crossed.design_label(default) == ""


def test_any_design_gets_a_defined_answer_or_none_never_an_error():
    """Random prompts × references × seeds tables with random holes (disconnected ones included) and constant
    values: infer returns JSON-ready numbers, its interval holds its estimate, and blocks that share no prompt or
    reference are not treated as crossed."""
    import json

    rng = np.random.default_rng(0)
    for _ in range(400):
        P, R, S = (int(x) for x in rng.integers(1, 7, 3))
        keep, const = rng.random(), rng.random() < 0.1
        vals = {(f"p{p}", f"r{r}", s): 1.0 if const else float(rng.normal())
                for p in range(P) for r in range(R) for s in range(S) if rng.random() < keep or p == r == s == 0}
        out = crossed.infer(vals)
        json.dumps(out, allow_nan=False)
        if out["ci"] is not None:
            assert out["ci"][0] - 1e-9 <= out["mean"] <= out["ci"][1] + 1e-9
    # two blocks: prompts 0-3 only with references 0-3, prompts 4-7 only with references 4-7
    blocks = {(f"p{p}", f"r{r}", s): float(rng.normal()) for p in range(8) for r in range(8) for s in range(2)
              if (p < 4) == (r < 4)}
    assert not crossed.connected(crossed.cells_of(blocks).present)
    got = crossed.infer(blocks)
    assert got["method"] == crossed.CELLS and "not crossed" in got["note"]


def test_the_batched_fit_is_what_vlbench_stats_computes_for_one_comparison():
    """The calibration fits draws with crossed.anova/crossed_variance in a batch; `vlbench stats` fits one
    comparison with crossed.infer from its images. On simulated draws with empty cells they agree."""
    rng = np.random.default_rng(3)
    means, present = simulate("M2", 4, 4, 3, 0.3, rng, draws=40)  # 30 % missing: many empty cells
    est, var, df = fit(means, present)
    checked = 0
    for i in range(means.shape[0]):
        values = {(f"p{p}", f"r{r}", 0): float(means[i, p, r]) for p in range(4) for r in range(4) if present[i, p, r]}
        if len({u[0] for u in values}) < 4 or len({u[1] for u in values}) < 4:
            continue  # a prompt or reference lost every image: another design, not this draw's
        got = crossed.infer(values)
        if got["method"] != crossed.CROSSED:
            continue
        assert got["mean"] == pytest.approx(est[i], abs=1e-12)
        assert got["se"] ** 2 == pytest.approx(var[i], rel=1e-9) and got["df"] == pytest.approx(df[i], rel=1e-9)
        checked += 1
    assert checked >= 20
