"""Progress of a long benchmark: one line per step with what runs, the time spent and the time left."""

from __future__ import annotations

import time
from collections.abc import Callable


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


class Progress:
    """Counts planned steps; the time left is the average step so far times the steps to go.

    Before the first step ends, a step is assumed to take ``guess_secs``.
    """

    def __init__(
        self,
        total_steps: int,
        guess_secs: float,
        *,
        say: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total_steps
        self._guess = guess_secs
        self._say = say
        self._clock = clock
        self._started = clock()
        self.done = 0

    def step(self, what: str) -> None:
        """Announce the next step; call it as each step begins."""
        elapsed = self._clock() - self._started
        self.total = max(self.total, self.done + 1)
        per_step = elapsed / self.done if self.done else self._guess
        left = per_step * (self.total - self.done)
        self.done += 1
        self._say(f"[{self.done}/{self.total}] {what} ({_clock(elapsed)} elapsed, about {_clock(left)} left)")

    def skip(self, steps: int) -> None:
        """Steps that will not run after all (a target failed to start)."""
        self.total = max(self.done, self.total - steps)
