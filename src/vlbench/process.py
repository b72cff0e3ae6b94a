"""Which process owns a run, and is it still alive: tokens that survive pid reuse, liveness checks.

Standard library only; used by the store (recovery of runs left running), the worker and the
temp-file cleanup.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

_token: tuple[int, str] | None = None
PID_MAX = 1 << 22  # Linux's ceiling (pid_max <= 4194304): a larger number is no live process


def process_token() -> str:
    """'host:pid:start' naming this process uniquely even when pids are reused (containers restart at 1)."""
    global _token
    pid = os.getpid()
    if _token is None or _token[0] != pid:  # recomputed after fork
        _token = (pid, f"{socket.gethostname()}:{pid}:{_start_time(pid)}")
    return _token[1]


def _start_time(pid: int) -> str:
    fields = _stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else "?"  # field 22 of proc(5): start time


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "; fields[0] is the state


def owner_alive(token: str | None) -> bool:
    """Is the process that claimed a run still running? Unknown owners count as dead.

    SQLite's WAL works on one host only, so an owner with another host name is an earlier life of
    this machine or container, and dead.
    """
    if not token:
        return False
    if token == process_token():
        return True
    try:
        host, pid_text, start = token.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    if Path("/proc/self/stat").exists():
        if not 0 < pid < PID_MAX:
            return False
        fields = _stat_fields(pid)
        if fields is None or (fields and fields[0] in ("Z", "X")):  # gone, or a zombie: killed, not reaped
            return False
        return start == "?" or (len(fields) > 19 and fields[19] == start)
    return pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Does a process with this pid exist on this host? Any number is safe to ask about."""
    if not isinstance(pid, int) or not 0 < pid < PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError, ValueError):
        return False
    return True
