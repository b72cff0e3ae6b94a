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

from vlbench.config import load_settings
from vlbench.errors import UserError
from vlbench.logs import attach_log_file, log_crash
from vlbench.modelspec import resolve_model_spec
from vlbench.paths import log_path


def guard_cell_size() -> None:
    """textual-image measures a cell as the window's pixels / its rows and columns (ioctl TIOCGWINSZ) when it is
    imported; a terminal that reports 0 rows or columns (a detached pty, some multiplexers) made that a
    ZeroDivisionError. Such a report is made an OSError here, which textual-image answers with its other ways
    (asking the terminal, TEXTUAL_CELL_WIDTH/HEIGHT, a 10×20 default) — issue 26."""
    from textual_image import _terminal

    library_log = logging.getLogger("textual_image")  # its "cell size guessed" warnings: to the log file, not
    if not library_log.handlers:                      # onto the terminal (Python's last-resort handler)
        for handler in logging.getLogger("vlbench").handlers or [logging.NullHandler()]:
            library_log.addHandler(handler)
    measure = _terminal.get_tiocgwinsz
    if getattr(measure, "vlbench_guarded", False):
        return

    def get_tiocgwinsz():
        rows, columns, width, height = measure()
        if not rows or not columns:
            raise OSError(f"the terminal reports {columns}×{rows} cells")
        return rows, columns, width, height

    get_tiocgwinsz.vlbench_guarded = True
    _terminal.get_tiocgwinsz = get_tiocgwinsz


def _ask_the_terminal_early() -> threading.Thread:
    """textual-image asks the terminal what it can draw when it is imported (up to 0.1 s per question a
    terminal leaves unanswered); asking on a thread overlaps that wait with importing the app."""
    thread = threading.Thread(target=importlib.import_module, args=("textual_image.widget",),
                              name="terminal-query", daemon=True)
    thread.start()
    return thread


def run_tui(flags: dict, debug: bool = False, paused: bool = False) -> int:
    """Run the workbench until the user quits; the exit code (0, or 1 after a crash)."""
    attach_log_file()
    guard_cell_size()  # before anything imports textual_image.widget
    query = _ask_the_terminal_early()

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
