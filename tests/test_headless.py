"""Issue 13: `vlbench worker` runs the queue without a terminal and outlives an SSH drop; SIGTERM gives the job in
flight back to the queue; a workbench opened beside it watches and controls it through the store."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import patience

from vlbench import paths
from vlbench.store import Store

SMALL = {"width": 64, "height": 64, "steps": 2}


def _worker(*extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vlbench", "worker", "--tiny", "--device", "cpu", *extra],
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + patience(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the worker exited ({proc.returncode}) before {what}: "
                                 f"{proc.stderr.read().decode() if proc.stderr else ''}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _presence(store: Store) -> dict | None:
    from vlbench.worker import live_worker

    return live_worker(store)


@pytest.mark.parametrize("start", ["setsid", "plain &"])
def test_a_headless_worker_finishes_the_queue_after_its_terminal_is_closed(tiny_dirs, ref_image, start):
    """An SSH session, simulated: a login shell on a pseudo-terminal starts the worker in the background; the
    connection drops (the terminal's master side closes: the shell gets SIGHUP and passes it to its jobs); the
    worker finishes the queue. `setsid`: the worker is in a session of its own; `plain &`: it ignores SIGHUP."""
    if shutil.which("setsid") is None or shutil.which("bash") is None:
        pytest.skip("needs util-linux setsid and bash")
    store = Store()
    ids = store.enqueue_many([dict(prompt=f"job {i}", images=[str(ref_image)], recipe=dict(SMALL, steps=6, seed=i))
                              for i in range(30)])
    master, slave = os.openpty()
    shell = subprocess.Popen(["setsid", "-c", "bash", "--norc", "--noprofile", "-i"], stdin=slave, stdout=slave,
                             stderr=slave, env=dict(os.environ, OMP_NUM_THREADS="1"), close_fds=True)
    os.close(slave)
    try:
        prefix = "setsid " if start == "setsid" else ""
        os.write(master, f"{prefix}{sys.executable} -m vlbench worker --tiny --device cpu --exit-when-idle &\n".encode())
        info = _until(lambda: (store.counts_by_status()["done"] >= 1 and _presence(store)) or None, 120,
                      "the first finished run")
        assert info["kind"] == "headless"
    finally:
        os.close(master)  # the SSH connection drops
    shell.wait(timeout=30)
    pid = info["pid"]
    _until(lambda: store.counts_by_status()["done"] == len(ids), 180, "the whole queue")
    _until(lambda: not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z",
           30, "the worker to exit when the queue is empty")
    assert store.counts_by_status() == {"pending": 0, "running": 0, "done": 30, "failed": 0, "cancelled": 0}
    log = paths.log_path().read_text()
    assert f"headless worker pid {pid} stopped (queue empty)" in log
    assert store.get_state("worker") is None  # it said it was leaving
    store.close()


def test_sigterm_gives_the_job_in_flight_back_and_a_second_worker_is_refused(tiny_dirs, ref_image, capsys):
    from vlbench.cli import main

    store = Store()
    long, short = store.enqueue_many([dict(prompt="long", images=[str(ref_image)], recipe=dict(SMALL, steps=400)),
                                      dict(prompt="short", images=[str(ref_image)], recipe=SMALL)])
    proc = _worker()
    try:
        _until(lambda: (_presence(store) or {}).get("progress"), 120, "the long job's first steps", proc)
        assert _presence(store)["current"] == long
        assert main(["worker", "--tiny"]) == 2  # one queue, one headless worker
        err = capsys.readouterr().err.strip()
        assert err.startswith("vlbench: error:") and "already runs this queue" in err and "\n" not in err
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
    row = store.get(long)
    assert row.status == "pending" and row.claimed_by is None and row.interruptions == 0
    assert [r.id for r in store.queue()] == [long, short]  # back at the front, not failed, not stranded
    assert store.get_state("worker") is None
    store.close()


def test_the_workbench_watches_and_controls_a_headless_worker(tiny_dirs, ref_image):
    from vlbench.config import parse_settings
    from vlbench.tui.app import VlbenchApp
    from vlbench.worker import Viewer

    store = Store()
    proc = _worker()
    try:
        _until(lambda: _presence(store), 60, "the headless worker", proc)

        async def go():
            app = VlbenchApp(parse_settings({"recipe": SMALL}))
            async with app.run_test(size=(160, 48)) as pilot:
                async def wait(predicate, what, timeout=60):
                    deadline = time.monotonic() + timeout
                    while not predicate():
                        assert time.monotonic() < deadline, f"timed out waiting for {what}"
                        await pilot.pause(0.1)

                await wait(lambda: app.job_worker is not None, "the viewer")
                assert isinstance(app.job_worker, Viewer)
                assert f"VIEWER of headless worker pid {proc.pid}" in app.sub_title
                app.query_one("#ref-path").value = str(ref_image)
                app.query_one("#ref-path").focus()
                await pilot.press("enter")
                app.query_one("#prompt").focus()
                await pilot.press(*"a fox")
                await pilot.press("f5")  # queued here, run by the headless worker
                await wait(lambda: store.counts_by_status()["done"] == 1, "the headless worker's run")
                await wait(lambda: app.history.table.row_count == 1 and "done" in str(app.history.table.get_row_at(0)),
                           "History to show it")
                await pilot.press("f8")  # pause: through the store, for the other process
                await wait(lambda: store.paused and app.paused, "the pause")
                await pilot.press("f5")
                await pilot.pause(2.0)
                assert store.counts_by_status()["pending"] == 1  # the headless worker is paused
                await pilot.press("f8")
                await wait(lambda: store.counts_by_status()["done"] == 2, "the run after resuming")
            app.close()

        asyncio.run(go())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    store.close()


def test_a_dead_headless_workers_presence_is_ignored(tiny_dirs):
    from vlbench.worker import PRESENCE, live_worker

    store = Store()
    store.set_state(PRESENCE, {"token": "elsewhere:1:1", "pid": 1, "kind": "headless"})
    assert live_worker(store) is None
    store.close()
