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
                  experiment: str = "synthetic", metric: str = "siglip", noise: float = 0.25) -> None:
    """Per unit (prompt, reference, seed) a shared difficulty u ~ N(0, 1); each config's value is
    u + its effect + N(0, noise²). Written as the runner and `vlbench score` would."""
    rng = np.random.default_rng(data_seed)
    out.mkdir(parents=True, exist_ok=True)
    results, scores = [], []
    units = [(p, r, s) for p in PROMPTS for r in REFS for s in seeds]
    difficulty = {u: rng.normal() for u in units}
    for index, (name, effect) in enumerate(configs.items()):
        for (prompt, ref, seed) in units:
            key = f"{name}|{prompt}|{ref[-1]}|{seed}"
            image = f"images/{name}-{PROMPTS.index(prompt)}-{ref[-1]}-{seed}.png"
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


def test_stats_json_equals_an_independent_numpy_scipy_computation(tmp_path, capsys):
    out = tmp_path / "run"
    synthetic_run(out)
    got = main_json([str(out), "--baseline", "base"], capsys)
    want = independent(out, "siglip", "base")
    assert got["schema"] == "vlbench.stats/1" and got["baseline"] == "base"
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
    got = main_json([str(out)], capsys)["metrics"]["siglip"]["configs"]["better"]
    values = [json.loads(line)["metrics"]["siglip"] for line in (out / "scores.jsonl").read_text().splitlines()
              if json.loads(line)["key"].startswith("better|")]
    ref = sps.bootstrap((np.array(values),), np.mean, n_resamples=20_000, method="percentile",
                        random_state=np.random.default_rng(123)).confidence_interval
    half = (ref.high - ref.low) / 2
    assert got["ci"][0] == pytest.approx(ref.low, abs=0.05 * half) and got["ci"][1] == pytest.approx(ref.high, abs=0.05 * half)


def test_a_planted_difference_is_detected_and_no_difference_is_not(tmp_path):
    """Over 20 fixed data seeds at α = 0.05: the planted +0.3 is found every time; the null config is flagged
    at most 2 times in 20 (its expected rate is at most α after Holm)."""
    from vlbench.stats import folder_rows, summarize

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
    from vlbench.stats import holm

    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> kept monotone: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.9]) == pytest.approx([1.0, None, 0.9]) or holm([0.5, None, 0.9])[1] is None
    assert holm([0.5, None, 0.9])[1] is None and holm([0.5, None, 0.9])[0] == pytest.approx(1.0)
    assert holm([]) == []


def test_the_bootstrap_is_reproducible_and_follows_its_seed(tmp_path, capsys):
    out = tmp_path / "run"
    synthetic_run(out)
    first = main_json([str(out)], capsys)
    assert main_json([str(out)], capsys) == first
    other = main_json([str(out), "--bootstrap-seed", "7"], capsys)
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
    from vlbench.stats import folder_rows, summarize

    out = tmp_path / "run"
    synthetic_run(out, seeds=[0])
    stats = summarize(folder_rows([out])[0])
    assert any("one seed per config" in n and "no interval over seeds" in n for n in stats["notes"])
    single = summarize([{"name": "a", "config_index": 0, "prompt": "p", "reference_sha256": "r", "seed": 0,
                         "metrics": {"siglip": 1.0}}])
    assert single["metrics"]["siglip"]["configs"]["a"] == {"n": 1, "mean": 1.0, "std": None, "ci": None}


def test_lower_is_better_metrics_count_wins_downwards():
    from vlbench.stats import summarize

    rows = [{"name": name, "config_index": i, "prompt": f"p{k}", "reference_sha256": "r", "seed": 0,
             "metrics": {"content_leak": 0.5 - 0.1 * i + 0.01 * k}} for i, name in enumerate(("a", "b")) for k in range(8)]
    comp = summarize(rows)["metrics"]["content_leak"]["comparisons"]["b"]
    assert comp["win_rate"] == 1.0 and comp["mean_diff"] == pytest.approx(-0.1)


def test_summarize_takes_plain_rows_and_imports_no_torch(tmp_path):
    """The workbench's entry point: `vlbench.stats.summarize(rows)` on dicts shaped like results rows."""
    out = tmp_path / "run"
    synthetic_run(out)
    code = ("import json, sys; from vlbench.stats import summarize, folder_rows, compact; "
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
    from vlbench.stats import summarize

    with pytest.raises(UserError) as err:
        summarize([{"name": "a", "config_index": 0, "prompt": "p", "reference_sha256": "r", "seed": 0,
                    "metrics": {"siglip": 1.0}}], baseline="b")
    assert (err.value.field, err.value.value) == ("baseline", "b") and "choose one of a" in err.value.fix


# ---- the report ----
def test_the_report_shows_the_statistics_and_intervals(tmp_path):
    from vlbench.experiments.results import ResultsLog
    from vlbench.report import write_report

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
    assert "one seed per config: no interval over seeds can be computed" in (one / "report.html").read_text()


def test_the_adherence_plot_carries_the_intervals(tmp_path):
    """metrics.png: each config's mean with error bars = its bootstrap interval on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    from unittest import mock

    from vlbench.report import plot_metrics, run_stats

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
