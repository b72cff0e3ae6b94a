"""Full garbage collections run while the user is idle (issue 25.8: a 30-50 ms full collection about every ten pane
switches set their p95): after keys and IDLE_S without input, one runs; while keys keep coming, none runs until
MAX_GAP_S since the last one, which forces one. A clock and a collector stand in for time and gc.collect: nothing
here waits on real time to decide what happened.
"""

from __future__ import annotations

import gc

from test_tui import make_app, run, wait_for
from vlbench.tui.idle_gc import IDLE_S, MAX_GAP_S, PUT_OFF, IdleCollector


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def collector() -> tuple[IdleCollector, Clock, list[float]]:
    clock, ran = Clock(), []
    return IdleCollector(clock=clock, collect=lambda: ran.append(clock.now)), clock, ran


def test_a_full_collection_runs_once_the_user_is_idle_after_input_and_once_per_stretch_of_input():
    idle, clock, ran = collector()
    for _ in range(10):  # keys 0.2 s apart
        clock.now += 0.2
        idle.input_seen()
        assert not idle.tick()
    clock.now += IDLE_S - 0.1
    assert not idle.tick(), "not idle yet"
    clock.now += 0.2
    assert idle.tick() and ran == [clock.now]
    for _ in range(20):  # still idle: nothing new to wait for until MAX_GAP_S
        clock.now += 1.0
        assert not idle.tick()
    idle.input_seen()
    clock.now += IDLE_S + 0.01
    assert idle.tick() and len(ran) == 2


def test_continuous_input_puts_the_collection_off_until_max_gap_which_forces_one():
    idle, clock, ran = collector()
    start = clock.now
    while clock.now - start < MAX_GAP_S - 0.5:  # a key every 0.3 s, never IDLE_S apart
        clock.now += 0.3
        idle.input_seen()
        assert not idle.tick(), clock.now - start
    assert not ran
    clock.now = start + MAX_GAP_S
    idle.input_seen()
    assert idle.tick(), "MAX_GAP_S since the last full collection forces one, keys or not"
    assert ran == [start + MAX_GAP_S]
    clock.now += 0.3
    idle.input_seen()
    assert not idle.tick(), "the gap counts from the forced one"


def test_taking_over_freezes_and_puts_off_pythons_full_collections_until_given_back():
    before = gc.get_threshold()
    idle, _, _ = collector()
    idle.take_over()
    try:
        assert gc.get_threshold() == (before[0], before[1], PUT_OFF)
        assert gc.get_freeze_count() > 0
        idle.take_over()  # the first finished run freezes again: thresholds still Python's when given back
    finally:
        idle.give_back()
    assert gc.get_threshold() == before


def test_the_workbench_records_keys_and_its_timer_collects_when_idle():
    """In the app: keys reach the collector (App.on_event), full collections are put off while it runs, its timer
    runs the idle collection, and Python's thresholds are back once it has exited."""
    before = gc.get_threshold()

    async def go():
        app = make_app()
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_for(pilot, lambda: gc.get_threshold()[2] == PUT_OFF, what="full collections put off")
            clock, ran = Clock(), []
            app.idle_gc.clock, app.idle_gc.collect = clock, lambda: ran.append(clock.now)
            app.idle_gc.last_input = app.idle_gc.last_full = clock.now
            for key in ("alt+2", "tab", "alt+3", "alt+5", "alt+1"):
                clock.now += 0.2
                await pilot.press(key)
                assert app.idle_gc.last_input == clock.now, key
            assert not ran
            clock.now += IDLE_S + 0.01
            await wait_for(pilot, lambda: ran, what="the timer's idle collection")
            assert ran == [clock.now]
            clock.now += 5.0
            await pilot.pause(1.5)  # the timer ticks on: nothing more to collect
            assert len(ran) == 1
        app.close()

    run(go())
    assert gc.get_threshold() == before
