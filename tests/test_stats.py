"""`vlbench stats`, specified against an independent computation with numpy and scipy on the same files.

A synthetic run folder (results.jsonl + scores.jsonl, no images needed) with known effects: "better" has a
planted difference from the baseline, "same" has none. Over a fixed set of data seeds the planted
difference is detected every time and the null one at most at the stated α; Holm's correction is checked
on a hand-made case; the bootstrap is reproducible; bad input is one line naming the fix.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from vlbench.errors import UserError

PROMPTS = [f"prompt {i}" for i in range(6)]
REFS = [f"{i:064x}" for i in (1, 2)]
SEEDS = [0, 1, 2, 3]
CONFIGS = {"base": 0.0, "same": 0.0, "better": 0.3}


def synthetic_run(out: Path, data_seed: int = 0, configs: dict[str, float] = CONFIGS, seeds=SEEDS,
                  experiment: str = "synthetic", metric: str = "siglip", noise: float = 0.25,
                  prompts: list[str] = PROMPTS, refs: list[str] = REFS) -> None:
    """Per unit (prompt, reference, seed) a shared difficulty u ~ N(0, 1); each config's value is
    u + its effect + N(0, noise²). Written as the runner and `vlbench score` would."""
    rng = np.random.default_rng(data_seed)
    out.mkdir(parents=True, exist_ok=True)
    results, scores = [], []
    units = [(p, r, s) for p in prompts for r in refs for s in seeds]
    difficulty = {u: rng.normal() for u in units}
    for index, (name, effect) in enumerate(configs.items()):
        for (prompt, ref, seed) in units:
            tag = f"{prompts.index(prompt)}-{refs.index(ref) + 1}-{seed}"
            key = f"{name}|{tag}"
            image = f"images/{name}-{tag}.png"
            results.append({"key": key, "experiment": experiment, "name": name, "config_index": index,
                            "recipe": {"seed": seed}, "prompt": prompt, "seed": seed, "reference": f"ref{ref[-1]}.png",
                            "reference_sha256": ref, "image": image, "status": "done", "error": None,
                            "timings": {"extraction": 0.0, "blend": 0.0, "generation": 0.1, "model_load": 0.0},
                            "peak_vram_bytes": None, "caption_tokens": 10, "vl_forwards": 0, "finished_at": "now"})
            value = difficulty[(prompt, ref, seed)] + effect + rng.normal(0, noise)
            scores.append({"key": key, "image": image, "metrics": {metric: float(value)}, "models": {metric: "m"},
                           "protocols": {metric: "2"}})
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    (out / "scores.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))


def main_json(argv: list[str], capsys) -> dict:
    from vlbench.cli import main

    assert main(["stats", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def cli_error(argv: list[str], capsys) -> str:
    from vlbench.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---- the independent computation ----
def independent(out: Path, metric: str, baseline: str, resamples: int = 10_000, seed: int = 0) -> dict:
    """Everything `vlbench stats --json` reports, recomputed from the two JSON-lines files with numpy/scipy."""
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    scores = {s["key"]: s["metrics"][metric] for s in map(json.loads, (out / "scores.jsonl").read_text().splitlines())}
    by_config: dict[str, dict] = {}
    for r in results:
        by_config.setdefault(r["name"], {})[(r["prompt"], r["reference_sha256"], r["seed"])] = scores[r["key"]]

    def boot(x):  # documented: default_rng(seed).integers(0, n, (B, n)), values in sorted-unit order
        idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
        return list(np.percentile(np.asarray(x)[idx].mean(1), [2.5, 97.5]))

    configs = {}
    for name, vals in by_config.items():
        x = [vals[u] for u in sorted(vals)]
        configs[name] = {"n": len(x), "mean": np.mean(x), "std": np.std(x, ddof=1), "ci": boot(x)}
    comps = {}
    for name, vals in by_config.items():
        if name == baseline:
            continue
        units = sorted(set(vals) & set(by_config[baseline]))
        d = np.array([vals[u] - by_config[baseline][u] for u in units])
        comps[name] = {"n": len(d), "mean_diff": d.mean(), "ci": boot(d), "p": sps.wilcoxon(d).pvalue,
                       "win_rate": (np.sum(d > 0) + 0.5 * np.sum(d == 0)) / len(d)}
    # Holm, written as the step-down procedure: reject in order while p(i) <= alpha / (m - i)
    order = sorted(comps, key=lambda c: comps[c]["p"])
    m, rejecting = len(order), True
    for i, name in enumerate(order):
        rejecting = rejecting and comps[name]["p"] <= 0.05 / (m - i)
        comps[name]["rejected"] = rejecting
    return {"configs": configs, "comparisons": comps}


def test_unit_image_equals_the_independent_per_image_computation_of_stats_1(tmp_path, capsys):
    """`--unit image` keeps vlbench.stats/1's numbers: every image a unit, bootstrap and Wilcoxon."""
    out = tmp_path / "run"
    synthetic_run(out)
    got = main_json([str(out), "--baseline", "base", "--unit", "image"], capsys)
    want = independent(out, "siglip", "base")
    assert got["schema"] == "vlbench.stats/2" and got["unit"] == "image" and got["baseline"] == "base"
    assert got["configs"] == ["base", "same", "better"] and got["seeds"] == SEEDS
    block = got["metrics"]["siglip"]
    for name, w in want["configs"].items():
        g = block["configs"][name]
        assert g["n"] == w["n"] == 48
        assert g["mean"] == pytest.approx(w["mean"], abs=1e-12) and g["std"] == pytest.approx(w["std"], abs=1e-12)
        assert g["ci"] == pytest.approx(w["ci"], abs=1e-12)
    for name, w in want["comparisons"].items():
        g = block["comparisons"][name]
        assert g["n"] == w["n"] and g["mean_diff"] == pytest.approx(w["mean_diff"], abs=1e-12)
        assert g["ci"] == pytest.approx(w["ci"], abs=1e-12)
        assert g["p"] == pytest.approx(w["p"], rel=1e-9)
        assert g["win_rate"] == pytest.approx(w["win_rate"])
        assert g["significant"] == w["rejected"]
        assert g["wins"] + g["ties"] + g["losses"] == g["n"]


