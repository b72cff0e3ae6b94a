"""`vlbench search`: the space file's checks, the Pareto front against independent checks, and the search on the
tiny models end to end — resumable, reproducible with a fixed sampler seed, each trial a normal run folder."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlbench.errors import UserError
from vlbench.search.front import dominates, non_dominated
from vlbench.search.space import parse_space

ROOT = Path(__file__).parents[1]

# A tiny space: the curve list makes about half the trials combinations the Recipe refuses (curve has an effect
# only with alpha_policy positionwise, and linear needs alpha_end), so the refused path is always exercised.
TINY_SPACE = """
name = "tiny_search"
seeds = [0, 1]
objectives = ["siglip", { metric = "dino", direction = "maximize" }]
constraints = ["clip_i >= -1"]
metrics = ["siglip", "dino", "clip_i"]
[fixed]
steps = 2
width = 64
height = 64
[space]
alpha = { low = 0.2, high = 0.9 }
alpha_policy = ["attend", "split"]
layer = [-1, -2]
curve = ["constant", "linear"]
[sampler]
population = 2
"""

LEAN_SPACE = TINY_SPACE.replace('curve = ["constant", "linear"]\n', "").replace("seeds = [0, 1]", "seeds = [0]")


def _main(argv):
    from vlbench.cli import build_parser, command

    args = build_parser().parse_args(argv)
    return command(args.command).run(args)


def _space_file(tmp_path, text=TINY_SPACE) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def _search(tmp_path, ref_image, out, *extra, space=None):
    argv = ["search", "--output-dir", str(out), "--tiny", "--device", "cpu", *extra]
    if "--resume" not in extra:
        argv += ["--space", str(space or _space_file(tmp_path)), "--image", str(ref_image), "--prompt",
                 "a red square"]
    return _main(argv)


def _trials(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the space file
BASE = 'name = "s"\nobjectives = ["siglip"]\n'


@pytest.mark.parametrize("text, fragment", [
    (BASE + "[space]\nalpha = { low = 0.8, high = 0.2 }\n", "alpha: empty range: low 0.8 > high 0.2"),
    (BASE + "[space]\nlayer = { low = -2, high = -2 }\n", "layer: the range holds one value"),
    (BASE + "[space]\nalpha_policy = []\n", "alpha_policy: empty list of values"),
    ('name = "s"\nobjectives = [{ direction = "maximize" }]\n[space]\nalpha = { low = 0.1, high = 0.9 }\n',
     "objectives[1]: names no metric"),
    ('name = "s"\nobjectives = [""]\n[space]\nalpha = { low = 0.1, high = 0.9 }\n', "objectives[1]: names no metric"),
    ('name = "s"\nobjectives = ["sharpness"]\n[space]\nalpha = { low = 0.1, high = 0.9 }\n',
     "objectives[1]: unknown metric 'sharpness'"),
    ('name = "s"\nobjectives = ["siglip"]\nconstraints = ["content_leak <= 0.5"]\nmetrics = ["siglip"]\n'
     "[space]\nalpha = { low = 0.1, high = 0.9 }\n", "constraint 'content_leak <= 0.5': content_leak is not computed"),
    ('name = "s"\nobjectives = ["siglip"]\nconstraints = ["content_leak < 0.5"]\n[space]\nalpha = { low = 0.1, '
     'high = 0.9 }\n', "is not 'metric <= number'"),
    ('name = "s"\n[space]\nalpha = { low = 0.1, high = 0.9 }\n', "objectives: missing"),
    (BASE + "[space]\nalpha = { low = 0.1, high = 1.5 }\n", "alpha 1.5: must be in [0, 1]"),
    (BASE + "[space]\nwidth = { low = 512, high = 1000 }\n", "width 1000: is not a multiple of 16"),
    (BASE + "[space]\nlayer = { low = -4.5, high = -1 }\n", "low -4.5 must be a whole number"),
    (BASE + "[space]\nalpha_policy = { low = 0, high = 1 }\n", "a choice field takes a list of values"),
    (BASE + "[space]\nalpha_policy = [\"attend\", \"mix\"]\n", "alpha_policy mix: unknown value"),
    (BASE + "[space]\nalpha_policy = [\"split\"]\n", "one value is not a search"),
    (BASE + "[space]\nseed = [1, 2]\n", "the search runs every trial on the same seeds"),
    (BASE + "[space]\nlayers = [1, 2]\n", "unknown Recipe field 'layers'"),
    (BASE + "[fixed]\nalpha = 0.5\n[space]\nalpha = { low = 0.1, high = 0.9 }\n", "both in [fixed] and in [space]"),
    (BASE, "[space]: missing or empty"),
    (BASE + "[space]\nalpha = { low = 0.1, high = 0.9 }\n[sampler]\nkind = \"tpe\"\npopulation = 8\n",
     "population: has no effect with kind tpe"),
])
def test_a_bad_space_is_one_line_naming_the_file_and_the_key(text, fragment):
    with pytest.raises(UserError) as err:
        parse_space(text, Path("my_space.toml"))
    line = str(err.value)
    assert fragment in line and line.startswith("my_space.toml: ") and "\n" not in line


def test_directions_default_from_the_metric_and_the_example_space_parses():
    space = parse_space('name = "s"\nobjectives = ["siglip", "content_leak", { metric = "dino", direction = '
                        '"minimize" }]\n[space]\nalpha = { low = 0.1, high = 0.9 }\n')
    assert space.directions == ["maximize", "minimize", "minimize"]
    assert space.metrics == ("siglip", "content_leak", "dino")
    from vlbench.search.space import load_space

    example = load_space(ROOT / "examples" / "search" / "style_vs_prompt.toml")
    assert [p.name for p in example.params] == ["alpha", "alpha_policy", "intra_ratio", "layer"]
    assert example.constraints[0].text == "content_leak <= 0.5" and "content_leak" in example.metrics
    example.check_feasible(1)


def test_a_space_with_no_valid_recipe_is_refused_before_anything_runs():
    space = parse_space(BASE + "[fixed]\nalpha = 1.0\n[space]\nalpha_policy = [\"split\", \"positionwise\"]\n",
                        Path("dead.toml"))
    with pytest.raises(UserError, match="dead.toml: no valid recipe among .* alpha_policy (split|positionwise): has no effect"):
        space.check_feasible(1)


def test_a_constraint_is_satisfied_when_its_optuna_value_is_at_most_zero():
    space = parse_space('name = "s"\nobjectives = ["siglip"]\nconstraints = ["content_leak <= 0.5", "dino >= 0.2"]\n'
                        "[space]\nalpha = { low = 0.1, high = 0.9 }\n")
    leak, dino = space.constraints
    assert leak.violation(0.4) <= 0 < leak.violation(0.6) and dino.violation(0.3) <= 0 < dino.violation(0.1)


# ---------------------------------------------------------------- the front, checked independently
def _brute_front(points: np.ndarray, directions) -> set[int]:
    """Independent check: flip maximised objectives, then i is dominated iff some row is <= everywhere and < once."""
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    p = points * signs
    out = set()
    for i in range(len(p)):
        le = np.all(p <= p[i], axis=1)
        lt = np.any(p < p[i], axis=1)
        if not np.any(le & lt):
            out.add(i)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_non_dominated_equals_a_brute_force_check_with_ties(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 4))
    points = rng.integers(0, 5, size=(int(rng.integers(1, 30)), k)).astype(float)  # small ints: many ties
    directions = [random.Random(seed).choice(["maximize", "minimize"]) for _ in range(k)]
    assert set(non_dominated(points.tolist(), directions)) == _brute_front(points, directions)


def test_dominance_needs_one_strict_improvement():
    assert dominates([1, 2], [1, 1], ["maximize", "maximize"])
    assert not dominates([1, 1], [1, 1], ["maximize", "maximize"])
    assert dominates([0, 2], [1, 2], ["minimize", "maximize"])


def test_the_front_equals_optunas_best_trials_with_constraints(tmp_path):
    import optuna

    from vlbench.search.runner import ATTR, front_numbers, trial_entries

    space = parse_space('name = "s"\nobjectives = ["siglip", "content_leak"]\nconstraints = ["dino >= 0.5"]\n'
                        "[space]\nalpha = { low = 0.1, high = 0.9 }\n")
    study = optuna.create_study(directions=space.directions)
    rng = random.Random(3)
    for _ in range(40):
        t = study.ask()
        t.suggest_float("alpha", 0.1, 0.9)
        metrics = {m: {"n": 1, "mean": rng.choice([0.1, 0.3, 0.5, 0.7, 0.9]), "ci": None} for m in space.metrics}
        t.set_constraint(space.constraints[0].text, space.constraints[0].violation(metrics["dino"]["mean"]))
        t.set_user_attr(ATTR, {"state": "complete", "metrics": metrics, "recipe": {}})
        study.tell(t, [metrics[o.metric]["mean"] for o in space.objectives])
    ours = front_numbers(trial_entries(study, space), space)
    assert ours and sorted(ours) == sorted(t.number for t in study.best_trials)


# ---------------------------------------------------------------- the search on the tiny models
def test_search_runs_scores_and_writes_a_correct_front(tiny_dirs, tmp_path, ref_image):
    import optuna

    from vlbench.experiments.results import ResultsLog
    from vlbench.metrics.score import load_scores
    from vlbench.recipe import Recipe, load_recipe
    from scipy import stats as sps

    from vlbench.store import Store

    out = tmp_path / "search"
    assert _search(tmp_path, ref_image, out, "--trials", "5") == 0
    trials = _trials(out)
    assert [t["number"] for t in trials] == list(range(5))
    assert {t["state"] for t in trials} <= {"complete", "refused"} and any(t["state"] == "complete" for t in trials)
    for t in trials:
        if t["state"] == "refused":  # the Recipe's own reason, nothing run
            assert t["error"].startswith("curve linear: ") and not (out / "trials" / t["name"]).exists()
            continue
        # a normal run folder: the trial's recipe on every prompt × reference × seed, scored
        folder = out / t["folder"]
        rows, _ = ResultsLog(folder / "results.jsonl").read()
        assert len(rows) == 2 and {r["seed"] for r in rows} == {0, 1} and {r["name"] for r in rows} == {t["name"]}
        assert Recipe.from_dict(rows[0]["recipe"]).replace(seed=0) == Recipe.from_dict(t["recipe"])
        assert all(rows[0]["recipe"][k] == v for k, v in t["params"].items())
        scores = load_scores(folder)
        for metric in ("siglip", "dino", "clip_i"):  # objective = mean over the images, CI = vlbench stats' own
            values = np.array([scores[r["key"]]["metrics"][metric] for r in rows])
            # one prompt × one reference × 2 seeds: conditional on both, the t interval over the seeds
            want = sps.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=sps.sem(values))
            assert t["metrics"][metric]["mean"] == pytest.approx(values.mean())
            assert t["metrics"][metric]["ci"] == pytest.approx(list(want), rel=1e-9)
            assert t["metrics"][metric]["method"] == "seeds within cells" and t["metrics"][metric]["not_finite"] == 0
        assert (folder / "grid.png").is_file() and (folder / "report.html").is_file()
    # the front: our non-dominated set == an independent brute force == Optuna's best trials
    pareto = json.loads((out / "pareto.json").read_text())
    done = [t for t in trials if t["state"] == "complete" and t["feasible"]]
    points = np.array([[t["objectives"]["siglip"]["mean"], t["objectives"]["dino"]["mean"]] for t in done])
    expected = {done[i]["number"] for i in _brute_front(points, ["maximize", "maximize"])}
    assert {f["number"] for f in pareto["front"]} == expected
    from vlbench.search.runner import study_storage

    assert (out / "search.journal").is_file() and not (out / "search.db").exists()
    study = optuna.load_study(study_name="search", storage=study_storage(out))
    assert {t.number for t in study.best_trials} == expected
    # every front point is a recipe file that vlbench generate --recipe and the workbench's ctrl+o load
    for point in pareto["front"]:
        recipe = load_recipe(out / point["recipe_file"])
        assert recipe == Recipe.from_dict(point["recipe"])
        assert (out / "front" / "images").is_dir()
    front_rows, _ = ResultsLog(out / "front" / "results.jsonl").read()
    assert {r["name"] for r in front_rows} == {p["name"] for p in pareto["front"]}
    assert all((out / "front" / r["image"]).is_file() for r in front_rows)
    assert (out / "front" / "grid.png").is_file() and "<h2>Metrics</h2>" in (out / "front" / "report.html").read_text()
    assert (out / "pareto.png").is_file()
    with Store() as store:  # every trial image is in the run history, as any run's
        assert len(store.history()) == 2 * len([t for t in trials if t["state"] == "complete"])


def test_a_resumed_search_asks_the_same_trials_as_one_uninterrupted_run(tiny_dirs, tmp_path, ref_image,
                                                                        monkeypatch):
    from vlbench.search import runner as score  # where the search calls score_folder

    one_go, resumed, killed = tmp_path / "one_go", tmp_path / "resumed", tmp_path / "killed"
    space = _space_file(tmp_path, LEAN_SPACE)  # every trial runs: NSGA-II's second generation depends on scores
    assert _search(tmp_path, ref_image, one_go, "--trials", "4", "--sampler-seed", "7", space=space) == 0
    assert _search(tmp_path, ref_image, resumed, "--trials", "2", "--sampler-seed", "7", space=space) == 0
    assert len(_trials(resumed)) == 2
    assert _search(tmp_path, ref_image, resumed, "--resume", "--trials", "4") == 0
    # killed in the middle of a trial (while scoring its images): resumed, that trial is evaluated again
    real, calls = score.score_folder, []

    def dies_on_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(score, "score_folder", dies_on_second_trial)
    with pytest.raises(KeyboardInterrupt):
        _search(tmp_path, ref_image, killed, "--trials", "4", "--sampler-seed", "7", space=space)
    assert _trials(killed)[-1]["state"] == "running"
    monkeypatch.setattr(score, "score_folder", real)
    assert _search(tmp_path, ref_image, killed, "--resume", "--trials", "4") == 0

    def sequence(out):
        return [(t["params"], t["state"], (t.get("objectives") or {}).get("siglip", {}).get("mean"))
                for t in _trials(out)]

    reference = sequence(one_go)
    assert len(reference) == 4 and all(state == "complete" for _, state, _ in reference)
    assert sequence(resumed) == reference and sequence(killed) == reference
    # a different sampler seed asks other trials
    other = tmp_path / "other"
    assert _search(tmp_path, ref_image, other, "--trials", "2", "--sampler-seed", "8", space=space) == 0
    assert [t["params"] for t in _trials(other)] != [t["params"] for t in _trials(one_go)[:2]]


def test_a_search_folder_with_an_sqlite_study_keeps_it(tiny_dirs, tmp_path, ref_image):
    """Searches started before issue 29 hold their study in search.db (SQLite): they run and resume on it, and no
    journal appears beside it."""
    import optuna

    out = tmp_path / "old"
    out.mkdir()
    space = _space_file(tmp_path, LEAN_SPACE)
    optuna.create_study(storage=f"sqlite:///{out / 'search.db'}", study_name="search",
                        directions=["maximize", "maximize"])
    assert _search(tmp_path, ref_image, out, "--trials", "1", space=space) == 0
    assert _search(tmp_path, ref_image, out, "--resume", "--trials", "2") == 0
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'search.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"] and not (out / "search.journal").exists()
    assert [t["number"] for t in _trials(out)] == [0, 1]


def test_budget_minutes_stops_asking_after_the_trial_in_flight(tiny_dirs, tmp_path, ref_image):
    out = tmp_path / "budget"
    assert _search(tmp_path, ref_image, out, "--budget-minutes", "0.000001") == 0
    assert len(_trials(out)) == 1
    info = json.loads((out / "search.json").read_text())
    assert info["invocations"][-1]["stopped"] == "budget"


def test_bad_search_inputs_are_refused_before_any_model_loads(tmp_path, ref_image):
    space = _space_file(tmp_path)
    base = ["search", "--image", str(ref_image), "--prompt", "p", "--zimage", "/nonexistent", "--vl", "/nonexistent"]
    empty = tmp_path / "empty.toml"
    empty.write_text(BASE + "[space]\nalpha = { low = 0.9, high = 0.1 }\n")
    leak = tmp_path / "leak.toml"
    leak.write_text('name = "s"\nobjectives = ["siglip"]\nconstraints = ["dino >= 0.1"]\nmetrics = ["siglip"]\n'
                    "[space]\nalpha = { low = 0.1, high = 0.9 }\n")
    cases = [
        (["--space", str(empty), "--output-dir", str(tmp_path / "a"), "--trials", "2"], "empty range"),
        (["--space", str(leak), "--output-dir", str(tmp_path / "b"), "--trials", "2"], "dino is not computed"),
        (["--space", str(space), "--output-dir", str(tmp_path / "c")], "give --trials N or --budget-minutes M"),
        (["--space", str(space), "--output-dir", str(tmp_path / "d"), "--trials", "0"], "trials 0: must be >= 1"),
        (["--output-dir", str(tmp_path / "e"), "--trials", "2"], "space: give the search space file"),
    ]
    for extra, fragment in cases:
        with pytest.raises(UserError, match=fragment):
            _main(base + extra)
    with pytest.raises(UserError, match="holds no search to resume"):
        _main(["search", "--output-dir", str(tmp_path / "f"), "--resume", "--trials", "2"])
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "search.json").write_text(json.dumps({"space_source": space.read_text(),
                                                            "space_file": str(space)}))
    with pytest.raises(UserError, match="already holds a search; add --resume"):
        _main(base + ["--space", str(space), "--output-dir", str(tmp_path / "g"), "--trials", "2"])
    with pytest.raises(UserError, match=r"image \S*ref.png: has no effect with --resume"):
        _main(base + ["--output-dir", str(tmp_path / "g"), "--resume", "--trials", "2"])


def test_optuna_is_imported_by_the_search_only():
    code = ("import sys, vlbench.tui.app, vlbench.cli, vlbench.search.space, vlbench.search.front; "
            "from vlbench.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('optuna', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_search_gpu_benchmark_runs_on_the_tiny_models(tiny_dirs, tmp_path, monkeypatch):
    """The script as `python benchmarks/search_gpu.py` runs it (__main__), in this process: its search is an
    in-process `vlbench search` either way, and this saves a fresh interpreter's torch/diffusers imports."""
    import runpy

    script = ROOT / "benchmarks" / "search_gpu.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--tiny", "--trials", "3", "--out", str(tmp_path),
                                      "--workdir", str(tmp_path / "work")])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ first
    environ = dict(os.environ)  # and sets HF_* / VLBENCH_* defaults: none of them outlives this test
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(script), run_name="__main__")
    finally:
        os.environ.clear()
        os.environ.update(environ)
    result = json.loads((tmp_path / "search_gpu.json").read_text())
    assert done.value.code == 0, result.get("error")
    assert result["trials"] == 3 and result["trials_per_hour"] > 0 and result["images_per_second"] > 0
    # a results file names its card, commit and command (the project's rule for every benchmark figure)
    assert result["card"] == "cpu" and result["commit"] and "benchmarks/search_gpu.py --tiny" in result["command"]
    assert len([line for line in (tmp_path / "search" / "trials.jsonl").read_text().splitlines()]) == 3


