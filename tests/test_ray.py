"""Issue 8: experiment sweeps on Ray actors (CPU, tiny models, 2 actors), against the local executor.

One local Ray instance and one pair of actors serve the module; the fault tests make those actors die
(the executor replaces them). The dispatcher's bookkeeping is tested on its own, without Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import make_image
from vlbench.errors import UserError
from vlbench.executors.dispatch import Dispatcher

SMALL = {"steps": 2, "width": 64, "height": 64}
PROMPT = "a red square"
SEEDS = [1, 2]
VOLATILE = ("timings", "started_at", "finished_at", "peak_memory_bytes", "vl_forwards")  # differ between runs by nature
pytestmark = pytest.mark.xdist_group("ray")  # with -n: every test here on one worker, so one Ray instance


# ---- the dispatcher (no Ray) ----
@dataclass(frozen=True)
class _J:
    key: str
    extractions: tuple
    prompt: str = "p"


def _jobs(groups: dict[str, int]) -> list[_J]:
    return [_J(f"{g}{i}", ((g, "t"),)) for g, n in groups.items() for i in range(n)]


def _drain(d: Dispatcher, order: list) -> dict:
    got: dict = {}
    for slot in order:
        job = d.next_for(slot, set(order))
        if job is not None:
            got.setdefault(slot, []).append(job.key)
    return got


def test_dispatch_keeps_groups_on_their_actor_and_steals_only_when_nothing_is_fresh():
    d = Dispatcher(_jobs({"a": 4, "b": 4}))
    got = _drain(d, [0, 1] * 4)
    assert got == {0: ["a0", "a1", "a2", "a3"], 1: ["b0", "b1", "b2", "b3"]} and d.stolen == 0
    d = Dispatcher(_jobs({"a": 6}))  # one group, two actors: the second steals from the far end, then shares it
    got = _drain(d, [0, 1] * 3)
    assert sorted(got[0] + got[1]) == [f"a{i}" for i in range(6)] and len(got[0]) == len(got[1]) == 3
    assert got[1][0] == "a5" and d.stolen == 1


def test_dispatch_releases_an_extraction_after_the_last_queued_job_that_reads_it():
    d = Dispatcher(_jobs({"a": 2, "b": 1}))
    first = d.next_for(0)
    assert d.release_after(first, 0) == []
    second = d.next_for(0)
    assert second.key == "a1" and d.release_after(second, 0) == [("a", "t")]
    assert d.next_for(0).key == "b0"


def test_dispatch_retries_a_lost_job_on_another_actor_then_gives_up():
    d = Dispatcher(_jobs({"a": 3}), max_attempts=2)
    job = d.next_for(0, {0, 1})
    assert d.lost(job, 0) is True
    assert d.next_for(0, {0, 1}).key != job.key  # slot 0 lost it: slot 1 takes it first
    assert d.next_for(1, {0, 1}).key == job.key
    assert d.lost(job, 1) is False and d.attempts[job.key] == 2  # out of attempts: the caller writes it failed
    assert d.pending() == 1


def test_dispatch_retries_on_the_same_slot_when_it_is_the_only_one():
    d = Dispatcher(_jobs({"a": 1}))
    job = d.next_for(0, {0})
    assert d.lost(job, 0) and d.next_for(0, {0}) is job


@dataclass(frozen=True)
class _B:
    key: str
    extractions: tuple
    recipe: str = "s"  # the shape (batch_key is the identity here)
    prompt: str = "p"


def test_dispatch_batches_take_one_groups_jobs_of_one_shape_from_the_end_the_first_came_from():
    same = lambda r: r  # noqa: E731
    jobs = [_B(f"a{i}", (("a", "t"),), "s" if i != 2 else "t") for i in range(5)]
    d = Dispatcher(jobs)
    assert [j.key for j in d.next_batch_for(0, 3, same, {0, 1})] == ["a0", "a1"]  # a2 has another shape
    assert [j.key for j in d.next_batch_for(1, 3, same, {0, 1})] == ["a4", "a3"]  # stolen: from the far end
    assert [j.key for j in d.next_batch_for(0, 3, same, {0, 1})] == ["a2"] and d.pending() == 0
    d = Dispatcher(jobs[:2])
    first = d.next_batch_for(0, 2, same, {0, 1})
    assert len(first) == 2 and d.lost(first[0], 0) and d.lost(first[1], 0)
    assert len(d.next_batch_for(1, 2, same, {0, 1})) == 1  # a retried job runs alone
    d = Dispatcher(jobs[:2])
    assert len(d.next_batch_for(0, 2, lambda r: None, {0, 1})) == 1  # no shape (img2img, schedules): alone


# ---- on Ray ----
@pytest.fixture(scope="module")
def ray_session(tiny_dirs):
    ray = pytest.importorskip("ray")
    from vlbench.executors.ray_connect import connect

    # what `--executor ray` starts without --ray-address; 4 logical CPUs at least: the module's two actors, and two
    # more for the command-line test
    assert connect(None, 4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def executor(ray_session, tiny_spec):
    import torch

    from vlbench.executors.ray_executor import RayExecutor

    # as many torch threads as this process: CPU floats depend on the thread count, and images are compared bit for bit
    ex = RayExecutor.start(tiny_spec, actors=2, threads=torch.get_num_threads(), max_restarts=6)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def sweep(engine, tmp_path_factory):
    """vl_layer_by_token --quick × seeds 1,2 (8 jobs), run once with the local executor."""
    from vlbench.engine.engine import Engine, Reference
    from vlbench.experiments.runner import plan, run_experiment
    from vlbench.experiments.spec import load_type

    root = tmp_path_factory.mktemp("ray")
    experiment = load_type("vl_layer_by_token")
    recipes = experiment.recipes(quick=True, overrides=SMALL)
    ref = Reference.open(make_image(root / "ref.png"))
    local = root / "local"
    summary = run_experiment(Engine(engine.models), experiment, recipes, [ref], [PROMPT], local, seeds=SEEDS)
    assert (summary.done, summary.failed) == (8, 0)
    jobs = plan(recipes, [ref], [PROMPT], SEEDS)
    return {"experiment": experiment, "recipes": recipes, "ref": ref, "local": local, "jobs": jobs, "root": root}


def _run_on_ray(sweep, executor, tiny_spec, out, **kw):
    from vlbench.executors.ray_connect import head_engine
    from vlbench.experiments.runner import run_experiment

    return run_experiment(head_engine(tiny_spec), sweep["experiment"], sweep["recipes"], [sweep["ref"]], [PROMPT],
                          out, seeds=SEEDS, executor=executor, **kw)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _stable(rows: list[dict]) -> dict:
    return {r["key"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in rows}


def _same_images(a: Path, b: Path, rows: list[dict]) -> None:
    for row in rows:
        if row["status"] == "done":
            assert (a / row["image"]).read_bytes() == (b / row["image"]).read_bytes(), row["name"]


def test_ray_gives_the_local_rows_and_byte_identical_pngs(sweep, executor, tiny_spec, tmp_path):
    from vlbench.analysis.report import write_folder_report
    from vlbench.store import Store

    out = tmp_path / "ray"
    with Store(tmp_path / "runs.sqlite3") as store:
        summary = _run_on_ray(sweep, executor, tiny_spec, out, store=store, report=write_folder_report)
        history = store.history(experiment="vl_layer_by_token")
    assert (summary.jobs, summary.done, summary.failed) == (8, 8, 0)
    rows, local_rows = _rows(out), _rows(sweep["local"])
    assert _stable(rows) == _stable(local_rows)  # every field but timings, VL forwards and when
    _same_images(sweep["local"], out, rows)  # pixels AND the PNG's metadata (recipe, conditioning, environment)
    assert 1 <= summary.vl_forwards <= 2  # one extraction, read once by each actor that ran a job of it
    assert sum(r["vl_forwards"] for r in rows) == summary.vl_forwards
    assert len(history) == 8 and all(r.status == "done" and Path(r.image).is_file() for r in history)
    assert (out / "grid.png").is_file() and (out / "report.html").is_file()


def test_an_actor_killed_mid_job_is_replaced_and_the_job_retried(sweep, executor, tiny_spec, tmp_path):
    victim = sweep["jobs"][2].key
    before = dict(executor.stats)
    executor.faults = {victim: "exit"}  # the actor's process exits in the middle of this job's denoising
    try:
        summary = _run_on_ray(sweep, executor, tiny_spec, tmp_path / "ray")
    finally:
        executor.faults = {}
    assert (summary.done, summary.failed) == (8, 0)
    rows = _rows(tmp_path / "ray")
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8  # no duplicate, nothing lost
    assert executor.stats["deaths"] == before["deaths"] + 1
    assert executor.stats["retries"] >= before["retries"] + 1  # the victim (and whatever was queued behind it)
    _same_images(sweep["local"], tmp_path / "ray", rows)


def test_a_cuda_error_replaces_the_actor_and_retries_the_job(sweep, executor, tiny_spec, tmp_path):
    victim = sweep["jobs"][5].key
    before = dict(executor.stats)
    executor.faults = {victim: "cuda-error"}  # the context would be poisoned: the actor must not be reused
    try:
        summary = _run_on_ray(sweep, executor, tiny_spec, tmp_path / "ray")
    finally:
        executor.faults = {}
    assert (summary.done, summary.failed) == (8, 0)
    assert executor.stats["deaths"] == before["deaths"] + 1
    _same_images(sweep["local"], tmp_path / "ray", _rows(tmp_path / "ray"))


def test_a_job_whose_actor_always_dies_fails_with_the_reason_and_the_rest_finish(sweep, executor, tiny_spec, tmp_path):
    victim = sweep["jobs"][0].key
    out = tmp_path / "ray"
    # two runs of the victim, not the default three: each run kills an actor whose replacement must start (a fresh
    # process importing torch and loading the models, the slowest thing here); the retry-then-fail path is the same
    attempts = executor.max_attempts
    executor.faults, executor.max_attempts = {victim: "exit-always"}, 2
    try:
        summary = _run_on_ray(sweep, executor, tiny_spec, out)
    finally:
        executor.faults, executor.max_attempts = {}, attempts
    assert (summary.done, summary.failed) == (7, 1)
    rows = _rows(out)
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8
    (failed,) = [r for r in rows if r["status"] == "failed"]
    assert failed["key"] == victim and "died in each of 2 runs" in failed["error"] and "\n" not in failed["error"]
    resumed = _run_on_ray(sweep, executor, tiny_spec, out)  # the failed job is redone; nothing finished runs again
    assert (resumed.skipped, resumed.done, resumed.failed) == (7, 1, 0)
    latest = {r["key"]: r for r in _rows(out)}
    assert len(latest) == 8 and all(r["status"] == "done" for r in latest.values())


def test_an_interrupted_ray_run_resumes(sweep, executor, tiny_spec, tmp_path):
    out, seen = tmp_path / "ray", []

    def stop_after_three(job, row):
        seen.append(row["key"])
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run_on_ray(sweep, executor, tiny_spec, out, on_job_done=stop_after_three)
    assert [r["key"] for r in _rows(out)] == seen
    summary = _run_on_ray(sweep, executor, tiny_spec, out)
    assert (summary.skipped, summary.done) == (3, 5)
    rows = _rows(out)
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8


def test_batch_on_ray_groups_each_actors_jobs_and_each_image_is_its_batch_1_image(sweep, executor, tiny_spec,
                                                                                   tmp_path):
    """--batch 2 on the actors (issue 29): each actor takes up to 2 jobs of one shape from its group and runs them in
    shared DiT calls (jobs.execute_batch); rows stay one per image, each record says its batch, and each image
    equals the local batch-1 image within tests/test_batching.py's tolerance."""
    import numpy as np
    from PIL import Image

    from test_batching import MAX_PIXEL_DIFF, MEAN_PIXEL_DIFF

    executor.batch = 2
    try:
        summary = _run_on_ray(sweep, executor, tiny_spec, tmp_path / "ray")
        described = executor.describe()
    finally:
        executor.batch = 1
    assert (summary.done, summary.failed) == (8, 0) and described["batch"] == 2
    rows = _rows(tmp_path / "ray")
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8
    batches = [r["environment"]["batch"] for r in rows]
    assert all(b["size"] in (1, 2) and 0 <= b["position"] < b["size"] for b in batches)
    assert sum(b["size"] == 2 for b in batches) >= 2  # at least one shared call (its two images)
    for row in rows:
        a = np.asarray(Image.open(tmp_path / "ray" / row["image"])).astype(int)
        b = np.asarray(Image.open(sweep["local"] / row["image"])).astype(int)
        d = np.abs(a - b)
        assert d.max() <= MAX_PIXEL_DIFF and d.mean() <= MEAN_PIXEL_DIFF, (row["name"], d.max(), d.mean())


