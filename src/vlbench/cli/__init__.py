"""vlbench's command line: headless commands over the same engine the workbench drives.

One module per command (HELP, optional DESCRIPTION, `add_arguments(parser)`, `run(args) -> exit code`);
what they share is in `common`. Every bad input ends the command with one line naming the input and
the fix (exit 2); `--debug` shows the traceback instead. Parsing stays on argparse: the recipe flags are
generated from the Recipe's field metadata in a few lines, with no dependency to add (tyro and cyclopts
would generate them from the dataclass too, but not the per-field "has an effect only …" help and the
shared one-line errors without wrapping them as much).
"""

from __future__ import annotations

import atexit
import errno
import importlib
import logging
import os
import shutil
import sqlite3
import sys
import threading
import traceback
from pathlib import Path
from typing import Sequence

from vlbench import __version__, paths
from vlbench.cli.common import Parser, render
from vlbench.errors import UserError
from vlbench.files import TEMP
from vlbench.logs import attach_log_file
from vlbench.paths import log_path

# Exit codes, the same for every command (README "Exit codes"; tests/test_exit_codes.py holds each command to them)
EXIT_OK = 0  # everything asked for was done
EXIT_FAILED = 1  # it ran, but jobs failed (an image, a trial, a score): the output says which
EXIT_USER_ERROR = 2  # a bad input, flag, file or environment: one line naming it and the fix, nothing ran
EXIT_INTERRUPTED = 130  # Ctrl-C (and SIGTERM during a sweep): finished work is kept; re-run to resume

# command -> its module, in `vlbench --help` order
COMMANDS = ("tui", "worker", "embed", "generate", "run", "search", "experiments", "score", "stats", "export",
            "diagnose", "calibrate", "inspect", "demo", "completion")


def command(name: str):
    """The module of command `name` (its add_arguments and run)."""
    return importlib.import_module(f"vlbench.cli.{name}")


def build_parser() -> Parser:
    parser = Parser(prog="vlbench", description="Condition Z-Image-Turbo on Qwen3-VL hidden states.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"vlbench {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    for name in COMMANDS:
        module = command(name)
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("VLBENCH_DEBUG") == "1"
    handler = _attach_log()
    try:
        return _main(argv, debug)
    finally:
        _detach_log(handler)


def _main(argv: list[str], debug: bool) -> int:
    try:
        rest = argv[1:] if argv[:1] == ["--debug"] else argv
        if not rest or rest[0].startswith("-") and not {"-h", "--help", "--version"} & set(rest):
            argv = ["tui", *argv]  # `vlbench [--tiny ...]` opens the workbench
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UserError("give a command (see vlbench --help)")
        return command(args.command).run(args)
    except UserError as exc:
        if debug:
            raise
        _say(f"vlbench: error: {render(exc)}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _say("vlbench: interrupted")
        return EXIT_INTERRUPTED
    except (OSError, sqlite3.Error) as exc:  # the machine's fault, not vlbench's: a full disk, a read-only folder
        if debug:
            raise
        where = _log_traceback(exc)
        _say(f"vlbench: error: {environment_error(exc)}" + (f" (details in {where})" if where else ""))
        return EXIT_USER_ERROR


def environment_error(exc: BaseException) -> str:
    """One line for a fault of the disk, the filesystem or the run store, with what to do."""
    if isinstance(exc, sqlite3.Error):
        text = str(exc).strip() or type(exc).__name__
        fix = {"locked": "another process holds the run store's write lock; wait or close it",
               "full": "free disk space", "readonly": "make the data folder writable (VLBENCH_DATA_DIR)"}
        hint = next((v for k, v in fix.items() if k in text.replace(" ", "")), None)
        if hint is None:  # SQLite reports a full disk under its WAL as "disk I/O error": look at the disk itself
            free = _free_bytes_of_data_dir()
            hint = ("the data folder's disk is full: free disk space" if free is not None and free < 2**20
                    else "check VLBENCH_DATA_DIR")
        return f"run store: {text}; {hint}"
    path = _written_name(str(exc.filename)) if isinstance(exc, OSError) and exc.filename else None
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) and exc.filename2:
        path = _written_name(str(exc.filename2))  # a copy that filled the disk: name where it wrote, not its source
    if path is not None and len(path) > 200:  # a pasted essay as a path: keep the line readable
        path = path[:199] + "…"
    reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) or str(exc) or type(exc).__name__
    fix = {errno.ENOSPC: "free disk space; finished work is kept: re-run the same command to resume",
           errno.EDQUOT: "free space within your quota; re-run the same command to resume",
           errno.EROFS: "write somewhere else: the filesystem is read-only",
           errno.EACCES: "write somewhere you may write", errno.EPERM: "write somewhere you may write",
           errno.EIO: "check the disk and the terminal"}.get(getattr(exc, "errno", None), "check the path and the disk")
    return f"{path + ': ' if path else ''}{reason}; {fix}"


def _free_bytes_of_data_dir() -> int | None:
    try:
        return shutil.disk_usage(paths.data_dir()).free
    except (OSError, ValueError):
        return None


def _written_name(path: str) -> str:
    """The file a vlbench temp file (files.temp_path: `.NAME.vlbench-PID-THREAD.tmp`) was about to become."""
    found = TEMP.match(Path(path).name)
    return str(Path(path).with_name(found["name"])) if found else path


def _attach_log():
    """Logs (a failed job's traceback, a worker's events) go to the log file, never onto the terminal; with no
    writable data folder they go nowhere. Returns the handler to remove when the command ends."""
    try:
        handler = attach_log_file()
    except Exception:  # noqa: BLE001 — a read-only or missing data folder: the command says so if it needs one
        handler = logging.NullHandler()
        logging.getLogger("vlbench").addHandler(handler)
    return handler


def _detach_log(handler) -> None:
    if handler is not None:
        logging.getLogger("vlbench").removeHandler(handler)
        handler.close()


def _log_traceback(exc: BaseException):
    """The traceback into the log file (best effort: the disk may be the problem); returns its path or None."""
    try:
        logger = logging.getLogger("vlbench.cli")
        logger.error("command failed\n%s", "".join(traceback.format_exception(exc)))
        path = log_path()
        return path if path.is_file() else None
    except Exception:  # noqa: BLE001
        return None


def _visible(text: str) -> str:
    """One line whatever a value holds: control characters (line and record separators included) escaped."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)


def _say(text: str) -> None:
    text = _visible(text)
    try:
        print(text, file=sys.stderr)
    except OSError:  # the terminal is gone (an SSH drop): nobody is there to read it
        pass


def entry() -> None:
    """The `vlbench` script: run the command, then leave without the interpreter's teardown (`exit_now`)."""
    exit_now(main())


def exit_now(code: int) -> None:
    """End the process with `code` the way Python's own exit does, minus its last step: tearing down every module
    and object. With torch, transformers and diffusers' Z-Image pipeline imported that step alone takes ~1.2 s
    (measured on this project's CI machine), after every result is written. What a normal exit does first still
    happens: non-daemon threads are joined, exit handlers run (logging's flush, Ray's shutdown, torch's), and
    stdout/stderr are flushed."""
    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter calls first: joins non-daemon threads
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # a closed pipe, a closed or absent stream
            pass
    os._exit(code if isinstance(code, int) else 1)
