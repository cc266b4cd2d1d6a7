import time

import pytest

from drivers.clock import NS_PER_S, Rate, SimClock, WallClock


def test_sim_clock_rate_hits_every_deadline_exactly():
    clock = SimClock(start_ns=5)
    rate = Rate(clock, hz=30)
    ticks = [rate.wait() for _ in range(90)]
    assert [t.index for t in ticks] == list(range(90))
    assert all(t.deadline_ns == 5 + k * rate.period_ns for k, t in enumerate(ticks))
    assert all(t.lateness_ns == 0 and t.skipped == 0 for t in ticks)
    assert clock.now_ns() == 5 + 89 * rate.period_ns


def test_overrun_skips_missed_ticks_instead_of_bursting():
    clock = SimClock()
    rate = Rate(clock, hz=10)  # 100 ms period
    rate.wait()  # tick 0 at t=0
    clock.advance(350_000_000)  # the loop body took 3.5 periods
    tick = rate.wait()
    # Ticks 1 and 2 are given up; tick 3 (due at 300 ms) runs at once, 50 ms late, on the original grid.
    assert tick.skipped == 2
    assert tick.index == 3
    assert tick.deadline_ns == 300_000_000
    assert tick.lateness_ns == 50_000_000
    assert rate.skipped_total == 2
    assert rate.wait().deadline_ns == 400_000_000


def test_late_but_within_period_is_reported_not_skipped():
    clock = SimClock()
    rate = Rate(clock, hz=10)
    rate.wait()
    clock.advance(130_000_000)  # 30 ms past tick 1's deadline
    tick = rate.wait()
    assert tick.index == 1 and tick.skipped == 0
    assert tick.lateness_ns == 30_000_000


def test_wall_clock_keeps_absolute_deadlines_without_drift():
    clock = WallClock()
    hz = 100
    rate = Rate(clock, hz=hz)
    n = 40
    for k in range(n):
        tick = rate.wait()
        assert tick.deadline_ns == rate.start_ns + tick.index * rate.period_ns
        time.sleep(0.004 if k % 2 else 0.001)  # uneven work inside the tick
    elapsed = clock.now_ns() - rate.start_ns
    # With drift (sleep(dt) after the work) this would be ~n * 12.5 ms; absolute deadlines keep it at n periods.
    assert (n - 1) * NS_PER_S / hz <= elapsed < (n - 1) * NS_PER_S / hz + 0.008 * NS_PER_S


def test_sim_clock_refuses_to_go_back():
    clock = SimClock(100)
    clock.sleep_until(50)
    assert clock.now_ns() == 100
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


def test_rate_rejects_non_positive_hz():
    with pytest.raises(ValueError, match="must be positive"):
        Rate(SimClock(), 0)
