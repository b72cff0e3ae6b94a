"""Issue 26 #11: on a shared GPU box, what vlbench keeps is its owner's alone by default: the data folder 0700, the
run store (and its WAL and shm), the log and the session file 0600, whatever the umask; an existing wider folder is
narrowed. VLBENCH_SHARED_DATA=1 leaves permissions to a folder shared on purpose. A local Ray instance keeps its
session folders inside a 0700 folder of the user's."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vlbench import paths


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    def set_to(value: int):
        previous.append(os.umask(value))

    previous: list[int] = []
    yield set_to
    for value in reversed(previous):
        os.umask(value)


def test_the_store_log_and_session_are_the_owners_alone_under_a_permissive_umask(umask):
    from vlbench.logs import attach_log_file
    from vlbench.store import Store
    from vlbench.tui.session import Session, save_session

    umask(0o022)
    store = Store()
    store.enqueue("p", [], {"seed": 1})  # a write: the WAL and shm files exist while the store is open
    handler = attach_log_file()
    save_session(Session(prompt="secret"))
    data = paths.data_dir()
    try:
        assert _mode(data) == 0o700
        for name in ("runs.sqlite3", "runs.sqlite3-wal", "runs.sqlite3-shm", "vlbench.log", "session.json"):
            assert _mode(data / name) == 0o600, name
    finally:
        store.close()
        if handler is not None:
            import logging

            logging.getLogger("vlbench").removeHandler(handler)
            handler.close()


def test_an_existing_world_readable_data_folder_is_narrowed(umask, tmp_path):
    from vlbench.store import Store

    umask(0o022)
    data = Path(os.environ["VLBENCH_DATA_DIR"])
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    Store().close()  # a store made before issue 26: 0644 files
    for name in ("runs.sqlite3", "runs.sqlite3-wal", "runs.sqlite3-shm"):
        if (data / name).exists():
            os.chmod(data / name, 0o644)
    os.chmod(data, 0o755)
    Store().close()
    assert _mode(data) == 0o700 and _mode(data / "runs.sqlite3") == 0o600


def test_the_worker_started_from_the_command_line_keeps_its_files_private(tiny_dirs, umask):
    umask(0o022)
    proc = subprocess.run([sys.executable, "-m", "vlbench", "worker", "--tiny", "--exit-when-idle"],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = Path(os.environ["VLBENCH_DATA_DIR"])
    assert _mode(data) == 0o700
    assert _mode(data / "runs.sqlite3") == 0o600 and _mode(data / "vlbench.log") == 0o600


def test_a_data_folder_shared_on_purpose_keeps_the_folders_and_the_umasks_permissions(umask, monkeypatch):
    from vlbench.store import Store

    monkeypatch.setenv("VLBENCH_SHARED_DATA", "1")
    umask(0o002)  # a team's usual umask: group-writable
    store = Store()
    store.enqueue("p", [], {})
    data = paths.data_dir()
    try:
        assert _mode(data) == 0o775 and _mode(data / "runs.sqlite3") == 0o664
    finally:
        store.close()


def test_a_local_ray_instance_keeps_its_sessions_in_a_folder_of_the_users_alone(monkeypatch, umask, tmp_path):
    pytest.importorskip("ray")
    import ray

    from vlbench.executors import ray_connect

    umask(0o022)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    assert ray_connect.connect(None, 1) is True
    temp = Path(seen["_temp_dir"])
    assert temp.parent == tmp_path / f"vlbench-{os.geteuid()}"
    assert _mode(temp.parent) == 0o700 and temp.parent.stat().st_uid == os.geteuid()
    # a wider folder of the user's is narrowed; one that is not a folder of the user's is refused in one line
    os.chmod(temp.parent, 0o777)
    ray_connect.private_temp_dir()
    assert _mode(temp.parent) == 0o700
    temp.parent.rmdir()
    temp.parent.symlink_to(tmp_path)
    from vlbench.errors import UserError

    with pytest.raises(UserError, match="is not a folder of yours"):
        ray_connect.private_temp_dir()


def test_a_data_folder_named_by_mistake_is_never_narrowed(tmp_path, monkeypatch):
    """VLBENCH_DATA_DIR=/tmp or a home folder: vlbench narrows only its own folder (the default, an empty one or
    one holding its store), never a sticky folder or one of other files."""
    for name, setup in (("sticky", lambda d: os.chmod(d, 0o1777)), ("others' files", lambda d: (d / "notes.txt").write_text("x"))):
        d = tmp_path / name
        d.mkdir()
        os.chmod(d, 0o755)
        setup(d)
        before = stat.S_IMODE(d.stat().st_mode)
        monkeypatch.setenv("VLBENCH_DATA_DIR", str(d))
        assert paths.data_dir() == d and stat.S_IMODE(d.stat().st_mode) == before, name
