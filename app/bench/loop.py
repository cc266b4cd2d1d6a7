"""`xr0 bench loop`: does the 30 Hz loop keep its deadlines while a model infers and a recorder writes?

The real loop (`RolloutSession` + `PolicyRunner`) runs against the wall clock on the simulator in real time
(physics and camera rendering each tick, like a robot's I/O), with a small torch model inferring in the
worker thread and the episode recorder writing a Zarr store in its own threads. It runs twice: paced by
`drivers.clock.Rate` (absolute deadlines) and by plain `time.sleep(period − elapsed)` after each
iteration, the pacing LeRobot's loops use. For both: lateness against the ideal grid start + k·period
(p50/p99/max), ticks missed on that grid, and the spread of the interval between ticks.

`--load N` starts N busy processes beside it (a training job, a viewer, a browser), `--priority` says what
the control thread asks the OS for (runtime.loop_priority, app/runtime/priority.py); the result names
what it got and the load average.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.compose.config import AppConfig
from app.errors import UserError
from drivers.clock import NS_PER_S, Clock, Tick
from xr0.boundary import Chunk, PolicyObservation, PolicySpec

if TYPE_CHECKING:
    from app.runtime.recorder import RecorderSubscriber
    from app.runtime.rig import Rig

log = logging.getLogger(__name__)


class SleepPacer:
    """`time.sleep(period − elapsed)` after each iteration (relative pacing): what drift looks like.
    Same interface as `Rate`; lateness is measured against the same absolute grid."""

    def __init__(self, clock: Clock, hz: float) -> None:
        self.clock = clock
        self.period_ns = round(NS_PER_S / hz)
        self.start_ns = clock.now_ns()
        self._k = 0
        self._last: int | None = None
        self.skipped_total = 0

    def wait(self) -> Tick:
        if self._last is not None:
            elapsed = self.clock.now_ns() - self._last
            time.sleep(max(0.0, (self.period_ns - elapsed) / NS_PER_S))
        now = self.clock.now_ns()
        self._last = now
        k = self._k
        self._k += 1
        deadline = self.start_ns + k * self.period_ns
        return Tick(index=k, deadline_ns=deadline, lateness_ns=max(0, now - deadline), skipped=0)


class TinyTorchPolicy:
    """A small convolutional policy in torch (random weights): real CPU inference load on one camera."""

    def __init__(
        self, camera: str, chunk_length: int = 30, max_prefix: int = 6, fps: float = 30.0, threads: int = 1
    ) -> None:
        import torch

        self.torch = torch
        self.spec = PolicySpec(cameras=(camera,), chunk_length=chunk_length, max_prefix=max_prefix, fps=fps)
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(threads)  # on a 2-core machine, one core stays with the control loop
        torch.manual_seed(0)
        nn = torch.nn
        self.vision = nn.Sequential(
            nn.Conv2d(3, 32, 5, stride=2), nn.ReLU(),
            nn.Conv2d(32, 64, 5, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Linear(64 * 16 + 14, 512), nn.ReLU(), nn.Linear(512, chunk_length * 14))
        self.vision.eval()
        self.head.eval()

    def close(self) -> None:
        """Give the process its torch thread count back (the setting is process-wide)."""
        self.torch.set_num_threads(self._threads_before)

    def infer(self, observation: PolicyObservation, prefix: np.ndarray) -> Chunk:
        torch = self.torch
        t0 = time.perf_counter()
        image = observation.images[self.spec.cameras[0]]
        with torch.inference_mode():
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)
            state = torch.from_numpy(np.asarray(observation.state, dtype=np.float32))[None]
            z = torch.cat([self.vision(x), state], dim=1)
            out = self.head(z).reshape(self.spec.chunk_length, 14)
        actions = np.asarray(observation.state, dtype=np.float64) + 0.01 * np.tanh(
            out.numpy().astype(np.float64)
        )
        actions[: len(prefix)] = prefix
        return Chunk(actions, timing_ms={"total": (time.perf_counter() - t0) * 1e3})


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=20.0, help="duration of each run (the target: 600)")
    p.add_argument("--no-inference", action="store_true", help="run the loop without the model")
    p.add_argument("--no-record", action="store_true", help="run the loop without the recorder")
    p.add_argument("--pacing", choices=("both", "rate", "sleep"), default="both")
    p.add_argument(
        "--cameras", type=int, default=1, help="how many of the configured cameras to render (sim)"
    )
    p.add_argument("--torch-threads", type=int, default=1, help="threads the model may use")
    p.add_argument("--load", type=int, default=0, help="busy background processes to run beside the loop")
    p.add_argument(
        "--priority",
        choices=("auto", "realtime", "nice", "off"),
        default=None,
        help="the control thread's priority (default: runtime.loop_priority)",
    )


def _recorder(config: AppConfig, rig: Rig, folder: Path) -> tuple[RecorderSubscriber | None, str | None]:
    """The episode recorder as a loop subscriber, or None (with why) if it is not available."""
    try:
        from app.compose.store import build_spec
        from app.runtime.recorder import RecorderSubscriber
        from recording.recorder import Recorder
    except ImportError as e:
        return None, f"recorder not available: {e}"
    try:
        _, velocity, effort, _ = rig.robot.read_joints()
        spec = replace(build_spec(config, rig, velocity is not None, effort is not None), leader=False)
        recorder = Recorder(folder / "bench_loop.zarr", spec, config.recording, block=False)
    except Exception as e:  # noqa: BLE001 - the recorder is another issue's work in progress; say why it is off
        return None, f"recorder not available: {type(e).__name__}: {e}"
    return RecorderSubscriber(recorder, "bench loop"), None


def run_once(
    config: AppConfig,
    pacing: str,
    seconds: float,
    inference: bool,
    record: bool,
    threads: int = 1,
    priority: str = "off",
) -> dict:
    from app.compose.rig import build_sim_rig
    from app.runtime.events import Publisher
    from app.runtime.rollout import RolloutSession
    from app.runtime.runner import PolicyRunner
    from app.runtime.scripted import HoldPolicy
    from drivers.clock import Rate

    rig = build_sim_rig(config)
    publisher = Publisher()
    recorder, note = None, "off"
    policy = None
    try:
        cams = list(rig.robot.cameras)
        policy = TinyTorchPolicy(cams[0], threads=threads) if inference and cams else HoldPolicy()
        runner = PolicyRunner(rig.robot, rig.clock, policy, config.policy, config.control.fps, publisher)
        pacer = Rate if pacing == "rate" else SleepPacer
        session = RolloutSession(
            rig, runner, config.control.fps, publisher, None, pacer=pacer, priority=priority
        )
        with tempfile.TemporaryDirectory() as folder:
            if record:
                recorder, note = _recorder(config, rig, Path(folder))
                if recorder is not None:
                    publisher.subscribers.append(recorder)
                    note = "recording"
            report = session.run(seconds)
            publisher.close()  # the recorder writes out what it queued
            if recorder is not None and (recorder.recorder.alarm or recorder.recorder.error):
                note = f"recorder: {recorder.recorder.alarm or recorder.recorder.error}"
    finally:
        rig.close()
        if policy is not None and hasattr(policy, "close"):
            policy.close()
    st = runner.stats
    lat = np.asarray(st.lateness_ns, dtype=np.float64) / 1e6
    grid = report.ticks
    return {
        "ticks_run": st.ticks,
        "missed_ticks": int(max(0, grid - st.ticks)),
        "lateness_ms": {
            "p50": round(float(np.percentile(lat, 50)), 3),
            "p99": round(float(np.percentile(lat, 99)), 3),
            "max": round(float(lat.max()), 3),
        },
        "inference_ms_p50": round(float(np.percentile(st.inference_ms, 50)), 1) if st.inference_ms else None,
        "recorder": note,
        "control_thread": report.loop_priority,
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


@contextmanager
def busy_processes(n: int) -> Iterator[None]:
    """`n` processes spinning on a core each for the block (the load a shared workstation carries)."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(n)
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def bench(args: argparse.Namespace, config: AppConfig) -> dict:
    from app.bench import machine

    if args.cameras < 0 or args.cameras > len(config.cameras):
        raise UserError(
            f"--cameras must be 0..{len(config.cameras)} (the cameras in the config), got {args.cameras}"
        )
    cameras = dict(list(config.cameras.items())[: args.cameras])
    cfg = replace(
        config,
        cameras=cameras,
        robot=replace(config.robot, type="sim"),
        control=replace(config.control, sim_timing="realtime"),
        policy=replace(config.policy, mode="async"),
    )
    pacings = ("rate", "sleep") if args.pacing == "both" else (args.pacing,)
    if args.load < 0:
        raise UserError(f"--load must be 0 or more busy processes, got {args.load}")
    priority = args.priority or config.runtime.loop_priority
    result: dict = {
        "bench": "loop",
        "seconds": args.seconds,
        "fps": cfg.control.fps,
        "cameras": {n: [c.width, c.height] for n, c in cfg.cameras.items()},
        "inference": None if args.no_inference else f"tiny torch CNN, {args.torch_threads} thread(s)",
        "recording": not args.no_record,
        "load": args.load,
        "priority": priority,
    }
    with busy_processes(args.load):
        for pacing in pacings:
            log.info("%s pacing for %.0f s …", pacing, args.seconds)
            result[pacing] = run_once(
                cfg,
                pacing,
                args.seconds,
                not args.no_inference,
                not args.no_record,
                args.torch_threads,
                priority,
            )
    result["machine"] = machine()
    return result
