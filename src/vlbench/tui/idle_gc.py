"""Full garbage collections while the user is idle, not in the middle of a key.

A full (generation 2) collection walks every tracked object made since `gc.freeze()`: 30-50 ms on the 2-core
machine, about every ten pane switches, and so the slowest tenth of keys (issue 25.8). Once the app's long-lived
objects are frozen, Python's own full collections are put off (a generation-2 threshold no run reaches) and this
runs them instead: after IDLE_S without a key or mouse event, once per stretch of input, and at the latest MAX_GAP_S
after the last one however busy the keyboard is, so that garbage in reference cycles is still freed.
Young collections (generations 0 and 1, a few milliseconds) are left to Python.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

IDLE_S = 1.5  # no input for this long: the user is reading, not typing
MAX_GAP_S = 60.0  # a full collection at least this often, input or not
TICK_S = 0.5  # how often the app asks (tick)
PUT_OFF = 1_000_000  # generation-2 threshold: young collections between full ones; never reached in MAX_GAP_S


class IdleCollector:
    def __init__(self, clock: Callable[[], float] = time.monotonic, collect: Callable[[], object] = gc.collect,
                 idle_s: float = IDLE_S, max_gap_s: float = MAX_GAP_S) -> None:
        self.clock, self.collect = clock, collect
        self.idle_s, self.max_gap_s = idle_s, max_gap_s
        self.last_input = self.last_full = clock()
        self.collections = 0  # full collections run by tick
        self._thresholds: tuple[int, int, int] | None = None  # Python's, while put off

    def take_over(self) -> None:
        """Freeze what exists now (the app's widgets, styles, loaded modules live as long as the app) and put off
        Python's automatic full collections: from now on tick runs them."""
        gc.freeze()
        if self._thresholds is None:
            self._thresholds = gc.get_threshold()
            young, middle, _ = self._thresholds
            gc.set_threshold(young, middle, PUT_OFF)

    def give_back(self) -> None:
        """Python's thresholds as they were (the app has ended)."""
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None

    def input_seen(self) -> None:
        self.last_input = self.clock()

    def tick(self) -> bool:
        """Run a full collection if the user is idle after input since the last one, or the last one is MAX_GAP_S
        old. Returns whether it ran."""
        now = self.clock()
        idle_after_input = now - self.last_input >= self.idle_s and self.last_input > self.last_full
        if not (idle_after_input or now - self.last_full >= self.max_gap_s):
            return False
        self.collect()
        self.last_full = self.clock()
        self.collections += 1
        return True
