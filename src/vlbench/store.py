"""The run store: queue and history of runs in one SQLite table, shared by the TUI, the worker and the CLI.

A run is one row whose `status` moves pending -> running -> done | failed | cancelled. Every state
change is a single UPDATE guarded by the expected current status, so a run is never in two states
and two workers never claim the same row. The schema is versioned by `PRAGMA user_version` and
grows only through the MIGRATIONS list at the bottom. Standard library only (no torch).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

STATUSES = ("pending", "running", "done", "failed", "cancelled")
QUEUED = ("pending", "running")
FINISHED = ("done", "failed", "cancelled")

# history(sort=...) -> ORDER BY template ({d} = ASC | DESC); each ends in a unique key so pages
# never overlap, and each matches an index so the first page reads ~limit rows, not the table.
SORTS = {
    "created_at": "created_at {d}, id {d}",
    "finished_at": "finished_at {d}, id {d}",
    "seed": "seed {d}, id {d}",
    "name": "name COLLATE NOCASE {d}, id {d}",
    "status": "status {d}, created_at {d}, id {d}",
    "id": "id {d}",
}
# history(sort="metric:NAME"): by a value in the metrics column (vlbench score), runs without it last.
# NAME must match METRIC_NAME; the JSON path goes in as a bound parameter, never into the SQL text.
METRIC_SORT_PREFIX = "metric:"
METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
ENQUEUE_KEYS = ("prompt", "images", "recipe", "name", "experiment", "source")
_REASON_MAX = 1000  # a failure reason is one line; the traceback goes to the log


@dataclass
class RunRow:
    id: int
    status: str
    prompt: str
    images: list[str]
    recipe: dict
    name: str | None
    experiment: str | None
    seed: int
    source: str  # "tui" | "cli" | "experiment" ...
    position: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    output_path: str | None
    error: str | None
    timings: dict = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    environment: dict = field(default_factory=dict)
    conditioning: dict = field(default_factory=dict)  # Conditioning.describe() without per-row detail
    metrics: dict = field(default_factory=dict)
    claimed_by: str | None = None  # "host:pid:start" of the process running it (see recover)

    @property
    def duration(self) -> float | None:
        """Seconds from claim to finish (None while queued or running)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


