"""Issue 13, finding by finding: each test reproduces what the reliability campaign saw fail, on the tiny models.

1. one ledger that heals: a kill between the results row and the store write, store faults during a run
3. a store fault after a job finished (worker): never failed, never stranded; the workbench opens on a locked store
2. a multi-line prompt at the grid step      4. NaN/inf named by stage, never written
5. a damaged PNG behind a done row is redone  6. one line instead of a traceback
7. vlbench score on damaged folders           9. special tokens refused in every text a tokenizer reads
The campaign itself (15 kill trials, 115+ hostile inputs, store faults, a headless worker's SSH drop) is
benchmarks/reliability.py; its small versions are here, tests/test_headless.py and tests/test_fuzz.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import make_image
from vlbench.analysis.report import write_folder_report
from vlbench import paths
from vlbench.engine.engine import Engine, Reference
from vlbench.errors import UserError
from vlbench.experiments.runner import run_experiment
from vlbench.experiments.spec import load_type
from vlbench.store import Store

SMALL = {"steps": 2, "width": 64, "height": 64}
PROMPT = "a red square"
SRC = str(Path(__file__).parents[1] / "src")


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _sweep(engine, out: Path, store=None, seeds=(1, 2), console=None, on_job_done=None, prompts=(PROMPT,)):
    experiment = load_type("token_sweep")
    recipes = experiment.recipes(overrides=SMALL)[:2]
    return run_experiment(Engine(engine.models), experiment, recipes, [Reference.open(make_image(out.parent / "r.png"))],
                          list(prompts), out, seeds=list(seeds), store=store, console=console,
                          on_job_done=on_job_done, report=write_folder_report)


def _history(store: Store, out: Path) -> dict[str, list]:
    """image path -> the store's rows for it, for this output folder."""
    rows: dict[str, list] = {}
    for r in store.history(limit=1000):
        if r.image and r.image.startswith(str(out.resolve())):
            rows.setdefault(r.image, []).append(r)
    return rows


def _ledgers_agree(store: Store, out: Path) -> None:
    """Every done image of the folder is in the store exactly once, with the folder's sha256; nothing else is."""
    done = {str((out / r["image"]).resolve()): r["image_sha256"] for r in _rows(out) if r["status"] == "done"}
    history = _history(store, out)
    assert sorted(history) == sorted(done)
    assert all(len(v) == 1 and v[0].image_sha256 == done[k] for k, v in history.items()), history


def Lines():
    """A rich console that keeps what was printed: `.lines`."""
    import io

    from rich.console import Console

    class Kept(Console):
        @property
        def lines(self) -> list[str]:
            return self.file.getvalue().splitlines()

    return Kept(file=io.StringIO(), width=300, soft_wrap=True)


# ---------------------------------------------------------------- 1. one ledger that heals
KILL_AFTER_ROW = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from vlbench.experiments import folder
real = folder.record_image
calls = []

def record_image(store, record):  # the results row of this image is on disk: die before the store hears of it
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(store, record)

