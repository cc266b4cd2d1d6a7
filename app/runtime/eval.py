"""One evaluation episode and the statistics of many (the `xr0 eval` report).

`run_episode` runs one seed of the simulator through the same deploy path as `xr0 rollout` (the runner's
schedule and action prefix, the safety layer), until the task is done or `episode_seconds` pass, with an
optional MP4 of the top camera. A policy that raises or answers garbage is an outcome of its episode.
`summarize` gives per episode and in total: success (gym-aloha's rule: stage 4 at any tick) with a 95 %
Wilson interval, the stage reached, time to success, tasks per minute of control time, chunk rejections
and policy errors, safety clamps, and inference latency. Worker processes: app/cli/evaluation.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.runtime.episodes import percentiles, reset_world
from app.runtime.rig import Rig
from app.runtime.runner import PolicyConfig
from drivers.sim.aloha import STAGE_NAMES, AlohaSim, StageTracker

if TYPE_CHECKING:
    from drivers.safety import SafetyLayer
    from xr0.boundary import Chunk, Policy, PolicyObservation

log = logging.getLogger(__name__)

VIDEO_CAMERA = "cam_high"


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    stage: int  # highest stage reached (0..4)
    stage_ticks: list[int | None]  # first tick each stage 1..4 was reached
    ticks: int  # control ticks the episode ran
    time_to_success_s: float | None
    reason: str  # success | timeout | policy error: … | not run: …
    chunks: dict[str, int] = field(default_factory=dict)  # requested, used, rejected, errors
    clamps: int = 0  # safety clamps (joint limit + per-tick delta)
    latency_ms: list[float] = field(default_factory=list)
    video: str | None = None


# -- one episode ----------------------------------------------------------------------------------------------
class Watched:
    """The policy, remembering its last exception (the runner counts errors; the report says which)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.spec = policy.spec
        self.last_error: str | None = None

    def infer(self, observation: PolicyObservation, prefix: np.ndarray) -> Chunk:
        try:
            return self.policy.infer(observation, prefix)
        except Exception as e:
            self.last_error = f"{type(e).__name__}: {e}"
            raise

    def __getattr__(self, name: str) -> Any:  # on_step, close, … of the wrapped policy
        return getattr(self.policy, name)


def run_episode(
    rig: Rig,
    policy: Watched,
    config: PolicyConfig,
    fps: float,
    seed: int,
    video: Path | None = None,
    video_size: tuple[int, int] = (320, 240),
) -> EpisodeResult:
    """One seed in lockstep: reset, run the policy until stage 4 or the time limit, judge every tick."""
    from app.runtime.events import EpisodeEvent, Publisher
    from app.runtime.runner import PolicyRunner
    from drivers.clock import Rate

    max_ticks = max(1, round(config.episode_seconds * fps))
    publisher = Publisher()
    if hasattr(policy.policy, "on_step"):  # the scripted policy follows the task's progress
        publisher.subscribers.append(policy.policy)
    runner = PolicyRunner(
        rig.robot, rig.clock, policy, config, fps, publisher, privileged=sim_privileged(rig.sim, fps)
    )
    runner.restart(0)
    reset_world(rig, seed)
    publisher.episode(EpisodeEvent(0, "start", rig.clock.now_ns(), seed=seed))
    safety = rig.robot.safety
    clamps0 = _clamps(safety)
    policy.last_error = None
    stages = StageTracker(rig.sim)
    frames = _VideoWriter(video, fps, video_size) if video is not None else None
    ticks = 0
    try:
        with runner:
            rate = Rate(rig.clock, fps)
            while ticks < max_ticks:
                tick = rate.wait()
                runner.step(tick)
                ticks += 1
                stages.update()
                if frames is not None:
                    frames.add(rig.sim)
                if stages.success:  # gym-aloha's rule: the episode ends at the first stage-4 tick
                    break
    finally:
        if frames is not None:
            frames.close()
    success, stage_ticks = stages.success, stages.stage_ticks
    publisher.episode(EpisodeEvent(0, "end", rig.clock.now_ns(), success=success, seed=seed))
    st, counters = runner.stats, runner.scheduler.counters
    used = counters.on_time + counters.late
    if success:
        reason = "success"
    elif st.inference_errors and used == 0:
        reason = f"policy error: {policy.last_error or 'no answer'}"
    else:
        reason = "timeout"
    return EpisodeResult(
        seed=seed,
        success=success,
        stage=stages.max_stage,
        stage_ticks=list(stage_ticks),
        ticks=ticks,
        time_to_success_s=round((stages.success_tick + 1) / fps, 3) if success else None,
        reason=reason,
        chunks={
            "requested": counters.requests,
            "used": used,
            "rejected": st.rejected_chunks,
            "errors": st.inference_errors,
            "prefix_mismatches": st.prefix_mismatches,
            "starvations": st.starvations,
        },
        clamps=_clamps(safety) - clamps0,
        latency_ms=[round(float(x), 3) for x in st.inference_ms],
        video=str(video) if video is not None else None,
    )