class Store:
    """One SQLite file; a connection per thread (the TUI thread, the worker thread, the CLI)."""

    def __init__(self, path: Path | str | None = None):
        if path is None:
            from vlbench import paths

            path = paths.store_path()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._closed = False
        _migrate(self._conn(), self.path)

    # ---- connections and transactions ----
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise RuntimeError(f"store {self.path} is closed")
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so every transaction is short and explicit.
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.create_function("vlbench_contains", 2, _contains, deterministic=True)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front (no deadlock-prone lock upgrades)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- queueing ----
    def enqueue(self, prompt: str, images: list[str], recipe: dict, *, name: str | None = None,
                experiment: str | None = None, source: str = "tui") -> int:
        return self.enqueue_many([dict(prompt=prompt, images=images, recipe=recipe, name=name,
                                       experiment=experiment, source=source)])[0]

    def enqueue_many(self, items: list[dict]) -> list[int]:
        """Append runs to the end of the queue in one transaction; returns their ids in order."""
        rows = [_new_row(item) for item in items]
        now = time.time()
        if not rows:
            return []
        with self._write() as conn:
            position = _end_position(conn)
            first = conn.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()[0]
            seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'runs'").fetchone()
            first = max(first, seq[0] if seq else 0) + 1
            # Explicit ids (the ones AUTOINCREMENT would give) so one executemany returns them all.
            conn.executemany(
                "INSERT INTO runs (id, status, prompt, images, recipe, name, experiment, seed, source, position,"
                " created_at) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((first + i, *row, position + i, now) for i, row in enumerate(rows)),
            )
        return [first + i for i in range(len(rows))]

    def record_done(self, prompt: str, images: list[str], recipe: dict, *, output_path: str, timings: dict,
                    name: str | None = None, experiment: str | None = None, source: str = "cli",
                    peak_memory_bytes: int | None = None, environment: dict | None = None,
                    conditioning: dict | None = None, metrics: dict | None = None,
                    started_at: float | None = None) -> int:
        """A run executed outside the queue (the experiment runner): one history row, already done."""
        row = _new_row(dict(prompt=prompt, images=images, recipe=recipe, name=name, experiment=experiment,
                            source=source))
        now = time.time()
        if started_at is None and isinstance((timings or {}).get("total"), (int, float)):
            started_at = now - timings["total"]
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO runs (status, prompt, images, recipe, name, experiment, seed, source, position,"
                " created_at, started_at, finished_at, output_path, timings, peak_memory_bytes, environment,"
                " conditioning, metrics) VALUES ('done', ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, started_at if started_at is not None else now, started_at, now, str(output_path),
                 _dumps(timings), peak_memory_bytes, _dumps(environment), _dumps(conditioning), _dumps(metrics)),
            )
            return cur.lastrowid

    def claim_next(self) -> RunRow | None:
        """Atomically take the first pending run: it becomes running, owned by this process."""
        with self._write() as conn:
            found = conn.execute(
                "SELECT id FROM runs WHERE status = 'pending' ORDER BY position, id LIMIT 1").fetchone()
            if found is None:
                return None
            conn.execute(
                "UPDATE runs SET status = 'running', started_at = ?, finished_at = NULL, error = NULL,"
                " claimed_by = ? WHERE id = ? AND status = 'pending'",
                (time.time(), process_token(), found["id"]),
            )
            return _row(conn.execute("SELECT * FROM runs WHERE id = ?", (found["id"],)).fetchone())

    def finish(self, run_id: int, *, output_path: str, timings: dict, peak_memory_bytes: int | None,
               environment: dict, conditioning: dict) -> bool:
        """running -> done. False (row untouched) if the run is no longer running, e.g. it was cancelled."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = 'done', finished_at = ?, output_path = ?, timings = ?,"
                " peak_memory_bytes = ?, environment = ?, conditioning = ?, error = NULL"
                " WHERE id = ? AND status = 'running' AND (claimed_by IS NULL OR claimed_by = ?)",
                (time.time(), str(output_path), _dumps(timings), peak_memory_bytes, _dumps(environment),
                 _dumps(conditioning), run_id, process_token()),
            )
            return cur.rowcount == 1

    def fail(self, run_id: int, reason: str) -> bool:
        """pending/running -> failed with a one-line reason. False if the run is in another state."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE id = ? AND"
                " (status = 'pending' OR (status = 'running' AND (claimed_by IS NULL OR claimed_by = ?)))",
                (time.time(), one_line(reason), run_id, process_token()),
            )
            return cur.rowcount == 1

    def cancel(self, run_id: int) -> bool:
        """pending/running -> cancelled. A worker running it stops at its next denoising step."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = 'cancelled', finished_at = ? WHERE id = ? AND status IN ('pending', 'running')",
                (time.time(), run_id),
            )
            return cur.rowcount == 1

    def retry(self, run_id: int) -> bool:
        """failed/cancelled -> pending at the end of the queue: the same row, previous attempt cleared."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = 'pending', position = ?, started_at = NULL, finished_at = NULL,"
                " output_path = NULL, error = NULL, timings = '{}', peak_memory_bytes = NULL,"
                " environment = '{}', conditioning = '{}', claimed_by = NULL"
                " WHERE id = ? AND status IN ('failed', 'cancelled')",
                (_end_position(conn), run_id),
            )
            return cur.rowcount == 1

    def requeue(self, run_id: int) -> int:
        """A new pending run with the same prompt, images, recipe, name and experiment. KeyError if none."""
        old = self.get(run_id)
        if old is None:
            raise KeyError(f"run {run_id}: no such run")
        return self.enqueue(old.prompt, old.images, old.recipe, name=old.name, experiment=old.experiment,
                            source=old.source)

    def release(self, run_id: int) -> bool:
        """running -> pending at the front of the queue (a worker stopping mid-run gives its job back)."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = 'pending', position = ?, started_at = NULL, claimed_by = NULL"
                " WHERE id = ? AND status = 'running'",
                (_front_position(conn), run_id),
            )
            return cur.rowcount == 1

    def remove(self, run_id: int) -> bool:
        """Delete a pending run (the queue's "remove"). False if it is not pending."""
        with self._write() as conn:
            return conn.execute("DELETE FROM runs WHERE id = ? AND status = 'pending'", (run_id,)).rowcount == 1

    def delete(self, run_id: int, *, delete_output: bool = False) -> bool:
        """Delete any run that is not running (history's "delete"); optionally its image too."""
        with self._write() as conn:
            found = conn.execute("SELECT output_path FROM runs WHERE id = ? AND status != 'running'",
                                 (run_id,)).fetchone()
            if found is None:
                return False
            conn.execute("DELETE FROM runs WHERE id = ? AND status != 'running'", (run_id,))
        if delete_output and found["output_path"]:
            Path(found["output_path"]).unlink(missing_ok=True)
        return True

    def move(self, run_id: int, delta: int) -> bool:
        """Reorder among pending runs: -1 up one place, +1 down one. False if it did not move."""
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise ValueError(f"move: delta must be a whole number, not {delta!r}")
        moved = False
        with self._write() as conn:
            me = conn.execute("SELECT position FROM runs WHERE id = ? AND status = 'pending'", (run_id,)).fetchone()
            if me is None:
                return False
            pos = me["position"]
            if delta < 0:
                query = ("SELECT id, position FROM runs WHERE status = 'pending' AND (position < ? OR"
                         " (position = ? AND id < ?)) ORDER BY position DESC, id DESC LIMIT 1")
            else:
                query = ("SELECT id, position FROM runs WHERE status = 'pending' AND (position > ? OR"
                         " (position = ? AND id > ?)) ORDER BY position, id LIMIT 1")
            for _ in range(abs(delta)):
                other = conn.execute(query, (pos, pos, run_id)).fetchone()
                if other is None:
                    break
                # Swap places; positions are unique, so swapping is an exact exchange of order.
                conn.execute("UPDATE runs SET position = ? WHERE id = ?", (pos, other["id"]))
                conn.execute("UPDATE runs SET position = ? WHERE id = ?", (other["position"], run_id))
                pos = other["position"]
                moved = True
        return moved

    def recover(self, *, force: bool = False) -> int:
        """Startup: runs left 'running' by a dead worker go back to the front of the queue.

        A run's owner is the process that claimed it; runs of live processes (another vlbench
        using the same store) are left alone unless `force`. Returns how many were recovered.
        """
        with self._write() as conn:
            running = conn.execute(
                "SELECT id, claimed_by FROM runs WHERE status = 'running' ORDER BY started_at DESC, id DESC"
            ).fetchall()
            dead = [r["id"] for r in running if force or not owner_alive(r["claimed_by"])]
            front = _front_position(conn)
            for i, run_id in enumerate(dead):  # latest-started first, each placed before the previous
                conn.execute(
                    "UPDATE runs SET status = 'pending', position = ?, started_at = NULL, claimed_by = NULL"
                    " WHERE id = ? AND status = 'running'",
                    (front - i, run_id),
                )
        return len(dead)

    def set_metrics(self, run_id: int, metrics: dict) -> bool:
        """Merge `metrics` into the run's metrics (keys in `metrics` win). False if there is no such run."""
        with self._write() as conn:
            found = conn.execute("SELECT metrics FROM runs WHERE id = ?", (run_id,)).fetchone()
            if found is None:
                return False
            merged = {**json.loads(found["metrics"] or "{}"), **metrics}
            conn.execute("UPDATE runs SET metrics = ? WHERE id = ?", (_dumps(merged), run_id))
            return True

    def ids_by_output_path(self, paths: list[str]) -> dict[str, list[int]]:
        """output path -> ids of the runs that wrote it (the experiment runner records resolved paths)."""
        out: dict[str, list[int]] = {}
        paths = list(dict.fromkeys(str(p) for p in paths))
        conn = self._conn()
        for i in range(0, len(paths), 500):  # SQLite's bound-parameter limit
            chunk = paths[i:i + 500]
            for r in conn.execute(f"SELECT id, output_path FROM runs WHERE output_path IN ({', '.join('?' * len(chunk))})"
                                  " ORDER BY id", chunk):
                out.setdefault(r["output_path"], []).append(r["id"])
        return out

    # ---- reading ----
    def get(self, run_id: int) -> RunRow | None:
        found = self._conn().execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _row(found) if found is not None else None

    def status(self, run_id: int) -> str | None:
        """The run's status alone (cheap enough to poll every denoising step)."""
        found = self._conn().execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        return found[0] if found is not None else None

    def queue(self, *, limit: int | None = None) -> list[RunRow]:
        """Running then pending runs, in execution order."""
        conn = self._conn()
        running = conn.execute("SELECT * FROM runs WHERE status = 'running' ORDER BY started_at, id").fetchall()
        sql = "SELECT * FROM runs WHERE status = 'pending' ORDER BY position, id"
        args: tuple = ()
        if limit is not None:
            sql += " LIMIT ?"
            args = (max(0, limit - len(running)),)
        pending = conn.execute(sql, args).fetchall()
        return [_row(r) for r in [*running, *pending]][: limit if limit is not None else None]

    def history(self, *, offset: int = 0, limit: int = 100, text: str | None = None,
                status: str | Iterable[str] | None = None, sort: str = "created_at", descending: bool = True,
                experiment: str | None = None) -> list[RunRow]:
        """One page of runs (every status unless `status` narrows it: a name or several).

        text: case-insensitive substring of prompt, name or experiment; experiment: exact match.
        """
        sql, args = _history_sql(offset, limit, text, status, sort, descending, experiment)
        return [_row(r) for r in self._conn().execute(sql, args).fetchall()]

    def query_plan(self, **history_args: Any) -> list[str]:
        """EXPLAIN QUERY PLAN of the history() call with these arguments (tests and debugging)."""
        sql, args = _history_sql(**{**dict(offset=0, limit=100, text=None, status=None, sort="created_at",
                                            descending=True, experiment=None), **history_args})
        return [r[-1] for r in self._conn().execute("EXPLAIN QUERY PLAN " + sql, args).fetchall()]

    def count(self, *, text: str | None = None, status: str | Iterable[str] | None = None,
              experiment: str | None = None) -> int:
        where, args = _filters(text, status, experiment)
        return self._conn().execute(f"SELECT COUNT(*) FROM runs{where}", args).fetchone()[0]

    def counts_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for r in self._conn().execute("SELECT status, COUNT(*) AS n FROM runs GROUP BY status"):
            counts[r["status"]] = r["n"]
        return counts


# ---- helpers ----
def one_line(reason: Any) -> str:
    """The first non-empty line of `reason`, capped: what the queue and history show."""
    text = str(reason).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "") or "failed"
    return line if len(line) <= _REASON_MAX else line[: _REASON_MAX - 1] + "…"