folder.record_image = record_image
from vlbench.cli import main
main(sys.argv[2:])
"""


def _token_sweep_configs() -> int:
    from vlbench.experiments.spec import load_type

    return len(load_type("token_sweep").configs)


def _run_argv(ref: Path, out: Path, seeds: str = "1-3") -> list[str]:
    return ["run", "--experiment", "token_sweep", "--image", str(ref), "--prompt", PROMPT, "--seeds", seeds,
            "--output-dir", str(out), "--tiny", "--device", "cpu", "--steps", "2", "--width", "64", "--height", "64",
            "--no-diagnostics"]


def test_a_kill_between_the_results_row_and_the_store_write_is_healed_by_resume(tiny_dirs, tmp_path, ref_image):
    """7 of 15 campaign kills landed there: 59 store rows against 60 results rows, never caught up."""
    out = tmp_path / "out"
    argv = _run_argv(ref_image, out, "1-2")
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_ROW, SRC, *argv], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == -signal.SIGKILL
    rows = _rows(out)
    assert len(rows) == 3  # the third row is on disk, its history row is not
    with Store() as store:
        assert len(_history(store, out)) == 2
    from vlbench.cli import main

    assert main(argv) == 0  # resume: records the missing row, then finishes
    with Store() as store:
        _ledgers_agree(store, out)
        assert len(_history(store, out)) == _token_sweep_configs() * 2  # every config × 2 seeds, each once
    assert main(argv) == 0  # a second resume records nothing twice
    with Store() as store:
        _ledgers_agree(store, out)


def _locked(path: Path, hold_for: float | threading.Event) -> threading.Thread:
    """Another process's write lock on the store, held `hold_for` seconds (past the 5 s busy timeout) or until
    that event is set (what a test needs blocked is then blocked however slow the machine is)."""
    ready = threading.Event()

    def hold():
        conn = sqlite3.connect(path, timeout=0, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        ready.set()
        if isinstance(hold_for, threading.Event):
            hold_for.wait(120)
        else:
            time.sleep(hold_for)
        conn.execute("ROLLBACK")
        conn.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    ready.wait(5)
    return thread


def _failing(monkeypatch, method: str, message: str, times: int = 10**9):
    """Store.<method> raises sqlite3.OperationalError(message) `times` times (or until `left[0] = 0`), then works.
    (Never monkeypatch.undo(): it would also undo the isolated data folder.)"""
    real = getattr(Store, method)
    left = [times]

    def broken(self, *args, **kwargs):
        if left[0] > 0:
            left[0] -= 1
            raise sqlite3.OperationalError(message)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Store, method, broken)
    return left


@pytest.mark.parametrize("fault", ["disk full", "read-only", "locked", "deleted"])
def test_a_store_fault_during_a_run_postpones_history_rows_and_loses_none(engine, tmp_path, monkeypatch, fault):
    out = tmp_path / "out"
    console = Lines()
    store = Store(tmp_path / "runs.sqlite3")
    hooks = []
    if fault in ("disk full", "read-only"):  # from the start until the third image is done (space freed, remounted)
        left = _failing(monkeypatch, "add", {"disk full": "database or disk is full",
                                             "read-only": "attempt to write a readonly database"}[fault])
        hooks.append(lambda n: left.__setitem__(0, 0) if n == 3 else None)
    elif fault == "locked":  # after the first image until the second's row: that write waits out the busy timeout
        release = threading.Event()
        hooks.append(lambda n: _locked(store.path, release) if n == 1 else release.set() if n == 2 else None)
    else:  # the store file is deleted after the first image: later rows would go to a file nobody can open
        def delete(n):
            if n == 1:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{store.path}{suffix}").unlink(missing_ok=True)
        hooks.append(delete)
    seen = []

    def on_job_done(job, row):
        seen.append(row)
        for hook in hooks:
            hook(len(seen))

    summary = _sweep(engine, out, store, console=console, on_job_done=on_job_done)
    store.close()
    assert (summary.done, summary.failed, summary.unrecorded) == (4, 0, 0)
    warnings = [line for line in console.lines if "run store" in line]
    assert len(warnings) == 1 and "\n" not in warnings[0], console.lines  # one line, once
    with Store(tmp_path / "runs.sqlite3") as fresh:
        _ledgers_agree(fresh, out)


def test_a_store_broken_through_the_run_is_counted_then_healed_on_resume(engine, tmp_path, monkeypatch):
    out = tmp_path / "out"
    left = _failing(monkeypatch, "images_recorded", "database or disk is full")
    with Store(tmp_path / "runs.sqlite3") as store:
        summary = _sweep(engine, out, store, console=Lines())
    assert summary.done == 4 and summary.unrecorded == 4 and "disk is full" in summary.store_error
    left[0] = 0
    with Store(tmp_path / "runs.sqlite3") as store:
        summary = _sweep(engine, out, store)
        assert (summary.skipped, summary.rerecorded, summary.unrecorded) == (4, 4, 0)
        _ledgers_agree(store, out)


def test_run_cli_names_the_unrecorded_images_in_one_line(tiny_dirs, tmp_path, ref_image, monkeypatch, capsys):
    from vlbench.cli import main

    _failing(monkeypatch, "images_recorded", "database or disk is full")
    assert main(_run_argv(ref_image, tmp_path / "out", "1")) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if "not yet in the run history" in ln], err


# ---------------------------------------------------------------- 5. a damaged PNG behind a done row
def test_resume_drops_results_lines_that_are_json_but_not_rows(engine, tmp_path):
    out = tmp_path / "out"
    _sweep(engine, out)
    with open(out / "results.jsonl", "a") as f:
        f.write('[1, 2]\n"text"\n3\nnull\n{"key": 1}\n')
    summary = _sweep(engine, out)
    assert (summary.skipped, summary.done) == (4, 0)
    assert len(_rows(out)) == 4


@pytest.mark.parametrize("damage", ["empty", "truncated", "other bytes"])
def test_resume_redoes_a_damaged_png_and_keeps_one_history_row_per_image(engine, tmp_path, damage):
    out = tmp_path / "out"
    with Store(tmp_path / "runs.sqlite3") as store:
        _sweep(engine, out, store)
        victim = out / _rows(out)[0]["image"]
        good = victim.read_bytes()
        victim.write_bytes({"empty": b"", "truncated": good[: len(good) // 2],
                            "other bytes": good[:-20] + bytes(20)}[damage])
        summary = _sweep(engine, out, store)
        assert (summary.redone, summary.done, summary.skipped) == (1, 1, 3)
        assert victim.read_bytes() == good  # the same job gives the same bytes
        _ledgers_agree(store, out)


def test_a_png_is_fsynced_before_its_results_row_is_written(engine, tmp_path, monkeypatch):
    from vlbench import files
    from vlbench.experiments.results import ResultsLog

    events = []
    real_fsync, real_append = files._fsync_file, ResultsLog.append
    monkeypatch.setattr(files, "_fsync_file", lambda path: (events.append(("fsync", Path(path).name)),
                                                             real_fsync(path))[1])
    monkeypatch.setattr(ResultsLog, "append", lambda self, row: (events.append(("row", row["image"])),
                                                                   real_append(self, row))[1])
    _sweep(engine, tmp_path / "out", seeds=(1,))
    for i, (kind, image) in enumerate(events):
        if kind == "row":
            name = Path(image).name
            assert any(k == "fsync" and n.startswith(f".{name}.vlbench-") for k, n in events[:i]), events


def test_stale_temp_files_of_any_name_never_stop_the_cleanup(tmp_path):
    from vlbench.files import remove_stale_temp_files

    dead = tmp_path / ".x.png.vlbench-4194303-1.tmp"  # no such pid
    live = tmp_path / f".y.png.vlbench-{os.getpid()}-1.tmp"
    odd = [".png.vlbench-99999999999999999999-1.tmp", ".z.vlbench--1-1.tmp", "\n.vlbench-1-1.tmp",
           ".a.vlbench-0-0.tmp", "plain.png", ".hidden"]
    for path in (dead, live, *(tmp_path / n for n in odd)):
        path.write_bytes(b"x")
    (tmp_path / ".d.vlbench-4194302-1.tmp").mkdir()  # a folder with a temp's name: left alone, no raise
    assert remove_stale_temp_files(tmp_path) >= 1
    assert not dead.exists() and live.exists() and (tmp_path / "plain.png").exists()
    assert remove_stale_temp_files(tmp_path / "missing") == 0


def test_a_stray_temp_png_does_not_stop_the_worker(tiny_spec, engine, ref_image):
    from vlbench.worker import Worker

    (paths.outputs_dir() / ".000001.png.vlbench-4194301-7.tmp").write_bytes(b"half a png")
    (paths.outputs_dir() / ".000001.png.vlbench-abc-7.tmp").write_bytes(b"not ours")
    store = Store()
    run_id = store.enqueue("p", [str(ref_image)], SMALL)
    worker = Worker(tiny_spec, engine_factory=lambda: engine)
    worker.start()
    worker.wake()
    assert worker.wait_idle(60)
    worker.stop()
    assert store.get(run_id).status == "done"
    store.close()


# ---------------------------------------------------------------- 3. the worker: a store fault after a job
def _drain(worker, timeout=120):
    worker.start()
    worker.wake()
    assert worker.wait_idle(timeout), "the queue did not finish"
    worker.stop()


def test_a_store_locked_for_longer_than_the_busy_timeout_does_not_fail_a_finished_job(tiny_spec, engine, ref_image):
    """The campaign: the store write-locked for 30 s → a finished job was marked failed although its PNG existed."""
    from vlbench.worker import JobFailed, JobProgress, Worker

    store = Store()
    first = store.enqueue("p", [str(ref_image)], dict(SMALL, steps=3))
    second = store.enqueue("p", [str(ref_image)], SMALL)
    events = []

    def on_event(event):
        events.append(event)
        if isinstance(event, JobProgress) and event.run_id == first and event.step == 3:
            _locked(store.path, 8)  # the job is about to be recorded: nobody may write for 8 s

    _drain(Worker(tiny_spec, engine_factory=lambda: engine, on_event=on_event))
    row = store.get(first)
    assert row.status == "done" and row.error is None and Path(row.image).is_file()
    assert store.get(second).status == "done"
    assert not [e for e in events if isinstance(e, JobFailed)]
    store.close()


def test_a_full_store_keeps_the_finished_job_until_it_can_be_written(tiny_spec, engine, ref_image, monkeypatch):
    """The campaign: disk full → the row stayed 'running' while the worker went on."""
    from vlbench.worker import worker as W  # the module whose _persist reads STORE_RETRY_S
    from vlbench.worker import JobDone, JobFailed, ModelStatus, Worker

    monkeypatch.setattr(W, "STORE_RETRY_S", 0.5)  # give up retrying in place quickly: the loop keeps trying
    store = Store()
    first = store.enqueue("p", [str(ref_image)], SMALL)
    second = store.enqueue("p", [str(ref_image)], SMALL)
    left = _failing(monkeypatch, "finish", "database or disk is full", 6)
    events = []
    _drain(Worker(tiny_spec, engine_factory=lambda: engine, on_event=events.append))
    assert left[0] == 0
    assert [store.get(i).status for i in (first, second)] == ["done", "done"]
    assert [e.run_id for e in events if isinstance(e, JobDone)] == [first, second]
    assert not [e for e in events if isinstance(e, JobFailed)]
    notes = [e.text for e in events if isinstance(e, ModelStatus) and "run store" in e.text]
    assert len(notes) == 1 and f"run {first}" in notes[0] and "\n" not in notes[0]
    store.close()


def test_a_worker_that_stops_with_an_unrecorded_job_leaves_it_to_recovery_not_failed(tiny_spec, engine, ref_image,
                                                                                     monkeypatch):
    from vlbench.worker import worker as W  # the module whose _persist reads STORE_RETRY_S
    from vlbench.worker import Worker

    monkeypatch.setattr(W, "STORE_RETRY_S", 0.2)
    store = Store()
    run_id = store.enqueue("p", [str(ref_image)], SMALL)
    left = _failing(monkeypatch, "finish", "attempt to write a readonly database")
    worker = Worker(tiny_spec, engine_factory=lambda: engine)
    worker.start()
    worker.wake()
    deadline = time.monotonic() + 60
    while not worker._unsaved and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop()
    left[0] = 0
    assert store.get(run_id).status == "running"  # not failed; its process's recovery queues it again
    assert store.recover(force=True) == (1, 0)
    assert store.get(run_id).status == "pending"
    assert "not recorded" in paths.log_path().read_text()
    store.close()


def test_a_full_disk_for_images_puts_the_run_back_and_the_queue_waits_for_room(tiny_spec, engine, ref_image,
                                                                               monkeypatch):
    """No run fails for a full disk: the run goes back to the front, the worker waits until there is room again
    (checked before each claim), then goes on by itself."""
    import shutil
    from collections import namedtuple

    from vlbench import pngs  # write_run_png, the worker's one PNG writer, calls pngs.write_png
    from vlbench.worker import ModelStatus, Worker

    real_write, full = pngs.write_png, [True]

    def write(path, data):
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(pngs, "write_png", write)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1, 1, 0 if full[0] else 1 << 40))
    store = Store()
    ids = [store.enqueue("p", [str(ref_image)], SMALL) for _ in range(2)]
    events = []
    worker = Worker(tiny_spec, engine_factory=lambda: engine, on_event=events.append, poll_s=0.05)
    worker.start()
    worker.wake()
    deadline = time.monotonic() + 60
    while not any(isinstance(e, ModelStatus) and "No space left" in e.text for e in events):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    assert [store.get(i).status for i in ids] == ["pending", "pending"] and store.queue()[0].id == ids[0]
    full[0] = False  # space freed
    assert worker.wait_idle(60)
    worker.stop()
    assert [store.get(i).status for i in ids] == ["done", "done"] and not store.paused
    assert any("room again" in e.text for e in events if isinstance(e, ModelStatus))
    store.close()


def test_the_workbench_opens_while_another_process_write_locks_the_store():
    """The campaign: the workbench crashed at start when the store was write-locked for more than 5 s."""
    import asyncio

    from vlbench.config import parse_settings
    from vlbench.tui.app import VlbenchApp

    Store().close()
    release = threading.Event()
    holder = _locked(paths.store_path(), release)  # until the workbench has opened and said so

    async def go():
        app = VlbenchApp(parse_settings({"recipe": SMALL}), start_worker=False)
        notes = []
        app.notify = lambda message, **kw: notes.append(message)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            assert app.is_running
            assert any("run store" in n and "locked" in n for n in notes), notes
            release.set()
        app.close()

    try:
        asyncio.run(go())
    finally:
        release.set()
    holder.join()


# ---------------------------------------------------------------- 2. a multi-line prompt at the grid step
def test_a_multi_line_prompt_gets_its_grid_and_report_on_every_run(engine, tmp_path):
    out = tmp_path / "out"
    for _ in range(2):  # the campaign: the crash repeated on every re-run
        _sweep(engine, out, prompts=("a\nb", "tab\there\x01 <script>"), seeds=(1,))
        assert (out / "grid.png").is_file() and (out / "report.html").is_file()
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;" in report and "<script> " not in report


# ---------------------------------------------------------------- 4. NaN/inf
def test_nan_latents_fail_the_job_naming_the_step(engine, ref_image, monkeypatch):
    from vlbench.jobs import execute
    from vlbench.recipe import Recipe
    from vlbench.records import RunRecord

    transformer = engine.models.pipe.transformer
    real = transformer.forward

    def nan_forward(*args, **kwargs):
        out = real(*args, **kwargs)
        out[0][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(transformer, "forward", nan_forward)
    record = RunRecord(prompt=PROMPT, recipe=Recipe(**SMALL).to_dict())
    outcome = execute(engine, record, [Reference.open(ref_image)])
    assert outcome.image is None and outcome.failure.kind == "non_finite"
    assert "latents are not finite after denoising step 1 of 2" in outcome.failure.reason


def _stats_with_nan(tmp_path: Path) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from vlbench.cli import main

    good = tmp_path / "stats.safetensors"
    prompts, refs = tmp_path / "calibration-prompts.txt", tmp_path / "calibration-refs"
    prompts.write_text("a red square\na cat on a mat\na lighthouse at dusk\n")  # a small set: any valid stats file
    refs.mkdir()
    make_image(refs / "a.png")
    make_image(refs / "b.png", color=(20, 40, 200))
    assert main(["calibrate", "--tiny", "--device", "cpu", "--prompts-file", str(prompts), "--references", str(refs),
                 "--out", str(good)]) == 0
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(good))
    for key in tensors:
        if key.startswith("qwen3.") and key.endswith(".text.mean"):
            tensors[key] = tensors[key] * float("nan")
    bad = tmp_path / "nan-stats.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    return bad


def test_embed_and_generate_name_the_stage_and_write_nothing_for_a_nan_conditioning(tiny_dirs, tmp_path, ref_image,
                                                                                      capsys):
    from vlbench.cli import main

    stats = _stats_with_nan(tmp_path)
    common = ["--tiny", "--device", "cpu", "--image", str(ref_image), "--prompt", PROMPT, "--normalization",
              "per-dim", "--calibration", str(stats)]
    capsys.readouterr()
    for command, out, extra in (("embed", tmp_path / "c.safetensors", []),
                                ("generate", tmp_path / "g.png", ["--steps", "2", "--width", "64", "--height", "64",
                                                                  "--no-store"])):
        assert main([command, *common, *extra, "--out", str(out)]) == 1
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if "NaN" in ln]
        assert len(lines) == 1 and "after per-dim normalisation (calibration stats for qwen3 layer -2 text" in lines[0]
        assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("flag,value", [("--image-weights", "nan,1"), ("--image-weights", "inf,1"),
                                        ("--alpha", "nan"), ("--alpha=-inf", None), ("--intra-ratio", "NaN")])
def test_nan_and_inf_flags_are_refused_before_any_model_loads(tmp_path, ref_image, flag, value, capsys):
    from vlbench.cli import main

    argv = ["embed", "--zimage", "/nonexistent", "--vl", "/nonexistent", "--image", str(ref_image), "--image",
            str(ref_image), "--multi-image", "separate", "--length-policy", "pool", "--prompt", "p", flag,
            *([value] if value is not None else []),
            "--out", str(tmp_path / "c.safetensors")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlbench: error:") and "\n" not in err and "finite" in err


# ---------------------------------------------------------------- 6. one line, not a traceback
def _one_line(main, argv, capsys, code=2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("vlbench: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_output_paths_of_the_wrong_kind_are_one_line(tmp_path, ref_image, capsys):
    from vlbench.cli import main

    (tmp_path / "file").write_text("x")
    (tmp_path / "dir.png").mkdir()
    base = ["--tiny", "--image", str(ref_image), "--prompt", "p"]
    for argv, fragment in [
        (["generate", *base, "--out", str(tmp_path / "dir.png")], "is a folder"),
        (["generate", *base, "--out", str(tmp_path / "file" / "x.png")], "is a file, not a folder"),
        (["generate", *base, "--out", str(tmp_path / "missing" / "x.png")], "does not exist"),
        (["embed", *base, "--out", str(tmp_path / "file" / "c.safetensors")], "is a file, not a folder"),
        (["run", "--experiment", "token_sweep", *base, "--output-dir", str(tmp_path / "file")], "is a file"),
        (["run", "--experiment", "token_sweep", *base, "--output-dir", str(tmp_path / "file" / "o")],
         "is a file, not a folder"),
    ]:
        assert fragment in _one_line(main, argv, capsys)


def test_a_data_folder_that_cannot_be_created_is_one_line_for_the_workbench_and_the_worker(tmp_path, monkeypatch,
                                                                                         capsys):
    from vlbench.cli import main

    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("VLBENCH_DATA_DIR", str(tmp_path / "file" / "data"))
    for argv in (["--tiny"], ["worker", "--tiny"]):
        assert "VLBENCH_DATA_DIR" in _one_line(main, argv, capsys)


@pytest.mark.parametrize("what", ["/dev/zero", "fifo"])
def test_devices_and_pipes_given_as_input_files_are_refused_not_read(tmp_path, ref_image, capsys, what):
    """/dev/zero as a recipe or prompts file read until memory ran out; a FIFO as an image blocked forever."""
    from vlbench.cli import main

    path = "/dev/zero"
    if what == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    base = ["--tiny", "--image", str(ref_image), "--prompt", "p"]
    for argv in (["generate", *base, "--recipe", path, "--out", str(tmp_path / "x.png")],
                 ["generate", "--tiny", "--image", path, "--prompt", "p", "--out", str(tmp_path / "x.png")],
                 ["run", "--experiment", "token_sweep", *base, "--prompts-file", path, "--output-dir",
                  str(tmp_path / "o")]):
        assert "not a regular file" in _one_line(main, argv, capsys)


def test_a_nearly_full_disk_is_one_warning_line_before_any_model_loads(tmp_path, ref_image, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    from vlbench.cli import common, main

    monkeypatch.setattr(shutil, "disk_usage", lambda path: namedtuple("u", "total used free")(1, 1, 50_000))
    monkeypatch.setattr(common, "engine", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("models loaded")))
    argv = _run_argv(ref_image, tmp_path / "o")
    with pytest.raises(RuntimeError, match="models loaded"):  # stopped at the model load: the check came first
        main(argv)
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "free on its disk" in ln]
    assert len(warnings) == 1 and "--output-dir" in warnings[0] and "this writes about" in warnings[0]


def test_an_undecodable_byte_in_a_run_prompt_is_one_line(tmp_path, ref_image, capsys):
    from vlbench.cli import main

    argv = _run_argv(ref_image, tmp_path / "o")
    argv[argv.index(PROMPT)] = "a\udcffb"  # what `--prompt $'a\xffb'` becomes in sys.argv
    assert "not valid UTF-8" in _one_line(main, argv, capsys)


def test_a_size_past_the_dits_positions_is_one_line(tiny_dirs, tmp_path, ref_image, capsys):
    from vlbench.cli import main

    argv = ["generate", "--tiny", "--device", "cpu", "--image", str(ref_image), "--prompt", "p", "--steps", "1",
            "--width", "8192", "--height", "8192", "--out", str(tmp_path / "x.png"), "--no-store"]
    assert "largest image side" in _one_line(main, argv, capsys)


def test_a_full_disk_during_run_is_one_line_and_the_run_resumes(tiny_dirs, tmp_path, ref_image, monkeypatch,
                                                                capsys):
    from vlbench.cli import main
    from vlbench import pngs  # write_run_png, the runner's one PNG writer, calls pngs.write_png

    real, writes, full = pngs.write_png, [], [True]

    def filling(path, data):
        writes.append(path)
        if len(writes) > 3 and full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(pngs, "write_png", filling)
    out = tmp_path / "out"
    line = _one_line(main, _run_argv(ref_image, out, "1"), capsys)
    assert "No space left on device" in line and str(out) in line and "resume" in line
    assert len(_rows(out)) == 3
    full[0] = False  # space freed
    assert main(_run_argv(ref_image, out, "1")) == 0
    assert len(_rows(out)) == _token_sweep_configs()


def test_an_os_error_names_its_file_and_the_log_keeps_the_traceback(tmp_path, monkeypatch, capsys):
    from vlbench import cli

    def broken(args):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(cli.command("experiments"), "run", broken)
    line = _one_line(cli.main, ["experiments"], capsys)
    assert str(tmp_path / "x") in line and "Permission denied" in line
    assert "Traceback" in paths.log_path().read_text()


# ---------------------------------------------------------------- 7. vlbench score on a damaged folder
def test_score_scores_what_it_can_and_names_the_rest(tiny_dirs, tmp_path, capsys):
    from vlbench.cli import main
    from vlbench.records import RunRecord

    out = tmp_path / "run"
    (out / "images").mkdir(parents=True)
    rows = []
    for i in range(6):
        image = f"images/{i}.png"
        make_image(out / image, size=(64, 64), color=(40 * i, 90, 200))
        rows.append(RunRecord(key=f"k{i}", experiment="fake", name=f"c{i}", config_index=i, recipe={"seed": i},
                              prompt="a cat", seed=i, image=image, status="done",
                              timings={"extraction": 0.0, "blend": 0.0, "generation": 0.1, "model_load": 0.0},
                              finished_at=1.0).to_json())
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{garbled\n")
    (out / "images" / "0.png").write_bytes(b"")  # damaged: this aborted the whole pass (0/6 scored)
    (out / "images" / "1.png").unlink()  # missing: was skipped silently
    capsys.readouterr()
    assert main(["score", str(out), "--tiny", "--metrics", "clip_t", "--no-store"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--image" not in err
    assert "scored 4 images" in err
    assert "1 image(s) missing" in err and "1 image(s) damaged" in err and "1 unreadable line" in err
    (out / "results.jsonl").write_text("not json\n{}\n[1, 2]\n\"x\"\n")  # [1, 2] was a traceback
    assert "none of its 4 line(s) is a results row" in _one_line(main, ["score", str(out), "--tiny", "--metrics",
                                                                        "clip_t", "--no-store"], capsys)


# ---------------------------------------------------------------- 9. special tokens
def _special_tokens(engine) -> list[str]:
    from vlbench.engine.extract import special_tokens

    vl = special_tokens(engine.models.vl.processor.tokenizer)
    qwen3 = special_tokens(engine.models.text_pipe.tokenizer)
    return sorted(set(vl) | set(qwen3))


def test_every_special_token_of_either_tokenizer_is_refused_wherever_a_tokenizer_reads_text(engine, ref_image):
    from vlbench.recipe import Recipe

    tokens = _special_tokens(engine)
    assert {"<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<think>"} <= set(tokens)
    refs = [Reference.open(ref_image)]
    cases = [
        (Recipe(**SMALL), "prompt", "prompt"),  # the VL reads the prompt (vl_text prompt): the prompt is at fault
        (Recipe(**SMALL, dual=True, style_vl_text="none"), "prompt", "prompt"),  # the content pass reads it
        (Recipe(**SMALL, vl_text="none", alpha=0.5), "prompt", "prompt"),  # only Qwen3-4B reads it
        (Recipe(**SMALL, guidance=2.0), "negative_prompt", "negative_prompt"),
    ]
    for token in tokens:
        vl_only = Recipe(**SMALL, vl_text=f"in the style of {token}")  # a VL text of its own: that field is named
        with pytest.raises(UserError) as err:
            engine.run(vl_only, PROMPT, refs)
        assert err.value.field == "vl_text" and token in str(err.value), token
        for recipe, where, field in cases:
            prompt = f"a cat {token} on a mat" if where == "prompt" else PROMPT
            if where == "negative_prompt":
                recipe = recipe.replace(negative_prompt=f"blurry {token}")
            with pytest.raises(UserError) as err:
                engine.run(recipe, prompt, refs)
            assert err.value.field == field and token in str(err.value) and "\n" not in str(err.value)


def test_the_ids_of_a_prompt_never_hold_a_special_token_it_did_not_put_there(engine):
    """What the rule protects: Z-Image's template of an accepted prompt has exactly its own control tokens."""
    from vlbench.engine.encode import encode_text

    enc = encode_text(engine.models.text_pipe, "im_start <| im_end |> vision_start")
    tok = engine.models.text_pipe.tokenizer
    specials = {tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")}
    assert sum(i in specials for i in enc.input_ids) == 3  # the user turn's open and close, the assistant's open


# ---------------------------------------------------------------- the campaign's small version
def test_the_kill_campaign_in_small_loses_nothing_in_the_folder_or_the_store(tiny_dirs, tmp_path):
    """benchmarks/reliability.py's kill section with 2 trials (a kill between a results row and its store write, and
    one at a random moment) over 2 seeds of token_sweep: after each resume, 0 lost and 0 duplicated in the folder AND the store,
    PNG bytes identical to an uninterrupted run. The full campaign (15 trials, 60 images) is the benchmark."""
    import importlib.util
    import random

    path = Path(__file__).parents[1] / "benchmarks" / "reliability.py"
    spec = importlib.util.spec_from_file_location("reliability", path)
    campaign = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(campaign)
    result = campaign.kill_section(tmp_path, trials=2, seeds="0-1", rng=random.Random(3), log=lambda line: None)
    totals = result["totals"]
    assert result["images"] == 2 * _token_sweep_configs() and totals["trials"] == 2 and totals["killed"] >= 1
    assert totals["resumes_failed"] == 0
    for key in ("folder_lost", "folder_duplicated", "folder_torn_after_resume", "pixels_differ", "store_lost",
                "store_duplicated", "store_sha_mismatch"):
        assert totals[key] == 0, (key, result["trials"])
