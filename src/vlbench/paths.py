"""Where vlbench keeps its files: platformdirs locations, each overridable by an environment variable.

VLBENCH_DATA_DIR (run store, outputs, log), VLBENCH_CONFIG_DIR (settings), VLBENCH_CACHE_DIR
(tiny models, caches). Every directory is created on first use. No heavy imports here.

The data folder is the owner's alone (issue 26): created 0700 (an existing one of the user's is narrowed to
0700), and the store, its WAL, the log and the session file 0600, so other users of a shared GPU box read none
of it. VLBENCH_SHARED_DATA=1 marks a data folder shared on purpose (a team's folder, several hosts): vlbench then
leaves every permission to the folder and the umask.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "vlbench"


def _dir(env: str, default) -> Path:
    override = os.environ.get(env)
    if override:
        path = Path(override).expanduser()
    else:
        path = Path(default(APP))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    path = _dir("VLBENCH_DATA_DIR", platformdirs.user_data_dir)
    if not shared_data() and _vlbench_folder(path):
        _narrow(path, 0o700)
    return path


def _vlbench_folder(path: Path) -> bool:
    """A folder vlbench may narrow: the default location, or one holding vlbench's store (or nothing yet) — never a
    sticky folder like /tmp, nor one of other files (a home folder named by VLBENCH_DATA_DIR by mistake)."""
    try:
        if path.stat().st_mode & 0o1000:
            return False
        return (os.environ.get("VLBENCH_DATA_DIR") in (None, "") or (path / "runs.sqlite3").exists()
                or not any(path.iterdir()))
    except OSError:
        return False


SHARED_ENV = "VLBENCH_SHARED_DATA"


def shared_data() -> bool:
    """VLBENCH_SHARED_DATA=1: the data folder is shared on purpose; its permissions are the folder's and the umask's."""
    return os.environ.get(SHARED_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def data_file(path: Path | str) -> Path:
    """`path` created if missing, before a library opens it: 0600 with its SQLite siblings (-wal, -shm, -journal)
    narrowed to 0600 too; in a data folder shared on purpose, 0666 less the umask (SQLite alone would make 0644,
    and its WAL and shm files take the database's mode)."""
    path = Path(path)
    shared = shared_data()
    try:  # O_EXCL: an existing file is never opened here. Closing any descriptor of a file drops every POSIX lock
        # this process holds on it, SQLite's included: a store already open in this process (a Viewer's connection)
        # then reads a stale WAL snapshot (and could corrupt the database)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 if shared else 0o600))
    except FileExistsError:
        pass
    except OSError:
        return path  # a read-only or full folder: whoever opens it next says so
    if not shared:
        for sibling in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
            _narrow(sibling, 0o600)
    return path


def _narrow(path: Path, mode: int) -> None:
    """chmod to `mode` a file or folder of this user's whose group or others have any permission."""
    try:
        st = path.stat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.chmod(path, mode)
    except OSError:
        pass  # gone, or not ours to change: nothing vlbench may do about it


def config_dir() -> Path:
    return _dir("VLBENCH_CONFIG_DIR", platformdirs.user_config_dir)


def cache_dir() -> Path:
    return _dir("VLBENCH_CACHE_DIR", platformdirs.user_cache_dir)


def store_path() -> Path:
    """The SQLite run store: queue and history in one table."""
    return data_dir() / "runs.sqlite3"


def outputs_dir() -> Path:
    """Generated images, one `{run_id:06d}.png` per run."""
    path = data_dir() / "outputs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_path() -> Path:
    """Tracebacks and worker events; user-facing messages stay one line."""
    return data_dir() / "vlbench.log"
