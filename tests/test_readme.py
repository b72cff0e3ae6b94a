"""Issue 25.12: the README's first steps run as written. Every bash block marked `<!-- newcomer -->` is executed, in
order, line by line, in a fresh folder holding the shipped examples/, with nothing configured (the tiny models) and
no network; each line must exit 0 and keep stderr free of library noise (issue 25.13)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
MARK = "<!-- newcomer -->"
NOISE = ("Traceback", "FutureWarning", "UserWarning", "Loading weights", "Loading pipeline components",
         "Loading checkpoint shards", "retrying", "Retrying", "it/s]")


def newcomer_commands(text: str) -> list[list[str]]:
    """The marked blocks' commands, in order (comments dropped)."""
    blocks = re.findall(re.escape(MARK) + r"\s*```bash\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def test_the_marked_blocks_are_the_newcomer_path():
    commands = newcomer_commands((ROOT / "README.md").read_text())
    assert commands[0][:2] == ["vlbench", "demo"], "the demo comes first"
    names = [c[1] for c in commands]
    assert names.index("run") < names.index("score") < names.index("stats"), "the run before what reads its folder"
    assert all(c[0] == "vlbench" for c in commands)
    for c in commands:  # nothing that needs a GPU, weights, a terminal or Ray
        assert not {"--executor", "--eval-set", "--compile", "worker", "tui"} & set(c), c
        assert "--tiny" not in c, "nothing configured already means the tiny models"
        for path in (w for w in c if w.startswith("examples/")):
            assert (ROOT / path).is_file(), f"{path} is named in the README but not shipped"


def test_the_readme_newcomer_path_runs_as_written(tiny_dirs, tmp_path):
    commands = newcomer_commands((ROOT / "README.md").read_text())
    work = tmp_path / "newcomer"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLBENCH_", "HF_"))}
    env.update(VLBENCH_DATA_DIR=str(tmp_path / "data"), VLBENCH_CONFIG_DIR=str(tmp_path / "config"),
               VLBENCH_CACHE_DIR=os.environ["VLBENCH_CACHE_DIR"], HF_HUB_OFFLINE="1", COLUMNS="120")
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in os.environ["PYTHONPATH"].split(os.pathsep))
    vlbench = str(Path(sys.executable).with_name("vlbench"))
    for words in commands:
        proc = subprocess.run([vlbench, *words[1:]], cwd=work, env=env, capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL)
        shown = f"$ {shlex.join(words)}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert proc.returncode == 0, shown
        for noise in NOISE:
            assert noise not in proc.stderr, f"{noise!r} on stderr:\n{shown}"
    assert (work / "first.png").is_file() and (work / "results" / "first" / "scores.jsonl").is_file()
