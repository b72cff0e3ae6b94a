"""Issue 25.10: errors the models' files decide (a layer out of range, a prompt over the caption budget) are refused
when a plan is queued in the workbench, once per plan, with nothing queued; not N times at run time.

The tiny models' files are read (conftest `tiny_dirs` builds them and points VLBENCH_CACHE_DIR at them); the
workbench's own worker is not started: these runs are only queued.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import patience

from test_tui import FAST, QUEUED_S, make_app, run, wait_for

# A prompt over the tiny models' caption budget (224 tokens: DIT_AXES_LENS[0] - 32), far under Qwen3-4B's limit.
LONG_PROMPT = " ".join(["lighthouse"] * 300)


def refusals(app) -> list[str]:
    return [str(n.message) for n in app._notifications if str(n.message).startswith("cannot queue")]


@pytest.fixture(autouse=True)
def _tiny(tiny_dirs):
    return tiny_dirs


def test_a_layer_out_of_range_is_refused_at_queue_time_and_nothing_is_queued():
    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.inputs.prompt = "a fox"
            app.query_one("#p-layer").value = "-30"  # the tiny VL has 16 layers: hidden_states -17 … 16
            app.query_one("#p-seed").value = "0-7"
            await pilot.pause()
            assert app.parameters.validate() is not None, "the form alone cannot know the VL's depth"
            await pilot.press("f5")
            await wait_for(pilot, lambda: refusals(app), QUEUED_S, "the refusal")
            assert app.store.count() == 0
            (message,) = refusals(app)  # one line for the plan of 8 runs, not one per run
            assert "layer -30" in message and "out of range" in message and "use -17 … 16" in message, message
            assert app.query_one("#row-layer").has_class("-invalid")
            assert "layer -30" in str(app.query_one("#param-error").render())
            app.query_one("#p-layer").value = "-2"
            await pilot.pause()
            assert not app.query_one("#row-layer").has_class("-invalid")
            await pilot.press("f5")
            await wait_for(pilot, lambda: app.store.count() == 8, QUEUED_S, "the valid plan to be queued")
            assert app.plan_checks.reads == 1, "the model files are read once and kept"
        app.close()

    run(go())


def test_a_prompt_over_the_caption_budget_is_refused_at_queue_time():
    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.inputs.prompt = LONG_PROMPT
            await pilot.press("f5")
            await wait_for(pilot, lambda: refusals(app), QUEUED_S, "the refusal")
            assert app.store.count() == 0
            (message,) = refusals(app)
            # the engine's own words (the VL input = the prompt here, as vl_text = prompt says)
            assert "over the caption budget of 224" in message and "shorten" in message, message
            app.inputs.prompt = "a short prompt"
            await pilot.press("f5")
            await wait_for(pilot, lambda: app.store.count() == 1, QUEUED_S, "the short prompt to be queued")
            assert len(refusals(app)) == 1
        app.close()

    run(go())


def test_an_f7_batch_with_a_config_the_vl_cannot_run_is_refused_whole(monkeypatch):
    from vlbench.experiments.spec import parse_type
    from vlbench.tui import experiments

    deep = parse_type({"name": "deep_probe", "description": "one layer too deep",
                       "configs": [{"name": "layer-2", "layer": -2}, {"name": "layer-40", "layer": -40}]},
                      Path("deep_probe.toml"))
    monkeypatch.setattr(experiments, "types", lambda: [deep])

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            app.inputs.prompt = "probe"
            app.query_one("#p-seed").value = "1,2,3"
            await pilot.pause()
            app.queue_experiment("deep_probe")
            await wait_for(pilot, lambda: refusals(app), QUEUED_S, "the refusal")
            assert app.store.count() == 0, "nothing of a refused batch is queued (not even its valid config)"
            (message,) = refusals(app)
            assert "layer -40" in message, message
        app.close()

    run(go())


def test_plans_queue_in_the_order_they_were_queued():
    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            for prompt in ("first", LONG_PROMPT, "third"):
                app.inputs.prompt = prompt
                app.queue_runs()
            await wait_for(pilot, lambda: app.store.count() == 2 and refusals(app), QUEUED_S,
                           "both plans and the refusal")
            assert [r.prompt for r in app.store.queue()] == ["first", "third"]
        app.close()

    run(go())


def test_the_ui_thread_never_imports_torch_for_the_checks(tiny_dirs, tmp_path):
    """The checks read transformers' tokenizers (torch comes with them): only on a thread worker. A fresh process
    records, by an audit hook, which thread first imports torch, transformers and diffusers."""
    script = textwrap.dedent(f"""
        import asyncio, json, sys, threading, time
        seen = []

        def hook(event, args):
            if event == "import" and args[0] in ("torch", "transformers", "diffusers"):
                seen.append([args[0], threading.current_thread() is threading.main_thread()])

        sys.addaudithook(hook)
        from vlbench.config import parse_settings
        from vlbench.tui.app import VlbenchApp

        async def go():
            app = VlbenchApp(parse_settings({{"recipe": {FAST!r}}}), start_worker=False, session=False)
            async with app.run_test(size=(160, 48)) as pilot:
                app.inputs.prompt = {LONG_PROMPT!r}
                await pilot.press("f5")
                deadline = time.monotonic() + {patience(QUEUED_S)}
                while time.monotonic() < deadline and not any("cannot queue" in str(n.message)
                                                               for n in app._notifications):
                    await pilot.pause(0.05)
                refused = app.store.count() == 0 and any("cannot queue" in str(n.message) for n in app._notifications)
            app.close()
            return refused

        refused = asyncio.run(go())
        print(json.dumps({{"refused": refused, "seen": seen}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=patience(300))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["refused"], result
    names = {name for name, _ in result["seen"]}
    assert {"torch", "transformers"} <= names, result  # the checks ran (they read the tokenizers)
    assert not [name for name, on_main in result["seen"] if on_main], result
