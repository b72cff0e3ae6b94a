"""Issue 26 #4: a full disk under the data folder (the store, the log and the outputs on it) ends a command with its one
line and exit 2: no traceback from the log file's last flush, the full disk named as such when SQLite calls it a
"disk I/O error", and a copy that filled the disk named by where it wrote. The disk is filled by injection: the log
file is /dev/full (every write: ENOSPC), store and copy faults are raised where the libraries raise them."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from vlbench import paths


@pytest.fixture
def full_log():
    """The data folder's log on a full disk: vlbench.log -> /dev/full."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    data = paths.data_dir()
    paths.log_path().symlink_to("/dev/full")
    return data


def test_a_worker_whose_log_is_on_a_full_disk_ends_without_a_traceback(tiny_dirs, full_log):
    proc = subprocess.run([sys.executable, "-m", "vlbench", "worker", "--tiny", "--device", "cpu", "--exit-when-idle"],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Errno" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "vlbench worker: stopped (queue empty)"


def test_a_worker_starting_on_a_full_data_folder_says_so_in_one_line_exit_2(tiny_dirs, full_log, monkeypatch, capsys):
    import shutil

    from vlbench.cli import main
    from vlbench.store import Store

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")  # what SQLite says when the WAL cannot grow

    monkeypatch.setattr(Store, "take_owner", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**30, 2**30, 0))
    assert main(["worker", "--tiny", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("vlbench: error: run store: disk I/O error; the data folder's disk is full: free disk space")


def test_a_run_that_fills_the_disk_names_where_it_wrote_in_one_line_exit_2(tiny_dirs, full_log, tmp_path,
                                                                          ref_image, monkeypatch, capsys):
    import shutil

    from vlbench.cli import main

    def copyfile(src, dst, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))  # as CPython's copy raises

    monkeypatch.setattr(shutil, "copyfile", copyfile)
    out = paths.data_dir() / "out"  # the usual layout: the output folder on the data folder's disk
    assert main(["run", "--tiny", "--device", "cpu", "--experiment", "vl_only_vs_qwen3", "--image", str(ref_image),
                 "--prompt", "a fox", "--output-dir", str(out), "--width", "64", "--height", "64", "--steps", "2",
                 "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    last = err[-1]
    assert last.startswith(f"vlbench: error: {out / 'references'}/") and str(ref_image) not in last, last
    assert ".vlbench-" not in last and "No space left on device; free disk space" in last
