"""What each pane looks like, as SVG snapshots (pytest-textual-snapshot): the panes at 160×48, and the
layout at each breakpoint: 80×24 (narrow: one pane at a time), 100×30 (medium), 240×60 (wide).

Deterministic on purpose: no worker, runs with fixed times (UTC), fixed ids and no file paths
on screen, cursors that do not blink. Regenerate after a deliberate change with
`pytest tests/test_tui_snapshots.py --snapshot-update` and review the SVGs in tests/__snapshots__/.
"""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path

import pytest

from vlbench.config import parse_settings
from vlbench.recipe import Recipe


def _pinned_textual() -> str | None:
    for line in (Path(__file__).resolve().parents[1] / "constraints" / "test.txt").read_text().splitlines():
        if line.lower().startswith("textual=="):
            return line.split("==", 1)[1].strip()
    return None


# A screenshot is Textual's rendering: another Textual release draws the same screen with other bytes (8.2.0 vs 8.2.8
# differ). The snapshots are of the release constraints/test.txt pins (what scripts/setup installs); with another
# one they are skipped, said in the skip reason, rather than failed.
PINNED_TEXTUAL = _pinned_textual()
pytestmark = pytest.mark.skipif(importlib.metadata.version("textual") != PINNED_TEXTUAL,
                                reason=f"snapshots are of Textual {PINNED_TEXTUAL} (constraints/test.txt); "
                                       f"this is {importlib.metadata.version('textual')}")
SIZE = (160, 48)
FAST = {"width": 64, "height": 64, "steps": 2}
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


@pytest.fixture(autouse=True)
def _utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def make_app(preview="halfcell"):
    from vlbench.tui.app import VlbenchApp

    return VlbenchApp(parse_settings({"recipe": FAST, "ui": {"preview": preview}}), start_worker=False)


def fill_store(app, tmp_path, image=False, pending=0, image_size=(64, 64)):
    """Six runs in every state (+ `pending` queued ones), fixed times; run 6 has a gradient image if `image`."""
    store = app.store
    base = Recipe(**FAST).to_dict()
    specs = [
        ("a red fox in the snow", {}, None, None),
        ("a red fox in the snow", {"tokens": "image", "layer": -5}, "token_sweep", "image@-5"),
        ("a lighthouse at dusk, oil painting", {"intra_ratio": 0.3}, "vl_intra_token_blend", "ratio-0.3"),
        ("Homer Simpson eating spaghetti", {"alpha": 0.0}, "vl_only_vs_qwen3", "qwen3"),
        ("a bowl of ramen", {"tokens": "text"}, None, None),
        ("a red fox in the snow", {"seed": 7}, None, None),
    ]
    specs += [(f"queued prompt {i}", {"seed": i}, None, None) for i in range(pending)]
    ids = store.enqueue_many([dict(prompt=p, images=[], recipe={**base, **r}, name=n, experiment=e)
                              for p, r, e, n in specs])
    states = ["done", "done", "failed", "cancelled", "running", "done"] + ["pending"] * pending
    conn = store._conn()
    for i, (run_id, status) in enumerate(zip(ids, states)):
        conn.execute("UPDATE runs SET status = ?, created_at = ?, started_at = ?, finished_at = ?, error = ?"
                     " WHERE id = ?",
                     (status, T0 + 60 * i, None if status == "pending" else T0 + 60 * i + 1,
                      None if status in ("running", "pending") else T0 + 60 * i + 3.5,
                      "caption too long: 1600 tokens > 1504" if status == "failed" else None, run_id))
    if image:
        from PIL import Image

        out = tmp_path / "000006.png"
        Image.linear_gradient("L").resize(image_size).convert("RGB").save(out)
        conn.execute("UPDATE runs SET image = ? WHERE id = ?", (str(out), ids[5]))
    return ids


async def steady(pilot) -> None:
    for widget in pilot.app.query("Input, TextArea"):
        widget.cursor_blink = False
    await pilot.pause()