# ---- the command line ----
def _main(argv: list[str]) -> int:
    """A command in-process; a bad input raises its UserError (vlbench.cli.main would print it)."""
    from vlbench.cli import build_parser, command

    args = build_parser().parse_args(argv)
    return command(args.command).run(args)


def _argv(ref: Path, out: Path) -> list[str]:
    return ["run", "--experiment", "vl_layer_by_token", "--quick", "--image", str(ref), "--prompt", PROMPT,
            "--seeds", "1,2", "--output-dir", str(out), "--tiny", "--device", "cpu", "--steps", "2", "--width", "64",
            "--height", "64", "--no-store", "--no-diagnostics"]


def test_a_one_host_ray_run_listens_on_loopback_only(executor, sweep, tiny_spec, tmp_path):
    """Issue 13 #8: a local Ray instance exposed 7 unauthenticated listeners, 6 on every interface. Every socket
    that this process or a process it started (GCS, raylets, agents, the actors) listens on is a loopback one,
    checked while a sweep runs on the actors."""
    import ipaddress
    import threading

    psutil = pytest.importorskip("psutil")
    seen: dict = {}
    done = threading.Event()

    def watch():
        while not done.is_set():
            me = psutil.Process()
            pids = {me.pid, *(p.pid for p in me.children(recursive=True))}
            for c in psutil.net_connections("inet"):
                if c.status == psutil.CONN_LISTEN and c.pid in pids:
                    seen[(c.laddr.ip, c.laddr.port)] = c.pid
            done.wait(0.2)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        assert _run_on_ray(sweep, executor, tiny_spec, tmp_path / "out").done == 8
    finally:
        done.set()
        thread.join()
    assert len(seen) >= 3, seen  # the GCS, a raylet, the actors: the check saw Ray's servers
    exposed = {addr: pid for addr, pid in seen.items()
               if not ipaddress.ip_address(addr[0].removeprefix("::ffff:")).is_loopback}
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_cli_run_on_ray(sweep, ray_session, tmp_path):
    """The command starts its own actors: one, which is also not the CPU default (two), so the count recorded is
    --ray-actors's (and a fresh actor, importing torch and loading the models, is the cost of this test)."""
    out = tmp_path / "out"
    assert _main(_argv(sweep["ref"].path, out) + ["--executor", "ray", "--ray-actors", "1"]) == 0
    rows = _rows(out)
    assert len(rows) == 8 and all(r["status"] == "done" for r in rows)
    info = json.loads((out / "run.json").read_text())
    executor = info["invocations"][-1]["parameters"]["executor"]
    assert executor["kind"] == "ray" and len(executor["actors"]) == 1
    assert all(a["device"] == "cpu" for a in executor["actors"])