def test_a_search_whose_every_trial_failed_exits_1(tiny_dirs, tmp_path, ref_image, monkeypatch):
    """Issue 25.15: `vlbench search` exited 0 when every trial failed; scripts could not tell."""
    from vlbench.engine.engine import Engine

    def broken(self, *args, **kwargs):
        raise RuntimeError("the DiT exploded")

    monkeypatch.setattr(Engine, "run", broken)
    out = tmp_path / "all-failed"
    assert _search(tmp_path, ref_image, out, "--trials", "2", space=_space_file(tmp_path, LEAN_SPACE)) == 1
    assert {t["state"] for t in _trials(out)} == {"failed"}


def test_size_and_steps_flags_override_the_spaces_fixed_fields(tiny_dirs, tmp_path, ref_image):
    """Issue 25.12: the shipped space fixes 1024² and 9 steps; a newcomer's try passes smaller ones on the command
    line (kept for --resume), and a searched field cannot be overridden."""
    from vlbench.experiments.results import ResultsLog

    space = _space_file(tmp_path, LEAN_SPACE.replace("steps = 2\nwidth = 64\nheight = 64\n",
                                                     "steps = 9\nwidth = 1024\nheight = 1024\n"))
    out = tmp_path / "small"
    assert _search(tmp_path, ref_image, out, "--trials", "1", "--steps", "2", "--width", "64", "--height", "48",
                   space=space) == 0
    trial = _trials(out)[0]
    rows, _ = ResultsLog(out / trial["folder"] / "results.jsonl").read()
    assert {(r["recipe"]["steps"], r["recipe"]["width"], r["recipe"]["height"]) for r in rows} == {(2, 64, 48)}
    assert json.loads((out / "search.json").read_text())["inputs"]["overrides"] == {"steps": 2, "width": 64,
                                                                                     "height": 48}
    searched = _space_file(tmp_path, LEAN_SPACE.replace("steps = 2\n", "").replace("[space]\n",
                                                                                  "[space]\nsteps = [2, 3]\n"))
    with pytest.raises(UserError, match="steps 4: is searched by the space"):
        _search(tmp_path, ref_image, tmp_path / "bad", "--trials", "1", "--steps", "4", space=searched)
    with pytest.raises(UserError, match="width 65: is not a multiple of 16"):
        _search(tmp_path, ref_image, tmp_path / "bad", "--trials", "1", "--width", "65", space=space)


