"""Heavy numpy work in bounded slices.

The projection and bake functions come in two forms: a plain call, and a generator (`*_steps`)
that does one bounded slice of the work per `next()` and returns its result through
`StopIteration.value`. `run` drains such a generator at once (worker thread, tests);
`Sliced` runs one for at most a time budget per call, for `bpy.app.timers` ticks on the main
thread, and records the longest single slice so the budget can be checked.
"""

from __future__ import annotations

import time
from typing import Any, Generator

Steps = Generator[None, None, Any]


def run(steps: Steps) -> Any:
    """Run every slice now; returns the generator's result."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


class Sliced:
    """A generator of slices driven in time-bounded ticks: `tick(budget_s)` runs one slice, then
    more while the next (guessed to last as long as the previous) still fits in the budget, and
    returns True once the work is finished."""

    def __init__(self, steps: Steps) -> None:
        self._steps = steps
        self.done = False
        self.result: Any = None
        self.slices = 0
        self.longest_slice_s = 0.0
        self.longest_tick_s = 0.0

    def tick(self, budget_s: float) -> bool:
        if self.done:
            return True
        tick_start = time.perf_counter()
        while True:
            start = time.perf_counter()
            try:
                next(self._steps)
            except StopIteration as stop:
                self.done, self.result = True, stop.value
            now = time.perf_counter()
            self.slices += 1
            self.longest_slice_s = max(self.longest_slice_s, now - start)
            if self.done or (now - tick_start) + (now - start) > budget_s:
                break
        self.longest_tick_s = max(self.longest_tick_s, time.perf_counter() - tick_start)
        return self.done

    def cancel(self) -> None:
        """Stop now; the generator's finally-blocks run, no result."""
        self._steps.close()
        self.done = True
