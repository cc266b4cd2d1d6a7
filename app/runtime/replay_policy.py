"""The replay policy: rung (a) of the diagnostics ladder (docs/eval.md).

It answers every request with the recorded demonstration's own actions for the same seed — the rows
ks … ks+T−1 of the episode recorded on that seed, where ks is the tick the observation was taken at —
with the committed prefix in its first rows, as every policy must. Run through the whole deploy path
(the server, the async schedule and its prefix, the safety layer), it must reproduce the recordings'
success: the simulator is deterministic, so anything less is a bug between the data and the robot
(timing alignment, action representation, gripper mapping, the schedule) — exactly the bugs that look
like "learns open-loop, fails closed-loop".

It needs two simulator-only inputs (xr0.boundary.PRIVILEGED): the episode's seed and the tick, so it is a
diagnostic for `xr0 eval`, never a policy to deploy. `replay:STORE.zarr` names it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from xr0.boundary import Chunk, PolicyObservation, PolicySpec

PREFIX = "replay:"


class ReplayPolicy:
    def __init__(
        self, store: str | Path, chunk_length: int = 30, max_prefix: int = 6, latency_ms: float = 80.0
    ) -> None:
        from recording.reader import EpisodeStore

        self.store = EpisodeStore(store)
        self.latency_ms = float(latency_ms)
        self.by_seed: dict[int, int] = {}
        for episode in self.store.episodes:
            seed = self.store.info(episode).get("seed")
            if isinstance(seed, int) and not isinstance(seed, bool):
                self.by_seed.setdefault(seed, episode)
        if not self.by_seed:
            raise ValueError(f"{store} has no episode recorded with a simulator seed: nothing to replay")
        self.spec = PolicySpec(
            cameras=(),
            chunk_length=chunk_length,
            max_prefix=max_prefix,
            fps=self.store.fps,
            privileged=("seed", "episode_tick"),
        )
        self._lock = threading.Lock()  # zarr reads from the inference thread and the caller

    @property
    def seeds(self) -> list[int]:
        return sorted(self.by_seed)

    def infer(self, observation: PolicyObservation, prefix: np.ndarray) -> Chunk:
        seed = int(observation.privileged["seed"][0])
        tick = int(round(float(observation.privileged["episode_tick"][0])))
        episode = self.by_seed.get(seed)
        if episode is None:
            raise ValueError(f"seed {seed} was not recorded in {self.store.path}")
        with self._lock:
            last = self.store.length(episode) - 1
            actions, _ = self.store.window(episode, "action", min(tick, last), self.spec.chunk_length)
        actions = np.array(actions, dtype=np.float64)
        actions[: len(prefix)] = prefix
        return Chunk(actions, timing_ms={"total": self.latency_ms, "injected_latency": self.latency_ms})
