"""Where vlbench keeps its files: platformdirs locations, each overridable by an environment variable.

VLBENCH_DATA_DIR (run store, outputs, log), VLBENCH_CONFIG_DIR (settings), VLBENCH_CACHE_DIR
(tiny models, caches). Every directory is created on first use. No heavy imports here.
"""

from __future__ import annotations

import os
from pathlib import Path

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
    import platformdirs

    return _dir("VLBENCH_DATA_DIR", platformdirs.user_data_dir)


def config_dir() -> Path:
    import platformdirs

    return _dir("VLBENCH_CONFIG_DIR", platformdirs.user_config_dir)


def cache_dir() -> Path:
    import platformdirs

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
