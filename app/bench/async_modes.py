"""`xr0 bench async`: async vs sync vs async-naive in the simulator, with an injected inference latency.

The policy is the scripted demonstrator as a chunk policy (app/runtime/scripted.py): it follows the task's
progress, so time the robot spends holding is time the task takes longer, and each chunk carries a phase
error, so chunks from different observations disagree like samples of a real policy. Everything runs in
lockstep on a simulated clock (the latency is modelled, not slept), so the numbers are deterministic.

Reported per mode: tasks completed and tasks per minute (of control time), mean time per task, success
rate, the largest arm-joint step between consecutive commands (anywhere, and on the tick a new chunk
takes over), late chunks and starvations. The headline numbers: `speedup` (async tasks/min over sync)
and `jump_ratio` (async-naive's largest step over async's).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace

import numpy as np

from app.compose.config import AppConfig
from app.errors import UserError

log = logging.getLogger(__name__)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=2.0, help="control time per mode (simulated), minutes")
    p.add_argument("--latency-ms", type=float, default=80.0, help="injected inference latency, ms")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="latency drawn uniformly in latency ± jitter")
    p.add_argument("--phase-noise", type=float, default=None, help="per-chunk phase error std, s")
    p.add_argument("--delay-quantile", type=float, default=None, help="override policy.delay_quantile")


def run_mode(config: AppConfig, mode: str, seconds: float, late: str = "accept") -> dict:
    from app.compose.rig import build_sim_rig
    from app.runtime.events import Publisher
    from app.runtime.rollout import RolloutSession
    from app.runtime.runner import PolicyRunner
    from app.runtime.scripted import ScriptedChunkPolicy

    cfg = replace(config, policy=replace(config.policy, mode=mode, late_chunks=late))
    rig = build_sim_rig(cfg, [])
    try:
        policy = ScriptedChunkPolicy(rig.teleop, cfg.policy.scripted, cfg.control.fps, sleep=False)
        publisher = Publisher([policy])
        runner = PolicyRunner(rig.robot, rig.clock, policy, cfg.policy, cfg.control.fps, publisher)
        session = RolloutSession(rig, runner, cfg.control.fps, publisher, cfg.policy.episode_seconds)
        t0 = time.perf_counter()
        report = session.run(seconds)
        wall = time.perf_counter() - t0
    finally:
        rig.close()
    done = [e for e in report.episodes if e.success]
    task_s = [(e.end_tick - e.start_tick + 1) / cfg.control.fps for e in done]
    r, c = report.runner, report.chunks
    return {
        "tasks": report.tasks,
        "tasks_per_min": report.tasks_per_min,
        "mean_task_s": round(float(np.mean(task_s)), 3) if task_s else None,
        "success_rate": report.success_rate,
        "max_step_rad": r["max_step_rad"],
        "max_switch_jump_rad": r["max_switch_jump_rad"],
        "p99_step_rad": r["p99_step_rad"],
        "late": c["late"],
        "late_discarded": c["late_discarded"],
        "starvations": r["starvations"],
        "starved_ticks": r["starved_ticks"],
        "waiting_ticks": r["waiting_ticks"],
        "delay_ticks": {str(k): v for k, v in report.delay_ticks.items()},
        "safety_clamped_delta": report.safety.get("clamped_delta", 0),
        "wall_s": round(wall, 1),
    }


def bench(args: argparse.Namespace, config: AppConfig) -> dict:
    from app.bench import machine

    lo, hi = args.latency_ms - args.jitter_ms, args.latency_ms + args.jitter_ms
    if lo < 0:
        raise UserError(f"--jitter-ms {args.jitter_ms} is larger than --latency-ms {args.latency_ms}")
    scripted = replace(config.policy.scripted, latency_ms=(lo, hi))
    if args.phase_noise is not None:
        scripted = replace(scripted, phase_noise_s=args.phase_noise)
    cfg = replace(
        config,
        robot=replace(config.robot, type="sim"),
        control=replace(config.control, sim_timing="lockstep"),
        policy=replace(
            config.policy,
            scripted=scripted,
            delay_quantile=config.policy.delay_quantile
            if args.delay_quantile is None
            else args.delay_quantile,
        ),
    )
    seconds = args.minutes * 60.0
    variants = [("async", "accept"), ("sync", "accept"), ("async-naive", "accept")]
    if args.jitter_ms > 0:
        variants.append(("async", "discard"))
    modes = {}
    for mode, late in variants:
        name = mode if late == "accept" or mode != "async" else "async+discard_late"
        log.info("%s: %.1f min of control time …", name, args.minutes)
        modes[name] = run_mode(cfg, mode, seconds, late)
    a, s, n = modes["async"], modes["sync"], modes["async-naive"]
    return {
        "bench": "async",
        "task": cfg.robot.sim.task,
        "latency_ms": [lo, hi],
        "phase_noise_s": scripted.phase_noise_s,
        "chunk_length": scripted.chunk_length,
        "delay_quantile": cfg.policy.delay_quantile,
        "minutes_per_mode": args.minutes,
        "modes": modes,
        "speedup": round(a["tasks_per_min"] / s["tasks_per_min"], 3) if s["tasks_per_min"] else None,
        "task_time_ratio": round(s["mean_task_s"] / a["mean_task_s"], 3)
        if a["mean_task_s"] and s["mean_task_s"]
        else None,
        "jump_ratio": round(n["max_step_rad"] / a["max_step_rad"], 2) if a["max_step_rad"] else None,
        "machine": machine(),
    }