@pytest.mark.parametrize("address", ["ray://127.0.0.1:1", "127.0.0.1:1"])
def test_an_unreachable_ray_address_is_a_one_line_error(address, tmp_path, ref_image, monkeypatch):
    """Refused before ray.init, which would spend minutes retrying (asserted on behaviour, not on a clock)."""
    ray = pytest.importorskip("ray")
    inits = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: inits.append((a, k)))
    with pytest.raises(UserError) as err:
        _main(_argv(ref_image, tmp_path / "out") + ["--executor", "ray", "--ray-address", address])
    message = str(err.value)
    assert "\n" not in message and address in message and "cannot reach" in message, message
    assert inits == []


def test_ray_flags_need_the_ray_executor(tmp_path, ref_image):
    with pytest.raises(UserError, match="ray_address auto: has no effect without executor ray"):
        _main(_argv(ref_image, tmp_path / "out") + ["--ray-address", "auto"])


# ---- vlbench search on the actors (issue 29) ----
SEARCH_SPACE = """
name = "ray_search"
seeds = [0]
objectives = ["siglip", { metric = "dino", direction = "maximize" }]
metrics = ["siglip", "dino"]
[fixed]
steps = 2
width = 64
height = 64
[space]
alpha = { low = 0.2, high = 0.9 }
alpha_policy = ["attend", "split"]
layer = [-1, -2]
[sampler]
population = 2
"""


