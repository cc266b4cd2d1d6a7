"""What every control loop shares: putting the world at an episode's start, and the summaries of its timings.

Teleop, record, rollout, replay and the evaluation episode each run their own loop (their ticks differ: a
leader to follow, keys and a reset phase, a policy runner, recorded actions), but start an episode and
report lateness the same way, here.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from app.runtime.rig import Rig


def reset_world(rig: Rig, seed: int | None) -> int | None:
    """Start an episode: the simulator's world at `seed` (None: its next seed), the scripted teleoperator
    at its beginning, and the safety layer's step limit rebased on the new pose. Hardware has no world to
    reset: nothing happens and the seed is None. Returns the episode's seed."""
    if rig.sim is None:
        return None
    rig.sim.reset(seed)
    if rig.teleop is not None:
        rig.teleop.reset()
    rig.robot.rebase()
    return rig.sim.seed


def percentiles(values: Iterable[float], scale: float = 1.0, digits: int = 3) -> dict[str, float]:
    """p50, p99 and max of `values` × `scale`, rounded to `digits`; {} when there are none."""
    a = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64) * scale
    if a.size == 0:
        return {}
    p50, p99 = np.percentile(a, [50, 99])
    return {
        "p50": round(float(p50), digits),
        "p99": round(float(p99), digits),
        "max": round(float(a.max()), digits),
    }
