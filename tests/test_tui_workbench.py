"""The workbench as a daily tool over SSH (issue 14): a layout that adapts to the terminal, true-aspect
images, a queue and history you can read, sessions that persist, keys that work everywhere.

Each test names the problem it proves fixed. Pilot drives the real app at the sizes users run it at.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from conftest import make_image

from test_tui import FAST, QUEUED_S, make_app, run, settings, type_text, wait_for
from vlbench.recipe import Recipe
from vlbench.store import Store
from vlbench.tui import layout

SIZES = [(80, 24), (100, 30), (120, 36), (160, 48), (240, 60)]
PANES = ("inputs", "parameters", "queue", "preview", "history")


def pane_regions(app) -> dict[str, object]:
    """The panes drawn on the screen, by their region (a narrow terminal lays them out side by side, one in view)."""
    screen = app.screen.region
    return {name: pane.region for name, pane in app.panes.items()
            if pane.display and pane.region.intersection(screen).area}


def finished_run(app, tmp_path: Path, size=(256, 96), seed=0, status="done", **recipe) -> int:
    """A done run whose PNG has this pixel size (a gradient, so that halves look different)."""
    from PIL import Image

    run_id = app.store.enqueue("a fox", [], {**Recipe(**FAST).to_dict(), "seed": seed, **recipe})
    out = tmp_path / f"{run_id:06d}.png"
    Image.linear_gradient("L").resize(size).convert("RGB").save(out)
    app.store._conn().execute("UPDATE runs SET status = ?, image = ?, started_at = 1, finished_at = 2 WHERE id = ?",
                              (status, str(out), run_id))
    return run_id


# ---- 1. the layout adapts; nothing runs off the edge; the Preview keeps its share ----
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_panes_fit_the_terminal_at_every_size(size):
    width, height = size

    async def go():
        app = make_app()
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            mode = layout.mode_for(width)
            assert app.screen.has_class(f"-{mode}")
            regions = pane_regions(app)
            for name, region in regions.items():
                assert region.right <= width and region.bottom <= height - 1, (name, region)  # footer below
            if mode == "narrow":
                assert list(regions) == ["inputs"], "one pane at a time"
                assert regions["inputs"].width == width, "the shown pane fills the screen"
            else:
                assert set(regions) == set(PANES)
                preview = regions["preview"]
                assert preview.width >= layout.MIN_PREVIEW
                if mode == "medium":
                    assert preview.width >= 0.4 * width
                overlaps = [(a, b) for a in regions for b in regions if a < b and regions[a].overlaps(regions[b])]
                assert not overlaps
        app.close()

    run(go())


def test_narrow_terminal_every_pane_is_one_key_away():
    async def go():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            for n, name in enumerate(PANES, 1):
                await pilot.press(f"alt+{n}")
                await pilot.pause()
                assert app.active_pane == name
                assert list(pane_regions(app)) == [name]
                assert app.panes[name].region.width == 80
                assert app.focused is not None and app.panes[name] in app.focused.ancestors_with_self
                assert app.panes[name].region.height >= 20, "it fills the screen"
            await pilot.press("ctrl+g", "2")  # the same through the go menu, where alt is not passed
            await pilot.pause()
            assert list(pane_regions(app)) == ["parameters"]
            bar = str(app.pane_bar.render())
            assert all(title in bar for title in ("Inputs", "Parameters", "Queue", "Preview", "History"))
            await pilot.press("f1", "alt+3")  # a dialog is open: its keys only
            await pilot.pause()
            assert type(app.screen).__name__ == "HelpScreen" and app.active_pane == "parameters"
        app.close()

    run(go())


def test_widening_the_terminal_brings_every_pane_back():
    async def go():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("alt+5")
            await pilot.pause()
            await pilot.resize_terminal(160, 48)
            await pilot.pause()
            assert set(pane_regions(app)) == set(PANES)
            assert app.focused is app.history.table, "focus stays where it was"
            await pilot.resize_terminal(100, 30)
            await pilot.pause()
            assert set(pane_regions(app)) == set(PANES) and app.screen.has_class("-medium")
        app.close()

    run(go())


# ---- 2. true-aspect images ----
def test_fit_cells_keeps_the_aspect_for_the_cell_shape():
    from vlbench.tui.widgets.preview import fit_cells

    assert fit_cells((256, 96), (100, 100), (10, 20)) == (100, 19)  # 1000 px wide, 375 px tall: 18.75 rows
    assert fit_cells((256, 96), (40, 5), (10, 20)) == (27, 5)  # height-bound
    assert fit_cells((96, 128), (50, 20), (8, 16)) == (30, 20)  # 240 × 320 px = 3:4
    assert fit_cells((0, 10), (10, 10), (10, 20)) == (0, 0)


def _drawn_aspect(picture) -> float:
    from vlbench.tui.widgets.preview import cell_size

    cw, ch = cell_size()
    region = picture.query_one(".picture-image").region
    return region.width * cw / (region.height * ch)


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (160, 48), (240, 60)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_an_8_by_3_image_is_drawn_8_by_3(size, tmp_path):
    """A 256×96 output is drawn at 8:3 ± one cell, letterboxed in the Preview, alone and beside another."""
    from vlbench.tui.widgets.preview import cell_size

    async def go():
        app = make_app()
        async with app.run_test(size=size) as pilot:
            first = finished_run(app, tmp_path, (256, 96))
            second = finished_run(app, tmp_path, (256, 96), seed=1)
            app.store_changed()
            await pilot.press("alt+5")  # History: newest first, its image in the Preview
            await pilot.press("alt+4")  # (in a narrow terminal the Preview is a pane of its own)
            await wait_for(pilot, lambda: app.preview.pictures[0].cells != (0, 0), 5, "the image")
            cw, ch = cell_size()
            for pictures in ([app.preview.pictures[0]],):
                picture = pictures[0]
                w, h = picture.query_one(".picture-image").region.size
                assert abs(h - w * cw * 3 / (8 * ch)) <= 1, (w, h)
                frame = picture.query_one(".picture-frame").region
                assert w <= frame.width and h <= frame.height
                assert w == frame.width or h == frame.height, "as large as the pane allows"
            # side by side with a marked run (F4): each still 8:3
            await pilot.press("alt+5", "m", "down", "f4")
            await pilot.press("alt+4")
            await pilot.pause(0.3)
            shown = [p for p in app.preview.pictures if p.display]
            assert len(shown) == 2
            for picture in shown:
                w, h = picture.query_one(".picture-image").region.size
                assert abs(h - w * cw * 3 / (8 * ch)) <= 1, (w, h)
            assert {first, second} == {app.selected_run, *app.marks}
        app.close()

    run(go())


def test_a_reference_beside_its_image_keeps_its_own_aspect(tmp_path):
    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            ref = make_image(tmp_path / "ref43.png", size=(160, 120))  # 4:3
            run_id = finished_run(app, tmp_path, (256, 96))
            app.store._conn().execute("UPDATE runs SET \"references\" = ? WHERE id = ?",
                                      (json.dumps([{"path": str(ref), "sha256": None}]), run_id))
            app.store_changed()
            await pilot.press("alt+5")
            await pilot.press("f3")
            await wait_for(pilot, lambda: sum(p.display for p in app.preview.pictures) == 2, 5, "two pictures")
            await pilot.pause(0.2)
            reference, image = app.preview.pictures[:2]
            assert abs(_drawn_aspect(reference) - 4 / 3) < 0.25, "a 4:3 reference is wider than tall"
            assert abs(_drawn_aspect(image) - 8 / 3) < 0.5
        app.close()

    run(go())


def test_full_screen_view_with_recipe_and_output_commands(tmp_path, monkeypatch):
    async def go():
        app = make_app()
        copied = []
        monkeypatch.setattr(app, "copy_to_clipboard", copied.append)
        async with app.run_test(size=(100, 30)) as pilot:
            run_id = finished_run(app, tmp_path, (256, 96), layer=-5)
            app.store_changed()
            await pilot.press("alt+5")
            await pilot.pause(0.3)
            await pilot.press("alt+4", "z")
            await pilot.pause(0.3)
            assert type(app.screen).__name__ == "ImageView"
            picture = app.screen.query_one("#image-picture")
            assert abs(_drawn_aspect(picture) - 8 / 3) < 0.3
            summary = str(app.screen.query_one("#image-summary").render())
            assert f"#{run_id}" in summary and "layer=-5" in summary
            await pilot.press("y")
            assert copied == [app.store.get(run_id).image]
            await pilot.press("escape")
            assert type(app.screen).__name__ != "ImageView"
            titles = [title for title, _, _ in app.palette_commands()]
            assert "Open image externally" in titles and "Copy output path" in titles
        app.close()

    run(go())


# ---- 3. a queue and a history you can read ----
def _queue_text(app) -> list[str]:
    table = app.queue_pane.table
    return [" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]


def test_seeds_and_batches_are_visible_in_the_queue_at_100_columns():
    async def go():
        app = make_app()
        async with app.run_test(size=(100, 30)) as pilot:
            app.inputs.prompt = "eight seeds"
            await pilot.press("f6")
            await pilot.pause()
            app.screen.query_one("#ask-input").value = "0-7"
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.store.count() == 8, QUEUED_S, "8 runs")
            await pilot.pause(0.3)
            rows = _queue_text(app)
            assert len(rows) == 1 and "8 runs" in rows[0] and "0/8 done" in rows[0], rows
            await pilot.press("alt+3", "enter")  # expand the batch
            await pilot.pause()
            rows = _queue_text(app)
            assert len(rows) == 9
            seeds = [str(app.queue_pane.table.get_row_at(i)[1]) for i in range(1, 9)]
            assert seeds == [str(s) for s in range(8)], "every run shows its seed"
            table = app.queue_pane.table
            seed_right = sum(c.get_render_width(table) for c in list(table.columns.values())[:2])
            assert seed_right <= table.size.width, "the seed column is in view without scrolling"
        app.close()

    run(go())


def test_history_shows_seed_and_what_differs_at_every_breakpoint(monkeypatch):
    from test_tui import _probe_type
    from vlbench.tui import experiments

    monkeypatch.setattr(experiments, "types", lambda: [_probe_type()])

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.inputs.prompt = "probe"
            app.query_one("#p-seed").value = "1,2"
            app.queue_experiment("layer_probe")
            await wait_for(pilot, lambda: app.store.count() == 4, QUEUED_S, "the batch to be checked and queued")
            await pilot.pause(0.3)
            rows = {str(app.history.table.get_row_at(i)[2]) for i in range(app.history.table.row_count)}
            assert any("layer=-2" in r for r in rows) and any("layer=-5" in r for r in rows), rows
            queue = _queue_text(app)
            assert "layer_probe" in queue[0] and "0/4" in queue[0] and "varies: layer" in queue[0]
            for size in [(80, 24), (100, 30), (240, 60)]:
                await pilot.resize_terminal(*size)
                await pilot.press("alt+5")
                await pilot.pause()
                table = app.history.table
                widths = [c.get_render_width(table) for c in table.columns.values()]
                assert sum(widths[:2]) <= table.size.width, size  # id and seed in view
                assert sum(widths[:2]) + 8 <= table.size.width, size  # and the start of what differs
        app.close()

    run(go())


def test_queue_commands_cancel_all_clear_finished_move_to_top_and_remove_a_cancelled_run():
    async def go():
        app = make_app()
        ids = app.store.enqueue_many([dict(prompt=f"p{i}", images=[], recipe=Recipe(**FAST).to_dict())
                                      for i in range(4)])
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("alt+3")
            await pilot.press("down", "down", "t")  # the third run to the front
            assert [r.id for r in app.store.queue()][0] == ids[2]
            await pilot.press("c")  # the cursor follows it to the top: cancel it
            await pilot.pause()
            assert app.store.get(ids[2]).status == "cancelled"
            await wait_for(pilot, lambda: any(f"{ids[2]}" in r and "–" in r for r in _queue_text(app)), 3,
                           "the cancelled run in the Queue")
            app.queue_pane.table.move_cursor(row=[e.key for e in app.queue_pane._entries].index(ids[2]))
            await pilot.press("x")  # a cancelled run leaves the Queue; History keeps it
            await pilot.pause()
            assert not any(f" {ids[2]} " in f" {r} " for r in _queue_text(app))
            assert app.store.get(ids[2]) is not None
            await pilot.press("C", "y")  # cancel all
            await pilot.pause()
            assert app.store.count(status="pending") == 0
            await pilot.press("X")  # clear finished
            await pilot.pause()
            assert _queue_text(app) == []
            assert app.history.table.row_count == 4
        app.close()

    run(go())


def test_marked_runs_are_visible_and_compare_lists_what_differs(tmp_path):
    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            for layer in (-2, -5, -10, -15):
                finished_run(app, tmp_path, (64, 64), layer=layer)
            app.store_changed()
            await pilot.press("alt+5")
            await pilot.press("m", "down", "m", "down", "m", "down")
            await pilot.pause()
            marked = [str(app.history.table.get_row_at(i)[0]) for i in range(3)]
            assert all("●" in cell for cell in marked), marked
            assert "●" not in str(app.history.table.get_row_at(3)[0])
            await pilot.press("f4")
            await pilot.pause(0.3)
            assert sum(p.display for p in app.preview.pictures) == 4
            caption = str(app.query_one("#preview-caption").render())
            assert "layer: -15 | -10 | -5 | -2" in caption, caption
            captions = [str(p.query_one(".picture-caption").render()) for p in app.preview.pictures]
            assert all(c.startswith("#") for c in captions), "each picture names its run on its own line"
        app.close()

    run(go())


def test_the_eta_stays_in_view_in_a_narrow_queue():
    async def go():
        app = make_app()
        async with app.run_test(size=(100, 30)) as pilot:  # the Queue is 30 columns wide
            run_id = app.store.enqueue("x", [], Recipe(**FAST).to_dict())
            app.store_changed()
            await pilot.pause()
            app.queue_pane.job_started(run_id, 9)
            app.queue_pane.job_progress(run_id, 3, 9, 42.0)
            await pilot.pause()
            label = app.queue_pane.query_one("#progress-label")
            assert "ETA 42 s" in str(label.render())
            pane = app.queue_pane.content_region
            assert label.region.right <= pane.right, (label.region, pane)
            assert "1 pending · ETA" in str(app.queue_pane.query_one("#queue-summary").render())
        app.close()

    run(go())


def test_preview_stays_on_the_history_selection_during_a_batch(engine, tmp_path):
    async def go():
        app = make_app(engine)
        async with app.run_test(size=(160, 48)) as pilot:
            chosen = finished_run(app, tmp_path, (64, 64))
            app.store_changed()
            await pilot.press("alt+5")
            await pilot.pause(0.3)
            assert app.selected_run == chosen and not app.follow
            app.inputs.prompt = "a batch"
            app.queue_runs([1, 2])
            await wait_for(pilot, lambda: app.store.counts_by_status()["done"] == 3, 60, "the batch")
            await pilot.pause(0.8)
            assert app.selected_run == chosen, "the Preview did not jump to the new results"
            assert app.preview.shown[0][0] == chosen
            assert "↑ 2 new" in str(app.history.border_title) or app.history.table.cursor_row == 2
            await pilot.press("escape")  # leave the run: follow the latest again
            await pilot.pause()
            assert app.follow
        app.close()

    run(go())


def test_new_runs_are_announced_above_the_history_cursor():
    async def go():
        app = make_app()
        app.store.enqueue_many([dict(prompt=f"old {i}", images=[], recipe=Recipe(**FAST).to_dict())
                                for i in range(30)])
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("alt+5")
            for _ in range(10):
                await pilot.press("down")
            app.store.enqueue_many([dict(prompt=f"new {i}", images=[], recipe=Recipe(**FAST).to_dict())
                                    for i in range(3)])
            app.store_changed()
            await pilot.pause()
            assert "↑ 3 new" in str(app.history.border_title)
            await pilot.press("home")
            await pilot.pause()
            assert app.history.border_title == "History"
        app.close()

    run(go())


# ---- 4. relative references ----
def test_relative_reference_is_stored_absolute_and_reruns_from_another_directory(engine, tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    make_image(work / "ref2.png")
    elsewhere.mkdir()

    async def first():
        monkeypatch.chdir(work)
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.query_one("#ref-path").value = "ref2.png"
            app.query_one("#ref-path").focus()
            await pilot.press("enter")
            app.inputs.prompt = "relative"
            await pilot.press("f5")
            await wait_for(pilot, lambda: app.store.count() == 1, QUEUED_S)
        app.close()

    async def second():
        monkeypatch.chdir(elsewhere)
        app = make_app(engine)
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_for(pilot, lambda: app.store.counts_by_status()["done"] == 1, 60, "the first run")
            await pilot.press("alt+5", "r")  # re-queue from History, launched from another folder
            await wait_for(pilot, lambda: app.store.counts_by_status()["done"] == 2, 60, "the re-queued run")
            assert app.store.counts_by_status()["failed"] == 0
            assert all(r.reference_paths == [str(work / "ref2.png")] for r in app.store.history())
        app.close()

    run(first())
    run(second())


# ---- 6. pause saved, --paused, recovery with a limit ----
def test_pause_is_saved_across_restarts(engine):
    async def go():
        app = make_app(engine)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("f8")
            await wait_for(pilot, lambda: app.paused, 5, "the pause")
            app.inputs.prompt = "waits"
            await pilot.press("f5")
            await pilot.pause(0.3)
        app.close()
        again = make_app(engine)
        async with again.run_test(size=(160, 48)) as pilot:
            await pilot.pause(1.0)
            assert again.paused and "paused" in str(again.queue_pane.border_title)
            assert again.store.counts_by_status()["pending"] == 1, "nothing ran after the relaunch"
            await pilot.press("ctrl+g", "s")  # resume, without F8
            await wait_for(pilot, lambda: again.store.counts_by_status()["done"] == 1, 60, "the run")
        again.close()

    run(go())


def test_paused_flag_starts_with_the_queue_paused(monkeypatch):
    import vlbench.tui.launch as launch
    from vlbench.cli import main

    seen = {}
    monkeypatch.setattr(launch, "run_tui", lambda flags, debug=False, paused=False: seen.update(paused=paused) or 0)
    assert main(["tui", "--tiny", "--paused"]) == 0 and seen == {"paused": True}

    async def go():
        app = make_app(paused=True)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            assert app.store.paused and app.paused
        app.close()

    run(go())


def test_a_run_interrupted_twice_is_failed_with_a_notice():
    def crash_while_running(run_id):
        with Store() as store:
            store.claim_next()
            store._conn().execute("UPDATE runs SET claimed_by = 'elsewhere:1:1' WHERE id = ?", (run_id,))

    async def go():
        with Store() as store:
            crashing = store.enqueue("crashes the driver", [], Recipe(**FAST).to_dict())
        crash_while_running(crashing)
        first = make_app()
        async with first.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            notes = [n.message for n in first._notifications]
            assert any("1 run recovered from an interrupted session" in n for n in notes), notes
            assert first.store.get(crashing).status == "pending"
        first.close()
        crash_while_running(crashing)
        second = make_app()
        async with second.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            notes = [n.message for n in second._notifications]
            assert any("interrupted twice — possibly crashing the worker" in n for n in notes), notes
            row = second.store.get(crashing)
            assert row.status == "failed" and "possibly crashing the worker" in row.error
        second.close()

    run(go())


# ---- 7. sessions that persist ----
def test_form_theme_and_pane_are_restored_after_a_restart(tmp_path, ref_image):
    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.inputs.prompt = "a lighthouse at dusk"
            app.inputs.add_reference(str(ref_image))
            app.query_one("#p-width").value = "1024"
            app.query_one("#p-steps").value = "9"
            app.query_one("#p-seed").value = "3-5"
            app.query_one("#p-layer").value = "-5"
            app.query_one("#p-alpha").value = "0.7"
            app.query_one("#p-tokens").value = "image"
            app.query_one("#vl-mode").value = "none"
            await pilot.press("ctrl+t")
            theme = app.theme
            await pilot.press("alt+5")
            await pilot.pause()
        app.close()
        again = make_app()
        async with again.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            assert again.inputs.prompt == "a lighthouse at dusk"
            assert again.inputs.references == [str(ref_image.resolve())]
            values = {k: again.query_one(f"#p-{k}").value for k in ("width", "steps", "seed", "layer", "alpha")}
            assert values == {"width": "1024", "steps": "9", "seed": "3-5", "layer": "-5", "alpha": "0.7"}
            assert again.query_one("#p-tokens").value == "image" and again.recipe.vl_text == "none"
            assert again.theme == theme and again.active_pane == "history"
            assert again.seeds == [3, 4, 5]
        again.close()

    run(go())


def test_a_damaged_session_file_starts_with_defaults_and_says_so():
    from vlbench.tui.session import session_path

    session_path().write_text("{ not json")

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            assert app.recipe == Recipe(**FAST)
            assert any("session" in n.message and "damaged" in n.message for n in app._notifications)
        app.close()

    run(go())


def test_a_partial_recipe_file_merges_into_the_form(tmp_path):
    partial = tmp_path / "layer.toml"
    partial.write_text("layer = -7\n")

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.query_one("#p-seed").value = "5"
            app.query_one("#p-steps").value = "4"
            app.query_one("#p-width").value = "320"
            app.query_one("#p-alpha").value = "0.7"
            await pilot.press("ctrl+o")
            await pilot.pause()
            app.screen.query_one("#picker-path").value = str(partial)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.recipe is not None and app.recipe.layer == -7, 5, "the merge")
            assert (app.recipe.seed, app.recipe.steps, app.recipe.width, app.recipe.alpha) == (5, 4, 320, 0.7)
        app.close()

    run(go())


def test_experiment_dialog_says_how_many_runs_and_which_form_fields_it_sets(monkeypatch):
    from test_tui import _probe_type
    from vlbench.tui import experiments

    monkeypatch.setattr(experiments, "types", lambda: [_probe_type()])

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.inputs.prompt = "probe"
            app.query_one("#p-layer").value = "-5"
            app.query_one("#p-alpha").value = "0.7"
            app.query_one("#p-seed").value = "1,2"
            await pilot.press("f7")
            await pilot.pause()
            plan = str(app.screen.query_one("#experiment-plan").render())
            assert "queues 4 runs (2 configs × 2 seeds" in plan
            assert "layer: form -5 → -5, -2" in plan or "layer: form -5 → -2, -5" in plan, plan
            assert "alpha: form 0.7 → 1" in plan, plan
            assert app.store.count() == 0, "nothing is queued before Enter"
            await pilot.press("escape")
        app.close()

    run(go())


# ---- 8. keys that work everywhere ----
def test_every_f_key_command_has_a_key_tmux_passes_and_the_footer_shows_it():
    from vlbench.tui import keys

    for command in keys.APP:
        if any(k.strip().startswith("f") and k.strip()[1:].isdigit() for k in command.keys.split(",")):
            others = [k for k in command.keys.split(",") if not k.strip()[1:].isdigit() and k != "ctrl+enter"]
            assert others or command.go, command.id

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.inputs.prompt = "by ctrl+r"
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.store.count() == 1, QUEUED_S, "ctrl+r queues")
            await pilot.press("ctrl+g", "e")
            await pilot.pause()
            assert type(app.screen).__name__ == "ChooseExperiment"
            await pilot.press("escape", "ctrl+n")
            await pilot.pause()
            assert type(app.screen).__name__ == "Ask"
            await pilot.press("escape", "ctrl+f")
            await pilot.pause()
            assert type(app.screen).__name__ == "FilePicker"
            await pilot.press("escape")
            labels = app.query_one("VlbenchFooter").labels()
            assert any("^r" in label for label in labels), labels
        app.close()

    run(go())


def test_alt_digit_sent_as_escape_digit_is_alt_digit():
    """tmux, xterm and most SSH clients send alt+3 as ESC 3; Textual read it as macOS Option+3 ("£")."""
    from textual._xterm_parser import XTermParser

    from vlbench.tui import keys

    make_app().close()  # the app adjusts Textual's table when it is made
    parser = XTermParser()
    assert [e.key for e in [*parser.feed("\x1b3"), *parser.feed("")]] == ["alt+3"]
    keys.alt_digits()  # idempotent
    parser = XTermParser()
    assert [e.key for e in [*parser.feed("\x1b5"), *parser.feed("")]] == ["alt+5"]


def test_keys_typed_in_one_burst_after_tab_go_to_the_next_field():
    """width=320, then Tab 7 7 in one read: height gets 77 and width stays 320 (Textual forwards keys to the
    focused widget before a non-priority Tab binding has moved focus; vlbench binds Tab with priority)."""
    from textual import events

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.query_one("#p-width").value = "320"
            app.query_one("#p-width").focus()
            await pilot.pause()
            order = [w.id for w in app.screen.focus_chain]
            after = order[order.index("p-width") + 1]
            for key, char in (("tab", "\t"), ("7", "7"), ("7", "7")):
                event = events.Key(key, char)
                event.set_sender(app)
                app._driver.send_message(event)  # one burst, as a terminal read delivers it
            await pilot.pause(0.3)
            assert app.query_one("#p-width").value == "320"
            assert app.query_one(f"#{after}").value == "77"
        app.close()

    run(go())


def test_a_prompt_typed_in_one_burst_with_ctrl_r_is_queued_whole():
    """The reverse race: ctrl+r (a priority key) arrives with the characters typed just before it (tmux send-keys,
    a paste); the queued prompt is the whole text, not what the prompt had handled so far."""
    from textual import events

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            for char in "a fox":
                event = events.Key("space" if char == " " else char, char)
                event.set_sender(app)
                app._driver.send_message(event)
            event = events.Key("ctrl+r", None)
            event.set_sender(app)
            app._driver.send_message(event)
            await wait_for(pilot, lambda: app.store.count() == 1, QUEUED_S, "the run")
            assert app.store.queue()[0].prompt == "a fox"
        app.close()

    run(go())


# ---- 9. the smaller problems ----
def test_non_image_references_are_refused_when_added(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            assert not app.inputs.add_reference(str(notes))
            await pilot.pause()
            assert app.inputs.references == []
            assert any("Reference" in n.message and "not an image" in n.message for n in app._notifications)
        app.close()

    run(go())


def test_removing_a_reference_never_highlighted_asks_which(tmp_path):
    a, b = make_image(tmp_path / "a.png"), make_image(tmp_path / "b.png")

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.inputs.add_reference(str(a))
            app.inputs.add_reference(str(b))
            app.query_one("#ref-list").focus()
            await pilot.press("delete")
            await pilot.pause()
            assert type(app.screen).__name__ == "Confirm", "it asks before removing what the user did not pick"
            await pilot.press("n")
            assert len(app.inputs.references) == 2
            await pilot.press("up", "delete")  # an explicit pick removes at once
            await pilot.pause()
            assert app.inputs.references == [str(b.resolve())]
        app.close()

    run(go())


def test_theme_toasts_do_not_pile_up_and_the_palette_lists_theme_once():
    """Each ctrl+t replaces the theme toast. The toast's life is made long here, so that a busy machine (4 key
    presses taking longer than the usual 2 s) cannot let it expire and make the count 0: the count is behaviour."""
    async def go():
        app = make_app()
        app.THEME_TOAST_SECONDS = 600
        async with app.run_test(size=(160, 48)) as pilot:
            for _ in range(4):
                await pilot.press("ctrl+t")
                await pilot.pause()
                assert [n.message for n in app._notifications if "theme:" in n.message] == [f"theme: {app.theme}"]
            from textual.command import CommandPalette

            system = [c.title for c in app.get_system_commands(app.screen)]
            ours = [title for title, _, _ in app.palette_commands()]
            assert "Theme" not in system and ours.count("Next theme") == 1
        app.close()

    run(go())


def test_saving_into_a_missing_folder_keeps_the_dialog_and_the_path(tmp_path):
    target = tmp_path / "new" / "deeper" / "mine.toml"

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("ctrl+s")
            await pilot.pause()
            app.screen.query_one("#picker-path").value = str(target)
            await pilot.press("enter")
            await pilot.pause()
            assert type(app.screen).__name__ == "Confirm"
            await pilot.press("n")
            await pilot.pause()
            assert type(app.screen).__name__ == "FilePicker"
            assert app.screen.query_one("#picker-path").value == str(target)
            await pilot.press("enter", "y")
            await wait_for(pilot, target.exists, 5, "the saved recipe")
        app.close()

    run(go())


def test_f6_refuses_an_invalid_form_and_quitting_during_a_job_asks():
    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.query_one("#p-width").value = "65"
            await pilot.press("f6")
            await pilot.pause()
            assert type(app.screen).__name__ != "Ask"
            assert any("cannot queue" in n.message for n in app._notifications)

            class Busy:
                current_run_id = 7

                def stop(self, timeout=None):
                    pass

            app.job_worker = Busy()
            await pilot.press("ctrl+q")
            await pilot.pause()
            assert type(app.screen).__name__ == "Confirm" and app.is_running
            await pilot.press("n")
            assert app.is_running
            app.job_worker = None
        app.close()

    run(go())


def test_jumping_to_the_top_of_parameters_does_not_animate():
    """Over SSH every frame of a smooth scroll is sent: the form jumps (it scrolled for ~1 s)."""

    async def go():
        app = make_app()
        async with app.run_test(size=(100, 30)) as pilot:
            app.query_one("#p-negative_prompt").focus()
            form = app.query_one("#param-form")
            await wait_for(pilot, lambda: form.scroll_y > 0, 5, "the form scrolled to its last field")
            await pilot.press("alt+2")  # the top of Parameters
            await pilot.pause()
            assert form.scroll_y == 0 and app.animation_level == "none"
        app.close()

    run(go())


def test_escape_clears_the_history_filter():
    async def go():
        app = make_app()
        app.store.enqueue_many([dict(prompt=p, images=[], recipe=Recipe(**FAST).to_dict()) for p in ("cat", "dog")])
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("alt+5", "slash")
            await type_text(pilot, "cat")
            await wait_for(pilot, lambda: app.history.table.row_count == 1, 5, "the filter")
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.history.table.row_count == 2, 5, "the filter cleared")
            assert app.query_one("#history-filter").value == "" and app.focused is app.history.table
        app.close()

    run(go())


def test_details_of_a_blended_run_name_every_role(engine, ref_image):
    async def go():
        app = make_app(engine)
        async with app.run_test(size=(160, 48)) as pilot:
            app.inputs.add_reference(str(ref_image))
            app.inputs.prompt = "a blend"
            app.query_one("#p-alpha").value = "0.5"
            await pilot.press("f5")
            await wait_for(pilot, lambda: app.store.counts_by_status()["done"] == 1, 60, "the blended run")
            run_ = app.store.history()[0]
            roles = run_.conditioning.get("role_counts", {})
            assert roles and "None" not in roles and None not in roles, roles
            await pilot.press("alt+5", "enter")
            await pilot.pause()
            text = " ".join(str(s.render()) for s in app.screen.query("Static"))
            assert "roles:" in text and "None" not in text
        app.close()

    run(go())


def test_an_experiment_batch_gets_the_grid_and_report_of_vlbench_run(engine, ref_image, monkeypatch):
    from test_tui import _probe_type
    from vlbench.experiments.results import ResultsLog, validate_row
    from vlbench.tui import experiments

    monkeypatch.setattr(experiments, "types", lambda: [_probe_type()])

    async def go():
        app = make_app(engine)
        async with app.run_test(size=(160, 48)) as pilot:
            app.inputs.add_reference(str(ref_image))
            app.inputs.prompt = "probe"
            app.query_one("#p-seed").value = "1,2"
            app.queue_experiment("layer_probe")
            await wait_for(pilot, lambda: app.store.count() == 4, QUEUED_S, "the batch to be checked and queued")
            await wait_for(pilot, lambda: any("grid and report in" in n.message for n in app._notifications), 120,
                           "the batch's folder")
            note = next(n.message for n in app._notifications if "grid and report in" in n.message)
            out = Path(note.rsplit("grid and report in ", 1)[1])
            assert (out / "grid.png").is_file() and (out / "report.html").is_file()
            rows, bad = ResultsLog(out / "results.jsonl").read()
            assert len(rows) == 4 and bad == 0 and not any(validate_row(r) for r in rows)
            assert {r["name"] for r in rows} == {"layer-2", "layer-5"}
            assert all((out / r["image"]).is_file() for r in rows)
            info = json.loads((out / "run.json").read_text())
            assert info["experiment"] == "layer_probe" and info["batch"]
        app.close()

    run(go())


def test_the_full_screen_view_shows_a_runs_attention_heat_map(tmp_path, engine, ref_image):
    """A real tiny-model run with image_attention topk: `a` in the full-screen view shows the heat map drawn from its
    record (the same pixels as vlbench.analysis.heatmap over the reference), `a` again the image; a run without attention
    says why it has none."""
    from PIL import Image

    from vlbench.analysis import heatmap
    from vlbench.engine.engine import Reference
    from vlbench.jobs import execute
    from vlbench.records import RunRecord
    from vlbench.tui.screens.image_view import ImageView

    recipe = Recipe(tokens="image", image_attention="topk", image_top_k=4, **FAST)
    ref = Reference.open(ref_image)
    record = RunRecord(prompt="a fox", references=[{"path": str(ref_image), "sha256": ref.sha256}],
                       recipe=recipe.to_dict())
    outcome = execute(engine, record, [ref])
    assert outcome.record.status == "done", outcome.record.error

    async def go():
        app = make_app()
        async with app.run_test(size=(120, 40)) as pilot:
            plain = finished_run(app, tmp_path, (96, 64))
            run_id = app.store.add(outcome.record)
            out = tmp_path / "weighted.png"
            outcome.image.save(out)
            app.store._conn().execute("UPDATE runs SET status = 'done', image = ? WHERE id = ?", (str(out), run_id))
            app.store_changed()
            await pilot.pause(0.3)
            run = app.store.get(run_id)
            app.push_screen(ImageView(
                run, app.preview.image_class))
            await pilot.pause(0.2)
            picture = app.screen.query_one("#image-picture")
            assert picture.path == str(out)
            await pilot.press("a")
            await pilot.pause(0.2)
            shown = picture.path
            assert shown != str(out) and shown.endswith(f"run-{run_id}-1.png")
            expected = heatmap.from_conditioning(run.conditioning, run.reference_paths, run.recipe)[0]
            with Image.open(shown) as img:
                assert list(img.convert("RGB").getdata()) == list(expected.getdata())
            await pilot.press("a")
            await pilot.pause(0.2)
            assert picture.path == str(out)
            app.pop_screen()
            await pilot.pause(0.1)
            app.push_screen(ImageView(
                app.store.get(plain), app.preview.image_class))
            await pilot.pause(0.2)
            await pilot.press("a")
            await pilot.pause(0.2)
            assert app.screen.query_one("#image-picture").path == app.store.get(plain).image
            assert any("image_attention none" in str(n.message) for n in app._notifications)
        app.close()

    run(go())


# ---- issue 25 ----
@pytest.mark.parametrize("keys", [("up",), ("pagedown",), ("end",), ("pageup", "home", "down")],
                         ids=["up", "pagedown", "end", "pageup-home-down"])
def test_history_keys_on_an_empty_table_do_not_crash(keys):
    """Issue 25.1: ↑ / PageDown / End on an empty History (fresh store, or a filter with no match) crashed the app."""

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("alt+5")
            await pilot.pause()
            assert app.focused is app.history.table and app.history.table.row_count == 0
            await pilot.press(*keys)
            await pilot.pause()
            assert app.is_running and app.return_value is None and app._exception is None
            app.store.enqueue("a fox", [], Recipe(**FAST).to_dict())  # a filter with no match: empty again
            app.history.reload()
            await pilot.press("slash")
            await type_text(pilot, "zebra")
            await wait_for(pilot, lambda: app.history.table.row_count == 0, 5, "the filter")
            await pilot.press("enter", *keys)
            await pilot.pause()
            assert app.is_running and app._exception is None
        app.close()

    run(go())


@pytest.mark.parametrize("signame", ["SIGHUP", "SIGTERM"])
def test_a_closed_terminal_gives_the_running_job_back_with_no_strike(engine, signame):
    """Issue 25.4: SIGHUP (an SSH drop, a closed terminal) killed the app with its run 'running'; each restart
    counted an interruption and the second failed the run as "possibly crashing the worker"."""
    import signal

    sig = getattr(signal, signame)

    async def go():
        app = make_app(engine, settings=settings(steps=400))
        async with app.run_test(size=(160, 48)) as pilot:
            app.inputs.prompt = "a long run"
            await pilot.press("f5")
            await wait_for(pilot, lambda: app.job_worker is not None and app.job_worker._progress is not None,
                           60, "the run to be stepping")
            run_id = app.job_worker.current_run_id
            os.kill(os.getpid(), sig)
            await wait_for(pilot, lambda: not app.is_running, 30, "the app to exit")
        app.close()
        assert app.return_code == 128 + int(sig)
        with Store() as store:
            row = store.get(run_id)
            assert row.status == "pending" and row.interruptions == 0 and row.claimed_by is None
            assert store.recover(force=True) == (0, 0)  # nothing left for the next start to count

    def guard(*args):  # before the fix the signal must not kill pytest
        pass

    before = signal.signal(sig, guard)
    try:
        run(go())
        assert signal.getsignal(sig) is guard  # the app put back what it found
    finally:
        signal.signal(sig, guard)


def test_ctrl_o_opens_every_example_from_a_non_default_form():
    """Issue 25.2: ctrl+o refused 5 of the 10 shipped examples when the form was not at its defaults ("has no
    effect" for a field the file does not name). A file that cannot merge now offers to replace the form (the
    file over the defaults); every example loads; the palette resets the form."""
    from vlbench.recipe import load_recipe

    examples = sorted((Path(__file__).parents[1] / "examples" / "recipes").glob("*.toml"))
    assert len(examples) >= 10

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            replaced = 0
            for example in examples:
                app.action_reset_form()
                app.parameters.set_fields({"alpha": 0.5, "intra_ratio": 0.3, "steps": 3})
                await pilot.pause()
                form = app.parameters.validate()
                assert form is not None and form.intra_ratio == 0.3
                app.open_recipe_file(str(example))
                await pilot.pause()
                if app.screen.__class__.__name__ == "Confirm":
                    replaced += 1
                    await pilot.press("y")
                    await pilot.pause()
                    expected = load_recipe(example, base=Recipe(**FAST))  # the file over the defaults
                else:
                    expected = load_recipe(example, base=form)  # merged: the form's other fields kept
                got = app.parameters.validate()
                assert got is not None, (example.name, app.parameters.error)
                assert got.replace(seed=0) == expected.replace(seed=0), example.name
                assert app.inputs.vl_text == expected.vl_text or "vl_text" not in expected.to_dict()
            assert replaced >= 1, "the form above does not merge with some example: the replace path ran"
            app.parameters.set_fields({"alpha": 0.5, "steps": 3})
            app.action_reset_form()
            await pilot.pause()
            assert app.parameters.validate() == Recipe(**FAST)
            assert "Reset the form to the defaults" in [t for t, _, _ in app.palette_commands()]
        app.close()

    run(go())


def send_burst(app, *keys: str) -> None:
    """Keys in one burst, as a terminal read delivers them (tmux send-keys, a paste, a fast typist on a loaded
    machine): none waits for the one before to be handled (Pilot.press waits after each key)."""
    from textual import events
    from textual.keys import _character_to_key

    for key in keys:
        if len(key) == 1:
            event = events.Key(key if key.isalnum() else _character_to_key(key), key)
        else:
            event = events.Key(key, None)
        event.set_sender(app)
        app._driver.send_message(event)


def test_keys_typed_in_one_burst_reach_the_picker_field_in_order(tmp_path):
    """ctrl+u, a path with a typo mended by backspace, and Enter, typed in one burst in the ctrl+o picker: Textual
    runs an Input's bound keys (ctrl+u, backspace, Enter) only once the key has bubbled up to the app through each
    ancestor's queue, while it inserts a typed character at once; the characters typed after ctrl+u went in first
    and ctrl+u then wiped them, Enter submitted the empty field and nothing loaded (the tmux test's flake). Each key
    now acts in the order typed."""
    recipe = tmp_path / "steps3.toml"
    recipe.write_text("steps = 3\n")
    typo = str(recipe)[:-1] + "x"

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "FilePicker", 10, "the file picker")
            await pilot.pause()
            send_burst(app, "ctrl+u", *typo, "backspace", recipe.name[-1], "enter")
            await wait_for(pilot, lambda: type(app.screen).__name__ != "FilePicker", 10, "the picker to close")
            await pilot.pause()
            assert app.parameters.validate().steps == 3
        app.close()

    run(go())


def test_a_path_typed_right_after_ctrl_o_goes_to_the_picker(tmp_path):
    """ctrl+o, ctrl+u, a path and Enter in one burst: ctrl+o (not a priority key) ran only once it had bubbled up
    from the prompt, so the keys behind it went into the prompt. ctrl+o now opens the picker as it arrives, and
    Textual mounts the picker (its field focused) before it hands on the next key."""
    recipe = tmp_path / "steps3.toml"
    recipe.write_text("steps = 3\n")

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.inputs.prompt = "a fox"
            await pilot.pause()
            send_burst(app, "ctrl+o", "ctrl+u", *str(recipe), "enter")
            await wait_for(pilot, lambda: app.parameters.validate().steps == 3, 10, "the typed recipe to load")
            assert type(app.screen).__name__ == "MainScreen" and app.inputs.prompt == "a fox"
        app.close()

    run(go())


def test_enter_in_the_picker_loads_the_shown_completion_and_save_as_keeps_the_typed_name(tmp_path):
    """ctrl+o: Enter with a completion shown submitted the uncompleted text ("no such file"); it loads what the
    field shows. Save as (ctrl+s) is where a new name is typed: Enter saves that name, not an existing file's."""
    existing = tmp_path / "steps3.toml"
    existing.write_text("steps = 3\n")

    async def type_with_completion(pilot, key: str):
        await pilot.press(key)
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "FilePicker", 10, "the file picker")
        field = pilot.app.screen.query_one("#picker-path")
        field.value = str(tmp_path / "step")
        field.cursor_position = len(field.value)
        await type_text(pilot, "s")
        await wait_for(pilot, lambda: field._suggestion == str(existing), 10, "the completion")
        await pilot.press("enter")

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            await type_with_completion(pilot, "ctrl+o")
            await wait_for(pilot, lambda: app.parameters.validate().steps == 3, 10, "the completed file to load")
            await type_with_completion(pilot, "ctrl+s")
            await wait_for(pilot, (tmp_path / "steps.toml").exists, 10, "the typed name saved")
            assert existing.read_text() == "steps = 3\n"
        app.close()

    run(go())


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (160, 48)], ids=["80x24", "100x30", "160x48"])
def test_f7_shows_its_plan_at_every_size(size):
    """Issue 25.3: at 80×24 and 100×30 the list of types pushed F7's plan (run count, fields it sets, the quick
    switch, the hint) off the dialog: batches were queued blind."""

    async def go():
        app = make_app()
        async with app.run_test(size=size) as pilot:
            app.inputs.prompt = "probe"
            await pilot.press("f7")
            await pilot.pause()
            screen = app.screen
            plan = screen.query_one("#experiment-plan")
            text = str(plan.render())
            assert "queues" in text and "runs" in text, text
            for selector in ("#experiment-plan", "#experiment-quick", "#experiment-list", ".dialog-hint"):
                region = screen.query_one(selector).region
                assert region.height >= 1 and region.bottom <= size[1] and region.right <= size[0], (selector, region)
            lines = len(text.splitlines())
            assert plan.region.height >= min(lines, 12), (plan.region, text)  # the plan is not cut
            assert screen.query_one("#experiment-list").region.height >= 3
            await pilot.press("escape")
        app.close()

    run(go())


