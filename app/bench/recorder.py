"""`xr0 bench recorder` — can the recorder keep up, and what does it cost the control loop?

Frames are rendered once from a scripted simulator episode (3 cameras, 640×480 by default) and then
cycled, so the store sees realistic images without the renderer competing for the CPU. Measured:
- writer throughput: steps/s written with the queue never empty, as a multiple of real time;
- the loop's lateness with recording off and on: a 30 Hz loop on the wall clock, recording switched off
  and on in alternating blocks so that both see the same background load; also what handing a step to
  the recorder costs the loop (copying the frames into shared memory);
- a sustained real-time run of `--seconds` (the issue's target: 600 s): dropped steps, queue peak, the
  writer's CPU per recorded second;
- bytes per minute of recording and the images' PSNR after JPEG at the configured quality;
- random-access training samples per second (3 images + state at t + a 30-step action window).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.compose.config import AppConfig
from app.runtime.episodes import percentiles
from app.runtime.events import EpisodeEvent, Publisher, StepEvent
from drivers.camera import CameraConfig
from drivers.clock import Rate, WallClock
from drivers.robot import Observation

if TYPE_CHECKING:
    from recording.recorder import Recorder
    from recording.schema import StoreSpec

log = logging.getLogger(__name__)
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seconds", type=float, default=60.0, help="sustained real-time run with recording (issue: 600)"
    )
    p.add_argument(
        "--ab-seconds", type=float, default=60.0, help="lateness comparison, recording off/on alternately"
    )
    p.add_argument("--block-seconds", type=float, default=5.0, help="length of each off or on block")
    p.add_argument(
        "--episode-seconds", type=float, default=60.0, help="episode length during the sustained run"
    )
    p.add_argument("--width", type=int, default=640, help="camera width in pixels")
    p.add_argument("--height", type=int, default=480, help="camera height in pixels")
    p.add_argument("--frames", type=int, default=60, help="distinct rendered steps cycled through")
    p.add_argument("--content", choices=("sim", "camera"), default="sim",
                   help="the simulator's frames, or camera-like photographs with noise (app/bench/content.py)")  # fmt: skip
    p.add_argument("--read-seconds", type=float, default=5.0, help="how long random training reads are timed")
    p.add_argument("--dir", default=None, help="where the temporary store goes (default: a temp dir)")
    p.add_argument(
        "--priority",
        choices=("auto", "realtime", "nice", "off"),
        default=None,
        help="the loop thread's priority, as `record` asks for it (default: runtime.loop_priority)",
    )


def render_frames(config: AppConfig, n: int, width: int, height: int) -> list[Observation]:
    """`n` consecutive observations of a scripted episode, rendered once."""
    from app.compose.rig import build_sim_rig

    cams = {c: CameraConfig(type="sim", width=width, height=height) for c in CAMERAS}
    cfg = replace(config, cameras=cams, control=replace(config.control, sim_timing="lockstep"))
    cfg = replace(cfg, robot=replace(cfg.robot, type="sim"))
    rig = build_sim_rig(cfg)
    out = []
    try:
        with rig.robot:
            rate = Rate(rig.clock, config.control.fps)
            for _ in range(60):  # into the task, where the arms and the cube move
                rate.wait()
                rig.robot.send_action(rig.robot.leader_action().action)
            for _ in range(n):
                rate.wait()
                out.append(rig.robot.observe())
                rig.robot.send_action(rig.robot.leader_action().action)
    finally:
        rig.close()
    return out


def _event(obs: Observation, tick: int, deadline_ns: int, lateness_ns: int, now_ns: int) -> StepEvent:
    return StepEvent(
        tick=tick,
        deadline_ns=deadline_ns,
        lateness_ns=lateness_ns,
        episode=0,
        observation=obs,
        leader=obs.state,
        leader_t_ns=now_ns,
        action=obs.state,
        action_t_ns=now_ns,
        clamped=0,
        rejected=False,
    )


def _spec(config: AppConfig, frames: list[Observation]) -> StoreSpec:
    from recording.schema import StoreSpec

    rec = config.recording
    return StoreSpec(
        fps=config.control.fps,
        joint_names=tuple(f"j{i}" for i in range(len(frames[0].state))),
        cameras={c: frames[0].images[c].shape for c in CAMERAS},
        robot_type="bench",
        image_codec=rec.image_codec,
        jpeg_quality=rec.jpeg_quality,
        image_shard_steps=rec.image_shard_steps,
    )


def throughput(config: AppConfig, frames: list[Observation], root: Path, steps: int) -> dict:
    """Steps/s the writer sustains when it is never starved (lockstep-style back-pressure)."""
    from app.runtime.recorder import RecorderSubscriber
    from recording.recorder import Recorder

    recorder = Recorder(root / "throughput.zarr", _spec(config, frames), config.recording, block=True)
    sub = RecorderSubscriber(recorder, "bench")
    period = round(1e9 / config.control.fps)
    t0 = time.perf_counter()
    sub.on_episode(EpisodeEvent(0, "start", 0))
    for k in range(steps):
        sub.on_step(_event(frames[k % len(frames)], k, k * period, 0, k * period))
    sub.on_episode(EpisodeEvent(0, "end", steps * period))
    recorder.wait_idle()
    wall = time.perf_counter() - t0
    cpu = recorder.writer_cpu_s
    recorder.close()
    rate = steps / wall
    return {
        "steps": steps,
        "steps_per_s": round(rate, 1),
        "x_realtime": round(rate / config.control.fps, 2),
        # Independent of other load on the machine: the writer's CPU time for these steps (all its threads).
        "writer_cpu_ms_per_step": round(cpu / steps * 1e3, 2),
        "x_realtime_per_cpu_core": round(steps / config.control.fps / cpu, 2) if cpu else None,
    }


def realtime_loop(
    config: AppConfig,
    frames: list[Observation],
    seconds: float,
    recorder: Recorder,
    episode_s: float = 60.0,
    ab_block_s: float | None = None,
) -> dict:
    """A wall-clock loop at control.fps handing every step to the recorder.

    With `ab_block_s` the recording is switched off and on in alternating blocks (each block on is an
    episode), so that the lateness with and without recording is compared under the same background
    load — on a shared machine the load drifts more than the effect being measured."""
    from app.runtime.recorder import RecorderSubscriber

    clock = WallClock()
    publisher = Publisher([RecorderSubscriber(recorder, "bench")])
    fps = config.control.fps
    rate = Rate(clock, fps)
    n = round(seconds * fps)
    per_episode = max(1, round((ab_block_s or episode_s) * fps))
    lateness = np.zeros(n, dtype=np.int64)
    recording = np.zeros(n, dtype=bool)
    publish_ns = np.zeros(n, dtype=np.int64)  # what handing the step over cost the loop
    on = False
    for k in range(n):
        if k % per_episode == 0:
            if on:
                publisher.episode(EpisodeEvent(k // per_episode - 1, "end", clock.now_ns(), success=True))
            on = (k // per_episode) % 2 == 1 if ab_block_s else True
            if on:
                publisher.episode(EpisodeEvent(k // per_episode, "start", clock.now_ns()))
        tick = rate.wait()
        lateness[k], recording[k] = tick.lateness_ns, on
        if on:
            event = _event(
                frames[k % len(frames)], tick.index, tick.deadline_ns, tick.lateness_ns, clock.now_ns()
            )
            t0 = time.perf_counter_ns()
            publisher.step(event)
            publish_ns[k] = time.perf_counter_ns() - t0
    if on:
        publisher.episode(EpisodeEvent(n // per_episode, "end", clock.now_ns(), success=True))
    recorder.wait_idle(120)
    lat = lateness / 1e6
    out = {
        "seconds": seconds,
        "ticks": n,
        "skipped_ticks": rate.skipped_total,
        "lateness_ms": percentiles(lat[recording]),
        "publish_ms": percentiles(publish_ns[recording] / 1e6),
        "dropped_steps": recorder.refused_steps,
        "overflows": recorder.overflows,
        "queue_peak": recorder.max_depth,
        "queue_size": recorder.queue_size,
        "writer_cpu_per_s": round(recorder.writer_cpu_s / (seconds / 2 if ab_block_s else seconds), 3),
        "error": recorder.error,
    }
    if ab_block_s:
        out["block_s"] = ab_block_s
        out["lateness_off_ms"] = percentiles(lat[~recording])
        out["p99_increase_ms"] = round(out["lateness_ms"]["p99"] - out["lateness_off_ms"]["p99"], 3)
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def quality_and_reads(path: Path, frames: list[Observation], seconds: float = 5.0) -> dict:
    from recording.reader import EpisodeStore

    store = EpisodeStore(path)
    ep = store.episodes[0]
    psnr = {}
    for cam in CAMERAS:
        values = [
            _psnr(store.get(ep, f"observation.images.{cam}", t), frames[t % len(frames)].images[cam])
            for t in range(min(len(frames), store.length(ep)))
        ]
        psnr[cam] = round(float(np.mean(values)), 2)
    rng = np.random.default_rng(0)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        store.sample(int(rng.integers(len(store))), horizon=30)
        n += 1
    return {"psnr_db": psnr, "samples_per_s": round(n / (time.perf_counter() - t0), 1), "samples": n}


def bench(args: argparse.Namespace, config: AppConfig) -> dict:
    from app.bench import machine
    from app.runtime.priority import loop_priority
    from recording.recorder import Recorder

    fps = config.control.fps
    log.info("rendering %d steps of 3 cameras at %dx%d …", args.frames, args.width, args.height)
    frames = render_frames(config, args.frames, args.width, args.height)
    if args.content == "camera":  # the simulator's joints, camera-like images in place of its renders
        from app.bench.content import camera_like

        photos = camera_like(
            args.frames / fps, fps=fps, cameras=CAMERAS, height=args.height, width=args.width
        )
        frames = [replace(obs, images={c: photos[c][k] for c in CAMERAS}) for k, obs in enumerate(frames)]
    root = Path(tempfile.mkdtemp(prefix="xr0-bench-recorder-", dir=args.dir))
    try:
        result: dict = {
            "bench": "recorder",
            "content": args.content,
            "cameras": len(CAMERAS),
            "width": args.width,
            "height": args.height,
            "fps": fps,
            "image_codec": config.recording.image_codec,
            "jpeg_quality": config.recording.jpeg_quality,
        }
        log.info("writer throughput …")
        result["throughput"] = throughput(config, frames, root, steps=round(10 * fps))
        spec = _spec(config, frames)
        log.info(
            "loop lateness, recording off/on in alternating %g s blocks, for %g s …",
            args.block_seconds,
            args.ab_seconds,
        )
        priority = args.priority or config.runtime.loop_priority
        recorder = Recorder(root / "ab.zarr", spec, config.recording)
        try:
            with loop_priority(priority) as got:  # the loop thread as `record` runs it
                result["control_thread"] = got
                result["lateness_ab"] = realtime_loop(
                    config, frames, args.ab_seconds, recorder, ab_block_s=args.block_seconds
                )
        finally:
            recorder.close()
        log.info("sustained recording for %g s (loop thread: %s) …", args.seconds, result["control_thread"])
        path = root / "sustained.zarr"
        recorder = Recorder(path, spec, config.recording)
        try:
            with loop_priority(priority):
                result["sustained"] = realtime_loop(
                    config, frames, args.seconds, recorder, args.episode_seconds
                )
        finally:
            recorder.close()
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
        result["bytes_per_minute"] = round(size / (args.seconds / 60))
        log.info("image quality and random reads …")
        result.update(quality_and_reads(path, frames, args.read_seconds))
        result["machine"] = machine()
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)
