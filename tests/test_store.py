"""The run store: one table is both the queue and the history; every state change is guarded."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading

import pytest

from vlbench import paths
from vlbench.errors import UserError
from vlbench.process import process_token
from vlbench.records import RunRecord
from vlbench.store import STATUSES, Store

RECIPE = {"width": 64, "height": 64, "steps": 2, "seed": 0}


@pytest.fixture
def store():
    s = Store()
    yield s
    s.close()


def queued(store: Store, status: str = "pending") -> list[int]:
    return [r.id for r in store.queue() if r.status == status]


def dead_owner() -> str:
    """The ownership token of a process that has exited."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(proc.stdout)
    host, _, start = process_token().rsplit(":", 2)
    return f"{host}:{pid}:{start}"


def test_store_lives_in_the_data_dir_with_wal_and_schema_version(store):
    assert store.path == paths.data_dir() / "runs.sqlite3"
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5


def test_a_store_written_by_a_newer_vlbench_is_refused(tmp_path):
    path = tmp_path / "runs.sqlite3"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(UserError, match="newer"):
        Store(path)


def test_runs_are_claimed_in_enqueue_order_and_round_trip_their_fields(store):
    first = store.enqueue("a red fox", ["/refs/fox.png"], dict(RECIPE, seed=7), name="fox", experiment="e1", source="cli")
    second, third = store.enqueue_many([
        dict(prompt="second", images=[], recipe=RECIPE),
        dict(prompt="third", images=["x.png", "y.png"], recipe=RECIPE, name="three"),
    ])
    assert first < second < third
    row = store.claim_next()
    assert (row.id, row.status, row.prompt, row.reference_paths, row.recipe) == (first, "running", "a red fox", ["/refs/fox.png"], dict(RECIPE, seed=7))
    assert (row.name, row.experiment, row.seed, row.source) == ("fox", "e1", 7, "cli")
    assert row.started_at is not None and row.finished_at is None
    assert [store.claim_next().id, store.claim_next().id] == [second, third]
    assert store.claim_next() is None


def test_queue_lists_running_then_pending_in_order(store):
    ids = store.enqueue_many([dict(prompt=str(i), images=[], recipe=RECIPE) for i in range(4)])
    store.claim_next()
    assert [(r.id, r.status) for r in store.queue()] == [(ids[0], "running")] + [(i, "pending") for i in ids[1:]]
    assert [r.id for r in store.queue(limit=2)] == ids[:2]


def test_move_reorders_pending_runs_one_place_at_a_time(store):
    a, b, c, d = store.enqueue_many([dict(prompt=p, images=[], recipe=RECIPE) for p in "abcd"])
    assert store.move(c, -1)
    assert queued(store) == [a, c, b, d]
    assert store.move(a, +2)
    assert queued(store) == [c, b, a, d]
    assert not store.move(c, -1)  # already first
    assert store.move(d, -10)  # clamps at the top
    assert queued(store) == [d, c, b, a]
    assert store.claim_next().id == d
    assert not store.move(d, +1)  # running runs do not move
    with pytest.raises(ValueError):
        store.move(a, 0.5)


def test_remove_deletes_pending_runs_only(store):
    a, b = store.enqueue_many([dict(prompt=p, images=[], recipe=RECIPE) for p in "ab"])
    store.claim_next()
    assert not store.remove(a)  # running
    assert store.remove(b)
    assert store.get(b) is None and store.get(a).status == "running"


def test_delete_removes_any_run_but_a_running_one(store, tmp_path):
    a, b = store.enqueue_many([dict(prompt=p, images=[], recipe=RECIPE) for p in "ab"])
    store.claim_next()
    assert not store.delete(a)
    out = tmp_path / "a.png"
    out.write_bytes(b"png")
    assert store.finish(a, RunRecord(image=str(out)))
    assert store.delete(a, delete_output=True)
    assert store.get(a) is None and not out.exists()
    assert store.delete(b)  # pending is fine too


def test_finish_and_fail_apply_only_to_running_runs(store):
    a, b = store.enqueue_many([dict(prompt=p, images=[], recipe=RECIPE) for p in "ab"])
    assert not store.finish(a, RunRecord(image="x.png"))
    row = store.claim_next()
    assert store.finish(row.id, RunRecord(image="x.png", timings={"generation": 1.5}, peak_memory_bytes=123,
                                          environment={"torch": "x"}, conditioning={"length": 3},
                                          finished_at=row.started_at + 1))
    done = store.get(a)
    assert (done.status, done.image, done.timings, done.peak_memory_bytes) == ("done", "x.png", {"generation": 1.5}, 123)
    assert done.environment == {"torch": "x"} and done.conditioning == {"length": 3} and done.duration >= 0
    assert not store.fail(a, "too late")  # a done run stays done
    assert not store.cancel(a)
    assert store.get(a).status == "done"
    assert store.fail(b, "bad recipe\nTraceback ...")  # pending runs can fail (e.g. rejected before running)
    assert store.get(b).error == "bad recipe"