@pytest.mark.parametrize("keys", [("pagedown",), ("pagedown", "pagedown"), ("pagedown", "pagedown", "pageup")],
                         ids=["pagedown", "pagedown-twice", "and-pageup"])
def test_focus_never_stays_on_a_parameters_field_scrolled_out_of_view(keys):
    """Issue 25.7: PageDown/PageUp scrolled the form but left the focus on a field out of view: typing edited it
    blind."""

    async def go():
        app = make_app()
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("alt+2")
            await pilot.pause()
            form = app.query_one("#param-form")
            for key in keys:
                await pilot.press(key)
                await pilot.pause()
                await pilot.pause()
            assert form.scroll_y > 0, "the form scrolled"
            focused = app.focused
            assert form in focused.ancestors
            assert form.scrollable_content_region.contains_region(focused.region), (focused, focused.region)
        app.close()

    run(go())


def test_every_queued_run_can_be_reached_and_moved_to_the_front():
    """Issue 25.9: the Queue showed only the first 30 pending runs; the rest could not be selected or reordered.
    It now reads a page more as the cursor nears the end."""

    async def go():
        app = make_app(paused=True)
        ids = app.store.enqueue_many([dict(prompt=f"run {i}", images=[], recipe=Recipe(**FAST, seed=i).to_dict())
                                      for i in range(75)])
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("alt+3")
            await pilot.pause()
            table = app.queue_pane.table
            assert table.row_count <= 40
            for _ in range(12):  # End, again and again: each time near the end, a page more is read
                await pilot.press("end")
                await pilot.pause()
            assert app.queue_pane.selected_id == ids[-1], app.queue_pane.selected_id
            assert "not shown" not in str(app.queue_pane.border_subtitle)
            await pilot.press("t")  # the last run, to the front
            await pilot.pause()
            assert [r.id for r in app.store.queue(limit=1)] == [ids[-1]]
        app.close()

    run(go())