def sim_privileged(sim: AlohaSim, fps: float) -> Callable[[], dict[str, np.ndarray]]:
    """The simulator-only inputs (xr0.boundary.PRIVILEGED) for diagnostic policies: the episode's seed,
    the tick the physics is at, and where the (first) object started."""

    def values() -> dict[str, np.ndarray]:
        return {
            "seed": np.array([float(sim.seed)]),
            "episode_tick": np.array([float(round(sim.time_s * fps))]),
            "object_start": sim.object_start(),
        }

    return values


def _clamps(safety: SafetyLayer | None) -> int:
    if safety is None:
        return 0
    c = safety.counters
    return int(c.clamped_limit + c.clamped_delta)


class _VideoWriter:
    """The top camera of one episode as an H.264 MP4 (PyAV), frame by frame."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        import av

        self.width, self.height = size
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream("libx264", rate=round(fps))
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"preset": "veryfast", "crf": "23"}
        self._av = av

    def add(self, sim: AlohaSim) -> None:
        image = sim.render(VIDEO_CAMERA, self.width, self.height)
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


# -- the report -------------------------------------------------------------------------------------------------
def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(results: list[EpisodeResult], fps: float, task: str) -> dict:
    ran = [r for r in results if not r.reason.startswith("not run")]
    n, k = len(ran), sum(r.success for r in ran)
    lo, hi = wilson(k, n)
    latency = [x for r in ran for x in r.latency_ms]
    control_min = sum(r.ticks for r in ran) / fps / 60.0
    times = [r.time_to_success_s for r in ran if r.success]
    names = STAGE_NAMES.get(task, STAGE_NAMES["transfer_cube"])
    return {
        "episodes": len(results),
        "ran": n,
        "successes": k,
        "success_rate": round(k / n, 4) if n else None,
        "wilson95": [round(lo, 4), round(hi, 4)],
        "stage_rates": {
            names[s]: round(sum(r.stage > s for r in ran) / n, 4) if n else None for s in range(4)
        },
        "time_to_success_s": {"median": round(float(np.median(times)), 3)} if times else {},
        "tasks_per_min": round(k / control_min, 3) if control_min else 0.0,
        "chunks": {
            key: sum(r.chunks.get(key, 0) for r in ran)
            for key in ("requested", "used", "rejected", "errors", "prefix_mismatches", "starvations")
        },
        "clamps": sum(r.clamps for r in ran),
        "latency_ms": percentiles(latency, digits=2),
        "reasons": _count(r.reason.split(":")[0] for r in results),
    }


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def write_report(out: Path, header: dict, results: list[EpisodeResult], totals: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps({**header, "totals": totals, "episodes": [asdict(r) for r in results]}, indent=1)
    )
    os.replace(tmp, path)
    return path