def test_cancel_then_finish_leaves_the_run_cancelled(store):
    run = store.enqueue("p", [], RECIPE)
    store.claim_next()
    assert store.cancel(run)
    assert not store.finish(run, RunRecord(image="x.png"))
    assert not store.fail(run, "x")
    row = store.get(run)
    assert row.status == "cancelled" and row.image is None and row.finished_at is not None


def test_retry_puts_a_failed_or_cancelled_run_back_at_the_end_of_the_queue(store):
    a, b, c = store.enqueue_many([dict(prompt=p, images=[], recipe=RECIPE) for p in "abc"])
    store.claim_next()
    store.fail(a, "oops")
    assert store.cancel(b)
    assert not store.retry(c)  # pending: nothing to retry
    assert store.retry(a) and store.retry(b)
    assert queued(store) == [c, a, b]
    row = store.get(a)
    assert (row.status, row.error, row.started_at, row.finished_at) == ("pending", None, None, None)
    assert store.count() == 3  # the same rows


def test_requeue_copies_a_run_into_a_new_pending_row(store):
    a = store.enqueue("p", ["r.png"], RECIPE, name="n", experiment="e", source="cli")
    row = store.claim_next()
    store.finish(row.id, row.record().replace(image="x.png"))
    b = store.requeue(a)
    new, old = store.get(b), store.get(a)
    assert b != a and new.status == "pending" and old.status == "done"
    assert (new.prompt, new.reference_paths, new.recipe, new.name, new.experiment) == ("p", ["r.png"], RECIPE, "n", "e")
    with pytest.raises(KeyError):
        store.requeue(12345)


def test_record_done_adds_a_finished_run_outside_the_queue(store):
    queued_run = store.enqueue("queued", [], RECIPE)
    run = store.add(RunRecord(prompt="p", references=[{"path": "r.png", "sha256": None}], recipe=dict(RECIPE, seed=3),
                              seed=3, name="image", experiment="token_sweep", source="cli", status="done",
                              image="out/0001.png", timings={"generation": 0.5, "total": 0.7}, started_at=100.0,
                              finished_at=100.7, peak_memory_bytes=10, environment={"torch": "x"},
                              conditioning={"length": 4}))
    row = store.get(run)
    assert (row.status, row.source, row.seed, row.name, row.experiment) == ("done", "cli", 3, "image", "token_sweep")
    assert row.image == "out/0001.png" and abs(row.duration - 0.7) < 1e-6
    assert [r.id for r in store.queue()] == [queued_run]  # not queued
    assert [r.id for r in store.history(experiment="token_sweep")] == [run]


def test_set_metrics_merges(store):
    a = store.enqueue("p", [], RECIPE)
    assert store.set_metrics(a, {"clip": 0.3})
    assert store.set_metrics(a, {"lpips": 0.1, "clip": 0.4})
    assert store.get(a).metrics == {"clip": 0.4, "lpips": 0.1}
    assert not store.set_metrics(999, {"x": 1})


def _history_fixture(store: Store) -> list[int]:
    items = []
    for i in range(30):
        items.append(dict(prompt=f"prompt {i} {'Fox' if i % 3 == 0 else 'cat'}", images=[],
                          recipe=dict(RECIPE, seed=(i * 7) % 11), name=f"run-{i:02d}" if i % 2 else None,
                          experiment="Ünïcode sweep" if i % 5 == 0 else None))
    ids = store.enqueue_many(items)
    for i, run_id in enumerate(ids[:20]):  # 20 finish: done / failed / cancelled by turns
        store.claim_next()
        if i % 3 == 0:
            store.finish(run_id, RunRecord(image=f"{run_id}.png"))
        elif i % 3 == 1:
            store.fail(run_id, "boom")
        else:
            store.cancel(run_id)
    return ids


def test_history_pages_cover_every_run_once_newest_first(store):
    ids = _history_fixture(store)
    pages = [store.history(offset=o, limit=7) for o in range(0, 35, 7)]
    seen = [r.id for page in pages for r in page]
    assert seen == sorted(ids, reverse=True)  # same created_at within a batch: id breaks ties
    assert [r.id for r in store.history(limit=5, descending=False)] == ids[:5]
    assert store.count() == 30


