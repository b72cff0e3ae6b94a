"""End to end in a real terminal: `vlbench tui --tiny` inside tmux at 160×48, 80×24 and 240×60, driven by keys.

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
from conftest import patience

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
        timeout = patience(timeout)
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


def _start(tmp_path, width: int, height: int, extra: str = "", steps: int = 2) -> tuple[Tmux, Path]:
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    (config / "config.toml").write_text(f"[recipe]\nwidth = 64\nheight = 64\nsteps = {steps}\n")
    exit_file = tmp_path / "exit-code"
    env = {"VLBENCH_DATA_DIR": str(tmp_path / "data"), "VLBENCH_CONFIG_DIR": str(config),
           "VLBENCH_CACHE_DIR": os.environ["VLBENCH_CACHE_DIR"], "TERM": "xterm-256color"}
    if os.environ.get("PYTHONPATH"):  # a checkout run with PYTHONPATH=src: the script must import that code
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in os.environ["PYTHONPATH"].split(os.pathsep))
    command = " ".join(shlex.quote(c) for c in _command()) + extra
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    # COLUMNS/LINES from pytest's environment would override the size the terminal reports.
    shell = (f"cd {shlex.quote(str(tmp_path))} && env -u COLUMNS -u LINES {exports} {command}; "
             f"echo $? > {shlex.quote(str(exit_file))}; sleep 60")
    tmux = Tmux(f"vlbench-test-{os.getpid()}-{width}")
    tmux("new-session", "-d", "-s", tmux.session, "-x", str(width), "-y", str(height), shell)
    return tmux, exit_file


def _quit(tmux: Tmux, exit_file: Path) -> None:
    tmux("send-keys", "-t", tmux.session, "C-q")
    deadline = time.monotonic() + 20
    while not exit_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert exit_file.exists(), f"the app did not exit after ctrl+q:\n{tmux.screen()}"
    assert exit_file.read_text().strip() == "0"


def _box(screen: str, title: str) -> tuple[int, int] | None:
    """(first column, width) of the pane titled `title`, from its top border line."""
    for line in screen.splitlines():
        start = line.find(f"╭─ {title}")
        if start >= 0:
            end = line.find("╮", start)
            return (start, end - start + 1) if end > 0 else (start, -1)
    return None


def _nothing_cut_off(screen: str, width: int) -> None:
    for line in screen.splitlines():
        if "╭" in line:  # every box that starts on a line also ends on it, inside the terminal
            assert line.count("╭") == line.count("╮"), f"a pane runs off the right edge:\n{screen}"
        assert len(line) <= width


def test_tui_in_tmux_queues_a_run_and_quits_cleanly(tiny_dirs, tmp_path):
    tmux, exit_file = _start(tmp_path, 160, 48)
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
        _quit(tmux, exit_file)
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)


def test_tui_in_tmux_at_80x24_every_pane_is_one_key_away(tiny_dirs, tmp_path):
    """At 80×24 one pane fills the screen; alt+1..5 (and ctrl+g then 1..5) reach each; ctrl+r queues (F5 and
    ctrl+enter are often swallowed by tmux and SSH clients)."""
    tmux, exit_file = _start(tmp_path, 80, 24)
    try:
        tmux.wait_for(lambda s: "─ Inputs ─" in s, 30, "the Inputs pane")
        time.sleep(0.5)
        tmux("send-keys", "-t", tmux.session, "-l", "a fox at 80 columns")
        tmux("send-keys", "-t", tmux.session, "C-r")
        for n, title in enumerate(PANES, 1):
            keys = [f"M-{n}"] if n % 2 else ["C-g", str(n)]  # both ways
            tmux("send-keys", "-t", tmux.session, *keys)
            screen = tmux.wait_for(lambda s, t=title: f"╭─ {t} ─" in s, 10, f"the {title} pane")
            _nothing_cut_off(screen, 80)
            start, width = _box(screen, title)
            assert (start, width) == (0, 80), f"{title} fills the screen:\n{screen}"
            for other in PANES:
                if other != title:
                    assert f"╭─ {other}" not in screen
        tmux("send-keys", "-t", tmux.session, "M-5")
        log = tmp_path / "data" / "vlbench.log"
        tmux.wait_for(lambda s: any("a fox at 80" in line and " done " in line for line in s.splitlines()),
                      150, "the run queued with ctrl+r, done in History; the log: "
                      + (log.read_text()[-2000:] if log.exists() else "none"))
        _quit(tmux, exit_file)
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)


def test_tui_in_tmux_at_240x60_five_panes_and_a_wide_preview(tiny_dirs, tmp_path):
    tmux, exit_file = _start(tmp_path, 240, 60)
    try:
        screen = tmux.wait_for(lambda s: all(f"─ {p} ─" in s for p in PANES), 30, "the five panes")
        _nothing_cut_off(screen, 240)
        boxes = {title: _box(screen, title) for title in PANES}
        assert all(box is not None and box[1] > 0 for box in boxes.values()), boxes
        assert max(start + width for start, width in boxes.values()) <= 240
        assert boxes["Preview"][1] >= 24
        _quit(tmux, exit_file)
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)


def test_tui_in_tmux_history_keys_on_an_empty_store(tiny_dirs, tmp_path):
    """Issue 25.1: on a fresh store, History's ↑ / PageDown / End crashed the app (its job orphaned)."""
    tmux, exit_file = _start(tmp_path, 160, 48)
    try:
        tmux.wait_for(lambda s: all(f"─ {p} ─" in s for p in PANES), 30, "the five panes")
        tmux("send-keys", "-t", tmux.session, "M-5")
        time.sleep(0.5)
        for key in ("Up", "NPage", "End", "PPage", "Home", "Down"):
            tmux("send-keys", "-t", tmux.session, key)
            time.sleep(0.2)
        time.sleep(1)
        assert not exit_file.exists(), f"the app exited on a key in an empty History:\n{tmux.screen()}"
        assert "─ History ─" in tmux.screen()
        _quit(tmux, exit_file)
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)