def test_the_status_line_tells_the_truth_during_a_run():
    """Issue 25.9: during a run the status line kept "loading Qwen3-VL…" and the summary said "queue empty"."""
    from vlbench.tui.messages import WorkerEvent
    from vlbench.worker import JobProgress, JobStarted, ModelStatus, WorkerIdle

    async def go():
        app = make_app()
        run_id = app.store.enqueue("a fox", [], Recipe(**FAST).to_dict())
        async with app.run_test(size=(160, 48)) as pilot:
            queue = app.queue_pane
            for event in (ModelStatus("loading Qwen3-VL from /models/vl"), JobStarted(run_id, 9)):
                app.post_message(WorkerEvent(event))
            await pilot.pause()
            app.store.claim_next()
            app.post_message(WorkerEvent(JobProgress(run_id, 1, 9, None)))
            app.post_message(WorkerEvent(JobProgress(run_id, 3, 9, 12.0)))
            await pilot.pause()
            queue.reload(exact=True)
            assert queue.status_text == f"models loaded · generating #{run_id}"
            assert queue.summary_text() == "1 running, none pending · ETA 12 s", queue.summary_text()
            app.post_message(WorkerEvent(WorkerIdle()))
            await pilot.pause()
            assert queue.summary_text() == "queue empty"
        app.close()

    run(go())


