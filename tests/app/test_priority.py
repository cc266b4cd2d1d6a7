"""The control thread's priority (app/runtime/priority.py): raised for the loop only, never inherited by the
threads it starts, restored afterwards, left alone in lockstep; `xr0 doctor` says what is possible."""

import os
import threading
from dataclasses import replace

import pytest

from app.cli.commands.doctor import check_loop_priority
from app.compose.config import load_config
from app.compose.rig import build_sim_rig
from app.runtime.events import Publisher
from app.runtime.priority import can_raise, loop_priority
from app.runtime.rollout import RolloutSession
from app.runtime.runner import PolicyRunner
from app.runtime.scripted import HoldPolicy

REALTIME, NICE = can_raise()


def scheduling() -> tuple[int, int]:
    """(policy without flags, nice) of the calling thread."""
    policy = os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
    return policy, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_the_loop_thread_is_raised_and_restored_and_its_children_are_not():
    before = scheduling()
    seen = []
    with loop_priority("auto") as got:
        inside = scheduling()
        child = threading.Thread(target=lambda: seen.append(scheduling()))
        child.start()
        child.join()
    assert scheduling() == before
    assert seen == [before]  # a thread started by the loop does not inherit its priority
    if REALTIME:
        assert got == "SCHED_FIFO 40" and inside[0] == os.SCHED_FIFO
    elif NICE:
        assert got == "nice -10" and inside[1] == -10
    else:
        assert got.startswith("normal (not permitted") and inside == before


def test_off_and_lockstep_leave_the_thread_alone():
    before = scheduling()
    with loop_priority("off") as got:
        assert got == "normal (off)" and scheduling() == before
    with loop_priority("realtime", lockstep=True) as got:
        assert got.startswith("normal (lockstep") and scheduling() == before


def test_an_unknown_setting_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="auto, realtime, nice, off"), loop_priority("fast"):
        pass


class RecordsItsThread(HoldPolicy):
    def __init__(self) -> None:
        super().__init__()
        self.policies: set[int] = set()

    def infer(self, observation, prefix):
        self.policies.add(scheduling()[0])
        return super().infer(observation, prefix)


@pytest.mark.skipif(not REALTIME, reason="real-time scheduling is not permitted here")
def test_a_wall_clock_rollout_runs_its_loop_real_time_and_its_inference_normal():
    cfg = load_config(None, "sim")
    cfg = replace(cfg, control=replace(cfg.control, sim_timing="realtime"))
    rig = build_sim_rig(cfg, camera_names=[])
    policy = RecordsItsThread()
    publisher = Publisher()
    runner = PolicyRunner(rig.robot, rig.clock, policy, cfg.policy, cfg.control.fps, publisher)
    session = RolloutSession(rig, runner, cfg.control.fps, publisher, None, priority="auto")
    try:
        report = session.run(1.0)
    finally:
        rig.close()
    assert report.loop_priority == "SCHED_FIFO 40"
    assert policy.policies == {os.SCHED_OTHER}  # the inference worker thread kept normal scheduling
    assert scheduling()[0] == os.SCHED_OTHER  # and this thread is back to normal


def test_doctor_reports_what_the_loop_can_get():
    assert check_loop_priority(lambda: (True, True)).status == "ok"
    nice = check_loop_priority(lambda: (False, True))
    assert nice.status == "warn" and "nice -10" in nice.detail and "rtprio" in nice.fix
    assert check_loop_priority(lambda: (False, False)).status == "warn"
