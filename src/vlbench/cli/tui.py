"""`vlbench` / `vlbench tui`: the interactive workbench."""

from __future__ import annotations

from vlbench.cli import common

HELP = "the interactive workbench (the default command)"
DESCRIPTION = "The interactive workbench: Inputs, Parameters, Queue, Preview, History."


def add_arguments(p) -> None:
    common.add_model_flags(p)
    p.add_argument("--paused", action="store_true",
                   help="start with the queue paused (nothing runs until F8 or ctrl+g s resumes it; the pause is "
                        "saved in the run store, like one set with F8)")


def run(args) -> int:
    from vlbench.tui.launch import run_tui

    common.check_data_dir()  # the store and the log live there: a read-only one is one line, not a crash

    # config.toml is read (and written with comments on first run) by run_tui; flags win over it
    return run_tui(common.model_flags(args), debug=args.debug, paused=args.paused)
