"""`xr0 replay` — play a recorded episode's actions back on the robot, through the safety layer.

The actions are the commands that were really sent (after clamping), at the episode's rate on absolute
deadlines. In the simulator the scene is reset with the episode's seed first, so a replay reproduces
the recorded run (MuJoCo is deterministic): the report gives the largest difference between the
replayed and the recorded joint states, and the task's success.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from app.compose.config import AppConfig
from app.errors import UserError
from app.runtime.episodes import reset_world
from drivers.clock import Rate
from drivers.sim.aloha import StageTracker

log = logging.getLogger(__name__)


@dataclass
class ReplayReport:
    episode: int
    steps: int
    max_state_error: float  # largest |replayed − recorded| joint state over the episode (rad / fraction)
    success: bool | None
    recorded_success: bool | None
    safety: dict


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="store path, or a NAME under recording.root")
    p.add_argument("--episode", type=int, default=None, help="episode index (default: the first)")


def replay(config: AppConfig, path: Path, episode: int | None) -> ReplayReport:
    from app.compose.rig import build_rig
    from recording.reader import EpisodeStore

    store = EpisodeStore(path)
    if not store.episodes:
        raise UserError(f"dataset {path} has no committed episodes to replay")
    episode = store.episodes[0] if episode is None else episode
    info = store.info(episode)
    actions = store.get(episode, "action")
    states = store.get(episode, "observation.state")
    if config.robot.type == "sim":
        seed, task = info.get("seed"), info.get("sim_task") or config.robot.sim.task
        if store.spec.robot_type != "sim":
            log.warning("replaying an episode recorded on %s in the simulator", store.spec.robot_type)
        sim_cfg = replace(
            config.robot.sim, task=task, seed=config.robot.sim.seed if seed is None else int(seed)
        )
        config = replace(config, robot=replace(config.robot, sim=sim_cfg))
    if abs(store.fps - config.control.fps) > 1e-6:
        log.warning("episode recorded at %g Hz, replayed at its own rate", store.fps)
    rig = build_rig(config, camera_names=[])
    robot, clock = rig.robot, rig.clock
    stages = StageTracker(rig.sim) if rig.sim is not None else None
    error = 0.0
    try:
        with robot:
            if rig.sim is not None:
                reset_world(rig, rig.sim.seed)
            rate = Rate(clock, store.fps)
            for t, action in enumerate(actions):
                rate.wait()
                state = robot.read_joints()[0]
                error = max(error, float(np.max(np.abs(state - states[t]))))
                robot.send_action(action)
                if stages is not None:
                    stages.update()
            success = stages.success if stages is not None else None  # done at any tick, as recorded
            safety = robot.safety.counters.as_dict() if robot.safety else {}
    finally:
        rig.close()
    return ReplayReport(episode, len(actions), error, success, info.get("success"), safety)


def run(args: argparse.Namespace, config: AppConfig) -> int:
    from app.compose.store import resolve_dataset
    from recording.schema import StoreError

    path = resolve_dataset(args.dataset, config)
    try:
        report = replay(config, path, args.episode)
    except StoreError as e:
        raise UserError(str(e)) from e
    verdict = {True: "success", False: "failure", None: "not judged"}
    print(f"replayed episode {report.episode} of {path} on robot {config.robot.type}: {report.steps} steps")
    print(f"  largest joint-state difference to the recording: {report.max_state_error:.2e}")
    print(
        f"  result: {verdict[report.success]} (recorded: {verdict[report.recorded_success]}); safety: {report.safety}"
    )
    return 0