def test_history_filters_by_text_and_status(store):
    _history_fixture(store)
    fox = store.history(text="fOX", limit=100)
    assert len(fox) == 10 and all("Fox" in r.prompt for r in fox)
    assert store.count(text="fox") == 10
    assert store.count(text="RUN-1") == 5  # names run-11, 13, 15, 17, 19
    assert store.count(text="ünïCODE") == 6  # non-ASCII: folded in Python, not by SQLite's LIKE
    assert store.count(text="100%") == 0 and store.count(text="_") == 0  # LIKE wildcards are literal
    assert store.count(status="done") == 7 and store.count(status=("failed", "cancelled")) == 13
    assert store.count(status="pending") == 10
    assert {r.status for r in store.history(status=["done", "failed"], limit=100)} == {"done", "failed"}
    assert store.count(text="fox", status="done") == len([r for r in fox if r.status == "done"])
    assert store.count(experiment="Ünïcode sweep") == 6
    assert store.counts_by_status() == {"pending": 10, "running": 0, "done": 7, "failed": 7, "cancelled": 6}


@pytest.mark.parametrize("sort", ["created_at", "finished_at", "seed", "name", "status", "id"])
def test_history_sorts_on_every_column(store, sort):
    _history_fixture(store)
    rows = store.history(sort=sort, descending=False, limit=100)
    assert len(rows) == 30

    def key(r):
        value = {"name": (r.name or "").lower() if r.name else None}.get(sort, getattr(r, sort))
        return (value is not None, value)  # SQLite puts NULL first when ascending

    assert [key(r) for r in rows] == sorted(key(r) for r in rows)


def test_invalid_sort_or_status_is_a_value_error(store):
    with pytest.raises(ValueError, match="sort"):
        store.history(sort="prompt; DROP TABLE runs")
    with pytest.raises(ValueError, match="status"):
        store.history(status="finished")
    with pytest.raises(ValueError, match="status"):
        store.count(status=["done", "nope"])
    assert set(STATUSES) == {"pending", "running", "done", "failed", "cancelled"}


