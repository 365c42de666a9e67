"""The benchmark's progress lines: what runs, time spent, time left."""

from __future__ import annotations

from bench.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_step_says_what_runs_and_estimates_what_is_left() -> None:
    lines: list[str] = []
    clock = FakeClock()
    progress = Progress(4, guess_secs=12, say=lines.append, clock=clock)
    progress.step("backend alone, query x1, 10 s")
    clock.now += 20  # the first step took 20 s, not the 12 guessed
    progress.step("backend alone, query x32, 10 s")
    clock.now += 10
    progress.skip(1)  # a target did not start
    progress.step("stream")
    assert lines == [
        "[1/4] backend alone, query x1, 10 s (0:00 elapsed, about 0:48 left)",
        "[2/4] backend alone, query x32, 10 s (0:20 elapsed, about 1:00 left)",
        "[3/3] stream (0:30 elapsed, about 0:15 left)",
    ]


def test_more_steps_than_planned_never_count_below_zero() -> None:
    lines: list[str] = []
    progress = Progress(1, guess_secs=1, say=lines.append, clock=FakeClock())
    progress.step("a")
    progress.step("b")
    assert lines[-1].startswith("[2/2] b ")
