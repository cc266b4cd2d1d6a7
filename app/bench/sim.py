"""`xr0 bench sim`: the simulator's loop rate with 0, 1 and 3 cameras, and the scripted teleoperator's success rate."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace

from app.bench import machine
from app.compose.config import AppConfig
from app.compose.rig import build_sim_rig
from app.runtime.teleop import TeleopSession
from drivers.camera import CameraConfig

log = logging.getLogger(__name__)


def _loop_rate(config: AppConfig, cameras: list[str], ticks: int) -> dict:
    """Ticks per second of the real teleop loop (observe + scripted leader + send) in lockstep."""
    rig = build_sim_rig(config, cameras)
    try:
        session = TeleopSession(rig, config.control.fps)
        # Warm-up (renderer creation, first IK solves) is not what we want to time.
        session.run(1, 5 / config.control.fps)
        t0 = time.perf_counter()
        report = session.run(1, ticks / config.control.fps)
        wall = time.perf_counter() - t0
    finally:
        rig.close()
    return {
        "ticks_per_s": round(report.ticks / wall, 1),
        "ms_per_tick": round(wall / report.ticks * 1e3, 2),
        "observe_ms": round(report.section_ms.get("observe", 0.0), 2),
        "leader_ms": round(report.section_ms.get("leader", 0.0), 2),
    }


def bench_sim(
    config: AppConfig, ticks: int = 150, seeds: int = 50, width: int = 320, height: int = 240
) -> dict:
    """Loop rate with 0, 1 and 3 cameras at width×height, and the scripted teleoperator's success rate."""
    from drivers.sim.scripted import measure_success

    names = ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    cams = {n: CameraConfig(type="sim", width=width, height=height) for n in names}
    cfg = replace(config, cameras=cams, control=replace(config.control, sim_timing="lockstep"))
    result: dict = {
        "bench": "sim",
        "task": cfg.robot.sim.task,
        "width": width,
        "height": height,
        "ticks": ticks,
    }
    for label, subset in (("cameras_0", []), ("cameras_1", names[:1]), ("cameras_3", names)):
        log.info("timing the loop with %d camera(s) …", len(subset))
        result[label] = _loop_rate(cfg, subset, ticks)
    if seeds > 0:
        log.info("running the scripted teleoperator on %d seeds …", seeds)
        t0 = time.perf_counter()
        stats = measure_success(cfg.robot.sim.task, range(seeds))
        result["scripted"] = {**stats, "seconds": round(time.perf_counter() - t0, 1)}
    result["machine"] = machine()
    return result


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ticks", type=int, default=150, help="control ticks timed per camera setting")
    p.add_argument("--seeds", type=int, default=50, help="scripted episodes for the success rate (0: skip)")
    p.add_argument("--width", type=int, default=320, help="camera width in pixels")
    p.add_argument("--height", type=int, default=240, help="camera height in pixels")


def bench(args: argparse.Namespace, config: AppConfig) -> dict:
    return bench_sim(config, ticks=args.ticks, seeds=args.seeds, width=args.width, height=args.height)
