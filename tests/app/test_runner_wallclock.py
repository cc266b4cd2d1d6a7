"""The runner against the wall clock: the simulator in real time, a scripted policy that really sleeps a
random 40–120 ms per chunk in the worker thread. Assertions hold on a loaded 2-core machine: they check
the schedule's rules on what actually happened, not how fast the machine was."""

from dataclasses import replace

import numpy as np

from tests.app.runner_helpers import check_commitments, scripted_session, small_config


def test_async_on_the_wall_clock_with_random_latency(tmp_path):
    cfg = small_config(tmp_path)
    jittery = replace(cfg.policy.scripted, latency_ms=(40.0, 120.0))
    cfg = replace(
        cfg,
        control=replace(cfg.control, sim_timing="realtime"),
        policy=replace(cfg.policy, mode="async", scripted=jittery),
    )
    rig, runner, session, log = scripted_session(cfg)
    assert runner.policy.sleep  # it really sleeps in the worker thread
    report = session.run(4.0)
    rig.close()
    st = runner.stats

    # The loop kept its deadlines while the policy slept elsewhere.
    assert report.ticks == 120 and st.ticks + st.skipped_ticks == 120
    assert st.skipped_ticks <= 6
    assert np.percentile(st.lateness_ns, 50) < 10e6
    # Answers arrived 2..(T-1) ticks after their requests (40–120 ms plus a loaded machine) ...
    spliced = [sw for sw in runner.switches if sw.spliced]
    assert len(spliced) >= 3
    assert all(2 <= sw.delay < 30 for sw in spliced)
    assert min(st.inference_ms) >= 39.0
    # ... and whatever the delay, committed actions never changed and each chunk took over at row d.
    assert check_commitments(runner, log) >= 3 * len(spliced) - 3
    # The plan rarely ran dry: the trigger margin absorbs the jitter.
    assert st.executed >= 0.8 * (st.ticks - st.waiting_ticks)
    # Every executed action is traceable to (chunk id, row).
    ids = {sw.request.id for sw in spliced}
    assert all(e.chunk_id in ids for e in log.steps if e.planned is not None)
