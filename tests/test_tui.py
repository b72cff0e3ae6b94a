"""The workbench driven by keys, as a user would: Textual's Pilot, the real store, the tiny models.

Tests that generate images share the session's tiny-model Engine (conftest `engine`), injected
through the app's engine_factory, so models load once per session, not once per test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import patience

from vlbench.config import DEFAULT_CONFIG, Settings, load_settings, parse_settings
from vlbench.recipe import Recipe, load_recipe
from vlbench.errors import UserError
from vlbench.store import Store

SIZE = (160, 48)
FAST = {"width": 64, "height": 64, "steps": 2}
PANE_TITLES = ["Inputs", "Parameters", "Queue", "Preview", "History"]
# A plan is queued once its checks have read the models' files (issue 25.10): the first time in a process that
# imports torch on a thread, which takes a minute or more on a loaded 2-core machine.
QUEUED_S = 180


def settings(**recipe) -> Settings:
    return parse_settings({"recipe": {**FAST, **recipe}})


def make_app(engine=None, **kwargs):
    from vlbench.tui.app import VlbenchApp

    kwargs.setdefault("start_worker", engine is not None)
    if engine is not None:
        kwargs["engine_factory"] = lambda on_status: engine
    return VlbenchApp(kwargs.pop("settings", None) or settings(), **kwargs)


async def wait_for(pilot, predicate, timeout: float = 60.0, what: str = "condition"):
    timeout = patience(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(0.05)
        if predicate():
            return
    # what the app said meanwhile (a refusal, "checking the plan…"): a timeout names its likely cause
    said = [n.message for n in pilot.app._notifications][-5:]
    checks = getattr(pilot.app, "plan_checks", None)
    state = f"; plan checks: files read {checks.files_ready}, draining {checks._draining}" if checks else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; notifications: {said}{state}")


async def type_text(pilot, text: str) -> None:
    await pilot.press(*[{" ": "space"}.get(ch, ch) for ch in text])


async def focus(pilot, selector: str) -> None:
    widget = pilot.app.query_one(selector)
    widget.focus()
    await pilot.pause()
    # Widget.focus moves the focus later: keys typed before it lands go to the widget that had it
    await wait_for(pilot, lambda: pilot.app.focused is widget, 10, f"the focus on {selector}")


def shown_images(app) -> int:
    return sum(1 for picture in app.preview.pictures if picture.display
               and picture.query_one(".picture-image").display)


def run(coro):
    return asyncio.run(coro)


# ---- startup ----
def test_app_module_does_not_import_torch():
    code = ("import sys, vlbench.tui.app, vlbench.tui.launch; "
            "bad = [m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_five_panes_titled_and_tiny_models_named():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            titles = [w.border_title for w in app.query("InputsPane, ParametersPane, QueuePane, PreviewPane, "
                                                         "HistoryPane")]
            assert sorted(str(t) for t in titles) == sorted(PANE_TITLES)
            assert "tiny random models — images are noise" in app.sub_title
        app.close()

    run(go())


def test_config_is_written_with_comments_on_first_run(tmp_path):
    path = tmp_path / "config.toml"
    s = load_settings(path)
    assert path.read_text() == DEFAULT_CONFIG
    from vlbench.modelspec import resolve_model_spec

    assert resolve_model_spec(s.models.to_dict(), environ={}).tiny  # nothing named: the tiny models
    assert s.ui.theme == "vlbench-dark" and s.recipe == {}
    path.write_text('[models]\nzimage = "Tongyi-MAI/Z-Image-Turbo"\n[recipe]\nsteps = 4\n[keys]\nqueue = "f12"\n')
    s = load_settings(path)
    assert not resolve_model_spec(s.models.to_dict(), environ={}).tiny
    assert s.recipe == {"steps": 4} and s.keys == {"queue": "f12"}


@pytest.mark.parametrize("text, message", [
    ("[models]\nzimag = 'x'\n", "[models]: unknown key 'zimag'"),
    ("[models]\noffload = 'disk'\n", "[models]: offload disk: unknown policy"),
    ("[recipe]\nwidth = 65\n", "[recipe]: width 65: is not a multiple of 16"),
    ("[recipe]\nlayr = 1\n", "unknown key 'layr'"),
    ("[ui]\npreview = 'braille'\n", "[ui]: preview braille: unknown method"),
    ("[colours]\n", "unknown table [colours]"),
])
def test_config_errors_name_the_key(tmp_path, text, message):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings(path)


# ---- Parameters ----
def test_parameters_form_has_a_row_for_every_recipe_field():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            rows = {row.id.removeprefix("row-") for row in app.query(".field-row")}
            expected = {f.name for f in dataclasses.fields(Recipe)} - {"vl_text"}  # vl_text lives in Inputs
            assert rows == expected
            assert app.recipe == Recipe(**FAST)
        app.close()

    run(go())


def test_invalid_parameters_are_marked_and_cannot_be_queued():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await focus(pilot, "#prompt")
            await type_text(pilot, "a fox")
            await focus(pilot, "#p-width")
            await pilot.press("end", "backspace", "backspace", "6", "5")  # 64 -> 65
            row = app.query_one("#row-width")
            assert row.has_class("-invalid") and app.query_one("#p-width").has_class("-invalid")
            assert "width 65: is not a multiple of 16" in str(app.query_one("#param-error").render())
            assert app.recipe is None
            await pilot.press("f5")
            await pilot.pause()
            assert app.store.count() == 0, "an invalid recipe must not reach the queue"
            await pilot.press("backspace", "4")  # back to 64
            assert not row.has_class("-invalid") and app.recipe is not None
            await pilot.press("f5")
            await wait_for(pilot, lambda: app.store.count() == 1, QUEUED_S, "the run to be queued")
        app.close()

    run(go())


def test_a_combination_the_recipe_rejects_marks_the_named_field():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            app.query_one("#p-tokens").value = "image"
            await focus(pilot, "#p-intra_ratio")
            await type_text(pilot, "0.3")
            # tokens has no effect once intra_ratio mixes the selections itself: the Recipe names tokens
            assert app.query_one("#row-tokens").has_class("-invalid")
            assert app.parameters.error.startswith("tokens image: has no effect") and app.recipe is None
            app.query_one("#p-tokens").value = "full"
            await pilot.pause()
            assert app.recipe is not None and app.recipe.intra_ratio == 0.3
        app.close()

    run(go())


def test_seed_field_queues_one_run_per_seed():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await focus(pilot, "#prompt")
            await type_text(pilot, "three seeds")
            await focus(pilot, "#p-seed")
            app.query_one("#p-seed").value = ""
            await type_text(pilot, "1,2,5-6")
            await pilot.press("f5")
            await wait_for(pilot, lambda: app.store.count() == 4, QUEUED_S, "four runs")
            assert [r.seed for r in app.store.queue()] == [1, 2, 5, 6]
            assert all(r.recipe["width"] == 64 and r.prompt == "three seeds" for r in app.store.queue())
        app.close()

    run(go())


def test_recipe_saves_and_loads_as_toml(tmp_path):
    target = tmp_path / "mine.toml"

    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await focus(pilot, "#p-layer")
            app.query_one("#p-layer").value = "-7"
            await pilot.pause()
            await pilot.press("ctrl+s")
            await pilot.pause()
            field = app.screen.query_one("#picker-path")
            field.value = str(target)
            await pilot.press("enter")
            await wait_for(pilot, target.exists, 5, "the recipe file")
            assert load_recipe(target).layer == -7
            app.query_one("#p-layer").value = "-2"
            await pilot.pause()
            await pilot.press("ctrl+o")
            await pilot.pause()
            app.screen.query_one("#picker-path").value = str(target)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.recipe is not None and app.recipe.layer == -7, 5, "the loaded recipe")
        app.close()

    run(go())


# ---- Inputs ----
def test_reference_path_completes_and_adds(tmp_path, ref_image):
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await focus(pilot, "#ref-path")
            app.query_one("#ref-path").value = str(ref_image)[:-6]  # ".../r"
            await type_text(pilot, "e")  # ".../re" -> completion offers "ref.png"
            await pilot.pause(0.2)
            await pilot.press("right", "enter")  # accept the suggestion, add it
            await pilot.pause()
            assert app.inputs.references == [str(ref_image)]
            app.query_one("#ref-path").value = str(tmp_path / "missing.png")
            await pilot.press("enter")
            assert app.query_one("#ref-path").has_class("-invalid")
            assert app.inputs.references == [str(ref_image)]
        app.close()

    run(go())


def test_vl_text_choice_sets_the_recipe():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            app.query_one("#vl-mode").value = "none"
            await pilot.pause()
            assert app.recipe.vl_text == "none"
            app.query_one("#vl-mode").value = "custom"
            await pilot.pause()
            await focus(pilot, "#vl-custom")
            await type_text(pilot, "describe the style")
            assert app.recipe.vl_text == "describe the style"
        app.close()

    run(go())


# ---- Queue ----
def test_queue_reorders_removes_and_cancels_by_keys():
    async def go():
        app = make_app()
        ids = app.store.enqueue_many([dict(prompt=f"p{i}", images=[], recipe=Recipe(**FAST).to_dict())
                                      for i in range(3)])
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await focus(pilot, "#queue-table")
            await pilot.press("down")  # second run
            await pilot.press("u")
            assert [r.id for r in app.store.queue()] == [ids[1], ids[0], ids[2]]
            await pilot.press("d", "d")
            assert [r.id for r in app.store.queue()] == [ids[0], ids[2], ids[1]]
            await pilot.press("x")  # remove the selected (ids[1], now last): asks first
            await pilot.pause()
            assert type(app.screen).__name__ == "Confirm" and len(app.store.queue()) == 3
            await pilot.press("y")
            await pilot.pause()
            assert [r.id for r in app.store.queue()] == [ids[0], ids[2]]
            await pilot.press("c")  # the cursor stayed at the end, on ids[2]: cancel it
            await pilot.pause()
            assert app.store.get(ids[2]).status == "cancelled"
            await pilot.press("r")  # the cursor stays on it: retry
            await pilot.pause()
            assert app.store.get(ids[2]).status == "pending"
        app.close()

    run(go())


def test_pending_runs_survive_a_restart():
    async def go():
        first = make_app()
        async with first.run_test(size=SIZE) as pilot:
            await focus(pilot, "#prompt")
            await type_text(pilot, "keep me")
            await pilot.press("f5")
            await wait_for(pilot, lambda: first.store.count() == 1, QUEUED_S)
        first.close()
        # A killed session leaves its run 'running': the next start puts it back in the queue.
        with Store() as store:
            store.claim_next()
            store._conn().execute("UPDATE runs SET claimed_by = 'elsewhere:1:1'")
        second = make_app()
        async with second.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert [r.status for r in second.store.queue()] == ["pending"]
            assert second.queue_pane.table.row_count == 1
        second.close()

    run(go())


# ---- the whole loop on the tiny models ----
def test_runs_complete_on_tiny_models_then_history_requeues(engine, ref_image):
    async def go():
        app = make_app(engine)
        async with app.run_test(size=SIZE) as pilot:
            await focus(pilot, "#ref-path")
            app.query_one("#ref-path").value = str(ref_image)
            await pilot.press("enter")
            await focus(pilot, "#prompt")
            await type_text(pilot, "a red fox")
            app.query_one("#p-seed").value = "3,4"
            await pilot.press("f5")
            await wait_for(pilot, lambda: app.store.counts_by_status()["done"] == 2, 120, "two finished runs")
            first, second = sorted(app.store.history(), key=lambda r: r.id)
            assert second.seed == 4 and second.reference_paths == [str(ref_image)] and Path(second.image).is_file()
            assert second.conditioning["vl"]["input_ids"], "the exact token ids are recorded"
            await wait_for(pilot, lambda: shown_images(app) == 1, 10, "the preview image")
            # History: newest first; F3 puts the reference beside it; Enter opens the details.
            await focus(pilot, "#history-table")
            assert app.history.selected_id == second.id
            await pilot.press("f3")
            await wait_for(pilot, lambda: shown_images(app) == 2, 10, "reference + image")
            await pilot.press("enter")
            await pilot.pause()
            details = app.screen
            assert type(details).__name__ == "RunDetails"
            text = " ".join(str(s.render()) for s in details.query("Static"))
            assert "token ids" in text and str(second.conditioning["vl"]["input_ids"][0]) in text
            await pilot.press("r")  # re-queue from the details
            await wait_for(pilot, lambda: app.store.count() == 3, QUEUED_S)
            await wait_for(pilot, lambda: app.store.counts_by_status()["done"] == 3, 120, "the re-queued run")
            newest = app.store.history(limit=1)[0]
            assert newest.recipe == second.recipe and newest.prompt == second.prompt
            # Mark one, select another, compare side by side.
            await focus(pilot, "#history-table")
            await pilot.press("m", "down", "f4")
            await wait_for(pilot, lambda: shown_images(app) == 2, 10, "two runs side by side")
        app.close()

    run(go())


def test_cancel_and_pause_the_worker(engine):
    async def go():
        # Long runs (big for the tiny models, many steps) so that each is caught while running.
        app = make_app(engine, settings=settings(steps=1000, width=256, height=256))
        counts = app.store.counts_by_status
        async with app.run_test(size=SIZE) as pilot:
            await focus(pilot, "#prompt")
            await type_text(pilot, "long")
            await pilot.press("f5")
            await wait_for(pilot, lambda: counts()["running"] == 1, 60, "the run to start")
            await pilot.press("f9")  # cancel the running one at its next step
            await wait_for(pilot, lambda: counts()["cancelled"] == 1, 30, "the cancel")
            await pilot.press("f8")  # pause: nothing new starts
            await wait_for(pilot, lambda: app.paused, 10, "the worker to pause")
            await pilot.press("f5")
            await pilot.pause(0.5)
            assert counts()["pending"] == 1 and counts()["running"] == 0, "paused: the new run waits"
            await pilot.press("f8")  # resume
            await wait_for(pilot, lambda: counts()["running"] == 1, 30, "the resumed worker to start it")
            await pilot.press("f9")
            await wait_for(pilot, lambda: counts()["cancelled"] == 2, 30, "the second cancel")
        app.close()

    run(go())


# ---- History ----
def test_history_reads_pages_not_the_whole_store():
    from vlbench.tui.widgets.history import PAGE

    async def go():
        app = make_app()
        recipe = Recipe(**FAST).to_dict()
        app.store.enqueue_many([dict(prompt=f"cat {i}" if i % 2 else f"dog {i}", images=[],
                                     recipe={**recipe, "seed": i}) for i in range(1000)])
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            table = app.history.table
            assert table.row_count == PAGE
            assert "1,000 runs" in str(app.history.border_subtitle)
            await focus(pilot, "#history-table")
            await pilot.press("end")
            await wait_for(pilot, lambda: table.row_count == 2 * PAGE, 5, "the next page")
            await pilot.press("slash")
            await type_text(pilot, "dog 99")
            await wait_for(pilot, lambda: table.row_count == 5, 5, "the filtered rows")  # dog 990, 992, ... 998
            assert "5 runs" in str(app.history.border_subtitle)
            await pilot.press("enter")  # back to the table
            await pilot.press("t")  # status filter cycles: pending
            await pilot.pause()
            assert app.history.status == "pending" and table.row_count == 5
            await pilot.press("s")  # sort by finished_at
            assert app.history.sort == "finished_at"
        app.close()

    run(go())


def test_history_delete_asks_first():
    async def go():
        app = make_app()
        run_id = app.store.enqueue("gone soon", [], Recipe(**FAST).to_dict())
        async with app.run_test(size=SIZE) as pilot:
            await focus(pilot, "#history-table")
            await pilot.press("x")
            await pilot.press("n")
            assert app.store.get(run_id) is not None
            await pilot.press("x", "y")
            await pilot.pause()
            assert app.store.get(run_id) is None
            assert app.history.table.row_count == 0
        app.close()

    run(go())


# ---- experiments, palette, themes, help ----
def _probe_type():
    from vlbench.experiments.spec import parse_type

    return parse_type({"name": "layer_probe", "description": "two layers",
                       "configs": [{"name": "layer-2", "layer": -2}, {"name": "layer-5", "layer": -5, "quick": False}]},
                      Path("layer_probe.toml"))


def test_experiment_type_queues_every_config(monkeypatch):
    from vlbench.tui import experiments

    monkeypatch.setattr(experiments, "types", lambda: [_probe_type()])

    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await focus(pilot, "#prompt")
            await type_text(pilot, "probe")
            app.query_one("#p-seed").value = "1,2"
            await pilot.press("f7")
            await pilot.pause()
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.store.count() == 4, QUEUED_S, "2 configs x 2 seeds")
            runs = app.store.queue()
            assert {(r.experiment, r.name, r.recipe["layer"], r.seed) for r in runs} == {
                ("layer_probe", "layer-2", -2, 1), ("layer_probe", "layer-2", -2, 2),
                ("layer_probe", "layer-5", -5, 1), ("layer_probe", "layer-5", -5, 2)}
            assert all(r.recipe["width"] == 64 for r in runs), "the run's own size wins"
        app.close()

    run(go())


def test_builtin_experiment_types_queue_from_the_workbench():
    from vlbench.tui import experiments

    types = experiments.types()
    if not types:
        pytest.skip("this installation has no experiment types")
    first = types[0]

    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await focus(pilot, "#prompt")
            await type_text(pilot, "sweep")
            await pilot.press("f7")
            await pilot.pause()
            await pilot.press("enter")  # the first type
            expected = len(first.recipes(False))
            await wait_for(pilot, lambda: app.store.count() == expected, QUEUED_S, f"{expected} runs of {first.name}")
            assert {r.experiment for r in app.store.queue()} == {first.name}
            assert all(r.recipe["steps"] == 2 and r.recipe["width"] == 64 for r in app.store.queue())
        app.close()

    run(go())


def test_without_experiments_the_command_is_hidden(monkeypatch):
    from vlbench.tui import experiments

    monkeypatch.setattr(experiments, "types", lambda: [])

    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert not any("xperiment" in title for title, _, _ in app.palette_commands())
        app.close()

    run(go())


def test_themes_ship_as_data_and_switch_from_the_palette():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            assert {"vlbench-dark", "vlbench-light"} <= set(app.available_themes)
            assert app.theme == "vlbench-dark"
            await pilot.press("ctrl+p")
            await pilot.pause()
            await type_text(pilot, "vlbench-li")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.theme == "vlbench-light", 5, "the light theme")
            await pilot.press("ctrl+t")
            assert app.theme != "vlbench-light"
        app.close()

    run(go())


def test_theme_and_keys_come_from_the_config():
    async def go():
        app = make_app(settings=parse_settings({"recipe": FAST, "ui": {"theme": "vlbench-light"},
                                                "keys": {"queue": "f12"}}))
        async with app.run_test(size=SIZE) as pilot:
            assert app.theme == "vlbench-light"
            await focus(pilot, "#prompt")
            await type_text(pilot, "rebound")
            await pilot.press("f5")
            await pilot.pause()
            assert app.store.count() == 0
            await pilot.press("f12")
            await wait_for(pilot, lambda: app.store.count() == 1, QUEUED_S)
        app.close()

    run(go())


def test_help_lists_every_binding_and_the_palette_every_command():
    from vlbench.tui import keys

    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("f1")
            await pilot.pause()
            table = app.screen.query_one("#help-table")
            rows = [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]
            ids = {row[1] for row in rows}
            every = {c.id for _, commands in keys.every_command() for c in commands}
            assert every <= ids
            # every F-key command also shows a key that tmux and SSH clients pass (ctrl or ctrl+g)
            for row in rows:
                if "f" in row[0] and any(f"f{n}" in row[0].split(" / ") for n in range(1, 13)):
                    assert "ctrl+" in row[0], row
            # the id column is in view at 160 columns (it came last, behind the long help text)
            widths = [column.get_render_width(table) for column in table.columns.values()]
            assert sum(widths[:3]) <= table.size.width, "keys, id and where fit without scrolling"
            text = " ".join(" ".join(row) for row in rows)
            assert "choice fields" in text and "ctrl+k" in text
            await pilot.press("escape")
            titles = " ".join(title for title, _, _ in app.palette_commands())
            for c in keys.APP + keys.QUEUE + keys.HISTORY:
                if c.action != "queue_experiment":
                    assert c.title.rstrip("…") in titles, c.id
        app.close()

    run(go())


def test_a_crash_is_written_to_the_log(tmp_path):
    from vlbench.paths import log_path
    from vlbench.logs import attach_log_file

    handler = attach_log_file()

    async def go():
        app = make_app()
        app.action_help = lambda: 1 / 0  # a bug behind a key
        with pytest.raises(ZeroDivisionError):
            async with app.run_test(size=SIZE) as pilot:
                await pilot.press("f1")
                await pilot.pause()
        assert app.return_code == 1
        app.close()

    try:
        run(go())
        assert "ZeroDivisionError" in log_path().read_text()
    finally:
        if handler is not None:
            import logging

            logging.getLogger("vlbench").removeHandler(handler)
            handler.close()


def test_text_that_looks_like_markup_is_shown_as_typed(tmp_path):
    """Prompts, names and errors are user text: '[/]' must neither crash the app nor vanish."""
    prompt = "a [bold]fox[/] in [/] snow"

    async def go():
        app = make_app()
        app.store.enqueue(prompt, [], Recipe(**FAST).to_dict(), name="[x]", experiment="[/exp]")
        async with app.run_test(size=SIZE) as pilot:
            await focus(pilot, "#history-table")
            caption = app.preview.query_one("#preview-caption")
            await wait_for(pilot, lambda: caption.render().plain.count("[/]") == 2, 5, "the prompt, verbatim")
            await pilot.press("enter")
            await pilot.pause()
            assert type(app.screen).__name__ == "RunDetails"
            await pilot.press("escape")
            app.notify("quoting [/] in a notification")
            await pilot.pause()
        app.close()

    run(go())


def test_jump_moves_between_panes_by_keys():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            for keys_, focused in ((("ctrl+g", "5"), "history-table"), (("ctrl+g", "q"), "queue-table"),
                                   (("ctrl+g", "2"), "p-alpha"), (("ctrl+g", "v"), "preview"),
                                   (("ctrl+g", "i"), "prompt")):
                await pilot.press(*keys_)
                await pilot.pause()
                assert app.focused is not None and app.focused.id == focused, keys_
            await pilot.press("ctrl+g", "escape")
            assert app.focused.id == "prompt"
        app.close()

    run(go())
