"""The worker thread: runs the queue in order on the tiny models, survives bad jobs, cancels, pauses,
and loses no finished work when its process is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from vlbench import paths
from vlbench.pngs import read_png_metadata
from vlbench.store import Store
from vlbench.worker import (JobCancelled, JobDone, JobFailed, JobProgress, JobStarted, ModelStatus, Worker,
                            WorkerIdle, WorkerPaused)

RECIPE = {"width": 64, "height": 64, "steps": 2}


class Events:
    """Collects worker events (they arrive on the worker thread)."""

    def __init__(self, react=None):
        self.items: list[object] = []
        self.react = react

    def __call__(self, event: object) -> None:
        self.items.append(event)
        if self.react:
            self.react(event)

    def of(self, kind) -> list:
        return [e for e in self.items if isinstance(e, kind)]


def make_worker(tiny_spec, engine, events=None, **kwargs) -> Worker:
    return Worker(tiny_spec, on_event=events or Events(), engine_factory=lambda: engine, **kwargs)


def drain(worker: Worker, timeout: float = 60) -> None:
    worker.start()
    worker.wake()
    assert worker.wait_idle(timeout), "the queue did not finish"
    worker.stop()
    assert not worker.running


def test_importing_the_worker_does_not_import_torch():
    code = ("import sys, vlbench.worker, vlbench.store, vlbench.paths; "
            "print([m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_queued_jobs_complete_in_order_with_their_records(tiny_spec, engine, ref_image):
    store = Store()
    ids = [store.enqueue(f"a red square {i}", [str(ref_image)], dict(RECIPE, seed=i), name=f"n{i}") for i in range(3)]
    events = Events()
    worker = make_worker(tiny_spec, engine, events)
    drain(worker)

    assert [e.run_id for e in events.of(JobStarted)] == ids
    assert [e.run_id for e in events.of(JobDone)] == ids
    assert all(e.total_steps == 2 for e in events.of(JobStarted))
    progress = [(e.run_id, e.step, e.total) for e in events.of(JobProgress)]
    assert progress == [(i, s, 2) for i in ids for s in (1, 2)]
    assert events.of(JobProgress)[1].eta_s == 0.0
    assert isinstance(events.items[-1], WorkerIdle)
    for run_id, done in zip(ids, events.of(JobDone)):
        row = store.get(run_id)
        assert row.status == "done" and row.image == done.image
        out = Path(row.image)
        assert out == paths.outputs_dir() / f"{run_id:06d}.png" and out.exists()
        assert {"extraction", "generation", "save", "total"} <= set(row.timings)
        assert row.environment["device"] == "cpu" and "torch" in row.environment
        cond = row.conditioning
        assert cond["length"] == sum(cond["role_counts"].values()) and cond["role_counts"]["image"] > 0
        assert cond["vl"]["input_ids"] and "<|image_pad|>×" in cond["vl"]["decoded"]
        assert sum(n for _, n in cond["vl"]["role_runs"]) == len(cond["vl"]["input_ids"])
        meta = read_png_metadata(out)
        assert meta["prompt"] == row.prompt and meta["seed"] == row.recipe["seed"]
        assert meta["recipe"]["width"] == 64 and [r["path"] for r in meta["references"]] == [str(ref_image)]
        # the store's row, the PNG metadata: one record, the same names (the PNG holds how it was made)
        assert meta == row.record().png_metadata()
    assert not list(paths.outputs_dir().glob("*.tmp")) and not list(paths.outputs_dir().glob(".*.tmp"))
    store.close()


def test_a_bad_job_fails_with_one_line_and_the_next_job_runs(tiny_spec, engine, ref_image, tmp_path):
    store = Store()
    missing = store.enqueue("p", [str(tmp_path / "missing.png")], RECIPE)
    bad_recipe = store.enqueue("p", [str(ref_image)], dict(RECIPE, width=65))
    unknown_key = store.enqueue("p", [str(ref_image)], dict(RECIPE, colour="red"))
    good = store.enqueue("p", [str(ref_image)], RECIPE)
    events = Events()
    drain(make_worker(tiny_spec, engine, events))

    row = store.get(missing)  # the worker stores the data and a plain line; the workbench words it (issue 24)
    assert row.error == f"image {tmp_path / 'missing.png'}: no such file"
    assert row.error_data == {"kind": "input", "field": "image", "value": str(tmp_path / "missing.png"),
                              "message": "no such file"}
    from vlbench.tui.wording import failure_text

    assert failure_text(row.error, row.error_data) == f"Reference {tmp_path / 'missing.png'}: no such file"
    assert "multiple of 16" in store.get(bad_recipe).error
    assert "unknown key 'colour'" in store.get(unknown_key).error
    for run_id in (missing, bad_recipe, unknown_key):
        row = store.get(run_id)
        assert row.status == "failed" and "\n" not in row.error and row.image is None
    assert [e.run_id for e in events.of(JobFailed)] == [missing, bad_recipe, unknown_key]
    assert store.get(good).status == "done"
    store.close()


def test_a_model_that_cannot_load_fails_the_job_and_the_worker_keeps_going(tmp_path, ref_image, monkeypatch):
    from vlbench.modelspec import ModelSpec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = ModelSpec(zimage=str(tmp_path / "no-zimage"), vl=str(tmp_path / "no-vl"), device="cpu", dtype="fp32")
    store = Store()
    ids = [store.enqueue("p", [str(ref_image)], RECIPE) for _ in range(2)]
    events = Events()
    drain(Worker(spec, on_event=events))  # the default engine, built in the thread
    for run_id in ids:  # each job retries the load and fails with the loader's one-line message
        row = store.get(run_id)
        assert row.status == "failed" and "cannot load it" in row.error and "\n" not in row.error
    assert any("loading" in e.text for e in events.of(ModelStatus))
    store.close()


def test_unexpected_errors_fail_the_job_and_go_to_the_log(tiny_spec, engine, ref_image):
    class Broken:
        models = engine.models
        vl_forwards = 0

        def environment(self):
            return {}

        def run(self, *args, **kwargs):
            raise RuntimeError("kaboom\nsecond line")

    store = Store()
    run_id = store.enqueue("p", [str(ref_image)], RECIPE)
    drain(Worker(tiny_spec, engine_factory=Broken))
    assert store.get(run_id).error == "RuntimeError: kaboom"
    log = paths.log_path().read_text()
    assert "Traceback" in log and "kaboom" in log
    store.close()


def test_out_of_memory_and_a_lost_cuda_context_are_named(tiny_spec, engine, ref_image):
    import torch

    errors = iter([torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore"),
                   RuntimeError("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA")])

    class Failing:
        models = engine.models
        vl_forwards = 0

        def environment(self):
            return {}

        def run(self, *args, **kwargs):
            raise next(errors)

    store = Store()
    oom, assert_, after = (store.enqueue("p", [str(ref_image)], RECIPE) for _ in range(3))
    events = Events()
    worker = Worker(tiny_spec, on_event=events, engine_factory=Failing, poll_s=0.05)
    worker.start()
    deadline = time.monotonic() + 30
    while not worker.paused and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    worker.stop()
    assert store.get(oom).error.startswith("out of memory: CUDA out of memory. Tried to allocate 20.00 GiB;")
    assert store.get(assert_).error.startswith("RuntimeError: CUDA error: device-side assert triggered")
    # every later job would fail the same way: the worker pauses instead of burning through the queue
    assert worker.paused and store.get(after).status == "pending"
    assert any("restart" in e.text for e in events.of(ModelStatus))
    assert WorkerPaused(True) in events.items
    store.close()


def test_nan_conditioning_fails_the_job_by_name(tiny_spec, engine, ref_image):
    from vlbench.engine.engine import Engine

    class NaNEngine(Engine):
        def condition(self, *args, **kwargs):
            cond = super().condition(*args, **kwargs)
            cond.embeds = cond.embeds * float("nan")
            return cond

    store = Store()
    bad = store.enqueue("p", [str(ref_image)], RECIPE)
    drain(make_worker(tiny_spec, NaNEngine(engine.models)))
    row = store.get(bad)
    assert row.status == "failed" and row.error.startswith("NaN in the conditioning")
    assert not (paths.outputs_dir() / f"{bad:06d}.png").exists()
    store.close()


def test_cancel_current_stops_the_job_at_its_next_step(tiny_spec, engine, ref_image):
    store = Store()
    first = store.enqueue("p", [str(ref_image)], dict(RECIPE, steps=6))
    second = store.enqueue("p", [str(ref_image)], RECIPE)
    worker = None

    def react(event):
        if isinstance(event, JobProgress) and event.run_id == first and event.step == 2:
            worker.cancel_current()

    events = Events(react)
    worker = make_worker(tiny_spec, engine, events)
    drain(worker)
    assert store.get(first).status == "cancelled"
    assert [e.step for e in events.of(JobProgress) if e.run_id == first] == [1, 2]
    assert [e.run_id for e in events.of(JobCancelled)] == [first]
    assert not (paths.outputs_dir() / f"{first:06d}.png").exists()
    assert store.get(second).status == "done"
    store.close()


def test_cancelling_through_the_store_stops_the_running_job(tiny_spec, engine, ref_image):
    store = Store()
    first = store.enqueue("p", [str(ref_image)], dict(RECIPE, steps=4))
    second = store.enqueue("p", [str(ref_image)], RECIPE)
    other = Store()  # as the TUI or `vlbench queue cancel` would: another connection

    def react(event):
        if isinstance(event, JobProgress) and event.run_id == first and event.step == 1:
            other.cancel(first)

    events = Events(react)
    drain(make_worker(tiny_spec, engine, events))
    assert store.get(first).status == "cancelled" and store.get(first).image is None
    assert not (paths.outputs_dir() / f"{first:06d}.png").exists()
    assert store.get(second).status == "done"
    other.close()
    store.close()


def test_pause_stops_claiming_and_resume_continues(tiny_spec, engine, ref_image):
    store = Store()
    events = Events()
    worker = make_worker(tiny_spec, engine, events, poll_s=0.05)
    worker.pause()
    worker.start()
    ids = [store.enqueue("p", [str(ref_image)], RECIPE) for _ in range(2)]
    worker.wake()
    time.sleep(0.5)
    assert worker.paused and [store.get(i).status for i in ids] == ["pending", "pending"]
    worker.resume()
    assert worker.wait_idle(60)
    worker.stop()
    assert [store.get(i).status for i in ids] == ["done", "done"]
    assert [e.paused for e in events.of(WorkerPaused)] == [True, False]
    store.close()


def test_pause_during_a_job_is_reported_at_once_and_the_job_finishes(tiny_spec, engine, ref_image):
    store = Store()
    first = store.enqueue("p", [str(ref_image)], dict(RECIPE, steps=3))
    second = store.enqueue("p", [str(ref_image)], RECIPE)
    worker = None

    def react(event):
        if isinstance(event, JobProgress) and event.run_id == first and event.step == 1:
            worker.pause()

    events = Events(react)
    worker = make_worker(tiny_spec, engine, events, poll_s=0.05)
    worker.start()
    deadline = time.monotonic() + 60
    while not events.of(JobDone) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    kinds = [type(e).__name__ for e in events.items]
    assert kinds.index("WorkerPaused") < kinds.index("JobDone")  # not held back until the job ends
    assert store.get(first).status == "done" and store.get(second).status == "pending"
    worker.resume()
    assert worker.wait_idle(60)
    worker.stop()
    assert store.get(second).status == "done"
    assert [e.paused for e in events.of(WorkerPaused)] == [True, False]
    store.close()


def test_stop_mid_job_gives_the_job_back_to_the_queue(tiny_spec, engine, ref_image):
    store = Store()
    first = store.enqueue("p", [str(ref_image)], dict(RECIPE, steps=5))
    second = store.enqueue("p", [str(ref_image)], RECIPE)
    stopping = threading.Event()
    worker = None

    def react(event):
        if isinstance(event, JobProgress) and event.run_id == first and event.step == 1:
            stopping.set()
            worker._stop.set()  # what stop() does, from inside the step so the timing is exact

    worker = make_worker(tiny_spec, engine, Events(react))
    worker.start()
    worker.wake()
    assert stopping.wait(60)
    worker.stop()
    assert [(r.id, r.status) for r in store.queue()] == [(first, "pending"), (second, "pending")]
    drain(make_worker(tiny_spec, engine))
    assert store.get(first).status == store.get(second).status == "done"
    store.close()


KILL_SCRIPT = r"""
import json, sys, time
from vlbench.engine.engine import Engine
from vlbench.engine.models import Models
from vlbench.modelspec import ModelSpec
from vlbench.worker import Worker

