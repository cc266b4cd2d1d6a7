"""The control thread's priority: what the OS offers, asked for where it is permitted, and said either way.

A 30 Hz loop on a workstation that also trains, renders a viewer and runs a browser loses ticks to the
scheduler, not to its own work. `loop_priority(setting)` raises the *calling* thread (the control loop)
for the length of a `with` block and restores it after:

- `realtime` (and `auto` first): SCHED_FIFO at RT_PRIORITY, below the kernel's threaded interrupts (50).
  Needs root, CAP_SYS_NICE or an `rtprio` limit (`ulimit -r`; /etc/security/limits.d).
- `nice` (and `auto` when real-time is refused): a nice value of NICE for this thread only (negative values
  need the same permissions as above; a user's own limit may allow some).
- `off`: unchanged.

Threads and processes started from the raised thread do not inherit it (SCHED_RESET_ON_FORK): the
inference worker, the recorder's writer (already at nice +10) and the viewer keep normal priority, so the
loop, which sleeps most of each tick, is the only thread that jumps the queue. While the loop is raised,
Python's thread switch interval drops from 5 ms to 1 ms so that the loop thread gets the GIL back sooner
from a busy worker thread.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

SETTINGS = ("auto", "realtime", "nice", "off")
RT_PRIORITY = 40
NICE = -10
SWITCH_INTERVAL_S = 0.001
_RESET_ON_FORK = getattr(os, "SCHED_RESET_ON_FORK", 0)


def _try_realtime() -> str | None:
    """SCHED_FIFO for the calling thread; None (and why, logged at debug) if the OS refuses."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | _RESET_ON_FORK, os.sched_param(RT_PRIORITY))
    except (AttributeError, OSError) as e:
        log.debug("real-time scheduling refused: %s", e)
        return None
    return f"SCHED_FIFO {RT_PRIORITY}"


def _try_nice(tid: int) -> str | None:
    try:
        if _RESET_ON_FORK:  # new threads and children start at nice 0, not at ours
            os.sched_setscheduler(0, os.SCHED_OTHER | _RESET_ON_FORK, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, tid, NICE)
    except (AttributeError, OSError) as e:
        log.debug("a negative nice value was refused: %s", e)
        return None
    return f"nice {NICE}"


@contextmanager
def loop_priority(setting: str = "auto", lockstep: bool = False) -> Iterator[str]:
    """Raise the calling thread as `setting` says for the block; yields what it got ("SCHED_FIFO 40",
    "nice -10", or "normal (…)" with the reason) and restores the thread's scheduling afterwards.
    `lockstep`: the loop runs on a simulated clock, as fast as it can, never sleeping: it is left alone
    (a real-time thread that never sleeps would starve the rest of the machine)."""
    if setting not in SETTINGS:
        raise ValueError(f"loop priority must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if lockstep and setting != "off":
        yield "normal (lockstep: a simulated clock)"
        return
    tid = threading.get_native_id()
    try:
        before = (os.sched_getscheduler(0), os.sched_getparam(0), os.getpriority(os.PRIO_PROCESS, tid))
    except (AttributeError, OSError):  # not Linux: nothing to ask for
        yield "normal (this OS has no per-thread scheduling here)"
        return
    got = None
    if setting in ("auto", "realtime"):
        got = _try_realtime()
    if got is None and setting in ("auto", "nice"):
        got = _try_nice(tid)
    if got is None:
        why = (
            "off"
            if setting == "off"
            else "not permitted: run as root or grant CAP_SYS_NICE / an rtprio limit"
        )
        got = f"normal ({why})"
        if setting != "off":
            log.info("control loop at normal priority (%s)", why)
    switch = sys.getswitchinterval()
    raised = not got.startswith("normal")
    if raised:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        yield got
    finally:
        if raised:
            sys.setswitchinterval(switch)
            policy, param, nice = before
            try:
                os.sched_setscheduler(0, policy, param)
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except OSError as e:  # e.g. an unprivileged thread cannot clear SCHED_RESET_ON_FORK
                log.debug("could not restore the thread's scheduling: %s", e)


def can_raise() -> tuple[bool, bool]:
    """(real-time permitted, negative nice permitted), tried on a short-lived thread (for `xr0 doctor`)."""
    result: list[bool] = []

    def probe() -> None:
        result.append(_try_realtime() is not None)
        result.append(_try_nice(threading.get_native_id()) is not None)

    t = threading.Thread(target=probe, name="priority-probe")
    t.start()
    t.join()
    return result[0], result[1]
