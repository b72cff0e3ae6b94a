"""Files that are whole or absent: one atomic-write helper and one cleanup of the temp files it leaves.

Every file vlbench writes goes through `atomic_write`: a temp file in the same folder whose name
encodes the owning process (`.{name}.vlbench-{pid}-{thread}.tmp`), fsynced, then renamed over the
target (and the folder fsynced), so a kill or a full disk leaves the old file or the new one, never
half of one. `remove_stale_temp_files` deletes temps whose owner is dead and ignores every other name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import threading
import tomllib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from vlbench.errors import UserError
from vlbench.process import pid_alive

TEMP = re.compile(r"^\.(?P<name>.+)\.vlbench-(?P<pid>\d{1,12})-(?P<thread>\d{1,24})\.tmp$")


def temp_path(path: Path) -> Path:
    """The temp sibling this process and thread write `path` through."""
    return path.with_name(f".{path.name}.vlbench-{os.getpid()}-{threading.get_native_id()}.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it is fsynced and renamed over `path`, on failure removed."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """`write(tmp)` writes the content (PIL's save, safetensors' save_file, …); the result is renamed in."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=1, ensure_ascii=False, default=str) + "\n")


def atomic_copy(source: str | Path, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: shutil.copyfile(source, tmp))


INPUT_LIMIT = 16 * 2**20  # a recipe, type or prompt file larger than this is not one
BINARY_LIMIT = 2 * 2**30  # an input image or tensor file larger than this is not one
TOML_DEPTH = 32  # tables and arrays nested deeper than this are no vlbench file (the deepest real one: ~4)


class NotAFile(OSError):
    """An input that is not a regular file of a sane size (/dev/zero, a FIFO, a 10 GB log)."""


class TooDeep(ValueError):
    """A TOML document nested deeper than TOML_DEPTH (tomllib would recurse until RecursionError)."""


def check_regular_file(path: str | Path) -> Path:
    """`path` if it names a regular file: a device, a FIFO or a socket would never end (or never start) and is
    refused before anything opens it, with NotAFile; a folder is IsADirectoryError; a missing one
    FileNotFoundError, as usual. For readers that must hand a path to a library (PIL, safetensors)."""
    path = Path(path)
    mode = os.stat(path).st_mode  # FileNotFoundError, NotADirectoryError … as usual
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "Is a directory", str(path))
    if not stat.S_ISREG(mode):
        raise NotAFile("not a regular file (a device, pipe or socket)")
    return path


def read_bytes_file(path: str | Path, limit: int = BINARY_LIMIT) -> bytes:
    """An input file's bytes: a regular file (check_regular_file) of at most `limit` bytes, else NotAFile."""
    path = check_regular_file(path)
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise NotAFile(f"larger than {limit // 2**20} MiB: not a {'text ' if limit <= INPUT_LIMIT else ''}input")
    return data


def read_text_file(path: str | Path, limit: int = INPUT_LIMIT) -> str:
    """A small UTF-8 input file's text. A device, a FIFO or a socket would never end (or never start): refused
    before opening, as is a file over `limit` bytes, with NotAFile; the usual OSErrors and UnicodeDecodeError
    otherwise."""
    return read_bytes_file(path, limit).decode("utf-8")


def parse_toml(text: str, depth: int = TOML_DEPTH) -> dict[str, Any]:
    """tomllib.loads, with nesting capped: a document nested deeper than `depth` is TooDeep (one line), never a
    RecursionError (tomllib parses inline arrays and tables recursively) nor a structure that would make the
    code reading it recurse. tomllib.TOMLDecodeError as usual for invalid TOML."""
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise TooDeep(f"nested deeper than Python can parse (the limit is {depth} levels)") from None
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:  # iterative: the check itself cannot recurse
        value, level = stack.pop()
        if level > depth:
            raise TooDeep(f"tables or arrays nested more than {depth} levels deep")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return data


def read_named_text(path: str | Path, field: str, fix: str) -> str:
    """read_text_file for a file the user named as `field`: each way it cannot be read (missing, a folder, not a
    regular file, too big, not UTF-8, unreadable) is one UserError naming the field and the path; `fix` says what
    to give instead of a folder."""
    try:
        return read_text_file(path)
    except FileNotFoundError:
        raise UserError("no such file", field=field, value=str(path)) from None
    except IsADirectoryError:
        raise UserError("is a folder", field=field, value=str(path), fix=fix) from None
    except NotAFile as exc:
        raise UserError(str(exc), field=field, value=str(path)) from None
    except (OSError, ValueError) as exc:  # ValueError: UnicodeDecodeError, a NUL in the path
        raise UserError(f"cannot read it ({exc.__class__.__name__})", field=field, value=str(path)) from None


def read_toml_file(path: str | Path, limit: int = INPUT_LIMIT, depth: int = TOML_DEPTH) -> dict[str, Any]:
    """An input TOML file: read_text_file's guards (regular file, size, UTF-8), then parse_toml's depth cap."""
    return parse_toml(read_text_file(path, limit), depth)


def remove_stale_temp_files(folder: str | Path) -> int:
    """Delete this helper's temp files in `folder` whose owning process is gone; returns how many.

    Any other file name, however odd, is left alone; nothing here raises for a name or a race."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        match = TEMP.match(entry.name)
        if match is None:
            continue
        pid = int(match.group("pid"))
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            os.unlink(entry.path)
            removed += 1
        except OSError:
            pass
    return removed


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)
