"""Issue 25, "Minor, fix them too": each item with a Pilot test that fails before its fix.

Done elsewhere (tests/test_tui_workbench.py): `l` asks before it overwrites a changed form
(test_l_asks_before_it_replaces_a_typed_prompt), Enter on a shown path completion takes it
(test_enter_on_a_shown_completion_takes_it), the generated config.toml lists `group` for offload
(test_the_generated_config_names_every_offload_policy).
"""

from __future__ import annotations

import pytest
from conftest import make_image

from test_tui import FAST, make_app, run
from test_tui_workbench import finished_run
from vlbench.recipe import Recipe


def test_compared_pictures_and_their_captions_stand_apart(tmp_path):
    """F4 put the compared images edge to edge and ran their captions together."""

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            first = finished_run(app, tmp_path, (64, 64), layer=-2)
            second = finished_run(app, tmp_path, (64, 64), layer=-5)
            app.store_changed()
            await pilot.press("alt+5")
            await pilot.pause()
            await pilot.press("m")  # the newest run (second) is marked; the cursor moves to the first
            await pilot.press("down")
            await pilot.pause(0.3)
            await pilot.press("f4")
            await pilot.pause(0.3)
            left, right = [p for p in app.preview.pictures if p.display]
            assert left.region.right < right.region.x, (left.region, right.region)  # a gap between them
            captions = [p.query_one(".picture-caption") for p in (left, right)]
            texts = [str(c.render()) for c in captions]
            assert texts[0].startswith(f"#{second}") and texts[1].startswith(f"#{first}"), texts  # one each
            for picture, caption in zip((left, right), captions):
                assert picture.region.contains_region(caption.region), (picture.region, caption.region)
                assert caption.region.height == 1
            assert captions[0].region.right < captions[1].region.x
        app.close()

    run(go())


def test_the_help_line_follows_a_fields_value_as_it_changes():
    """The help line kept describing the value a field had when it was focused."""

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.query_one("#p-alpha_policy").focus()
            await pilot.pause()
            help_line = app.query_one("#param-help")
            assert str(help_line.render()).startswith("alpha_policy: attend:"), str(help_line.render())
            await pilot.press("right")
            await pilot.pause()
            assert str(help_line.render()).startswith("alpha_policy: split:"), str(help_line.render())
            await pilot.press("right")
            await pilot.pause()
            assert str(help_line.render()).startswith("alpha_policy: positionwise:"), str(help_line.render())
        app.close()

    run(go())


def test_every_invalid_fields_error_is_shown():
    """Only the first of several invalid fields showed its error."""

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.query_one("#p-width").value = "wide"
            app.query_one("#p-steps").value = "many"
            await pilot.pause()
            shown = str(app.query_one("#param-error").render())
            assert "width wide" in shown and "steps many" in shown, shown
            assert app.query_one("#row-width").has_class("-invalid") and app.query_one("#row-steps").has_class("-invalid")
            assert "width" in app.parameters.error and "steps" in app.parameters.error
            app.query_one("#p-width").value = "64"
            await pilot.pause()
            shown = str(app.query_one("#param-error").render())
            assert "width" not in shown and "steps many" in shown, shown
        app.close()

    run(go())


def test_x_on_a_pending_run_asks_first():
    """`x` deleted a pending run with no confirmation or undo; it asks (and F1 says so)."""
    from vlbench.tui import keys

    async def go():
        app = make_app(paused=True)
        run_id = app.store.enqueue("keep me", [], Recipe(**FAST).to_dict())
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("alt+3")
            await pilot.pause()
            await pilot.press("x")
            await pilot.pause()
            assert type(app.screen).__name__ == "Confirm"
            await pilot.press("n")
            await pilot.pause()
            assert [r.id for r in app.store.queue()] == [run_id]
            await pilot.press("x", "y")
            await pilot.pause()
            assert app.store.queue() == []
        app.close()
        assert "asks first" in keys.by_id()["queue.remove"].help

    run(go())


def test_many_references_are_all_reachable_and_counted(tmp_path):
    """5+ references showed only 4 rows, with nothing saying there were more."""
    refs = [make_image(tmp_path / f"r{i}.png", size=(40 + 8 * i, 32)) for i in range(9)]

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            for ref in refs[:5]:
                app.inputs.add_reference(str(ref))
            await pilot.pause()
            listing = app.query_one("#ref-list")
            assert listing.option_count == 5 and listing.max_scroll_y == 0, "five references: every row in view"
            assert "scrolls" not in str(app.query_one("#refs-label").render())
            for ref in refs[5:]:
                app.inputs.add_reference(str(ref))
            await pilot.pause()
            assert listing.option_count == 9 and listing.max_scroll_y > 0
            assert "references: 9, the list scrolls" in str(app.query_one("#refs-label").render())
            assert listing.virtual_size.height == 9, "one row per reference (a long path wrapped over several)"
            assert app.inputs.references == [str(r.resolve()) for r in refs]
            listing.focus()
            await pilot.press("end")
            await pilot.pause()
            assert listing.highlighted == 8 and listing.scroll_y > 0, "the last one scrolls into view"
        app.close()

    run(go())


def test_f1_lists_the_full_screen_views_keys():
    """F1 did not list `a` (the attention heat map in the full-screen view)."""
    from vlbench.tui.screens.image_view import ImageView

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("f1")
            await pilot.pause()
            table = app.screen.query_one("#help-table")
            rows = [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]
            by_id = {row[1]: row for row in rows}
            for binding in ImageView.BINDINGS:
                assert binding.id in by_id, binding.id
            keys_, _, where, text = by_id["image.attention"]
            assert keys_ == "a" and where == "full screen" and "heat map" in text
        app.close()

    run(go())


@pytest.mark.parametrize("size", [(100, 30), (80, 24)], ids=["100x30", "80x24"])
def test_the_quit_question_fits_the_dialog(size):
    """The quit confirmation ran past the dialog's edge at 100 columns (one 95-column line in a 74-column box)."""

    async def go():
        app = make_app()
        async with app.run_test(size=size) as pilot:
            class Busy:
                current_run_id = 7

                def stop(self, timeout=None):
                    pass

            app.job_worker = Busy()
            await pilot.press("ctrl+q")
            await pilot.pause()
            dialog = app.screen.query_one("#confirm")
            question = app.screen.query("Label").first()
            assert "Quit anyway?" in str(question.render())
            assert dialog.content_region.contains_region(question.region), (question.region, dialog.content_region)
            assert question.region.height >= 2  # wrapped, not cut
            await pilot.press("n")
            app.job_worker = None
        app.close()

    run(go())