def test_a_paste_of_several_paths_adds_each_and_a_restored_prompt_ends_with_the_cursor(tmp_path):
    """Issue 25.9: a pasted list of paths kept only the first; the restored prompt put the cursor at its start."""
    from textual import events

    refs = [make_image(tmp_path / f"r{i}.png", size=(40 + 8 * i, 32)) for i in range(3)]
    spaced = make_image(tmp_path / "with space.png")

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            field = app.query_one("#ref-path")
            field.focus()
            await pilot.pause()
            field.post_message(events.Paste("\n".join(str(r) for r in refs) + "\n"))
            await pilot.pause()
            assert app.inputs.references == [str(r.resolve()) for r in refs]
            field.post_message(events.Paste(f"'{spaced}' '{refs[0]}'"))  # files dropped: shell-quoted on one line
            await pilot.pause()
            assert app.inputs.references[-1] == str(spaced.resolve()) and len(app.inputs.references) == 4
            field.post_message(events.Paste(str(spaced)))  # one path with a space stays one path, typed in
            await pilot.pause()
            assert field.value == str(spaced)
            app.inputs.prompt = "a lighthouse\nat dusk"
            await pilot.pause()
            area = app.query_one("#prompt")
            assert area.cursor_location == area.document.end == (1, 7)
        app.close()

    run(go())


