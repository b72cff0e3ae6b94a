"""Starting the workbench: settings, models, logging and the crash handler.

`run_tui` reads config.toml (written with comments on first run), resolves the ModelSpec (config, then
environment, then flags: vlbench.modelspec), runs the app and, if it crashes, leaves the terminal clean
and names the log file.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import traceback

from vlbench.errors import UserError
from vlbench.logs import attach_log_file


def log_crash(error: BaseException) -> None:
    """Write a crash's traceback to the log file (never raises: it runs while things are failing)."""
    try:
        logging.getLogger("vlbench.tui").critical(
            "the workbench crashed\n%s", "".join(traceback.format_exception(error)))
    except Exception:
        pass


def _ask_the_terminal_early() -> threading.Thread:
    """textual-image asks the terminal what it can draw when it is imported (up to 0.1 s per question a
    terminal leaves unanswered); asking on a thread overlaps that wait with importing the app."""
    thread = threading.Thread(target=importlib.import_module, args=("textual_image.widget",),
                              name="terminal-query", daemon=True)
    thread.start()
    return thread


def run_tui(flags: dict, debug: bool = False, paused: bool = False) -> int:
    """Run the workbench until the user quits; the exit code (0, or 1 after a crash)."""
    query = _ask_the_terminal_early()
    from vlbench.config import load_settings
    from vlbench.modelspec import resolve_model_spec
    from vlbench.paths import log_path

    attach_log_file()
    settings = load_settings()
    models = resolve_model_spec(settings.models.to_dict(), flags=flags)
    from vlbench.tui.app import VlbenchApp

    query.join()  # before Textual takes over the terminal

    app = None
    try:
        app = VlbenchApp(settings, models, paused=paused)
        app.run()
    except UserError:
        raise
    except Exception as exc:  # outside Textual's own loop (building the app, the driver)
        log_crash(exc)
        print(f"vlbench: the workbench crashed ({type(exc).__name__}: {exc}); "
              f"the traceback is in {log_path()}", file=sys.stderr)
        if debug:
            raise
        return 1
    finally:
        if app is not None:
            app.close()
    if app.return_code == 1:  # Textual restored the terminal and printed the error; say where the full record is
        print(f"vlbench: the workbench stopped with an error; the traceback is in {log_path()}", file=sys.stderr)
    return app.return_code or 0  # 128 + N after signal N (SIGHUP: 129, SIGTERM: 143), the job given back
