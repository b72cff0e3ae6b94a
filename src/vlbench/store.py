"""The run store: queue and history of every run in one SQLite table — the index of all runs on this machine.

A row is a RunRecord (vlbench.records: the same field names as results.jsonl and the PNG metadata)
plus its place in the queue. Its `status` moves pending -> running -> done | failed | cancelled;
every state change is a single UPDATE guarded by the expected current status, so a run is never in
two states and two workers never claim the same row. The schema is versioned by `PRAGMA
user_version` and grows only through the MIGRATIONS list at the bottom. Standard library only.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

from vlbench import paths
from vlbench.errors import UserError, one_line
from vlbench.paths import data_file
from vlbench.process import owner_alive, process_token
from vlbench.recipe import upgrade_recipe
from vlbench.records import STATUSES as RECORD_STATUSES, RunRecord, upgrade

STATUSES = RECORD_STATUSES
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
INTERRUPTIONS_MAX = 2  # a run interrupted this often (its process died while running it) is failed, not retried
PAUSED = "queue_paused"  # state key: saved across restarts and shared by every worker on this store


@dataclass
class RunRow(RunRecord):
    """A RunRecord with its place in the store's queue."""

    id: int = 0
    position: float = 0.0
    created_at: float = 0.0
    claimed_by: str | None = None  # "host:pid:start" of the process running it (see recover)
    interruptions: int = 0  # times its process died while running it (recover)
    batch: str | None = None  # the runs one action queued together (an experiment from the workbench)

    def record(self) -> RunRecord:
        return RunRecord(**{f.name: getattr(self, f.name) for f in fields(RunRecord)})


