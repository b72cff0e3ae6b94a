"""Issue 24, errors as data: a failed run stores its error as data (RunRecord.error_data) and each front end words it
with one function (the command line with flags, the workbench with its labels); the worker stores no front end's
words. Rows stored before (a plain line) display as they were."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time

from conftest import patience

from vlbench.cli.common import failure_text as cli_text
from vlbench.errors import UserError
from vlbench.jobs import classify
from vlbench.store import MIGRATIONS, Store
from vlbench.tui.wording import failure_text as workbench_text

SMALL = {"width": 64, "height": 64, "steps": 2}


def test_each_front_end_words_a_stored_input_error_from_its_data():
    exc = UserError("no such file", field="image", value="/refs/gone.png", fix="check the path")
    failure = classify(exc)
    assert failure.kind == "input"
    assert failure.data == {"kind": "input", "field": "image", "value": "/refs/gone.png", "message": "no such file",
                            "fix": "check the path"}
    assert failure.reason == "image /refs/gone.png: no such file; check the path"  # the plain line: no front end's
    assert cli_text(failure.reason, failure.data) == "--image /refs/gone.png: no such file; check the path"
    assert workbench_text(failure.reason, failure.data) == "Reference /refs/gone.png: no such file; check the path"
    # a Recipe field keeps its name in the workbench; a context (a file) stays in front of it
    data = UserError("must be in [0, 1]", field="image_layer", value=1.5).within("a.toml").to_data()
    assert cli_text("x", data) == "a.toml: --image-layer 1.5: must be in [0, 1]"
    assert workbench_text("x", data) == "a.toml: image_layer 1.5: must be in [0, 1]"


def test_a_failure_that_is_not_an_input_error_reads_as_its_line_everywhere():
    failure = classify(RuntimeError("boom"))
    assert failure.data == {"kind": "bug", "message": "RuntimeError: boom"}
    assert cli_text(failure.reason, failure.data) == workbench_text(failure.reason, failure.data) == failure.reason


def test_a_row_stored_before_errors_were_data_displays_unchanged(tmp_path):
    """A store at schema 4 (no error_data column) migrates; its failed row reads as the line it stored."""
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    for migrate in MIGRATIONS[:4]:
        migrate(conn)
    conn.execute("PRAGMA user_version = 4")
    conn.execute("INSERT INTO runs (status, prompt, recipe, seed, created_at, error, failure, \"references\")"
                 " VALUES ('failed', 'old', '{}', 0, 1.0, 'Reference /refs/a.png: no such file', 'input',"
                 " '[{\"path\": \"/refs/a.png\", \"sha256\": null}]')")
    conn.commit()
    conn.close()
    with Store(path) as store:
        (row,) = store.history()
        assert row.error_data is None
        assert row.error == "Reference /refs/a.png: no such file"
        assert workbench_text(row.error, row.error_data) == "Reference /refs/a.png: no such file"
        assert cli_text(row.error, row.error_data) == "Reference /refs/a.png: no such file"
        # a new failure on the migrated store keeps its data; retry clears it
        run_id = store.enqueue("new", ["/refs/b.png"], SMALL)
        data = UserError("no such file", field="image", value="/refs/b.png").to_data()
        assert store.fail(run_id, "image /refs/b.png: no such file", "input", data)
        assert store.get(run_id).error_data == data
        assert store.retry(run_id) and store.get(run_id).error_data is None


def test_the_same_bad_input_from_the_workbench_and_from_vlbench_worker_stores_the_same_error(tmp_path, tiny_spec,
                                                                                             engine, ref_image):
    """A reference removed after it was queued: the workbench's worker and a headless `vlbench worker` store the same
    structured error and the same line, and each front end words that one row its own way."""
    from vlbench.config import parse_settings
    from vlbench.tui.app import VlbenchApp

    gone = tmp_path / "gone.png"
    gone.write_bytes(ref_image.read_bytes())
    store = Store()
    in_workbench = store.enqueue("a fox", [str(gone)], SMALL)
    gone.unlink()

    async def go():
        app = VlbenchApp(parse_settings({"recipe": SMALL}), tiny_spec, engine_factory=lambda on_status: engine)
        async with app.run_test(size=(160, 48)) as pilot:
            deadline = time.monotonic() + patience(60)
            while store.get(in_workbench).status != "failed":
                assert time.monotonic() < deadline, "timed out waiting for the workbench's worker"
                await pilot.pause(0.1)
        app.close()

    asyncio.run(go())
    headless = store.enqueue("a fox", [str(gone)], SMALL)
    proc = subprocess.run([sys.executable, "-m", "vlbench", "worker", "--tiny", "--device", "cpu", "--exit-when-idle"],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=patience(300))
    assert proc.returncode == 0, proc.stderr
    a, b = store.get(in_workbench), store.get(headless)
    assert (a.status, b.status) == ("failed", "failed")
    assert a.error_data == b.error_data == {"kind": "input", "field": "image", "value": str(gone),
                                            "message": "no such file"}
    assert a.error == b.error == f"image {gone}: no such file"
    assert workbench_text(b.error, b.error_data) == f"Reference {gone}: no such file"
    assert cli_text(a.error, a.error_data) == f"--image {gone}: no such file"
    store.close()


def test_a_results_row_written_before_error_data_is_still_valid():
    """results.jsonl rows of the current schema written before the field: valid (resume does not redo them)."""
    from vlbench.experiments.results import validate_row
    from vlbench.records import RunRecord

    row = RunRecord(status="failed", error="--image /r.png: no such file", failure="input", key="k", name="n",
                    experiment="e", config_index=0).to_json()
    assert validate_row(row) == []
    del row["error_data"]
    assert validate_row(row) == []
    row["error_data"] = "not data"
    assert validate_row(row) == ["error_data: str, expected dict"]