class _Borrowed:
    """The module's executor lent to a command: everything but close() (the command's way out) reaches it."""

    def __init__(self, executor):
        self._x = executor

    def __getattr__(self, name):
        return getattr(self._x, name)

    def close(self) -> None:
        pass


def test_search_on_two_actors_runs_trials_concurrently_and_resumes_with_none_lost_or_run_twice(
        sweep, executor, tmp_path, monkeypatch):
    """Two CPU actors: trials are asked while others run (two in flight at once at least); a stop in the middle
    (raised while a trial is scored, as Ctrl-C/kill would) leaves the trials in flight running; --resume finishes
    them with their stored parameters and asks new ones up to --trials: every trial number once, every image
    generated once (one results row per image, one history row per image), no finished trial evaluated again.

    Both commands run on the module's two actors (RayExecutor.start hands them over; test_cli_run_on_ray starts a
    command's own): four fresh actors, each importing torch and loading the models, were most of this test's time.
    The first command's trials still in flight when it stops are cancelled on them, as its exit would end them."""
    from vlbench.executors.ray_executor import RayExecutor
    from vlbench.search import runner as score  # where the search calls score_folder
    from vlbench.store import Store

    started = []

    def start(spec, **kwargs):
        started.append(kwargs)
        return _Borrowed(executor)

    monkeypatch.setattr(RayExecutor, "start", staticmethod(start))

    space = tmp_path / "space.toml"
    space.write_text(SEARCH_SPACE)
    out = tmp_path / "search"
    argv = ["search", "--output-dir", str(out), "--tiny", "--device", "cpu", "--executor", "ray", "--ray-actors", "2"]
    real, calls, overlap, active = score.score_folder, [], [], set()

    def stop_at_third(folder, *args, **kwargs):
        calls.append(folder)
        overlap.append(len(list(Path(out, "trials").iterdir())) - len(calls))  # trial folders begun, not scored
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(score, "score_folder", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        _main(argv + ["--space", str(space), "--image", str(sweep["ref"].path), "--prompt", PROMPT, "--trials", "6"])
    before = {t["number"]: t for t in _trials(out)}
    running = [n for n, t in before.items() if t["state"] == "running"]
    assert running and max(overlap) >= 1  # trials were in flight together; the stop left some running
    monkeypatch.setattr(score, "score_folder", real)
    assert _main(argv + ["--resume", "--trials", "6"]) == 0
    after = _trials(out)
    assert [t["number"] for t in after] == list(range(6)) and all(t["state"] == "complete" for t in after)
    for n in running:  # resumed with the parameters it was asked with
        assert after[n]["params"] == before[n]["params"]
    for t in after:
        rows = _rows(out / t["folder"])
        assert len(rows) == 1 and rows[0]["status"] == "done"  # the trial's one image, generated once
        invocations = json.loads((out / t["folder"] / "run.json").read_text())["invocations"]
        if before.get(t["number"], {}).get("state") == "complete":
            assert len(invocations) == 1  # finished before the stop: not evaluated again
    with Store() as store:
        assert len(store.history()) == 6
    assert [(k["actors"], k["address"]) for k in started] == [(2, None)] * 2  # --ray-actors 2, a local instance
    info = json.loads((out / "search.json").read_text())
    assert [i["executor"]["kind"] for i in info["invocations"]] == ["ray", "ray"]
    assert [i.get("stopped") for i in info["invocations"]] == [None, "trials"] or \
        info["invocations"][-1]["stopped"] == "trials"


def _trials(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


def test_a_local_ray_start_that_times_out_once_is_tried_again_then_is_one_line(monkeypatch):
    """Ray waits a fixed 30 s for its raylet; on a busy machine the first start can miss it. connect() shuts the
    half-started instance down and tries once more; a second timeout is a one-line UserError, not Ray's traceback."""
    ray = pytest.importorskip("ray")
    from vlbench.errors import UserError
    from vlbench.executors import ray_connect

    calls = []

    def init(**kwargs):
        calls.append(kwargs["address"])
        if calls.count("local") <= failures:
            raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    failures = 1
    assert ray_connect.connect(None, 2) is True
    assert calls == ["local", "shutdown", "local"]
    calls.clear()
    failures = 2
    with pytest.raises(UserError) as err:
        ray_connect.connect(None, 2)
    assert err.value.field == "executor" and "did not start" in str(err.value)
    assert calls == ["local", "shutdown", "local", "shutdown"]