def test_initial_screen(snap_compare):
    app = make_app()

    async def before(pilot):
        await steady(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=before)
    app.close()


def test_inputs_and_parameters_with_an_invalid_field(snap_compare):
    app = make_app()

    async def before(pilot):
        app.inputs.prompt = "a red fox in the snow"
        app.query_one("#vl-mode").value = "custom"
        app.query_one("#vl-custom").value = "describe the style of this image"
        app.query_one("#p-seed").value = "1,2,3"
        app.query_one("#p-width").value = "65"
        app.query_one("#p-width").focus()
        await steady(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=before)
    app.close()


def test_queue_with_a_running_job(snap_compare, tmp_path):
    app = make_app()

    async def before(pilot):
        ids = fill_store(app, tmp_path, pending=3)
        app.store_changed()
        await pilot.pause()
        app.queue_pane.set_status("models ready on cpu (float32); loaded vl, zimage in 0.9 s")
        app.queue_pane.job_progress(ids[4], 3, 9, 4.2)
        app.query_one("#queue-table").focus()
        await steady(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=before)
    app.close()


def test_history_filtered(snap_compare, tmp_path):
    app = make_app()

    async def before(pilot):
        fill_store(app, tmp_path)
        app.store_changed()
        await pilot.pause()
        app.query_one("#history-filter").value = "fox"
        await pilot.pause(0.4)  # the filter waits for typing to stop
        app.query_one("#history-table").focus()
        await steady(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=before)
    app.close()


def test_preview_of_a_finished_run(snap_compare, tmp_path):
    app = make_app()

    async def before(pilot):
        fill_store(app, tmp_path, image=True)
        app.store_changed()
        await pilot.pause()
        app.query_one("#history-table").focus()  # newest first: run 6, done, with its image
        await pilot.pause()
        await steady(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=before)
    app.close()


def test_help_screen(snap_compare):
    app = make_app()
    assert snap_compare(app, terminal_size=SIZE, press=["f1"])
    app.close()


# ---- the layout at each breakpoint ----
def test_narrow_80x24_one_pane_and_the_pane_bar(snap_compare, tmp_path):
    app = make_app()

    async def before(pilot):
        fill_store(app, tmp_path, pending=3)
        app.store_changed()
        await pilot.pause()
        await pilot.press("alt+3")  # the Queue fills the screen
        await steady(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)
    app.close()


def test_narrow_80x24_preview_keeps_the_aspect(snap_compare, tmp_path):
    app = make_app()

    async def before(pilot):
        fill_store(app, tmp_path, image=True, image_size=(256, 96))
        app.store_changed()
        await pilot.pause()
        await pilot.press("alt+5", "alt+4")  # History selects run 6; the Preview shows it (8:3)
        await pilot.pause(0.3)
        await steady(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)
    app.close()


def test_medium_100x30(snap_compare, tmp_path):
    app = make_app()

    async def before(pilot):
        fill_store(app, tmp_path, image=True, image_size=(256, 96), pending=2)
        app.store_changed()
        await pilot.pause()
        app.inputs.prompt = "a red fox in the snow"
        await pilot.press("alt+5", "down", "down")  # run 6, done, its 8:3 image in the Preview
        await pilot.pause(0.3)
        await steady(pilot)

    assert snap_compare(app, terminal_size=(100, 30), run_before=before)
    app.close()


def test_wide_240x60(snap_compare, tmp_path):
    app = make_app()

    async def before(pilot):
        fill_store(app, tmp_path, image=True, pending=2)
        app.store_changed()
        await pilot.pause()
        await pilot.press("alt+5")
        await pilot.pause(0.3)
        await steady(pilot)

    assert snap_compare(app, terminal_size=(240, 60), run_before=before)
    app.close()


def test_go_menu(snap_compare):
    app = make_app()
    assert snap_compare(app, terminal_size=SIZE, press=["ctrl+g"])
    app.close()
