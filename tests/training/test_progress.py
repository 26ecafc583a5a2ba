"""The log lines of a stage's run where there is no terminal."""

import pytest

from mambacontrol.training import progress
from mambacontrol.training.progress import ScalarWindow, StageProgress


class Clock:
    """A stand-in for ``time.perf_counter`` that moves only when told."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", fake)
    return fake


def run_steps(display, clock, losses, first, seconds_per_step, log_every):
    """Steps ``first+1 ...`` with ``losses``, a report every ``log_every`` steps."""
    window = ScalarWindow()
    for done, loss in enumerate(losses, start=first + 1):
        clock.now += seconds_per_step
        window.add({"loss": loss}, 1)
        display.step(loss)
        if done % log_every == 0:
            display.report(done, window, 1.0)
            window = ScalarWindow()


def lines(caplog):
    return [r.getMessage() for r in caplog.records if ": step " in r.getMessage()]


def test_a_line_carries_the_mean_loss_of_every_step_since_the_previous_line(clock, caplog):
    caplog.set_level("INFO", logger="mambacontrol.training.progress")
    display = StageProgress("toy", steps=200, start=0, log_every=5, main_process=True)
    assert display.line_every == 10                     # about 20 lines per run
    run_steps(display, clock, [float(s) for s in range(1, 21)], 0, 1.0, 5)
    first, second = lines(caplog)
    # steps 1-10 average 5.5; the last report's window alone (steps 6-10) would say 8
    assert first.startswith("toy: step 10/200, loss 5.5 (mean of steps 1-10)")
    assert second.startswith("toy: step 20/200, loss 15.5 (mean of steps 11-20)")


def test_time_left_follows_the_last_stretch_so_a_pause_misleads_one_line(clock, caplog):
    caplog.set_level("INFO", logger="mambacontrol.training.progress")
    display = StageProgress("toy", steps=200, start=0, log_every=10, main_process=True)
    run_steps(display, clock, [1.0] * 10, 0, 1.0, 10)
    clock.now += 3600.0                                  # the process stopped for an hour
    run_steps(display, clock, [1.0] * 20, 10, 1.0, 10)
    left = [line.rsplit(", ", 1)[1] for line in lines(caplog)]
    assert left == ["3m10s left", "18h03m00s left", "2m50s left"]   # the run's mean: 5h42m50s


def test_a_resumed_run_counts_its_stretch_from_the_step_it_resumed_at(clock, caplog):
    caplog.set_level("INFO", logger="mambacontrol.training.progress")
    display = StageProgress("toy", steps=200, start=100, log_every=10, main_process=True)
    run_steps(display, clock, [2.0] * 10, 100, 2.0, 10)
    (line,) = lines(caplog)
    assert line.startswith("toy: step 110/200, loss 2 (mean of steps 101-110)")
    assert line.endswith("3m00s left")


def test_non_finite_losses_are_left_out_of_the_mean(clock, caplog):
    caplog.set_level("INFO", logger="mambacontrol.training.progress")
    display = StageProgress("toy", steps=200, start=0, log_every=10, main_process=True)
    run_steps(display, clock, [1.0, float("nan")] * 5, 0, 1.0, 10)
    assert lines(caplog)[0].startswith("toy: step 10/200, loss 1 (mean of steps 1-10)")
