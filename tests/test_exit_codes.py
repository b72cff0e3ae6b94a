"""Exit codes scripts can trust (issue 25.15), held for every command: 0 ok, 1 jobs failed, 2 user error,
130 interrupted. The README's "Exit codes" section states the same table (a test reads it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import make_image
from vlbench import cli
from vlbench.cli import COMMANDS, main

ROOT = Path(__file__).parents[1]
SMALL = ["--width", "64", "--height", "64", "--steps", "2"]


def user_errors(tmp: Path) -> dict[str, list[str]]:
    """For each command, one bad input that is its own (not argparse's): exit 2 before any model loads."""
    missing = str(tmp / "missing.png")
    return {
        "tui": ["tui", "--gpu-memory", "4", "--device", "cpu"],
        "worker": ["worker", "--poll", "0"],
        "embed": ["embed", "--image", missing, "--prompt", "a fox", "--out", str(tmp / "c.safetensors")],
        "generate": ["generate", "--image", missing, "--prompt", "a fox", "--out", str(tmp / "o.png")],
        "run": ["run", "--experiment", "no_such_type", "--prompt", "x", "--output-dir", str(tmp / "r")],
        "search": ["search", "--output-dir", str(tmp / "s")],
        "experiments": ["experiments", "no_such_type"],
        "score": ["score", str(tmp / "no-folder")],
        "stats": ["stats", str(tmp / "no-folder")],
        "diagnose": ["diagnose", "--image", missing, "--prompt", "a fox"],
        "calibrate": ["calibrate", "--prompts-file", str(tmp / "no-prompts.txt")],
        "inspect": ["inspect", str(tmp / "missing.safetensors")],
        "demo": ["demo", "--out", str(tmp / "a-file.txt")],
        "export": ["export", str(tmp / "no-folder")],
        "completion": ["completion", "fish"],
    }


def test_every_command_has_a_user_error_case():
    assert set(user_errors(Path("/x"))) == set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_a_user_error_is_one_line_and_exit_2(name, tmp_path, capsys):
    (tmp_path / "a-file.txt").write_text("not a folder")
    assert main(user_errors(tmp_path)[name]) == cli.EXIT_USER_ERROR == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("vlbench: error: "), err


@pytest.mark.parametrize("name", COMMANDS)
def test_ctrl_c_is_exit_130(name, tmp_path, monkeypatch, capsys):
    module = cli.command(name)

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run", interrupted)
    argv = {"score": ["score", "x"], "stats": ["stats", "x"], "inspect": ["inspect", "x"]}.get(name, [name])
    argv += {"embed": ["--prompt", "x", "--out", "x"], "generate": ["--prompt", "x", "--out", "x"],
             "run": ["--experiment", "x", "--output-dir", "x"], "search": ["--output-dir", "x"],
             "diagnose": ["--prompt", "x"], "completion": ["bash"]}.get(name, [])
    assert main(argv) == cli.EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err.strip() == "vlbench: interrupted"


def test_a_run_whose_jobs_all_failed_exits_1_and_generate_too(tiny_dirs, tmp_path, monkeypatch):
    from vlbench.engine.engine import Engine

    def broken(self, *args, **kwargs):
        raise RuntimeError("the DiT exploded")

    monkeypatch.setattr(Engine, "run", broken)
    ref = make_image(tmp_path / "ref.png")
    assert main(["run", "--experiment", "vl_only_vs_qwen3", "--image", str(ref), "--prompt", "a fox", "--seeds", "0",
                 "--output-dir", str(tmp_path / "out"), "--tiny", "--no-diagnostics", *SMALL]) == cli.EXIT_FAILED
    assert main(["generate", "--image", str(ref), "--prompt", "a fox", "--out", str(tmp_path / "o.png"), "--tiny",
                 *SMALL]) == 1
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 1


def test_the_readme_states_the_exit_codes():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Exit codes"):]
    section = section[:section.index("\n#", 1)]
    for code, name in [(0, "EXIT_OK"), (1, "EXIT_FAILED"), (2, "EXIT_USER_ERROR"), (130, "EXIT_INTERRUPTED")]:
        assert getattr(cli, name) == code
        assert re.search(rf"^\| `{code}` \|", section, re.M), f"exit code {code} is not in the README's table"