def test_the_bootstrap_interval_agrees_with_scipys_own_bootstrap(tmp_path, capsys):
    """The same method (percentile bootstrap of the mean) from scipy, with its own random draws."""
    out = tmp_path / "run"
    synthetic_run(out)
    got = main_json([str(out), "--unit", "image"], capsys)["metrics"]["siglip"]["configs"]["better"]
    values = [json.loads(line)["metrics"]["siglip"] for line in (out / "scores.jsonl").read_text().splitlines()
              if json.loads(line)["key"].startswith("better|")]
    ref = sps.bootstrap((np.array(values),), np.mean, n_resamples=20_000, method="percentile",
                        random_state=np.random.default_rng(123)).confidence_interval
    half = (ref.high - ref.low) / 2
    assert got["ci"][0] == pytest.approx(ref.low, abs=0.05 * half) and got["ci"][1] == pytest.approx(ref.high, abs=0.05 * half)


def test_a_planted_difference_is_detected_and_no_difference_is_not(tmp_path):
    """Over 20 fixed data seeds at α = 0.05: the planted +0.3 is found every time; the null config is flagged
    at most 2 times in 20 (its expected rate is at most α after Holm)."""
    from vlbench.analysis.folders import folder_rows
    from vlbench.analysis.stats import summarize

    planted, null = 0, 0
    for data_seed in range(20):
        out = tmp_path / f"run{data_seed}"
        synthetic_run(out, data_seed)
        rows, _ = folder_rows([out])
        comps = summarize(rows, resamples=2000)["metrics"]["siglip"]["comparisons"]
        planted += comps["better"]["significant"] and comps["better"]["mean_diff"] > 0
        null += comps["same"]["significant"]
        assert comps["better"]["ci"][0] > 0  # the interval of the planted difference excludes 0
    assert planted == 20 and null <= 2


def test_holm_on_a_hand_made_case():
    from vlbench.analysis.stats import holm

    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> kept monotone: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.9]) == pytest.approx([1.0, None, 0.9]) or holm([0.5, None, 0.9])[1] is None
    assert holm([0.5, None, 0.9])[1] is None and holm([0.5, None, 0.9])[0] == pytest.approx(1.0)
    assert holm([]) == []


def test_the_bootstrap_is_reproducible_and_follows_its_seed(tmp_path, capsys):
    out = tmp_path / "run"
    synthetic_run(out)
    first = main_json([str(out), "--unit", "image"], capsys)
    assert main_json([str(out), "--unit", "image"], capsys) == first
    other = main_json([str(out), "--bootstrap-seed", "7", "--unit", "image"], capsys)
    ci, ci7 = first["metrics"]["siglip"]["configs"]["base"]["ci"], other["metrics"]["siglip"]["configs"]["base"]["ci"]
    assert ci != ci7 and other["bootstrap"]["seed"] == 7
    assert ci7 == pytest.approx(ci, abs=0.1)  # the same interval up to resampling noise


