"""The recorder subscriber: any control loop's events become recorder calls.

An episode `start` opens one, each `StepEvent` becomes a store row (`step_from_event`: references, no
copies; handed to the recorder process without blocking), `end` commits it (or discards it when
`info["discard"]`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from app.runtime.events import EpisodeEvent, StepEvent

if TYPE_CHECKING:
    from recording.recorder import Recorder
    from recording.schema import StoreSpec


# -- the subscriber ---------------------------------------------------------------------------------------------
def step_from_event(e: StepEvent, spec: StoreSpec) -> dict[str, Any]:
    """The store's per-step record of one loop tick (references, no copies)."""
    obs = e.observation
    step: dict[str, Any] = {
        "timestamp_ns": e.deadline_ns,
        "tick": e.tick,
        "lateness_ns": e.lateness_ns,
        "observation.state": obs.state,
        "observation.state.t_ns": obs.state_t_ns,
        "action": e.action,
        "action.t_ns": e.action_t_ns,
        "action.clamped": e.clamped,
        "action.rejected": e.rejected,
    }
    if spec.velocity:
        step["observation.velocity"] = obs.velocity
    if spec.effort:
        step["observation.effort"] = obs.effort
    if spec.leader:
        step["leader.action"] = e.leader
        step["leader.t_ns"] = e.leader_t_ns
    if spec.policy_chunk:
        step.update(policy_fields(e, spec))
    for cam in spec.cameras:
        step[f"observation.images.{cam}"] = obs.images[cam]
        step[f"observation.images.{cam}.t_ns"] = obs.image_t_ns[cam]
        step[f"observation.images.{cam}.index"] = obs.image_index[cam]
    return step


def policy_fields(e: StepEvent, spec: StoreSpec) -> dict[str, Any]:
    """A policy rollout's per-step record: which chunk row ran, what was planned, the chunk that arrived."""
    new = e.new_chunk if e.new_chunk is not None and e.new_chunk.actions is not None else None
    chunk = np.zeros((spec.policy_chunk, len(spec.joint_names)))
    if new is not None:
        rows = min(len(new.actions), spec.policy_chunk)
        chunk[:rows] = new.actions[:rows]
    return {
        "policy.chunk_id": -1 if e.chunk_id is None else e.chunk_id,
        "policy.chunk_index": -1 if e.chunk_index is None else e.chunk_index,
        "policy.planned": e.action if e.planned is None else e.planned,
        "policy.new_chunk_id": -1 if new is None else new.chunk_id,
        "policy.new_chunk_start": -1 if new is None else new.tick_start,
        "policy.new_chunk": chunk,
    }


class RecorderSubscriber:
    """Records a loop's episodes. `on_step` only hands the step to the recorder's queue and returns."""

    def __init__(self, recorder: Recorder, task: str, attrs: dict[str, Any] | None = None) -> None:
        self.recorder = recorder
        self.task = task
        self.attrs = dict(attrs or {})

    def on_episode(self, e: EpisodeEvent) -> None:
        info = dict(e.info)
        if e.kind == "start":
            self.recorder.start_episode(
                {
                    **self.attrs,
                    "task": info.pop("task", self.task),
                    "seed": e.seed,
                    "start_time_ns": e.t_ns,
                    **info,
                }
            )
        elif e.kind == "end":
            commit = not info.pop("discard", False)
            self.recorder.end_episode(commit, {"success": e.success, "end_time_ns": e.t_ns, **info})

    def on_step(self, e: StepEvent) -> None:
        if self.recorder.current is not None:
            self.recorder.add_step(step_from_event(e, self.recorder.spec))

    def close(self) -> None:
        self.recorder.close()
