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


def test_take_owner_registers_once_refreshes_its_own_and_replaces_a_dead_owner(tiny_dirs):
    from vlbench.process import process_token

    store = Store()
    me = {"token": process_token(), "pid": os.getpid(), "kind": "headless"}
    assert store.take_owner("worker", {"token": "elsewhere:1:1", "pid": 1}) is None  # nobody held it
    assert store.take_owner("worker", me) is None  # the holder is dead (another host): replaced
    assert store.take_owner("worker", dict(me, heartbeat=2.0)) is None  # its own entry: refreshed
    assert store.get_state("worker")["heartbeat"] == 2.0
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        from vlbench.process import _start_time
        import socket

        other = {"token": f"{socket.gethostname()}:{child.pid}:{_start_time(child.pid)}", "pid": child.pid}
        store.set_state("worker", other)
        assert store.take_owner("worker", me) == other  # a live other process holds it: refused, untouched
        assert store.get_state("worker") == other
    finally:
        child.stdin.close()
        child.wait()
    assert store.take_owner("worker", me) is None  # once it has exited, the next one registers
    store.close()


def test_a_dead_headless_workers_presence_is_ignored(tiny_dirs):
    from vlbench.worker import PRESENCE, live_worker

    store = Store()
    store.set_state(PRESENCE, {"token": "elsewhere:1:1", "pid": 1, "kind": "headless"})
    assert live_worker(store) is None
    store.close()


def test_the_workbench_follows_a_restarted_headless_worker(tiny_dirs):
    """Issue 25.5: stop `vlbench worker` under a watching workbench and start it again: the workbench follows the
    new process (its header names the new pid) and shows the runs it finishes."""
    from vlbench.config import parse_settings
    from vlbench.tui.app import VlbenchApp
    from vlbench.worker import Viewer

    store = Store()
    proc = _worker()
    second = None
    try:
        _until(lambda: _presence(store), 60, "the headless worker", proc)

        async def go():
            nonlocal second
            app = VlbenchApp(parse_settings({"recipe": SMALL}))
            async with app.run_test(size=(160, 48)) as pilot:
                async def wait(predicate, what, timeout=90):
                    deadline = time.monotonic() + timeout
                    while not predicate():
                        assert time.monotonic() < deadline, f"timed out waiting for {what}"
                        await pilot.pause(0.1)

                await wait(lambda: isinstance(app.job_worker, Viewer), "the viewer")
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
                await wait(lambda: "nothing runs the queue" in str(app.queue_pane._status.render()), "the stop to show")
                second = _worker()
                await wait(lambda: f"VIEWER of headless worker pid {second.pid}" in app.sub_title, "the new pid")
                assert "runs the queue" in str(app.queue_pane._status.render())
                app.inputs.prompt = "after the restart"
                await pilot.press("f5")
                await wait(lambda: store.counts_by_status()["done"] == 1, "the new worker's run")
                await wait(lambda: app.history.table.row_count == 1
                           and "done" in str(app.history.table.get_row_at(0)), "History to show it")
            app.close()

        asyncio.run(go())
    finally:
        for p in (proc, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=60)
    store.close()


def test_a_headless_worker_on_cpu_caps_torch_threads_as_the_workbench_does(tiny_dirs):
    """Issue 25.6: `vlbench worker` on CPU ran with torch's default thread pool (the workbench caps it at the cores
    less one) and was 10–17× slower; every worker now builds its engine one way (vlbench.worker.build_engine)."""
    store = Store()
    store.enqueue("threads", [], dict(SMALL))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-m", "vlbench", "worker", "--tiny", "--device", "cpu", "--exit-when-idle"],
                         env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert store.counts_by_status()["done"] == 1
    store.close()
    lines = [line for line in paths.log_path().read_text().splitlines() if "torch threads on CPU:" in line]
    assert lines, "the worker says which thread count it uses"
    threads = int(lines[-1].split("torch threads on CPU:")[1].split()[0])
    cores = os.cpu_count() or 1
    assert threads == (max(1, min(threads, cores - 1)) if cores > 1 else 1) and threads <= max(1, cores - 1)


def test_the_thread_policy_leaves_a_core_free():
    from vlbench.worker import cpu_threads

    assert [cpu_threads(default, cores) for default, cores in [(2, 2), (8, 8), (4, 16), (1, 1), (16, 4)]] == \
        [1, 7, 4, 1, 3]


_STARTER = """
import os, sys, time
from pathlib import Path
import vlbench.cli, vlbench.cli.worker, vlbench.worker, vlbench.store
parser = vlbench.cli.build_parser()  # everything but the command itself before the barrier: all start together
vlbench.cli.build_parser = lambda: parser
ready, barrier = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not barrier.exists():
    time.sleep(0.001)
sys.exit(vlbench.cli.main(sys.argv[3:]))
"""


def test_workers_started_at_the_same_moment_exactly_one_runs_the_queue(tiny_dirs, tmp_path):
    """Issue 26 #1: six `vlbench worker` released together by a barrier file (everything but the command itself
    done before it): exactly one registers and runs the queue, the five others are refused in one line (exit 2);
    the store names one owner. Before the check and the registration were one transaction, 6-8 of 8 ran it."""
    n = 6
    barrier = tmp_path / "go"
    errs = [tmp_path / f"err{i}" for i in range(n)]
    procs = [subprocess.Popen([sys.executable, "-c", _STARTER, str(tmp_path / f"ready{i}"), str(barrier),
                               "worker", "--tiny", "--device", "cpu"],
                              env=dict(os.environ, OMP_NUM_THREADS="1"), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=errs[i].open("wb")) for i in range(n)]
    store = Store()
    try:
        _until(lambda: all((tmp_path / f"ready{i}").exists() for i in range(n)), 120, "every worker to be ready")
        barrier.touch()
        # Each one either says it runs the queue (before its worker starts) or exits refused.
        _until(lambda: all(p.poll() is not None or "runs the queue" in e.read_text() for p, e in zip(procs, errs)),
               120, "every worker to run the queue or exit")
        running = [p for p, e in zip(procs, errs) if "runs the queue" in e.read_text()]
        assert len(running) == 1, f"{len(running)} workers run the queue"
        winner = running[0]
        _until(lambda: (_presence(store) or {}).get("pid") == winner.pid, 60, "the winner's presence", winner)
        assert _presence(store)["kind"] == "headless"
        for p, e in zip(procs, errs):
            if p is winner:
                continue
            p.wait(timeout=60)
            err = e.read_text().strip()
            assert p.returncode == 2, err
            assert err.startswith("vlbench: error:") and "already runs this queue" in err and "\n" not in err, err
            assert f"pid {winner.pid}" in err
        winner.send_signal(signal.SIGTERM)
        assert winner.wait(timeout=60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert store.get_state("worker") is None
    store.close()
