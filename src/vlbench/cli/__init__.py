"""vlbench's command line: headless commands over the same engine the workbench drives.

One module per command (HELP, optional DESCRIPTION, `add_arguments(parser)`, `run(args) -> exit code`);
what they share is in `common`. Every bad input ends the command with one line naming the input and
the fix (exit 2); `--debug` shows the traceback instead. Parsing stays on argparse: the recipe flags are
generated from the Recipe's field metadata in a few lines, with no dependency to add (tyro and cyclopts
would generate them from the dataclass too, but not the per-field "has an effect only …" help and the
shared one-line errors without wrapping them as much).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

from vlbench.cli.common import Parser, render
from vlbench.errors import UserError

# command -> its module, in `vlbench --help` order
COMMANDS = ("tui", "embed", "generate", "run", "search", "experiments", "score", "stats", "diagnose", "calibrate", "inspect",
            "demo")


def command(name: str):
    """The module of command `name` (its add_arguments and run)."""
    return importlib.import_module(f"vlbench.cli.{name}")


def build_parser() -> Parser:
    parser = Parser(prog="vlbench", description="Condition Z-Image-Turbo on Qwen3-VL hidden states.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    for name in COMMANDS:
        module = command(name)
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("VLBENCH_DEBUG") == "1"
    try:
        rest = argv[1:] if argv[:1] == ["--debug"] else argv
        if not rest or rest[0].startswith("-") and not {"-h", "--help"} & set(rest):
            argv = ["tui", *argv]  # `vlbench [--tiny ...]` opens the workbench
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UserError("give a command (see vlbench --help)")
        return command(args.command).run(args)
    except UserError as exc:
        if debug:
            raise
        print(f"vlbench: error: {render(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlbench: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
