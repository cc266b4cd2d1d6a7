"""The chunk scheduler, tick by tick, against answers with chosen delays (no clock, no threads)."""

import numpy as np
import pytest

from app.runtime.schedule import ChunkScheduler, DelayEstimator, Switch

PERIOD_NS = 33_333_333
T = 30


def estimator(initial_ticks: int = 3, window: int = 20) -> DelayEstimator:
    # A delay a little under n periods is n ticks (an answer is usable at the first deadline after it).
    return DelayEstimator(PERIOD_NS, window=window, quantile=0.95, initial_ms=initial_ticks * 33.3)


def simulate(mode, delays, ticks=240, max_prefix=6, late="accept", margin=2, seed=0, record_delays=True):
    """Drive a scheduler for `ticks` ticks. The n-th request is answered `delays[n]` ticks later (cycled)
    with a random chunk whose prefix rows are deliberately wrong. Returns what ran and what was asked."""
    rng = np.random.default_rng(seed)
    est = estimator()
    s = ChunkScheduler(mode, T, max_prefix, est, margin, late)
    sent = {}  # tick -> the action that ran (a planned row, or the held command)
    planned_at = {}  # tick -> Planned or None
    requests, switches, in_flight = [], [], []
    last = np.zeros(14)
    for k in range(ticks):
        for item in [f for f in in_flight if f[1] == k]:
            in_flight.remove(item)
            req, _, actions = item
            sw = s.receive(req, actions, k)
            switches.append(sw)
            if record_delays:
                est.record((k - req.tick) * 33.3)
        p = s.planned(k)
        planned_at[k] = p
        if p is not None:
            last = p.action
        sent[k] = last.copy()
        if s.due(k):
            req = s.request(k, k * PERIOD_NS, last)
            requests.append(req)
            actions = rng.normal(size=(T, 14)) + 100.0  # far from any prefix: overwriting must happen
            in_flight.append((req, k + delays[(len(requests) - 1) % len(delays)], actions))
    return s, sent, planned_at, requests, switches


@pytest.mark.parametrize("late", ["accept", "discard"])
@pytest.mark.parametrize("delays", [[3], [1, 2, 3], [2, 5, 3, 1, 4], [3, 8, 2, 7]])
def test_async_committed_actions_never_change(delays, late):
    s, sent, planned_at, requests, switches = simulate("async", delays, late=late)
    checked = 0
    for req in requests:
        for i, row in enumerate(req.prefix):
            k = req.tick + i
            if k in sent:
                assert np.array_equal(sent[k], row), f"tick {k}: committed action changed (request {req.id})"
                checked += 1
    assert checked > 20
    assert s.counters.requests == len(requests)


@pytest.mark.parametrize("mode", ["async", "async-naive"])
def test_switch_index_equals_realised_delay(mode):
    s, sent, planned_at, requests, switches = simulate(mode, [1, 2, 3, 4, 5])
    spliced = [sw for sw in switches if sw.spliced]
    assert len(spliced) > 5
    for sw in spliced:
        assert sw.index == sw.arrival_tick - sw.request.tick == sw.delay
        p = planned_at[sw.arrival_tick]
        assert (p.chunk_id, p.index) == (sw.request.id, sw.delay)  # the new chunk runs from row d at ka
        # … and every later tick of it stays aligned: row = tick − ks
        k = sw.arrival_tick + 1
        while k in planned_at and planned_at[k] is not None and planned_at[k].chunk_id == sw.request.id:
            assert planned_at[k].index == k - sw.request.tick
            k += 1


def test_prefix_rows_equal_committed_actions_and_are_enforced():
    s, sent, planned_at, requests, switches = simulate("async", [2, 3])
    for sw in switches:
        if sw.spliced:
            p = len(sw.request.prefix)
            assert p >= 1
            assert np.array_equal(
                sw.actions[:p], sw.request.prefix
            )  # the policy's wrong rows were overwritten
            assert sw.prefix_error > 0.5  # and the error was measured
    # the prefix is the next P planned actions: P = the delay estimate in ticks (here 2 or 3)
    assert all(len(r.prefix) == r.expected_delay for r in requests)
    assert {len(r.prefix) for r in requests[-5:]} == {3}  # a high quantile of the recent delays


def test_prefix_is_bounded_by_the_trained_maximum():
    s, sent, planned_at, requests, switches = simulate("async", [8], max_prefix=6)
    assert max(len(r.prefix) for r in requests) == 6
    # the estimate (8) exceeds the prefix (6): every chunk is late, and accepted (it could not be otherwise)
    late = [sw for sw in switches if sw.outcome == "late"]
    assert late and all(sw.index == 8 for sw in late)


def test_naive_and_sync_send_no_prefix():
    for mode in ("async-naive", "sync"):
        _, _, _, requests, _ = simulate(mode, [3], ticks=120)
        assert requests and all(len(r.prefix) == 0 for r in requests)


def test_late_chunk_accept_is_spliced_and_counted():
    # Estimated 3 ticks; one answer takes 5: it arrives after its prefix (3) ran out.
    s, sent, planned_at, requests, switches = simulate(
        "async", [3, 3, 5, 3], late="accept", record_delays=False
    )
    late = [sw for sw in switches if sw.outcome == "late"]
    assert late and s.counters.late == len(late)
    for sw in late:
        assert sw.delay == 5 and sw.index == 5 and planned_at[sw.arrival_tick].chunk_id == sw.request.id