class SteadyEngine(Engine):  # real models; each step also waits 50 ms so the kill lands inside a job
    def run(self, recipe, prompt, refs, on_step=None):
        def step(i, n):
            time.sleep(0.05)
            on_step(i, n)
        return super().run(recipe, prompt, refs, on_step=step)

cfg = json.loads(sys.argv[1])
spec = ModelSpec(**cfg["spec"])
worker = Worker(spec, store_path=cfg["store"], outputs_dir=cfg["outputs"],
                engine_factory=lambda: SteadyEngine(Models(spec)))
worker.start()
worker.wake()
while True:
    time.sleep(1)
"""


def test_kill_9_mid_run_loses_no_finished_work_and_runs_every_job_once(tiny_spec, engine, ref_image):
    store = Store()
    outputs = paths.outputs_dir()
    ids = store.enqueue_many([dict(prompt=f"job {i}", images=[str(ref_image)], recipe=dict(RECIPE, steps=4, seed=i))
                              for i in range(6)])
    cfg = {"spec": {"zimage": tiny_spec.zimage, "vl": tiny_spec.vl, "device": "cpu", "dtype": "fp32"},
           "store": str(store.path), "outputs": str(outputs)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, json.dumps(cfg)], env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            counts = store.counts_by_status()
            if counts["done"] >= 2 and counts["running"] == 1:
                break
            assert proc.poll() is None, "the worker process died by itself"
            assert time.monotonic() < deadline, f"the worker made no progress: {counts}"
            time.sleep(0.005)
        in_flight = [r.id for r in store.queue() if r.status == "running"]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()

    assert store.recover() == (1, 0)
    counts = store.counts_by_status()
    assert sum(counts.values()) == 6 and counts["running"] == 0 and counts["failed"] == counts["cancelled"] == 0
    assert store.get(in_flight[0]).status == "pending"
    assert store.queue()[0].id == in_flight[0]  # back at the front
    done_before = {r.id: r.finished_at for r in store.history(status="done")}
    assert len(done_before) >= 2
    for run_id in done_before:
        row = store.get(run_id)
        assert row.image.endswith(f"{run_id:06d}.png")
        from PIL import Image

        with Image.open(row.image) as img:
            img.load()
            assert img.size == (64, 64)

    events = Events()
    drain(make_worker(tiny_spec, engine, events))
    assert [e.run_id for e in events.of(JobStarted)] == [i for i in ids if i not in done_before]  # each once
    rows = [store.get(i) for i in ids]
    assert all(r.status == "done" for r in rows)
    assert all(done_before[r.id] == r.finished_at for r in rows if r.id in done_before)  # not run again
    assert sorted(p.name for p in outputs.iterdir()) == [f"{i:06d}.png" for i in ids]  # no stale temp files
    store.close()


# ---- experiment batches: the worker that ends one writes its folder ----
def _batch(store, ref_image, batch: str, n: int = 2) -> list[int]:
    """What the workbench queues for an experiment: runs with names and an experiment, under one batch id."""
    from vlbench.records import RunRecord

    records = [RunRecord(prompt="a red square", references=[{"path": str(ref_image), "sha256": None}],
                         recipe=dict(RECIPE, layer=-1 - i, seed=0), seed=0, name=f"layer-{1 + i}",
                         experiment="vl_layer_by_token", config_index=i, source="tui") for i in range(n)]
    return store.enqueue_many(records, batch=batch)


def test_the_worker_that_ends_an_experiment_batch_writes_its_folder_with_the_grid_and_report(tiny_spec, engine,
                                                                                             ref_image):
    """No workbench needed: `vlbench worker` runs the same Worker, so a batch that ends while the workbench is
    closed still gets the folder `vlbench run` would have written."""
    from vlbench.experiments.batch_export import EXPORTED, batch_folder
    from vlbench.experiments.results import ResultsLog, validate_row
    from vlbench.worker import BatchExported

    store = Store()
    ids = _batch(store, ref_image, "b1")
    events = Events()
    drain(make_worker(tiny_spec, engine, events))
    (exported,) = events.of(BatchExported)
    out = batch_folder("vl_layer_by_token", "b1")
    assert (exported.batch, exported.experiment, exported.folder, exported.images) == ("b1", "vl_layer_by_token",
                                                                                        str(out), 2)
    assert events.items.index(exported) > events.items.index(events.of(JobDone)[-1])  # after the last run, once
    assert (out / "grid.png").is_file() and (out / "report.html").is_file()
    rows, bad = ResultsLog(out / "results.jsonl").read()
    assert bad == 0 and len(rows) == len(ids) and not any(validate_row(r) for r in rows)
    assert store.get_state(EXPORTED + "b1") == str(out)
    store.close()


def test_a_finished_batch_without_its_folder_is_written_when_a_worker_next_runs_dry_and_only_once(tiny_spec, engine,
                                                                                                 ref_image):
    """A worker killed between a batch's last run and its export (here: one that does not export), or runs
    cancelled from the queue: the next worker writes the folder when its queue is empty; later ones do not."""
    from vlbench.experiments.batch_export import EXPORTED, batch_folder
    from vlbench.worker import BatchExported

    store = Store()
    _batch(store, ref_image, "b2")
    pending = _batch(store, ref_image, "b3", n=1)
    store.cancel(pending[0])  # a batch with nothing done: nothing to show, no folder
    drain(make_worker(tiny_spec, engine, export_batches=False))
    assert store.get_state(EXPORTED + "b2") is None and not batch_folder("vl_layer_by_token", "b2").exists()
    events = Events()
    drain(make_worker(tiny_spec, engine, events))
    assert [(e.batch, e.images) for e in events.of(BatchExported)] == [("b2", 2)]
    assert (batch_folder("vl_layer_by_token", "b2") / "grid.png").is_file()
    again = Events()
    drain(make_worker(tiny_spec, engine, again))
    assert again.of(BatchExported) == []
    store.close()


def test_an_export_is_claimed_by_one_process_and_a_failed_one_can_be_claimed_again(tmp_path):
    store, other = Store(tmp_path / "s.db"), Store(tmp_path / "s.db")
    assert store.claim_state("batch_exported:x", "writing:a") is True
    assert other.claim_state("batch_exported:x", "writing:b") is False
    store.set_state("batch_exported:x", "")  # the export failed and gave its claim back
    assert other.claim_state("batch_exported:x", "writing:b") is True
    assert store.claim_state("batch_exported:x", "writing:a", replacing="writing:stale") is False
    assert store.claim_state("batch_exported:x", "writing:a", replacing="writing:b") is True  # b's claim was stale
    assert store.get_state("batch_exported:x") == "writing:a"
    store.close()
    other.close()


def test_an_export_whose_process_died_midway_is_done_again_and_a_live_one_is_left_alone(tiny_spec, engine, ref_image):
    from vlbench.experiments.batch_export import EXPORTED, WRITING, batch_folder, unexported_batches
    from vlbench.process import process_token
    from vlbench.worker import BatchExported

    store = Store()
    _batch(store, ref_image, "dead")
    _batch(store, ref_image, "alive")
    drain(make_worker(tiny_spec, engine, export_batches=False))
    store.set_state(EXPORTED + "dead", f"{WRITING}:elsewhere:1:1")  # killed mid-export (another host's token)
    store.set_state(EXPORTED + "alive", f"{WRITING}:{process_token()}")  # still writing, in a live process
    assert [b for b, _ in unexported_batches(store)] == ["dead"]
    events = Events()
    drain(make_worker(tiny_spec, engine, events))
    assert [e.batch for e in events.of(BatchExported)] == ["dead"]
    assert store.get_state(EXPORTED + "dead") == str(batch_folder("vl_layer_by_token", "dead"))
    assert store.get_state(EXPORTED + "alive") == f"{WRITING}:{process_token()}"
    store.close()


def test_a_viewer_tells_the_workbench_when_the_headless_worker_wrote_a_batchs_folder(tmp_path):
    from vlbench.experiments.batch_export import EXPORTED
    from vlbench.worker import BatchExported, _report_viewed_exports

    class Viewer:
        def __init__(self):
            self.events = []

        def _emit(self, event):
            self.events.append(event)

    store, viewer = Store(tmp_path / "s.db"), Viewer()
    batches = {"b": ("vl_layer_by_token", time.monotonic())}
    store.set_state(EXPORTED + "b", "writing:elsewhere:1:1")
    _report_viewed_exports(viewer, store, batches)
    assert viewer.events == [] and "b" in batches  # not written yet
    store.set_state(EXPORTED + "b", "/data/experiments/vl_layer_by_token-b")
    _report_viewed_exports(viewer, store, batches)
    assert viewer.events == [BatchExported("b", "vl_layer_by_token", "/data/experiments/vl_layer_by_token-b", 0)]
    assert batches == {}
    store.close()


def test_a_viewer_follows_a_restarted_headless_worker(tmp_path):
    """Issue 25.5: after `vlbench worker` was restarted, the workbench's Viewer kept saying "nothing runs the queue"
    for the dead pid and its progress bar stayed frozen; it now follows the new worker."""
    import socket
    import subprocess

    from vlbench.process import _start_time
    from vlbench.worker import PRESENCE, JobProgress, JobStarted, ModelStatus, Viewer, ViewerFollows, WorkerIdle

    def presence(proc, current=None, progress=None):
        token = f"{socket.gethostname()}:{proc.pid}:{_start_time(proc.pid)}"
        return {"token": token, "pid": proc.pid, "kind": "headless", "current": current, "progress": progress,
                "status": "", "paused": False, "log": "/x/vlbench.log"}

    store = Store(tmp_path / "s.db")
    first_run = store.enqueue("first", [], dict(RECIPE))
    second_run = store.enqueue("second", [], dict(RECIPE))
    first = subprocess.Popen(["sleep", "60"])
    second = subprocess.Popen(["sleep", "60"])
    events: list = []
    try:
        info = presence(first, current=first_run, progress=[1, 2, None])
        store.set_state(PRESENCE, info)
        viewer = Viewer(store.path, info, on_event=events.append, poll_s=0.05)
        viewer.start()
        _wait_for(lambda: any(isinstance(e, JobProgress) for e in events), 10, "the first worker's progress")
        first.kill()
        first.wait()
        _wait_for(lambda: any(isinstance(e, WorkerIdle) for e in events), 10, "the dead worker's job to end")
        assert viewer.current_run_id is None and not viewer.alive
        store.set_state(PRESENCE, presence(second, current=second_run, progress=[1, 2, 0.5]))
        _wait_for(lambda: any(isinstance(e, ViewerFollows) for e in events), 10, "the viewer to follow")
        _wait_for(lambda: JobProgress(second_run, 1, 2, 0.5) in events, 10, "the new worker's progress")
        assert viewer.alive and viewer.pid == second.pid and viewer.current_run_id == second_run
        assert ViewerFollows(second.pid, "/x/vlbench.log") in events and JobStarted(second_run, 2) in events
        texts = [e.text for e in events if isinstance(e, ModelStatus)]
        assert any(f"pid {first.pid}) has stopped" in t for t in texts)
        assert f"(pid {second.pid}) runs the queue" in texts[-1]
        viewer.stop()
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()
        store.close()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