def test_folders_of_one_experiment_pool_and_the_metric_option_selects(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    synthetic_run(a, seeds=[0, 1])
    synthetic_run(b, seeds=[2, 3], data_seed=1)
    got = main_json([str(a), str(b), "--metric", "siglip"], capsys)
    assert got["seeds"] == [0, 1, 2, 3] and got["metrics"]["siglip"]["configs"]["base"]["n"] == 48
    assert got["folders"] == [str(a), str(b)] and list(got["metrics"]) == ["siglip"]


def test_the_table_names_the_verdicts(tmp_path, capsys):
    from vlbench.cli import main

    out = tmp_path / "run"
    synthetic_run(out)
    assert main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "SigLIP (siglip; higher is better)" in text and "baseline" in text
    assert "better" in text and "no evidence" in text and "95% CI" in text


def test_one_seed_per_config_is_said(tmp_path):
    from vlbench.analysis.folders import folder_rows
    from vlbench.analysis.stats import summarize

    out = tmp_path / "run"
    synthetic_run(out, seeds=[0])
    stats = summarize(folder_rows([out])[0], unit="image")
    assert any("one seed per config" in n and "no interval over seeds" in n for n in stats["notes"])
    single = summarize([{"name": "a", "config_index": 0, "prompt": "p", "reference_sha256": "r", "seed": 0,
                         "metrics": {"siglip": 1.0}}], unit="image")
    assert single["metrics"]["siglip"]["configs"]["a"] == {"n": 1, "mean": 1.0, "std": None, "ci": None,
                                                           "not_finite": 0}


def test_lower_is_better_metrics_count_wins_downwards():
    from vlbench.analysis.stats import summarize

    rows = [{"name": name, "config_index": i, "prompt": f"p{k}", "reference_sha256": "r", "seed": 0,
             "metrics": {"content_leak": 0.5 - 0.1 * i + 0.01 * k}} for i, name in enumerate(("a", "b")) for k in range(8)]
    comp = summarize(rows)["metrics"]["content_leak"]["comparisons"]["b"]
    assert comp["win_rate"] == 1.0 and comp["mean_diff"] == pytest.approx(-0.1)


def test_summarize_takes_plain_rows_and_imports_no_torch(tmp_path):
    """The workbench's entry point: `vlbench.analysis.stats.summarize(rows)` on dicts shaped like results rows."""
    out = tmp_path / "run"
    synthetic_run(out)
    code = ("import json, sys; from vlbench.analysis.folders import folder_rows; from vlbench.analysis.stats import summarize, compact; "
            f"rows, _ = folder_rows([{str(out)!r}]); s = summarize(rows, resamples=500); "
            "print(compact(s, 'siglip')); assert 'torch' not in sys.modules and 'scipy' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("SigLIP: base ") and "better" in done.stdout


# ---- bad input: one line each, naming the fix ----
def test_a_folder_without_scores_names_the_score_command(tmp_path, capsys):
    out = tmp_path / "run"
    synthetic_run(out)
    (out / "scores.jsonl").unlink()
    err = cli_error(["stats", str(out)], capsys)
    assert f"{out}: not scored" in err and f"run `vlbench score {out} --metrics siglip` first" in err


def test_a_baseline_that_does_not_exist_lists_the_configs(tmp_path, capsys):
    out = tmp_path / "run"
    synthetic_run(out)
    err = cli_error(["stats", str(out), "--baseline", "nope"], capsys)
    assert "--baseline nope: no such config; choose one of base, same, better" in err


def test_a_metric_not_computed_names_the_score_command(tmp_path, capsys):
    out = tmp_path / "run"
    synthetic_run(out)
    err = cli_error(["stats", str(out), "--metric", "dino"], capsys)
    assert f"--metric dino: not computed for {out}; run `vlbench score {out} --metrics dino` first" in err
    err = cli_error(["stats", str(out), "--metric", "fid"], capsys)
    assert "--metric fid: unknown metric" in err


def test_a_folder_mixing_experiments_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    synthetic_run(out)
    lines = (out / "results.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    lines[0] = json.dumps({**row, "experiment": "other"})
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    err = cli_error(["stats", str(out)], capsys)
    assert f"{out}: mixes experiments other, synthetic" in err and "one experiment" in err
    a, b = tmp_path / "a", tmp_path / "b"
    synthetic_run(a)
    synthetic_run(b, experiment="another")
    err = cli_error(["stats", str(a), str(b)], capsys)
    assert "different experiments" in err and "separately" in err


def test_summarize_refuses_an_unknown_baseline_as_data():
    from vlbench.analysis.stats import summarize

    with pytest.raises(UserError) as err:
        summarize([{"name": "a", "config_index": 0, "prompt": "p", "reference_sha256": "r", "seed": 0,
                    "metrics": {"siglip": 1.0}}], baseline="b")
    assert (err.value.field, err.value.value) == ("baseline", "b") and "choose one of a" in err.value.fix


# ---- the report ----
def test_the_report_shows_the_statistics_and_intervals(tmp_path):
    from vlbench.experiments.results import ResultsLog
    from vlbench.analysis.report import write_report

    out = tmp_path / "run"
    synthetic_run(out)
    rows = ResultsLog(out / "results.jsonl").read()[0]  # the rows as every reader gets them (schema upgraded)
    write_report(out, rows, {"experiment": "synthetic"})
    html = (out / "report.html").read_text()
    assert "<h3>Statistics</h3>" in html and "<th>95% CI</th>" in html and "<th>p (Holm)</th>" in html
    assert "src='stats.png'" in html and (out / "stats.png").read_bytes()[:4] == b"\x89PNG"
    assert ">better<" in html and ">no evidence<" in html and "one seed per config" not in html
    one = tmp_path / "one"
    synthetic_run(one, seeds=[0])
    write_report(one, ResultsLog(one / "results.jsonl").read()[0], {})
    html = (one / "report.html").read_text()
    assert "design: 6 prompts × 2 references × 1 seeds" in html and "conditional on these references" in html


def test_the_adherence_plot_carries_the_intervals(tmp_path):
    """metrics.png: each config's mean with error bars = its bootstrap interval on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    from unittest import mock

    from vlbench.analysis.report import plot_metrics, run_stats

    out = tmp_path / "run"
    synthetic_run(out, metric="siglip")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    scores = {s["key"]: s["metrics"]["siglip"] for s in map(json.loads, (out / "scores.jsonl").read_text().splitlines())}
    rows = [dict(r, metrics={"siglip": scores[r["key"]], "dino": scores[r["key"]] / 2}) for r in rows]
    stats = run_stats(rows)
    calls = []
    from matplotlib.axes import Axes

    real = Axes.errorbar
    with mock.patch.object(Axes, "errorbar", lambda self, x, y, **kw: calls.append((x, y, kw)) or real(self, x, y, **kw)):
        plot_metrics(rows, tmp_path / "m.png", stats)
    assert len(calls) == 3
    x, y, kw = calls[0]
    ci = stats["metrics"]["siglip"]["configs"]["base"]["ci"]
    assert y == pytest.approx(stats["metrics"]["siglip"]["configs"]["base"]["mean"])
    assert [y - kw["yerr"][0][0], y + kw["yerr"][1][0]] == pytest.approx(ci)


# ---- the design-aware default: prompt × reference cells, seeds inside ----
CROSSED_PROMPTS = [f"prompt {i}" for i in range(6)]
CROSSED_REFS = [f"{i:064x}" for i in range(1, 6)]


def independent_crossed(d: dict, confidence: float = 0.95) -> dict:
    """The crossed method of docs/stats.md written out with loops, least squares and scipy.stats, for
    {(prompt, reference, seed): difference}."""
    prompts, refs = sorted({u[0] for u in d}), sorted({u[1] for u in d})
    P, R = len(prompts), len(refs)
    cell = {}
    for (p, r, _), v in d.items():
        cell.setdefault((p, r), []).append(v)
    cell = {k: float(np.mean(v)) for k, v in cell.items()}
    # the additive fit of the present cells by least squares fills the empty ones
    keys = list(cell)
    X = np.zeros((len(keys), P + R))
    for i, (p, r) in enumerate(keys):
        X[i, prompts.index(p)] = X[i, P + refs.index(r)] = 1.0
    theta = np.linalg.lstsq(X, np.array([cell[k] for k in keys]), rcond=None)[0]
    table = np.array([[cell.get((p, r), theta[i] + theta[P + j]) for j, r in enumerate(refs)]
                      for i, p in enumerate(prompts)])
    grand = table.mean()
    ms_p = sum(R * (table[i].mean() - grand) ** 2 for i in range(P)) / (P - 1)
    ms_r = sum(P * (table[:, j].mean() - grand) ** 2 for j in range(R)) / (R - 1)
    df_c = (P - 1) * (R - 1) - (P * R - len(cell))
    ms_c = sum((table[i, j] - table[i].mean() - table[:, j].mean() + grand) ** 2
               for i in range(P) for j in range(R)) / df_c
    terms = [(ms_c, df_c, 1.0)]
    for ms, df in ((ms_p, P - 1), (ms_r, R - 1)):
        if ms / ms_c > sps.f.ppf(0.75, df, df_c):  # kept: its term, and one MS_cell less
            terms += [(ms, df, 1.0), (ms_c, df_c, -1.0)]
    # collect the coefficients of MS_cell before Satterthwaite
    coef_c = sum(c for ms, df, c in terms if ms is ms_c and df == df_c)
    parts = [(ms, df, c) for ms, df, c in terms if ms is not ms_c] + [(ms_c, df_c, coef_c)]
    num = sum(c * ms for ms, df, c in parts)
    dof = num**2 / sum((c * ms) ** 2 / df for ms, df, c in parts if c)
    se = np.sqrt(num / (P * R))
    lo, hi = sps.t.interval(confidence, dof, loc=grand, scale=se)
    return {"mean": grand, "se": se, "df": dof, "ci": [lo, hi], "p": 2 * sps.t.sf(abs(grand / se), dof)}


def crossed_run(out: Path, data_seed: int = 0, **kw) -> None:
    synthetic_run(out, data_seed, prompts=CROSSED_PROMPTS, refs=CROSSED_REFS, seeds=[0, 1, 2], **kw)


def test_the_default_is_the_crossed_design_and_equals_an_independent_computation(tmp_path, capsys):
    out = tmp_path / "run"
    crossed_run(out)
    lines = (out / "results.jsonl").read_text().splitlines()  # one cell of "better" loses all its images
    gone = [json.loads(x)["key"] for x in lines if json.loads(x)["key"].startswith("better|0-1-")]
    (out / "results.jsonl").write_text("".join(x + "\n" for x in lines if json.loads(x)["key"] not in gone))
    got = main_json([str(out), "--baseline", "base"], capsys)
    assert got["unit"] == "cell" and got["design"] == {
        "prompts": 6, "references": 5, "seeds": 3, "cells": 30, "images": 270 - 3, "unit": ["prompt", "reference_sha256"],
        "replicate": "seed", "conditional_on": [], "approximate": True, "label": "few prompts/references: approximate"}
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    scores = {s["key"]: s["metrics"]["siglip"] for s in map(json.loads, (out / "scores.jsonl").read_text().splitlines())}
    by = {}
    for r in rows:
        by.setdefault(r["name"], {})[(r["prompt"], r["reference_sha256"], r["seed"])] = scores[r["key"]]
    for name in ("same", "better"):
        d = {u: v - by["base"][u] for u, v in by[name].items() if u in by["base"]}
        want, comp = independent_crossed(d), got["metrics"]["siglip"]["comparisons"][name]
        assert comp["method"] == "crossed" and comp["cells"] == (29 if name == "better" else 30)
        for key in ("mean", "se", "df", "p"):
            assert comp["mean_diff" if key == "mean" else key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
        assert comp["ci"] == pytest.approx(want["ci"], rel=1e-9)
        assert comp["effective_units"] == pytest.approx(comp["df"] + 1)
    base = got["metrics"]["siglip"]["configs"]["base"]
    assert base["mean"] == pytest.approx(independent_crossed(by["base"])["mean"], rel=1e-12)


def test_the_design_is_printed_above_every_table(tmp_path, capsys):
    from vlbench.cli import main

    out = tmp_path / "run"
    crossed_run(out)
    assert main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    design = "design: 6 prompts × 5 references × 3 seeds (30 cells, 270 images); prompts and references random, crossed"
    assert design in text and "effective units (df + 1)" in text and "few prompts/references: approximate" in text
    assert text.index(design) < text.index("SigLIP (siglip; higher is better)")
    assert main(["stats", str(out), "--unit", "image"]) == 0
    assert "unit: image (every image an independent unit" in capsys.readouterr().out


def test_fewer_than_four_references_is_conditional_on_them_and_says_so(tmp_path, capsys):
    """6 prompts × 2 references: prompts random, the references fixed; the t interval over prompt means."""
    from vlbench.cli import main

    out = tmp_path / "run"
    synthetic_run(out)  # 6 prompts × 2 references × 4 seeds
    got = main_json([str(out), "--baseline", "base"], capsys)
    assert got["design"]["conditional_on"] == ["references"]
    assert "conditional on these references" in got["design"]["label"] and got["design"]["label"] in got["notes"]
    comp = got["metrics"]["siglip"]["comparisons"]["better"]
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    scores = {s["key"]: s["metrics"]["siglip"] for s in map(json.loads, (out / "scores.jsonl").read_text().splitlines())}
    val = {(r["name"], r["prompt"], r["reference_sha256"], r["seed"]): scores[r["key"]] for r in rows}
    prompt_means = [np.mean([val[("better", p, r, s)] - val[("base", p, r, s)] for r in REFS for s in SEEDS])
                    for p in PROMPTS]
    res = sps.ttest_1samp(prompt_means, 0.0)
    assert comp["method"] == "prompt means" and comp["df"] == 5
    assert comp["p"] == pytest.approx(res.pvalue, rel=1e-9)
    assert comp["ci"] == pytest.approx(list(res.confidence_interval(0.95)), rel=1e-9)
    assert main(["stats", str(out)]) == 0
    assert "conditional on these references (fewer than 4: no claim about others)" in capsys.readouterr().out


def test_one_cell_is_conditional_on_its_prompt_and_reference_with_seeds_as_replicates():
    from vlbench.analysis.stats import summarize

    vals = [0.1, 0.5, 0.2, 0.4, 0.3]
    rows = [{"name": n, "config_index": i, "prompt": "p", "reference_sha256": "r", "seed": s,
             "metrics": {"siglip": (v + 1.0 if n == "b" else 0.0)}} for i, n in enumerate("ab") for s, v in enumerate(vals)]
    stats = summarize(rows)
    comp = stats["metrics"]["siglip"]["comparisons"]["b"]
    assert stats["design"]["conditional_on"] == ["prompts", "references"]
    assert comp["method"] == "seeds within cells" and comp["df"] == 4
    assert comp["ci"] == pytest.approx(list(sps.ttest_1samp(np.add(vals, 1.0), 0).confidence_interval(0.95)), rel=1e-9)


def test_non_finite_scores_are_counted_and_an_all_nan_metric_is_a_row_saying_so(tmp_path, capsys):
    from vlbench.cli import main

    out = tmp_path / "run"
    synthetic_run(out)
    lines = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    for i, s in enumerate(lines):
        s["metrics"]["dino"] = float("nan")  # every dino value failed
        s["protocols"]["dino"] = "2"
        if s["key"].startswith("better|") and i % 16 == 0:
            s["metrics"]["siglip"] = float("inf") if i % 32 else float("nan")
    (out / "scores.jsonl").write_text("".join(json.dumps(s) + "\n" for s in lines))
    got = main_json([str(out)], capsys)
    bad = sum(1 for s in lines if s["key"].startswith("better|") and not np.isfinite(s["metrics"]["siglip"]))
    assert bad == 3
    better = got["metrics"]["siglip"]["configs"]["better"]
    assert better["not_finite"] == 3 and better["n"] == 45
    assert "siglip: better: 3 of 48 not finite: left out" in got["notes"]
    assert got["metrics"]["siglip"]["configs"]["base"]["not_finite"] == 0
    dino = got["metrics"]["dino"]
    assert dino["note"] == "all 144 values not finite" and all(c["n"] == 0 for c in dino["configs"].values())
    assert main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "DINO (dino): all 144 values not finite" in text and "45 (+3 not finite)" in text


def test_equivalence_says_equivalent_different_or_inconclusive(tmp_path, capsys):
    out = tmp_path / "run"
    crossed_run(out, configs={"base": 0.0, "same": 0.0, "better": 0.3}, noise=0.05)
    got = main_json([str(out), "--metric", "siglip", "--equivalence", "0.1"], capsys)
    comps = got["metrics"]["siglip"]["comparisons"]
    assert comps["same"]["equivalence"]["outcome"] == "equivalent"
    assert comps["better"]["equivalence"]["outcome"] == "different"
    eq = comps["same"]["equivalence"]
    d, se, df = comps["same"]["mean_diff"], comps["same"]["se"], comps["same"]["df"]
    want = max(sps.t.sf((d + 0.1) / se, df), sps.t.cdf((d - 0.1) / se, df))
    assert eq["margin"] == 0.1 and eq["p"] == pytest.approx(want, rel=1e-9)
    small = tmp_path / "small"  # 4 × 4 × 1 with large noise: neither claim can be made
    synthetic_run(small, configs={"base": 0.0, "same": 0.0}, noise=1.0, prompts=PROMPTS[:4],
                  refs=CROSSED_REFS[:4], seeds=[0])
    got = main_json([str(small), "--equivalence", "siglip=0.1"], capsys)
    assert got["metrics"]["siglip"]["comparisons"]["same"]["equivalence"]["outcome"] == "inconclusive"
    defaults = main_json([str(out), "--equivalence"], capsys)
    from vlbench.analysis.stats import EQUIVALENCE_MARGINS

    assert defaults["metrics"]["siglip"]["comparisons"]["same"]["equivalence"]["margin"] == EQUIVALENCE_MARGINS["siglip"]


def test_the_experiment_type_that_asks_for_equivalence_gets_it_in_stats_and_the_report(tmp_path, capsys):
    from vlbench.experiments.results import ResultsLog
    from vlbench.experiments.spec import load_type
    from vlbench.analysis.report import write_report
    from vlbench.analysis.stats import EQUIVALENCE_MARGINS

    assert load_type("vl_only_vs_qwen3").equivalence is True
    out = tmp_path / "run"
    crossed_run(out)
    (out / "run.json").write_text(json.dumps({"experiment": "synthetic", "equivalence": True}))
    got = main_json([str(out)], capsys)
    eq = got["metrics"]["siglip"]["comparisons"]["same"]["equivalence"]
    assert eq["margin"] == EQUIVALENCE_MARGINS["siglip"] and eq["outcome"] in ("equivalent", "different", "inconclusive")
    write_report(out, ResultsLog(out / "results.jsonl").read()[0], {"experiment": "synthetic"})
    html = (out / "report.html").read_text()
    assert "<th>±0.200</th>" in html and EQUIVALENCE_MARGINS["siglip"] == 0.2  # the column names the margin


def test_the_plan_finds_a_design_with_power_and_the_run_shows_what_it_could_detect(tmp_path, capsys):
    from vlbench.analysis import crossed

    out = tmp_path / "run"
    crossed_run(out)
    got = main_json([str(out), "--metric", "siglip", "--plan", "0.2"], capsys)
    plan = got["plan"]["metrics"]["siglip"]
    assert plan["alpha"] == pytest.approx(0.05 / 2) and plan["delta"] == 0.2  # Holm's strictest step, 2 comparisons
    entry = plan["comparisons"]["same"]
    smallest = entry["smallest"]
    assert smallest["power"] >= 0.8 and smallest["images"] == smallest["prompts"] * smallest["references"] * smallest["seeds"]
    assert set(entry["components"]) == {"prompt", "reference", "cell", "seed"} and entry["pilot"]["prompts"] == 6
    for d in entry["designs"]:  # each reaches the power, with the grid's first prompt count that does
        assert d["power"] >= 0.8
        if d["prompts"] > 4:
            smaller = [p for p in got["plan"]["grid"]["prompts"] if p < d["prompts"]][-1]
            assert crossed.simulate_power(entry["components"], 0.2, smaller, d["references"], d["seeds"],
                                          plan["alpha"], 2000, 0) < 0.8
    # the run's minimum detectable difference has power 0.8 in a fresh simulation of its design (other draws)
    comp = got["metrics"]["siglip"]["comparisons"]["same"]
    power = crossed.simulate_power(entry["components"], comp["mde"], 6, 5, 3, plan["alpha"], draws=20000, seed=99)
    assert 0.8 - 0.03 <= power <= 0.8 + 0.03  # MC s.e.: ≈ 0.009 for the MDE (2000 draws), 0.003 here


# ---- bad input for the new options ----
@pytest.mark.parametrize("argv, says", [
    (["--metric", "siglip", "--equivalence", "0"], "--equivalence 0: a margin must be a positive finite number"),
    (["--metric", "siglip", "--equivalence", "-1"], "--equivalence -1: a margin must be a positive finite number"),
    (["--metric", "siglip", "--equivalence", "nan"], "--equivalence nan: a margin must be a positive finite number"),
    (["--metric", "siglip", "--equivalence", "inf"], "--equivalence inf: a margin must be a positive finite number"),
    (["--equivalence", "0.1"], "--equivalence 0.1: a bare margin needs exactly one --metric"),
    (["--metric", "siglip", "--plan", "x"], "--plan x: not a number: 'x'"),
    (["--metric", "siglip", "--plan", "0"], "--plan 0: a difference must be a positive finite number"),
    (["--unit", "image", "--equivalence", "siglip=0.1"], "--unit image: equivalence and plans need the cell unit"),
])
def test_bad_equivalence_and_plan_options_are_one_line(tmp_path, capsys, argv, says):
    out = tmp_path / "run"
    synthetic_run(out)
    err = cli_error(["stats", str(out), *argv], capsys)
    assert says in err and "Traceback" not in err


def test_plan_on_a_folder_without_scores_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    synthetic_run(out)
    (out / "scores.jsonl").unlink()
    err = cli_error(["stats", str(out), "--metric", "siglip", "--plan", "0.2"], capsys)
    assert f"{out}: not scored" in err


def test_a_baseline_with_no_paired_cells_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    synthetic_run(out)
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    for r in lines:  # the baseline ran other seeds than the rest
        if r["name"] == "base":
            r["seed"] += 10
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    err = cli_error(["stats", str(out), "--baseline", "base"], capsys)
    assert "--baseline base: shares no (prompt, reference, seed) with same: no paired cells" in err
    assert "choose a baseline run on the same prompts, references and seeds" in err


# ---- the optional second estimate: statsmodels' crossed mixed model ----
def test_the_mixed_model_is_a_second_estimate_that_agrees_on_a_balanced_design():
    pytest.importorskip("statsmodels")
    from vlbench.analysis import crossed

    rng = np.random.default_rng(0)
    P, R, S = 8, 6, 3
    a, b, g = rng.normal(0, 0.7, P), rng.normal(0, 0.7, R), rng.normal(0, 0.5, (P, R))
    vals = {(f"p{p}", f"r{r}", s): 0.3 + a[p] + b[r] + g[p, r] + rng.normal() for p in range(P) for r in range(R)
            for s in range(S)}
    mixed, anova = crossed.mixed_model(vals), crossed.infer(vals)
    assert mixed["mean"] == pytest.approx(anova["mean"], abs=1e-9)  # balanced: both are the grand mean
    assert mixed["se"] == pytest.approx(anova["se"], rel=0.1)
    assert set(mixed["components"]) == {"prompt", "reference", "cell", "residual"}
    assert mixed["components"]["reference"] > mixed["components"]["prompt"]  # as the ANOVA estimates say
    assert anova["components"]["reference"] > anova["components"]["prompt"]


def test_mixed_model_without_statsmodels_is_one_line(tmp_path, capsys):
    try:
        import statsmodels  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("statsmodels is installed here")
    out = tmp_path / "run"
    synthetic_run(out)
    err = cli_error(["stats", str(out), "--mixed-model"], capsys)
    assert "--mixed-model: statsmodels is not installed; pip install 'vlbench[mixed]'" in err


def test_an_experiment_types_equivalence_key_is_checked(tmp_path):
    from vlbench.experiments.spec import load_type

    good = tmp_path / "good.toml"
    good.write_text('name = "t"\nequivalence = {siglip = 0.5}\n[[configs]]\nname = "a"\n')
    assert load_type(good).equivalence == {"siglip": 0.5}
    for bad in ("-1", "{siglip = 0}", "{siglip = nan}", '"yes"'):
        path = tmp_path / "bad.toml"
        path.write_text(f'name = "t"\nequivalence = {bad}\n[[configs]]\nname = "a"\n')
        with pytest.raises(UserError, match=r"bad.toml: equivalence: .* must be true, or a table of positive margins"):
            load_type(path)


def test_the_report_section_shows_the_plan_and_the_detectable_difference(tmp_path):
    from vlbench.analysis.report import stats_section
    from vlbench.analysis.folders import folder_rows
    from vlbench.analysis.stats import summarize

    out = tmp_path / "run"
    crossed_run(out)
    stats = summarize(folder_rows([out])[0], metrics=["siglip"], plan={"siglip": 0.3})
    html = str(stats_section(out, stats))
    assert "<th>MDE (power 0.8)</th>" in html and "plan for siglip: detect a difference of 0.300" in html
    assert "design: 6 prompts × 5 references × 3 seeds" in html


def test_the_old_module_names_still_import_the_analysis_package():
    """vlbench.stats, vlbench.crossed and vlbench.heatmap (documented before issue 24's analysis/ package) re-export
    the moved modules' names: the same objects, not copies."""
    import vlbench.crossed
    import vlbench.heatmap
    import vlbench.stats
    from vlbench.analysis import crossed, folders, heatmap, stats

    assert vlbench.stats.summarize is stats.summarize and vlbench.stats.folder_rows is folders.folder_rows
    assert vlbench.stats.table_rows is stats.table_rows and vlbench.stats.compact is stats.compact
    assert vlbench.crossed.infer is crossed.infer and vlbench.heatmap.render is heatmap.render