def test_late_chunk_discard_is_dropped_and_asked_again():
    s, sent, planned_at, requests, switches = simulate(
        "async", [3, 3, 5, 3], late="discard", record_delays=False
    )
    dropped = [sw for sw in switches if sw.outcome == "late_discarded"]
    assert dropped and s.counters.late_discarded == len(dropped) and s.counters.late == 0
    for sw in dropped:
        assert all(p is None or p.chunk_id != sw.request.id for p in planned_at.values())
        # asked again on the very tick the late answer was dropped
        assert any(r.tick == sw.arrival_tick for r in requests)


def test_starvation_holds_and_is_visible_in_the_plan():
    # Answers take 20 ticks but the estimate stays at 3 (not fed back): the plan runs dry before each arrives.
    s, sent, planned_at, requests, switches = simulate("async", [20], record_delays=False, ticks=200)
    dry = [k for k, p in planned_at.items() if p is None]
    assert len(dry) > 40  # many held ticks, beyond the start-up wait
    for k in dry[1:]:
        if k - 1 in sent:
            assert np.array_equal(sent[k], sent[k - 1])  # the held command repeats


def test_expired_chunk_is_dropped():
    s, sent, planned_at, requests, switches = simulate("async", [T + 2], record_delays=False, ticks=120)
    assert s.counters.expired >= 1
    assert all(not sw.spliced for sw in switches if sw.outcome == "expired")


def test_sync_waits_and_starts_each_chunk_at_row_zero():
    s, sent, planned_at, requests, switches = simulate("sync", [4], ticks=200)
    assert len(requests) >= 4
    for req, sw in zip(requests, switches, strict=False):
        assert sw.arrival_tick == req.tick + 4
        for k in range(req.tick, sw.arrival_tick):
            assert planned_at[k] is None  # robot stopped while the policy thinks
        assert planned_at[sw.arrival_tick].index == 0  # then the whole chunk from its first row
        end = sw.arrival_tick + T - 1
        if end in planned_at:
            assert planned_at[end].index == T - 1 and planned_at[end].chunk_id == req.id
        if end + 1 in planned_at:
            assert planned_at[end + 1] is None  # and only then asks again
    assert {r.tick for r in requests[1:]} == {sw.arrival_tick + T for sw in switches[:-1] if sw.spliced} & {
        r.tick for r in requests[1:]
    }


def test_reset_drops_answers_to_old_requests():
    est = estimator()
    s = ChunkScheduler("async", T, 6, est)
    req = s.request(0, 0, np.zeros(14))
    s.reset()
    sw = s.receive(req, np.zeros((T, 14)), 3)
    assert sw.outcome == "stale_epoch" and not s.has_plan and s.counters.stale_epoch == 1


def test_request_pads_prefix_with_the_held_command_when_nothing_is_planned():
    s = ChunkScheduler("async", T, 6, estimator(4))
    hold = np.arange(14.0)
    req = s.request(0, 0, hold)
    assert req.prefix.shape == (4, 14) and np.all(req.prefix == hold)
    # a short remainder is padded with its own last row
    s.receive(req, np.tile(np.arange(T, dtype=float)[:, None], (1, 14)), 4)
    req2 = s.request(T - 2, 0, hold)  # rows 28, 29 remain
    assert [row[0] for row in req2.prefix] == [28.0, 29.0, 29.0, 29.0]


def test_trigger_threshold_follows_the_estimate():
    est = estimator(3)
    s = ChunkScheduler("async", T, 6, est, trigger_margin=2)
    assert (s.prefix_length(), s.threshold()) == (3, 5)
    for _ in range(20):
        est.record(140.0)  # 4.2 periods -> 5 ticks
    assert (s.prefix_length(), s.threshold()) == (5, 7)


def test_delay_estimate_forgets_an_old_outlier():
    est = DelayEstimator(PERIOD_NS, window=10, quantile=0.9, initial_ms=90)
    assert est.ticks() == 3 and est.measured == 0
    est.record(500.0)  # one slow answer long ago
    assert est.ticks() >= 15
    for _ in range(10):
        est.record(60.0)
    assert est.ticks() == 2  # a windowed quantile, not an all-time maximum


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="mode"):
        ChunkScheduler("fast", T, 6, estimator())
    with pytest.raises(ValueError, match="max_prefix"):
        ChunkScheduler("async", T, 0, estimator())
    with pytest.raises(ValueError, match="window"):
        DelayEstimator(PERIOD_NS, window=0)


def test_one_request_at_a_time():
    s = ChunkScheduler("async", T, 6, estimator())
    s.request(0, 0, np.zeros(14))
    assert not s.due(0)
    with pytest.raises(RuntimeError, match="in flight"):
        s.request(1, 0, np.zeros(14))


def test_switch_delay_property():
    s = ChunkScheduler("async", T, 6, estimator())
    req = s.request(5, 0, np.zeros(14))
    sw = s.receive(req, np.zeros((T, 14)), 8)
    assert isinstance(sw, Switch) and sw.delay == 3 and sw.outcome == "on_time" and sw.index == 3
