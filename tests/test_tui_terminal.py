"""End to end in a real terminal: `vlbench tui --tiny` inside tmux at 160×48, driven by keys.

What Pilot cannot show: the real entry point, the real driver and terminal queries (textual-image),
a worker process importing torch, and a clean exit code after ctrl+q. Needs tmux (CI installs it).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed (apt-get install tmux): the real-terminal test needs it")

PANES = ["Inputs", "Parameters", "Queue", "Preview", "History"]


class Tmux:
    def __init__(self, name: str):
        self.base = ["tmux", "-L", name]  # a private server: never touches the user's sessions
        self.session = name

    def __call__(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], capture_output=True, text=True, check=True).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", self.session)

    def wait_for(self, predicate, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; the screen:\n{screen}")


def _command() -> list[str]:
    return [str(Path(sys.executable).with_name("vlbench")), "tui", "--tiny"]


def test_tui_in_tmux_queues_a_run_and_quits_cleanly(tiny_dirs, tmp_path):
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    (config / "config.toml").write_text("[recipe]\nwidth = 64\nheight = 64\nsteps = 2\n")
    exit_file = tmp_path / "exit-code"
    env = {"VLBENCH_DATA_DIR": str(tmp_path / "data"), "VLBENCH_CONFIG_DIR": str(config),
           "VLBENCH_CACHE_DIR": os.environ["VLBENCH_CACHE_DIR"], "TERM": "xterm-256color"}
    command = " ".join(shlex.quote(c) for c in _command())
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    # COLUMNS/LINES from pytest's environment would override the 160×48 the terminal reports.
    shell = (f"cd {shlex.quote(str(tmp_path))} && env -u COLUMNS -u LINES {exports} {command}; "
             f"echo $? > {shlex.quote(str(exit_file))}; sleep 60")
    tmux = Tmux(f"vlbench-test-{os.getpid()}")
    tmux("new-session", "-d", "-s", tmux.session, "-x", "160", "-y", "48", shell)
    try:
        screen = tmux.wait_for(lambda s: all(f"─ {p} ─" in s for p in PANES), 30, "the five panes")
        assert "tiny random models — images are noise" in screen
        time.sleep(0.5)  # the prompt has focus at start
        tmux("send-keys", "-t", tmux.session, "-l", "a lighthouse at dusk")
        time.sleep(0.5)
        tmux("send-keys", "-t", tmux.session, "F5")
        history_row = lambda s: any("a lighthouse at dusk" in line and " done " in line for line in s.splitlines())
        tmux.wait_for(history_row, 150, "the run to finish and show as done in History")
        assert (tmp_path / "data" / "outputs" / "000001.png").is_file()
        tmux("send-keys", "-t", tmux.session, "C-q")
        deadline = time.monotonic() + 20
        while not exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert exit_file.exists(), f"the app did not exit after ctrl+q:\n{tmux.screen()}"
        assert exit_file.read_text().strip() == "0"
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)