def test_tui_in_tmux_a_closed_terminal_gives_the_running_job_back(tiny_dirs, tmp_path):
    """Issue 25.4: closing the terminal (tmux kill-server sends SIGHUP, as an SSH drop does) during a run leaves
    the run pending with no interruption counted (it was left 'running'; two drops failed it)."""
    from vlbench.store import Store

    tmux, exit_file = _start(tmp_path, 160, 48, steps=1000)
    store_path = tmp_path / "data" / "runs.sqlite3"
    try:
        tmux.wait_for(lambda s: all(f"─ {p} ─" in s for p in PANES), 30, "the five panes")
        time.sleep(0.5)
        tmux("send-keys", "-t", tmux.session, "-l", "a long run")
        tmux("send-keys", "-t", tmux.session, "C-r")
        tmux.wait_for(lambda s: "#1 " in s and "/1000" in s, 120, "the run to be stepping")
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)
    deadline = time.monotonic() + 30
    row = None
    while time.monotonic() < deadline:
        with Store(store_path) as store:
            row = store.get(1)
        if row is not None and row.status != "running":
            break
        time.sleep(0.3)
    assert row is not None and row.status == "pending", row and row.status
    assert row.interruptions == 0 and row.claimed_by is None


def test_tui_in_tmux_ctrl_o_opens_every_example_from_a_non_default_form(tiny_dirs, tmp_path):
    """Issue 25.2, in a real terminal: each shipped example opens with ctrl+o over a form that is not at its
    defaults: merged, or, when it cannot merge, the form replaced after a question (it was refused for 5 of the
    10). Every third example opens over a form set by ctrl+o from a file (alpha, intra_ratio and steps: the form
    that was refused); the others over the form the example before left (each sets fields off their defaults).
    Every example over that set form is test_tui_workbench::test_ctrl_o_opens_every_example_from_a_non_default_form
    (Pilot); here each open costs about a second. Short relative names keep each toast on one line.

    The keys are typed as a user types ahead. That form is set by ctrl+o, ctrl+u, the name and Enter in one burst,
    before the dialog shows; every other example likewise, and the rest by ctrl+o, then ctrl+u and the name in one
    burst once the dialog shows, then Enter once the field shows the name. Keys of a burst were applied out of
    order (ctrl+u wiped the name typed after it; Enter submitted an empty field) or went to the prompt (typed
    before ctrl+o had opened the dialog)."""
    examples = sorted((Path(__file__).parents[1] / "examples" / "recipes").glob("*.toml"))
    assert len(examples) >= 10
    for i, example in enumerate(examples):
        (tmp_path / f"ex{i:02d}.toml").write_text(example.read_text())
        (tmp_path / f"away{i:02d}.toml").write_text("alpha = 0.5\nintra_ratio = 0.3\nsteps = 3\n")
    tmux, exit_file = _start(tmp_path, 160, 48)

    def keys(*args: str) -> None:
        tmux("send-keys", "-t", tmux.session, *args)

    def open_file(name: str, ahead: bool) -> None:
        if ahead:
            keys("C-o", "C-u")  # the field starts with the current folder
            keys("-l", name)
            keys("Enter")
        else:
            keys("C-o")
            tmux.wait_for(lambda s: "Open a recipe (TOML)" in s, 20, "the file picker")
            keys("C-u")
            keys("-l", name)
            tmux.wait_for(lambda s: f"▊  {name} " in s, 20, f"{name} typed in the path field")
            keys("Enter")
        screen = tmux.wait_for(lambda s: f"loaded {name}" in s or "does not merge into the form" in s, 20,
                               f"{name} to load or to ask")
        if f"loaded {name}" not in screen:
            keys("y")
            tmux.wait_for(lambda s: f"loaded {name} over the defaults" in s, 20, f"{name} to replace the form")

    try:
        tmux.wait_for(lambda s: all(f"─ {p} ─" in s for p in PANES), 30, "the five panes")
        for i in range(len(examples)):
            if i % 3 == 0:
                open_file(f"away{i:02d}.toml", ahead=True)  # the form away from its defaults
            open_file(f"ex{i:02d}.toml", ahead=i % 2 == 1)
        assert not exit_file.exists()
        _quit(tmux, exit_file)
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)