def _dumps(value: Any) -> str:
    return json.dumps(value if value is not None else {}, default=str, ensure_ascii=False)


def _contains(haystack: str | None, needle: str) -> bool:
    return haystack is not None and needle in haystack.casefold()


def _new_row(item: dict) -> tuple:
    unknown = sorted(set(item) - set(ENQUEUE_KEYS))
    if unknown:
        raise ValueError(f"enqueue: unknown key {unknown[0]!r}; known keys: {', '.join(ENQUEUE_KEYS)}")
    prompt = item.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError("enqueue: prompt must be a string")
    images = [str(p) for p in (item.get("images") or [])]
    recipe = item.get("recipe") or {}
    if hasattr(recipe, "to_dict"):
        recipe = recipe.to_dict()
    if not isinstance(recipe, dict):
        raise ValueError("enqueue: recipe must be a dict (Recipe.to_dict())")
    seed = recipe.get("seed", 0)
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
    return (prompt, _dumps(images), _dumps(recipe), item.get("name"), item.get("experiment"), seed,
            item.get("source") or "tui")


def _statuses(status: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if status is None:
        return None
    wanted = (status,) if isinstance(status, str) else tuple(status)
    for s in wanted:
        if s not in STATUSES:
            raise ValueError(f"status: unknown {s!r}; use one of {', '.join(STATUSES)}")
    return wanted


def _filters(text: str | None, status, experiment: str | None) -> tuple[str, tuple]:
    clauses: list[str] = []
    args: list[Any] = []
    wanted = _statuses(status)
    if wanted is not None:
        clauses.append(f"status IN ({', '.join('?' * len(wanted))})")
        args.extend(wanted)
    if experiment is not None:
        clauses.append("experiment = ?")
        args.append(experiment)
    if text:
        if text.isascii():  # SQLite's LIKE folds ASCII case only
            pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append("(prompt LIKE ? ESCAPE '\\' OR name LIKE ? ESCAPE '\\' OR experiment LIKE ? ESCAPE '\\')")
            args.extend([pattern] * 3)
        else:
            needle = text.casefold()
            clauses.append("(vlbench_contains(prompt, ?) OR vlbench_contains(name, ?) OR vlbench_contains(experiment, ?))")
            args.extend([needle] * 3)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def _history_sql(offset, limit, text, status, sort, descending, experiment) -> tuple[str, tuple]:
    where, args = _filters(text, status, experiment)
    d = "DESC" if descending else "ASC"
    if sort.startswith(METRIC_SORT_PREFIX) and METRIC_NAME.fullmatch(sort[len(METRIC_SORT_PREFIX):]):
        # No index: a full scan of one JSON column, tens of milliseconds for 100 000 runs.
        path = "$." + sort[len(METRIC_SORT_PREFIX):]
        order = f"json_extract(metrics, ?) IS NULL, json_extract(metrics, ?) {d}, id {d}"
        return (f"SELECT * FROM runs{where} ORDER BY {order} LIMIT ? OFFSET ?",
                (*args, path, path, max(0, int(limit)), max(0, int(offset))))
    if sort not in SORTS:
        raise ValueError(f"sort: unknown {sort!r}; use one of {', '.join(SORTS)} or metric:NAME")
    order = SORTS[sort].format(d=d)
    return (f"SELECT * FROM runs{where} ORDER BY {order} LIMIT ? OFFSET ?",
            (*args, max(0, int(limit)), max(0, int(offset))))


def _end_position(conn: sqlite3.Connection) -> float:
    top = conn.execute("SELECT MAX(position) FROM runs WHERE status IN ('pending', 'running')").fetchone()[0]
    return 0.0 if top is None else float(top) + 1


def _front_position(conn: sqlite3.Connection) -> float:
    low = conn.execute("SELECT MIN(position) FROM runs WHERE status IN ('pending', 'running')").fetchone()[0]
    return 0.0 if low is None else float(low) - 1


_JSON_COLUMNS = ("images", "recipe", "timings", "environment", "conditioning", "metrics")


def _row(r: sqlite3.Row) -> RunRow:
    data = dict(r)
    for key in _JSON_COLUMNS:
        data[key] = json.loads(data[key]) if data[key] else ([] if key == "images" else {})
    return RunRow(**data)


# ---- run ownership: which process holds a running row, and is it still alive ----
_token: tuple[int, str] | None = None


def process_token() -> str:
    """'host:pid:start' naming this process uniquely even when pids are reused (containers restart at 1)."""
    global _token
    pid = os.getpid()
    if _token is None or _token[0] != pid:  # recomputed after fork
        _token = (pid, f"{socket.gethostname()}:{pid}:{_start_time(pid)}")
    return _token[1]


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "; fields[0] is the state
    return fields[19] if len(fields) > 19 else "?"  # field 22 of proc(5): start time in clock ticks


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
    proc = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            stat = proc.read_text()
        except OSError:
            return False
        fields = stat[stat.rfind(")") + 2:].split()
        if fields and fields[0] in ("Z", "X"):  # zombie: killed, not yet reaped
            return False
        return start == "?" or (len(fields) > 19 and fields[19] == start)
    return pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Does a process with this pid exist on this host?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- schema: MIGRATIONS[i] takes user_version i to i + 1; append, never edit ----
def _v1(conn: sqlite3.Connection) -> None:
    conn.execute(f"""
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: outputs are named by id
            status TEXT NOT NULL CHECK (status IN ({', '.join(repr(s) for s in STATUSES)})),
            prompt TEXT NOT NULL,
            images TEXT NOT NULL DEFAULT '[]',
            recipe TEXT NOT NULL DEFAULT '{{}}',
            name TEXT,
            experiment TEXT,
            seed INTEGER NOT NULL DEFAULT 0,
            source TEXT NOT NULL DEFAULT 'tui',
            position REAL NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            output_path TEXT,
            error TEXT,
            timings TEXT NOT NULL DEFAULT '{{}}',
            peak_memory_bytes INTEGER,
            environment TEXT NOT NULL DEFAULT '{{}}',
            conditioning TEXT NOT NULL DEFAULT '{{}}',
            metrics TEXT NOT NULL DEFAULT '{{}}',
            claimed_by TEXT
        )""")
    for name, columns in [
        ("runs_status_position", "status, position"),  # the queue, claim_next
        ("runs_created_at", "created_at"),  # history's default page
        ("runs_status_created_at", "status, created_at"),  # history filtered by status, sort by status
        ("runs_finished_at", "finished_at"),
        ("runs_seed", "seed"),
        ("runs_name", "name COLLATE NOCASE"),
        ("runs_experiment_name", "experiment, name"),  # an experiment's runs, for resuming it
    ]:
        conn.execute(f"CREATE INDEX {name} ON runs ({columns})")


MIGRATIONS = [_v1]


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        from vlbench.errors import UserError

        raise UserError(f"run store {path}: schema version {version} is newer than this vlbench knows "
                        f"({len(MIGRATIONS)}); upgrade vlbench or point VLBENCH_DATA_DIR elsewhere")
    if version == len(MIGRATIONS):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
        for number in range(version, len(MIGRATIONS)):
            MIGRATIONS[number](conn)
            conn.execute(f"PRAGMA user_version = {number + 1}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