class Store:
    """One SQLite file; a connection per thread (the TUI thread, the worker thread, the CLI)."""

    def __init__(self, path: Path | str | None = None):
        if path is None:
            path = paths.store_path()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

        data_file(self.path)  # 0600 (paths.data_file) before SQLite makes it 0644: its WAL and shm take its mode
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

    def enqueue_many(self, items: list[dict | RunRecord], *, batch: str | None = None) -> list[int]:
        """Append runs to the end of the queue in one transaction; returns their ids in order.

        An item is a RunRecord, or a dict of prompt, images (reference paths), recipe, name, experiment, source.
        `batch` names the runs one action queued together (the workbench groups them in its Queue)."""
        records = [_as_record(item) for item in items]
        if not records:
            return []
        now = time.time()
        with self._write() as conn:
            position = _end_position(conn)
            first = conn.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()[0]
            seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'runs'").fetchone()
            first = max(first, seq[0] if seq else 0) + 1
            # Explicit ids (the ones AUTOINCREMENT would give) so one executemany returns them all.
            cols = (*_RECORD_COLUMNS, "id", "position", "created_at", "batch")
            conn.executemany(
                f"INSERT INTO runs ({_names(cols)}) VALUES ({', '.join('?' * len(cols))})",
                ((*_values(r.replace(status="pending")), first + i, position + i, now, batch)
                 for i, r in enumerate(records)),
            )
        return [first + i for i in range(len(records))]

    def add(self, record: RunRecord) -> int:
        """A run executed outside the queue (generate, the experiment runner): one history row as it is."""
        now = time.time()
        cols = (*_RECORD_COLUMNS, "position", "created_at")
        with self._write() as conn:
            cur = conn.execute(f"INSERT INTO runs ({_names(cols)}) VALUES ({', '.join('?' * len(cols))})",
                               (*_values(record), 0, record.started_at or now))
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
                " error_data = NULL, claimed_by = ? WHERE id = ? AND status = 'pending'",
                (time.time(), process_token(), found["id"]),
            )
            return _row(conn.execute("SELECT * FROM runs WHERE id = ?", (found["id"],)).fetchone())

    def finish(self, run_id: int, record: RunRecord) -> bool:
        """running -> done with the finished record's figures. False (row untouched) if the run is no longer
        running, e.g. it was cancelled."""
        cols = ("references", "finished_at", "image", "image_sha256", "timings", "peak_memory_bytes", "environment",
                "conditioning", "caption_tokens", "vl_forwards")
        values = dict(zip(_RECORD_COLUMNS, _values(record)))
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE runs SET status = 'done', error = NULL, failure = NULL, error_data = NULL, "
                f"{', '.join(f'{_q(c)} = ?' for c in cols)}"
                " WHERE id = ? AND status = 'running' AND (claimed_by IS NULL OR claimed_by = ?)",
                (*[values[c] for c in cols], run_id, process_token()),
            )
            return cur.rowcount == 1

    def fail(self, run_id: int, reason: str, failure: str | None = None, data: dict | None = None) -> bool:
        """pending/running -> failed with a one-line reason (and `data`, the structured error: RunRecord.error_data).
        False if the run is in another state."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = 'failed', finished_at = ?, error = ?, failure = ?, error_data = ? WHERE id = ?"
                " AND (status = 'pending' OR (status = 'running' AND (claimed_by IS NULL OR claimed_by = ?)))",
                (time.time(), one_line(reason), failure, None if data is None else _dumps(data), run_id,
                 process_token()),
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
                " image = NULL, image_sha256 = NULL, error = NULL, failure = NULL, error_data = NULL, timings = '{}',"
                " peak_memory_bytes = NULL, environment = '{}', conditioning = '{}', caption_tokens = NULL,"
                " vl_forwards = 0, claimed_by = NULL, interruptions = 0"
                " WHERE id = ? AND status IN ('failed', 'cancelled')",
                (_end_position(conn), run_id),
            )
            return cur.rowcount == 1

    def requeue(self, run_id: int) -> int:
        """A new pending run with the same prompt, images, recipe, name and experiment. KeyError if none."""
        old = self.get(run_id)
        if old is None:
            raise KeyError(f"run {run_id}: no such run")
        return self.enqueue_many([RunRecord(prompt=old.prompt, references=old.references, recipe=old.recipe,
                                            seed=old.seed, name=old.name, experiment=old.experiment,
                                            config_index=old.config_index, key=old.key, source=old.source)])[0]

    def cancel_all(self) -> int:
        """Every pending and running run -> cancelled (running ones stop at their next step); how many."""
        with self._write() as conn:
            return conn.execute("UPDATE runs SET status = 'cancelled', finished_at = ? WHERE status IN "
                                "('pending', 'running')", (time.time(),)).rowcount

    def move_to_front(self, run_ids: list[int]) -> int:
        """Pending runs to the front of the queue, in the given order; how many moved."""
        moved = 0
        with self._write() as conn:
            front = _front_position(conn)
            for i, run_id in enumerate(reversed(run_ids)):  # the last one first, each placed before the previous
                moved += conn.execute("UPDATE runs SET position = ? WHERE id = ? AND status = 'pending'",
                                      (front - i, run_id)).rowcount
        return moved

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
            found = conn.execute("SELECT image FROM runs WHERE id = ? AND status != 'running'",
                                 (run_id,)).fetchone()
            if found is None:
                return False
            conn.execute("DELETE FROM runs WHERE id = ? AND status != 'running'", (run_id,))
        if delete_output and found["image"]:
            Path(found["image"]).unlink(missing_ok=True)
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

    def recover(self, *, force: bool = False) -> tuple[int, int]:
        """Startup: runs left 'running' by a dead process go back to the front of the queue.

        A run's owner is the process that claimed it; runs of live processes (another vlbench using the
        same store) are left alone unless `force`. A run interrupted INTERRUPTIONS_MAX times is marked
        failed instead ("interrupted twice — possibly crashing the worker"). Returns (requeued, failed).
        """
        requeued = failed = 0
        with self._write() as conn:
            running = conn.execute(
                "SELECT id, claimed_by, interruptions FROM runs WHERE status = 'running'"
                " ORDER BY started_at DESC, id DESC").fetchall()
            front = _front_position(conn)
            for r in running:
                if not force and owner_alive(r["claimed_by"]):
                    continue
                count = (r["interruptions"] or 0) + 1
                if count >= INTERRUPTIONS_MAX:
                    conn.execute(
                        "UPDATE runs SET status = 'failed', finished_at = ?, failure = 'interrupted', error = ?,"
                        " interruptions = ?, claimed_by = NULL WHERE id = ? AND status = 'running'",
                        (time.time(), f"interrupted {count} times — possibly crashing the worker; retry it "
                                      "alone to see", count, r["id"]))
                    failed += 1
                else:  # latest-started first, each placed before the previous
                    conn.execute(
                        "UPDATE runs SET status = 'pending', position = ?, started_at = NULL, claimed_by = NULL,"
                        " interruptions = ? WHERE id = ? AND status = 'running'",
                        (front - requeued, count, r["id"]))
                    requeued += 1
        return requeued, failed

    # ---- shared state: the queue's pause, which process works the queue ----
    def get_state(self, key: str, default: Any = None) -> Any:
        found = self._conn().execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(found[0]) if found is not None else default

    def set_state(self, key: str, value: Any) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                         (key, json.dumps(value)))

    def claim_state(self, key: str, value: Any, replacing: Any = "") -> bool:
        """Set `key` only when it is unset, empty ("") or equal to `replacing` (a stale claim): True for the one
        caller, in any process, that did."""
        with self._write() as conn:
            cur = conn.execute("INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                               "value = excluded.value WHERE state.value IN (?, ?)",
                               (key, json.dumps(value), json.dumps(""), json.dumps(replacing)))
            return cur.rowcount == 1

    def take_owner(self, key: str, info: dict) -> dict | None:
        """Register `info` (a dict naming its process: `token`) under `key` unless a live process other than the
        caller holds it. The check and the write are one transaction, so of several processes starting at the same
        moment exactly one registers. None when registered (or re-registered), else the live holder's info."""
        with self._write() as conn:
            found = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
            held = json.loads(found[0]) if found is not None else None
            if (isinstance(held, dict) and held.get("token") != info.get("token")
                    and owner_alive(held.get("token"))):
                return held
            conn.execute("INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                         "value = excluded.value", (key, json.dumps(info)))
        return None

    @property
    def paused(self) -> bool:
        """The queue is paused: no worker, in any process, claims a new run (a running one finishes)."""
        return bool(self.get_state(PAUSED, False))

    def set_paused(self, paused: bool) -> None:
        self.set_state(PAUSED, bool(paused))

    def set_metrics(self, run_id: int, metrics: dict) -> bool:
        """Merge `metrics` into the run's metrics (keys in `metrics` win). False if there is no such run."""
        with self._write() as conn:
            found = conn.execute("SELECT metrics FROM runs WHERE id = ?", (run_id,)).fetchone()
            if found is None:
                return False
            merged = {**json.loads(found["metrics"] or "{}"), **metrics}
            conn.execute("UPDATE runs SET metrics = ? WHERE id = ?", (_dumps(merged), run_id))
            return True

    def ids_by_image(self, paths: list[str]) -> dict[str, list[int]]:
        """image path -> ids of the runs that wrote it (the experiment runner records resolved paths)."""
        out: dict[str, list[int]] = {}
        paths = list(dict.fromkeys(str(p) for p in paths))
        conn = self._conn()
        for i in range(0, len(paths), 500):  # SQLite's bound-parameter limit
            chunk = paths[i:i + 500]
            for r in conn.execute(f"SELECT id, image FROM runs WHERE image IN ({', '.join('?' * len(chunk))})"
                                  " ORDER BY id", chunk):
                out.setdefault(r["image"], []).append(r["id"])
        return out

    def images_recorded(self, paths: list[str]) -> dict[str, list[tuple[int, str | None]]]:
        """image path -> [(id, image_sha256)] of the runs recorded with it (resume compares the sha256)."""
        out: dict[str, list[tuple[int, str | None]]] = {}
        paths = list(dict.fromkeys(str(p) for p in paths))
        conn = self._conn()
        for i in range(0, len(paths), 500):
            chunk = paths[i:i + 500]
            for r in conn.execute(f"SELECT id, image, image_sha256 FROM runs WHERE image IN "
                                  f"({', '.join('?' * len(chunk))}) ORDER BY id", chunk):
                out.setdefault(r["image"], []).append((r["id"], r["image_sha256"]))
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

    def pending_steps(self) -> tuple[int, int]:
        """(pending runs, denoising steps they will take): the queue's total for its ETA."""
        found = self._conn().execute(
            "SELECT COUNT(*), COALESCE(SUM(json_extract(recipe, '$.steps')), 0) FROM runs WHERE status = 'pending'"
        ).fetchone()
        return int(found[0]), int(found[1] or 0)

    def batch_counts(self, batches: Iterable[str]) -> dict[str, dict[str, int]]:
        """batch -> {status: runs}: each batch's progress (n done of N)."""
        wanted = list(dict.fromkeys(b for b in batches if b))
        out: dict[str, dict[str, int]] = {b: {} for b in wanted}
        conn = self._conn()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            for r in conn.execute(f"SELECT batch, status, COUNT(*) AS n FROM runs WHERE batch IN "
                                  f"({', '.join('?' * len(chunk))}) GROUP BY batch, status", chunk):
                out[r["batch"]][r["status"]] = r["n"]
        return out

    def finished_batches(self) -> list[tuple[str, str]]:
        """(batch, experiment) of every experiment batch with nothing pending or running and something done or
        failed, oldest first."""
        rows = self._conn().execute(
            "SELECT batch, MAX(experiment) AS experiment FROM runs WHERE batch IS NOT NULL AND experiment IS NOT NULL "
            "GROUP BY batch HAVING SUM(status IN ('pending', 'running')) = 0 AND SUM(status IN ('done', 'failed')) > 0 "
            "ORDER BY MIN(id)")
        return [(r["batch"], r["experiment"]) for r in rows]

    def batch_runs(self, batch: str) -> list[RunRow]:
        """Every run of a batch, in queue order (ids ascending)."""
        return [_row(r) for r in self._conn().execute("SELECT * FROM runs WHERE batch = ? ORDER BY id", (batch,))]

    def batch_recipes(self, batch: str) -> list[dict]:
        """The recipes of a batch's runs (what varies within it), cheaper than batch_runs."""
        return [json.loads(r[0] or "{}") for r in
                self._conn().execute("SELECT recipe FROM runs WHERE batch = ? ORDER BY id", (batch,))]

    def counts_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for r in self._conn().execute("SELECT status, COUNT(*) AS n FROM runs GROUP BY status"):
            counts[r["status"]] = r["n"]
        return counts


# ---- helpers ----
def _dumps(value: Any) -> str:
    return json.dumps(value if value is not None else {}, default=str, ensure_ascii=False)


def _contains(haystack: str | None, needle: str) -> bool:
    return haystack is not None and needle in haystack.casefold()


_RECORD_COLUMNS = tuple(f.name for f in fields(RunRecord) if f.name != "schema")
_JSON_COLUMNS = ("references", "recipe", "timings", "environment", "conditioning", "metrics")
_NULLABLE_JSON = ("error_data",)  # JSON, NULL when absent (rows from before schema 5 have none)
_ITEM_KEYS = ("prompt", "images", "recipe", "name", "experiment", "source")


def _q(column: str) -> str:
    return f'"{column}"'  # "references" is an SQL keyword


def _names(columns) -> str:
    return ", ".join(_q(c) for c in columns)


def _as_record(item: dict | RunRecord) -> RunRecord:
    if isinstance(item, RunRecord):
        record = item
    else:
        unknown = sorted(set(item) - set(_ITEM_KEYS))
        if unknown:
            raise ValueError(f"enqueue: unknown key {unknown[0]!r}; known keys: {', '.join(_ITEM_KEYS)}")
        recipe = item.get("recipe") or {}
        if hasattr(recipe, "to_dict"):
            recipe = recipe.to_dict()
        record = RunRecord(prompt=item.get("prompt"), references=[{"path": str(p), "sha256": None}
                                                                 for p in item.get("images") or []],
                           recipe=recipe, name=item.get("name"), experiment=item.get("experiment"),
                           source=item.get("source") or "tui")
    if not isinstance(record.prompt, str):
        raise ValueError("enqueue: prompt must be a string")
    if not isinstance(record.recipe, dict):
        raise ValueError("enqueue: recipe must be a dict (Recipe.to_dict())")
    seed = record.recipe.get("seed", 0)
    return record.replace(seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else 0)


def _values(record: RunRecord) -> tuple:
    return tuple(_dumps(getattr(record, c)) if c in _JSON_COLUMNS
                 else (None if getattr(record, c) is None else _dumps(getattr(record, c))) if c in _NULLABLE_JSON
                 else getattr(record, c) for c in _RECORD_COLUMNS)


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


def _row(r: sqlite3.Row) -> RunRow:
    data = dict(r)
    for key in _JSON_COLUMNS:
        data[key] = json.loads(data[key]) if data[key] else ([] if key == "references" else {})
    for key in _NULLABLE_JSON:
        data[key] = json.loads(data[key]) if data.get(key) else None
    return RunRow(**data)


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


def _v2(conn: sqlite3.Connection) -> None:
    """RunRecord's names: output_path -> image, images -> references ([{path, sha256}]); the record's new
    fields; interruptions for recovery with a limit."""
    conn.execute("ALTER TABLE runs RENAME COLUMN output_path TO image")
    conn.execute('ALTER TABLE runs ADD COLUMN "references" TEXT NOT NULL DEFAULT \'[]\'')
    for column, kind in [("key", "TEXT"), ("config_index", "INTEGER"), ("failure", "TEXT"), ("image_sha256", "TEXT"),
                         ("caption_tokens", "INTEGER"), ("vl_forwards", "INTEGER NOT NULL DEFAULT 0"),
                         ("interruptions", "INTEGER NOT NULL DEFAULT 0")]:
        conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
    rows = conn.execute("SELECT id, images FROM runs WHERE images != '[]'").fetchall()
    conn.executemany('UPDATE runs SET "references" = ? WHERE id = ?',
                     ((_dumps(upgrade({"images": json.loads(r[1] or "[]")})["references"]), r[0]) for r in rows))
    conn.execute("ALTER TABLE runs DROP COLUMN images")
    conn.execute("CREATE INDEX runs_image ON runs (image)")  # ids_by_image (vlbench score)


def _v3(conn: sqlite3.Connection) -> None:
    """Shared state (the queue's pause, which process works the queue) and a batch id that groups the runs
    one action queued (an experiment from the workbench: its grid and report when the batch completes)."""
    conn.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("ALTER TABLE runs ADD COLUMN batch TEXT")
    conn.execute("CREATE INDEX runs_batch ON runs (batch)")


def _v4(conn: sqlite3.Connection) -> None:
    """Recipe schema 3 (attend ratios are shares): every row's recipe read as what it was when it was recorded or
    queued (vlbench.recipe.upgrade_recipe: attend_ratio token-odds, attend_scope joint where it was biased)."""
    rows = conn.execute("SELECT id, recipe FROM runs").fetchall()
    updates = []
    for run_id, text in rows:
        try:
            old = json.loads(text or "{}")
        except json.JSONDecodeError:
            continue
        new = upgrade_recipe(old, 2)
        if new is not old:
            updates.append((_dumps(new), run_id))
    conn.executemany("UPDATE runs SET recipe = ? WHERE id = ?", updates)


def _v5(conn: sqlite3.Connection) -> None:
    """Errors as data: a failed run's structured error (RunRecord.error_data, JSON), which each front end words.
    Rows from before it have none (NULL) and read as their `error` line, as they were shown."""
    conn.execute("ALTER TABLE runs ADD COLUMN error_data TEXT")


MIGRATIONS = [_v1, _v2, _v3, _v4, _v5]


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
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