def test_a_stop_reaching_the_search_process_stops_every_trial_thread_and_leaves_their_trials_running(tmp_path):
    """Issue 29, concurrent trials without Ray or models: Ctrl-C or kill reaches the main thread (here
    _thread.interrupt_main, what SIGTERM becomes under vlbench's handler) while two trials hold the two lanes; every
    trial thread stops, the search raises KeyboardInterrupt, and both trials stay running in the study for --resume."""
    import _thread
    import queue
    import threading
    import time
    from types import SimpleNamespace

    from vlbench.search.runner import SearchSummary, _Search, open_study

    space = parse_space(LEAN_SPACE, tmp_path / "space.toml")
    study = open_study(tmp_path, space)
    search = _Search(study, space, tmp_path, 0, 10, None, SearchSummary(target=10), None, None)

    class Lanes:  # two actors, as vlbench.executors.ray_executor.Lanes hands them out
        slots = [0, 1]

        def __init__(self):
            self.free = queue.Queue()
            for i in self.slots:
                self.free.put(i)

        def acquire(self, stop):
            while not stop.is_set():
                try:
                    return SimpleNamespace(index=self.free.get(timeout=0.05), run=None)
                except queue.Empty:
                    pass
            return None

        def release(self, lane):
            self.free.put(lane.index)

        @staticmethod
        def lost(exc):
            return False

    started = []

    def evaluate(study, trial, params, executor=None, images_done=None):  # a trial whose images are running
        started.append(trial.number)
        if len(started) == 2:
            _thread.interrupt_main()
        while not search.stop.is_set():
            time.sleep(0.01)
        raise KeyboardInterrupt  # what a lane raises at its next wait once the stop is set

    with pytest.raises(KeyboardInterrupt):
        search.run_concurrently(evaluate, Lanes())
    from conftest import PATIENCE_S

    for t in [t for t in threading.enumerate() if t.name.startswith("vlbench-trial-")]:
        t.join(PATIENCE_S)  # a busy machine: a thread told to stop may still be leaving when the call returns
    assert not [t for t in threading.enumerate() if t.name.startswith("vlbench-trial-") and t.is_alive()]
    assert sorted(started) == [0, 1]
    assert [t.state.name for t in study.get_trials()] == ["RUNNING", "RUNNING"]


