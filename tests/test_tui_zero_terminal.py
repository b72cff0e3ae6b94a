"""Issue 26 #5: `vlbench tui` on a terminal that reports 0×0 (rows, columns and pixels all zero, as a detached pty or
some multiplexers do) opens and quits cleanly: textual-image's cell-size measure divided the window's pixels by its
zero columns on import (ZeroDivisionError, exit 1). A real pseudo-terminal, the real entry point."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

from vlbench import paths


def _read(fd: int, seconds: float, until: bytes | None = None, out: bytearray | None = None) -> bytearray:
    out = bytearray() if out is None else out
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and until in out):
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            out += data
    return out


def test_the_workbench_opens_and_quits_on_a_terminal_reporting_0x0(tiny_dirs, tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    config = tmp_path / "config"
    config.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", VLBENCH_CONFIG_DIR=str(config), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "vlbench", "tui", "--tiny"], stdin=slave, stdout=slave,
                            stderr=slave, env=env, close_fds=True, start_new_session=True)
    os.close(slave)
    try:
        out = _read(master, 120, until=b"Parameters")  # a pane title: the app has drawn
        assert proc.poll() is None, out.decode(errors="replace")[-3000:]
        assert b"Parameters" in out, out.decode(errors="replace")[-3000:]
        os.write(master, b"\x11")  # ctrl+q
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            _read(master, 0.5, out=out)
        assert proc.poll() == 0, out.decode(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = out.decode(errors="replace")
    assert "Traceback" not in text and "ZeroDivisionError" not in text
    assert "the workbench crashed" not in paths.log_path().read_text()


def test_fit_cells_with_no_cell_size_keeps_the_aspect_ratio():
    from vlbench.tui.widgets.preview import fit_cells

    assert fit_cells((100, 100), (40, 40), cell=(0, 0)) == fit_cells((100, 100), (40, 40), cell=(10, 20)) == (40, 20)
    assert fit_cells((100, 100), (0, 0), cell=(10, 20)) == (0, 0)
