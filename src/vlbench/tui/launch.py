"""Starting the workbench: the `tui` subcommand, settings, logging and the crash handler.

`add_parser` gives cli.py its `tui` subcommand; `run_tui` reads config.toml (written with
comments on first run), resolves the models (flags over config, the tiny models when none is
set), runs the app and, if it crashes, leaves the terminal clean and names the log file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import threading
import traceback

from vlbench.errors import UserError
from vlbench.logs import attach_log_file


def add_parser(subparsers) -> argparse.ArgumentParser:
    from vlbench.cli import _model_flags

    p = subparsers.add_parser("tui", help="the interactive workbench (the default command)",
                              description="The interactive workbench: Inputs, Parameters, Queue, Preview, History.")
    _model_flags(p)
    return p


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


def run_tui(args: argparse.Namespace) -> int:
    """Run the workbench until the user quits; the exit code (0, or 1 after a crash)."""
    query = _ask_the_terminal_early()
    from vlbench.config import load_settings
    from vlbench.paths import log_path
    from vlbench.tui.models import ModelChoice

    attach_log_file()
    settings = load_settings()
    models = ModelChoice.resolve(settings.models, tiny=getattr(args, "tiny", False),
                                 zimage=getattr(args, "zimage", None), vl=getattr(args, "vl", None),
                                 device=getattr(args, "device", None), dtype=getattr(args, "dtype", None))
    from vlbench.tui.app import VlbenchApp

    query.join()  # before Textual takes over the terminal

    app = None
    try:
        app = VlbenchApp(settings, models)
        app.run()
    except UserError:
        raise
    except Exception as exc:  # outside Textual's own loop (building the app, the driver)
        log_crash(exc)
        print(f"vlbench: the workbench crashed ({type(exc).__name__}: {exc}); "
              f"the traceback is in {log_path()}", file=sys.stderr)
        if getattr(args, "debug", False):
            raise
        return 1
    finally:
        if app is not None:
            app.close()
    if app.return_code:  # Textual restored the terminal and printed the error; say where the full record is
        print(f"vlbench: the workbench stopped with an error; the traceback is in {log_path()}", file=sys.stderr)
    return app.return_code or 0


def main(argv: list[str] | None = None) -> int:
    """`python -m vlbench.tui [--tiny ...]`: the workbench without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="vlbench tui")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["tui", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_tui(args)
    except UserError as exc:
        print(f"vlbench: error: {exc}", file=sys.stderr)
        return 2