def test_the_documented_resume_of_a_tiny_search_reads_what_it_was_started_with(tiny_dirs, tmp_path, ref_image,
                                                                               capsys):
    """Issue 26 #10: `vlbench search --output-dir s --resume --trials N` (no --tiny, no metric flags) continues a
    search started with --tiny: its models and metric models come from search.json, not the defaults."""
    out = tmp_path / "s"
    space = _space_file(tmp_path, LEAN_SPACE)
    assert _search(tmp_path, ref_image, out, "--trials", "1", space=space) == 0
    info = json.loads((out / "search.json").read_text())
    assert info["models"] == {"tiny": True, "zimage": "", "vl": ""}
    assert _main(["search", "--output-dir", str(out), "--resume", "--trials", "2", "--device", "cpu"]) == 0
    assert len(_trials(out)) == 2 and all(t["state"] == "complete" for t in _trials(out))
    assert json.loads((out / "search.json").read_text())["metric_sources"] == info["metric_sources"]
    # a search written before search.json recorded its models: tiny, inferred from its judge
    del info["models"]
    (out / "search.json").write_text(json.dumps(info))
    assert _main(["search", "--output-dir", str(out), "--resume", "--trials", "3", "--device", "cpu"]) == 0
    assert len(_trials(out)) == 3
    # naming other models is refused in one line
    with pytest.raises(UserError, match="the models differ from the search's"):
        _main(["search", "--output-dir", str(out), "--resume", "--trials", "4", "--zimage", str(tiny_dirs.zimage),
               "--vl", str(tiny_dirs.vl), "--device", "cpu"])