def test_tui_in_tmux_f7_at_80x24_shows_its_plan(tiny_dirs, tmp_path):
    """Issue 25.3, in a real terminal: at 80×24 F7's plan (run count, fields it sets, the quick switch, the hint)
    was pushed off the dialog by the list of types."""
    tmux, exit_file = _start(tmp_path, 80, 24)
    try:
        tmux.wait_for(lambda s: "─ Inputs ─" in s, 30, "the Inputs pane")
        time.sleep(0.5)
        tmux("send-keys", "-t", tmux.session, "-l", "a plan")
        tmux("send-keys", "-t", tmux.session, "F7")
        screen = tmux.wait_for(lambda s: "queues " in s and " runs (" in s, 30, "the plan of the first type")
        _nothing_cut_off(screen, 80)
        assert "quick" in screen.lower(), screen
        lines = screen.splitlines()
        assert len(lines) <= 24 and any("Esc" in line for line in lines), screen  # the hint is in view
        tmux("send-keys", "-t", tmux.session, "Escape")
        tmux.wait_for(lambda s: "queues " not in s, 10, "the dialog to close")
        _quit(tmux, exit_file)
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)


def test_tui_in_tmux_follows_a_restarted_headless_worker(tiny_dirs, tmp_path):
    """Issue 25.5, in a real terminal: `vlbench worker` stopped and started again under a watching workbench; the
    header names the new pid (it kept 'nothing runs the queue' for the dead one)."""
    import signal

    env = dict(os.environ, OMP_NUM_THREADS="1", VLBENCH_DATA_DIR=str(tmp_path / "data"),
               VLBENCH_CONFIG_DIR=str(tmp_path / "config"))

    def worker() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "vlbench", "worker", "--tiny", "--device", "cpu"], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    (tmp_path / "config").mkdir(exist_ok=True)
    first = worker()
    second = None
    try:
        from vlbench.store import Store
        from vlbench.worker import live_worker

        (tmp_path / "data").mkdir(exist_ok=True)
        deadline = time.monotonic() + patience(60)
        while True:
            with Store(tmp_path / "data" / "runs.sqlite3") as store:
                if live_worker(store):
                    break
            assert first.poll() is None and time.monotonic() < deadline, "the headless worker did not start"
            time.sleep(0.2)
        tmux, exit_file = _start(tmp_path, 160, 48)
        try:
            tmux.wait_for(lambda s: f"VIEWER of headless worker pid {first.pid}" in s, 60, "the viewer")
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=patience(60))
            tmux.wait_for(lambda s: "nothing runs the queue" in s, 60, "the stop to show")
            second = worker()
            tmux.wait_for(lambda s: f"VIEWER of headless worker pid {second.pid}" in s, 90, "the new pid")
            _quit(tmux, exit_file)
        finally:
            subprocess.run([*tmux.base, "kill-server"], capture_output=True)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