def test_the_generated_config_names_every_offload_policy():
    """Issue 25 (minor): the config.toml written on first run described offload without `group`."""
    from vlbench.config import DEFAULT_CONFIG
    from vlbench.modelspec import OFFLOAD_POLICIES

    lines = DEFAULT_CONFIG.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("offload ="))
    comment = " ".join(line for line in lines[max(0, at - 3):at] if line.startswith("#"))
    for policy in OFFLOAD_POLICIES:
        assert f"{policy} (" in comment, (policy, comment)


def test_enter_on_a_shown_completion_takes_it(tmp_path):
    """Issue 25 (minor): Enter with a path completion shown submitted the uncompleted text ("no such file"); it now
    takes the completion: a file is added, a folder is entered."""
    ref = make_image(tmp_path / "pictures" / "lighthouse.png")

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            field = app.query_one("#ref-path")
            field.focus()
            await pilot.pause()
            field.value = str(tmp_path / "pic")
            field.cursor_position = len(field.value)
            await pilot.pause()
            await type_text(pilot, "t")  # ".../pict" -> "pictures/"
            await wait_for(pilot, lambda: field._suggestion.endswith("pictures/"), 5, "the folder completion")
            await pilot.press("enter")
            await pilot.pause()
            assert field.value == str(tmp_path / "pictures") + "/" and app.inputs.references == []
            await type_text(pilot, "l")
            await wait_for(pilot, lambda: field._suggestion.endswith("lighthouse.png"), 5, "the file completion")
            await pilot.press("enter")
            await pilot.pause()
            assert app.inputs.references == [str(ref.resolve())] and field.value == ""
        app.close()

    run(go())