def test_two_threads_never_claim_the_same_run(store):
    ids = store.enqueue_many([dict(prompt=str(i), images=[], recipe=RECIPE) for i in range(1000)])
    other = Store()  # a second store object as well as a second thread: both paths must be safe
    claimed: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    barrier = threading.Barrier(3)

    def claim_all(name: str, s: Store) -> None:
        s.get(0)  # open this thread's connection before the race starts
        barrier.wait()
        while (row := s.claim_next()) is not None:
            claimed[name].append(row.id)

    threads = [threading.Thread(target=claim_all, args=(n, s)) for n, s in [("a", store), ("b", store), ("c", other)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    everything = claimed["a"] + claimed["b"] + claimed["c"]
    assert sorted(everything) == ids  # each run exactly once
    assert sum(1 for got in claimed.values() if got) >= 2  # the race was real
    assert store.counts_by_status()["running"] == 1000


def test_recover_returns_runs_of_a_dead_worker_to_the_front_of_the_queue(store):
    a, b, c = store.enqueue_many([dict(prompt=p, images=[], recipe=RECIPE) for p in "abc"])
    store.claim_next()
    # simulate a crash: the claiming process died without finishing
    store._conn().execute("UPDATE runs SET claimed_by = ? WHERE id = ?", (dead_owner(), a))
    assert store.recover() == (1, 0)
    assert queued(store) == [a, b, c]
    row = store.get(a)
    assert row.status == "pending" and row.started_at is None and row.claimed_by is None
    assert store.recover() == (0, 0)


def test_recover_leaves_runs_of_a_live_process_alone(store):
    a, b = store.enqueue_many([dict(prompt=p, images=[], recipe=RECIPE) for p in "ab"])
    store.claim_next()  # claimed by this (live) process
    assert store.recover() == (0, 0) and store.get(a).status == "running"
    assert store.recover(force=True) == (1, 0) and queued(store) == [a, b]


def statements_of(store: Store, call) -> tuple[object, list[str]]:
    """(call's result, every SQL statement it ran on this thread's connection, values bound)."""
    conn = store._conn()
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        result = call()
    finally:
        conn.set_trace_callback(None)
    return result, seen


def plans_of(store: Store, statements: list[str]) -> dict[str, list[str]]:
    """EXPLAIN QUERY PLAN of each SELECT/UPDATE/DELETE statement."""
    conn = store._conn()
    return {sql: [r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql)] for sql in statements
            if sql.lstrip().split(None, 1)[0].upper() in ("SELECT", "UPDATE", "DELETE")}


def reads_an_index(plan: list[str]) -> bool:
    """No step walks the whole table without an index, and none sorts the rows itself."""
    return not any(step.startswith("SCAN runs") and "INDEX" not in step for step in plan) and \
        not any("TEMP B-TREE" in step for step in plan)


def test_a_hundred_thousand_runs_page_and_count_through_indexes(store):
    """Paging, counting and claiming stay fast on a big store because every query reads an index: asserted on
    SQLite's query plans, which do not depend on the machine's speed or load (the timings are measured by
    benchmarks/store_bench.py). The one exception is a text search: a substring can only be found by reading
    the rows (LIKE '%…%'), and a page of several statuses merges them with a sort."""
    items = [dict(prompt=f"prompt number {i}", images=["ref.png"], recipe=dict(RECIPE, seed=i % 97),
                  name=f"n{i}", experiment="big") for i in range(100_000)]
    ids, statements = statements_of(store, lambda: store.enqueue_many(items))
    assert len(ids) == 100_000 and ids == list(range(ids[0], ids[0] + 100_000))
    # one transaction, not 100 000
    assert sum(sql.strip().upper().startswith(("BEGIN", "COMMIT")) for sql in statements) == 2, statements[:5]
    store._conn().execute("UPDATE runs SET status = 'done', finished_at = created_at + id WHERE id % 10 != 0")

    for kwargs in [{}, {"status": "done"}, {"sort": "seed"}, {"sort": "name"}, {"sort": "finished_at"},
                   {"sort": "status"}, {"status": ("done", "failed", "cancelled")}, {"offset": 50_000}]:
        page = store.history(limit=100, **kwargs)
        assert len(page) == 100
        plan = store.query_plan(**kwargs)
        if isinstance(kwargs.get("status"), tuple):  # statuses merged: found by index, then sorted
            assert plan[0].startswith("SEARCH runs USING INDEX"), plan
        else:
            assert reads_an_index(plan), (kwargs, plan)
    assert [r.id for r in store.history(limit=3, offset=50_000)] == [ids[-1] - 50_000 - k for k in range(3)]
    for kwargs, expected in [({}, 100_000), ({"status": "done"}, 90_000), ({"text": "number 4242"}, 11)]:
        count, statements = statements_of(store, lambda: store.count(**kwargs))
        assert count == expected
        if "text" not in kwargs:
            assert all(reads_an_index(plan) for plan in plans_of(store, statements).values()), kwargs
    for call in (store.claim_next, store.counts_by_status):
        result, statements = statements_of(store, call)
        assert result
        plans = plans_of(store, statements)
        assert plans and all(reads_an_index(plan) for plan in plans.values()), plans
    assert store.counts_by_status()["done"] == 90_000 and store.counts_by_status()["running"] == 1


def test_store_is_shared_across_processes(store, tmp_path):
    run = store.enqueue("p", [], RECIPE)
    code = ("import sys; from vlbench.store import Store; from vlbench.records import RunRecord; "
            "s = Store(sys.argv[1]); r = s.claim_next(); "
            "print(r.id); s.finish(r.id, RunRecord(image='o.png'))")
    out = subprocess.run([sys.executable, "-c", code, str(store.path)], capture_output=True, text=True, check=True,
                         env=os.environ)
    assert int(out.stdout) == run
    assert store.get(run).status == "done"


def test_pause_is_the_stores_saved_across_connections(store):
    assert not store.paused
    store.set_paused(True)
    with Store(store.path) as other:  # another process, or the next session
        assert other.paused
        other.set_paused(False)
    assert not store.paused
    store.set_state("anything", {"a": [1, 2]})
    assert store.get_state("anything") == {"a": [1, 2]} and store.get_state("missing", 7) == 7


def test_a_version_1_store_migrates_and_keeps_its_runs(tmp_path):
    """Rows written before RunRecord's names (output_path, images) read back under the new ones."""
    import sqlite3

    from vlbench.store import MIGRATIONS

    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    MIGRATIONS[0](conn)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO runs (status, prompt, images, recipe, seed, created_at, output_path, finished_at,"
                 " started_at) VALUES ('done', 'old', '[\"/refs/a.png\"]', '{\"seed\": 4}', 4, 1.0, '/o/1.png', 3.0, 2.0)")
    conn.commit()
    conn.close()
    with Store(path) as store:
        (row,) = store.history()
        assert (row.prompt, row.reference_paths, row.image, row.seed, row.duration) == ("old", ["/refs/a.png"],
                                                                                        "/o/1.png", 4, 1.0)
        assert row.references == [{"path": "/refs/a.png", "sha256": None}] and row.batch is None
