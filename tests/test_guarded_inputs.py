"""Issue 24: every input file goes through the guarded reader (vlbench.files): a regular file, a size cap, UTF-8, and
for TOML a nesting-depth cap. A FIFO or /dev/zero given as any input returns at once with one line; a TOML file
nested a thousand levels deep is one line, never a RecursionError. (tests/test_structure.py checks by AST that no
module reads an input file any other way.)"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest

from vlbench.errors import UserError
from vlbench.files import TOML_DEPTH, NotAFile, TooDeep, parse_toml, read_bytes_file, read_text_file, read_toml_file

DEEP_ARRAY = "x = " + "[" * 2000 + "]" * 2000 + "\n"  # tomllib alone: RecursionError
DEEP_TABLES = "[" + ".".join(["t"] * (TOML_DEPTH + 5)) + "]\nx = 1\n"  # parses; too deep for any vlbench file


@contextmanager
def answers_within(seconds: int = 30):
    """A read that blocks (a FIFO with no writer) fails the test instead of hanging the suite."""
    def hang(signum, frame):
        raise TimeoutError(f"no answer in {seconds} s: the input was read, not refused")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(params=["fifo", "/dev/zero"])
def not_a_file(request, tmp_path) -> str:
    if request.param == "fifo":
        path = tmp_path / "fifo.toml"
        os.mkfifo(path)
        return str(path)
    return request.param


def one_line(argv: list[str], capsys) -> str:
    from vlbench.cli import main

    with answers_within():
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- the reader itself
def test_the_reader_refuses_what_is_not_a_small_regular_file(not_a_file, tmp_path):
    with answers_within():
        for read in (read_text_file, read_bytes_file, read_toml_file):
            with pytest.raises(NotAFile, match="not a regular file"):
                read(not_a_file)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * 2048)
    with pytest.raises(NotAFile, match="larger than"):
        read_text_file(big, limit=1024)
    with pytest.raises(IsADirectoryError):
        read_text_file(tmp_path)


@pytest.mark.parametrize("text", [DEEP_ARRAY, DEEP_TABLES, "x = " + "{a = " * 40 + "1" + "}" * 40])
def test_deeply_nested_toml_is_too_deep_not_a_recursion_error(text):
    with pytest.raises(TooDeep) as err:
        parse_toml(text)
    assert "\n" not in str(err.value) and "nested" in str(err.value)


def test_ordinary_nesting_parses():
    assert parse_toml("[a.b.c]\nx = [[1, 2], [3]]\n") == {"a": {"b": {"c": {"x": [[1, 2], [3]]}}}}


# ---------------------------------------------------------------- every command's input files
def test_a_fifo_or_dev_zero_as_the_search_space_returns_at_once(not_a_file, tmp_path, ref_image, capsys):
    pytest.importorskip("optuna")
    err = one_line(["search", "--tiny", "--space", not_a_file, "--output-dir", str(tmp_path / "out"), "--trials",
                    "1", "--image", str(ref_image), "--prompt", "p"], capsys)
    assert "--space" in err and "not a regular file" in err


def test_a_fifo_or_dev_zero_as_a_calibration_file_is_one_line(not_a_file, tiny_spec):
    from vlbench.engine.calibrate import load_stats

    with answers_within(), pytest.raises(UserError, match="not a regular file") as err:
        load_stats(not_a_file, None)
    assert err.value.field == "calibration"


def _deep(tmp_path: Path, name: str, text: str = DEEP_ARRAY) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_nested_toml_is_one_line_from_every_toml_input(tmp_path, ref_image, capsys):
    base = ["--tiny", "--image", str(ref_image), "--prompt", "p"]
    cases = [
        (["generate", *base, "--recipe", _deep(tmp_path, "r.toml"), "--out", str(tmp_path / "x.png")], "--recipe"),
        (["run", "--experiment", _deep(tmp_path, "t.toml"), *base, "--output-dir", str(tmp_path / "o")], "t.toml"),
        (["run", "--experiment", "token_sweep", "--tiny", "--image", str(ref_image), "--prompts-file",
          _deep(tmp_path, "p.toml"), "--output-dir", str(tmp_path / "o2")], "--prompts-file"),
    ]
    if __import__("importlib").util.find_spec("optuna"):
        cases.append((["search", *base, "--space", _deep(tmp_path, "s.toml", DEEP_TABLES), "--trials", "1",
                       "--output-dir", str(tmp_path / "o3")], "s.toml"))
    for argv, names in cases:
        err = one_line(argv, capsys)
        assert "nested" in err and names in err, (argv, err)


def test_nested_config_and_theme_files_are_one_line(tmp_path, monkeypatch):
    from vlbench.config import load_settings
    from vlbench.tui.themes import load_theme

    with pytest.raises(UserError, match="nested") as err:
        load_settings(Path(_deep(tmp_path, "config.toml")))
    assert "\n" not in err.value.render(lambda f: f)
    with pytest.raises(UserError, match="nested"):
        load_theme(Path(_deep(tmp_path, "theme.toml")))


def test_the_calibration_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """save_stats goes through files.atomic_write: a write that fails midway leaves the old file, and no temp."""
    import safetensors.torch
    import torch

    from vlbench.engine.calibrate import save_stats

    path = tmp_path / "cal.safetensors"
    save_stats({"a": torch.ones(3)}, {"format": "x"}, path)
    before = path.read_bytes()

    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    with pytest.raises(OSError):
        save_stats({"a": torch.zeros(3)}, {"format": "x"}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["cal.safetensors"]


def test_the_log_file_rotates(tmp_path, monkeypatch):
    """vlbench.log stays under LOG_MAX_BYTES: older lines move to vlbench.log.1 … .LOG_BACKUPS, the oldest drop."""
    import logging

    from vlbench import logs, paths

    monkeypatch.setattr(logs, "LOG_MAX_BYTES", 4096)
    handler = logs.attach_log_file()
    try:
        log = logging.getLogger("vlbench.test")
        for i in range(1000):
            log.info("event %04d %s", i, "x" * 40)
    finally:
        logging.getLogger("vlbench").removeHandler(handler)
        handler.close()
    path = paths.log_path()
    kept = sorted(p.name for p in path.parent.glob("vlbench.log*"))
    assert kept == ["vlbench.log", *(f"vlbench.log.{k}" for k in range(1, logs.LOG_BACKUPS + 1))]
    assert all(p.stat().st_size <= 4096 for p in path.parent.glob("vlbench.log*"))
    assert "event 0999" in path.read_text()
