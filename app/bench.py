"""`xr0 bench …`: measurements that print a one-line JSON summary last (numbers, not hopes).

`BENCHES` is the table of benchmarks: name -> (help, module implementing it).
A benchmark module has `add_bench_arguments(parser)` and `bench(args, config) -> dict`.
"""

from __future__ import annotations

import importlib
import json
import logging
import platform
import time
from dataclasses import replace

from app.compose import build_sim_rig
from app.config import AppConfig
from app.teleop import TeleopSession
from drivers.camera import CameraConfig

log = logging.getLogger(__name__)


def machine() -> dict:
    import os

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


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


# -- command line: `xr0 bench NAME` -------------------------------------------------------------------------
BENCHES: dict[str, tuple[str, str]] = {
    "sim": ("simulator loop rate with 0/1/3 cameras; scripted teleoperator success", "app.bench"),
    "bus": ("Dynamixel sync read+write cycle through the bus emulator", "app.bench_bus"),
    "cameras": ("frame arrival to observation latency, CPU per frame", "app.bench_cameras"),
    "loop": ("30 Hz loop lateness with inference and recording", "app.bench_loop"),
    "recorder": ("sustained recording throughput and loop impact", "app.bench_recorder"),
    "loader": ("training samples per second from a store", "app.bench_loader"),
    "train": ("training step time and memory", "app.bench_train"),
    "inference": ("XR0 chunk latency, VLM prefill vs DiT steps", "app.bench_inference"),
    "async": ("async vs sync vs async-naive in the simulator", "app.bench_async"),
}


def add_bench_arguments(p) -> None:
    p.add_argument("--ticks", type=int, default=150, help="control ticks timed per camera setting")
    p.add_argument("--seeds", type=int, default=50, help="scripted episodes for the success rate (0: skip)")
    p.add_argument("--width", type=int, default=320, help="camera width in pixels")
    p.add_argument("--height", type=int, default=240, help="camera height in pixels")


def bench(args, config: AppConfig) -> dict:
    return bench_sim(config, ticks=args.ticks, seeds=args.seeds, width=args.width, height=args.height)


def add_arguments(p) -> None:
    from app.cli import add_common

    sub = p.add_subparsers(dest="bench", metavar="{" + ",".join(BENCHES) + "}", required=True)
    for name, (help_text, module_name) in BENCHES.items():
        b = sub.add_parser(name, help=help_text, description=help_text)
        add_common(b, nested=True)
        if module_name is not None:
            importlib.import_module(module_name).add_bench_arguments(b)


def run(args, config: AppConfig) -> int:
    _, module_name = BENCHES[args.bench]
    result = importlib.import_module(module_name).bench(args, config)
    print(json.dumps(result))
    return 0