def test_l_asks_before_it_replaces_a_typed_prompt():
    """Issue 25 (minor): `l` in History overwrote the form without asking."""

    async def go():
        app = make_app()
        app.store.enqueue("an old run", [], Recipe(**FAST, seed=5).to_dict())
        async with app.run_test(size=(160, 48)) as pilot:
            app.inputs.prompt = "what I was typing"
            await pilot.press("alt+5")
            await pilot.pause()
            await pilot.press("l")
            await pilot.pause()
            assert app.screen.__class__.__name__ == "Confirm"
            await pilot.press("n")
            await pilot.pause()
            assert app.inputs.prompt == "what I was typing"
            await pilot.press("l")
            await pilot.pause()
            await pilot.press("y")
            await pilot.pause()
            assert app.inputs.prompt == "an old run" and app.parameters.seeds == [5]
            await pilot.press("l")  # the form holds that run's prompt: nothing to lose, no question
            await pilot.pause()
            assert app.screen.__class__.__name__ != "Confirm"
        app.close()

    run(go())


def test_every_text_field_applies_a_burst_of_keys_in_the_order_typed():
    """The same Textual ordering (issue #6605) in every text field, not only the picker's: ctrl+u, "7", "7",
    backspace, "5" typed in one burst into a Parameters field left "2" (the late ctrl+u wiped the digits), not "75";
    in the prompt, "a b backspace c left x" did not give "axc". Each Input of the workbench is an OrderedInput (the
    Parameters fields, the History filter, the custom VL text) and the prompt an OrderedTextArea. (Fails with a
    plain Input or TextArea.)"""
    from textual.widgets import Input, TextArea

    from vlbench.tui.widgets.ordered_input import OrderedInput

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            steps = app.query_one("#p-steps", Input)
            steps.focus()
            await pilot.pause()
            send_burst(app, "ctrl+u", "7", "7", "backspace", "5")
            await wait_for(pilot, lambda: steps.value == "75", 10, f"steps to read 75 (it reads {steps.value!r})")
            await pilot.pause(0.3)
            assert steps.value == "75"
            prompt = app.query_one("#prompt", TextArea)  # the prompt too: a TextArea, the same ordering
            prompt.text = ""
            prompt.focus()
            await pilot.pause()
            send_burst(app, "a", "b", "backspace", "c", "left", "x")
            await wait_for(pilot, lambda: prompt.text == "axc", 10, f"the prompt to read axc ({prompt.text!r})")
        app.close()

    run(go())
    app = make_app()
    text_fields = []

    async def collect():
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            text_fields.extend((w.id, type(w).__name__, isinstance(w, OrderedInput)) for w in app.query(Input))
        app.close()

    run(collect())
    assert len(text_fields) > 5, text_fields
    plain = [(wid, name) for wid, name, ordered in text_fields if not ordered]
    assert not plain, f"text fields that still apply a burst out of order: {plain}"
