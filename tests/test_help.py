"""Issue 24: every help page renders, `--version` answers, and no flag is matched by a prefix.

`vlbench --help` once crashed with `ValueError: unsupported format character` because the stats command's help
says "95% bootstrap" and argparse %-formats help text. The parsers are discovered from the real parser tree (top
level, each subcommand, any nested one), never listed by hand, so a new command is covered the day it is added.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import vlbench
from vlbench.cli import build_parser, main
from vlbench.cli.common import Parser

ROOT = Path(__file__).resolve().parents[1]
VLBENCH = Path(sys.executable).with_name("vlbench")


def all_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(argv prefix, parser) for `parser` and every parser below it, found through its subparsers actions."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, (*path, name))


PAGES = list(all_parsers(build_parser()))


def test_the_parser_tree_is_discovered():
    from vlbench.cli import COMMANDS

    assert [path for path, _ in PAGES][:1] == [()]
    assert {path[0] for path, _ in PAGES if path} == set(COMMANDS)


@pytest.mark.parametrize("path", [p for p, _ in PAGES], ids=lambda p: " ".join(("vlbench", *p)))
def test_every_help_page_renders_its_help_text_literally(path, capsys):
    parser = dict(PAGES)[path]
    # What Python 3.14 checks when an argument is added: each help string expands without error.
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            formatter._expand_help(action)
    # The page itself, through the real entry point: `vlbench <path> --help` exits 0 with the page on stdout.
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: {parser.prog}") and err == ""
    assert "%%" not in out
    if path == ("stats",):
        assert "95%" in " ".join(out.split())  # the text that once crashed it, shown as written


def test_a_percent_sign_anywhere_in_help_text_is_shown_as_written():
    """Arguments, argument groups and subcommand help lines all pass through the one formatter."""
    parser = Parser(prog="p")
    parser.add_argument("--x", help="50% of it")
    parser.add_argument_group("g").add_argument("--y", help="100% sure")
    sub = parser.add_subparsers(dest="c", parser_class=Parser)
    child = sub.add_parser("c", help="95% interval")
    child.add_argument("--z", help="5% tails")
    text = " ".join(parser.format_help().split())
    assert "50% of it" in text and "100% sure" in text and "95% interval" in text
    assert "5% tails" in " ".join(child.format_help().split())


def test_version_is_the_packages_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"vlbench {vlbench.__version__}"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert vlbench.__version__ == declared


def test_every_parser_refuses_prefix_abbreviations():
    for path, parser in PAGES:
        assert parser.allow_abbrev is False, path


def test_a_prefix_of_a_flag_is_refused_not_matched(capsys):
    """`--see 3` must not quietly mean `--seed 3` (nor `--out-d` mean `--output-dir`)."""
    assert main(["generate", "--tiny", "--see", "3", "--prompt", "p", "--out", "x.png"]) == 2
    assert "unrecognized arguments: --see 3" in capsys.readouterr().err
    assert main(["run", "--experiment", "token_sweep", "--output-d", "x"]) == 2
    assert "--output-d" in capsys.readouterr().err
    # the full flag and the --flag=value form still parse
    args = build_parser().parse_args(["generate", "--seed=3", "--prompt", "p", "--out", "x.png"])
    assert args.seed == 3


@pytest.mark.skipif(not VLBENCH.exists(), reason="the vlbench entry point is not installed in this environment")
@pytest.mark.parametrize("argv", [[str(VLBENCH), "--help"], [str(VLBENCH), "-h"],
                                  [sys.executable, "-m", "vlbench", "--help"], [str(VLBENCH), "stats", "--help"]],
                         ids=["vlbench --help", "vlbench -h", "python -m vlbench --help", "vlbench stats --help"])
def test_real_executable_help(argv):
    proc = subprocess.run(argv, env=os.environ, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: vlbench") and proc.stderr == ""


@pytest.mark.skipif(not VLBENCH.exists(), reason="the vlbench entry point is not installed in this environment")
def test_real_executable_version():
    proc = subprocess.run([str(VLBENCH), "--version"], env=os.environ, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, f"vlbench {vlbench.__version__}", "")
