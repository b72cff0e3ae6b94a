"""The log file: tracebacks and worker events go to `paths.log_path()`; users see one-line messages."""

from __future__ import annotations

import logging
import logging.handlers
import os
import traceback
import warnings
from pathlib import Path

from vlbench import paths

LOG_MAX_BYTES = 10 * 2**20  # vlbench.log rotates past this: vlbench.log.1 … .3 keep the previous ones
LOG_BACKUPS = 3

def attach_log_file() -> logging.Handler | None:
    """Send vlbench's logs to paths.log_path() unless something already does; returns the handler added."""
    path = Path(os.path.abspath(paths.log_path()))  # as FileHandler records it (VLBENCH_DATA_DIR may be relative)
    logger = logging.getLogger("vlbench")
    for h in [*logger.handlers, *logging.getLogger().handlers]:
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path:
            return None
    paths.data_file(path)  # 0600 unless the data folder is shared on purpose (tracebacks name prompts, paths)
    handler = _FileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return handler


def log_crash(error: BaseException, what: str = "the workbench crashed", logger: str = "vlbench.tui") -> None:
    """Write a crash's traceback to the log file (never raises: it runs while things are failing)."""
    try:
        logging.getLogger(logger).critical("%s\n%s", what, "".join(traceback.format_exception(error)))
    except Exception:
        pass


def quiet_libraries() -> None:
    """transformers' and diffusers' per-load progress bars and warnings off: vlbench reports loads itself
    (status lines on the command line, the Queue pane in the workbench). Imports them: call it where the
    models are about to load."""
    import diffusers
    import transformers

    # The libraries' deprecation notices (FutureWarning) concern their API, which vlbench pins and tests: nothing
    # for the user to act on.
    for module in ("transformers", "diffusers", "huggingface_hub", "torch"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


class _FileHandler(logging.handlers.RotatingFileHandler):
    """The log file, rotated at LOG_MAX_BYTES so months of worker events cannot fill the disk; a record that cannot
    be written (the disk is full) is dropped, not printed as a traceback on a terminal that may be gone. Several
    processes may log to it (workbench, headless worker, commands): one that rotates it leaves the others writing
    to the rotated file until they next attach, which loses nothing."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def flush(self) -> None:
        try:
            super().flush()
        except (OSError, ValueError):  # issue 26: a full disk at the last flush is not a traceback either
            pass

    def close(self) -> None:
        try:
            super().close()
        except (OSError, ValueError):
            self.stream = None  # its buffered records are lost with the disk space; the command's line stands
