"""`xr0 record`: teleoperated episodes into a Zarr episode store.

Parses the plan (`RecordPlan`), then `app.cli.recording.record` checks the store and the disk, composes
rig, recorder and subscribers and runs the `RecordSession` (app/runtime/record.py: keys, status line, cues).
In the simulator the scripted teleoperator is the operator, each episode is a fresh seed (a re-recorded one
keeps its seed) and success is the task done at any tick (`StageTracker`). A store's seeds never repeat by
accident: appending to a store continues after its highest recorded seed (`first_seed`) unless `--seed`
says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.recording import RecordPlan, background_compaction, record
from app.compose.config import AppConfig
from app.compose.store import default_task, resolve_dataset
from app.errors import UserError, prog
from app.runtime import terminal as keys
from app.runtime.record import RecordReport

if TYPE_CHECKING:
    from types import FrameType

    from recording.recorder import Recorder

log = logging.getLogger(__name__)


# -- command line: `xr0 record` ---------------------------------------------------------------------------------
EPILOG = f"""While recording (the same keys in a terminal or over SSH; a status line shows the episode):
  {keys.HELP}"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default=None,
        help="store path (e.g. datasets/NAME.zarr), or a bare NAME under recording.root "
        "(default: ROBOT_TASK.zarr there); an existing store of the same set-up is appended to",
    )
    p.add_argument(
        "--task",
        default=None,
        help="task instruction stored with each episode (default: the sim task's, else policy.instruction)",
    )
    p.add_argument("--episodes", type=int, default=1, help="episodes to keep")
    p.add_argument(
        "--episode-seconds",
        type=float,
        default=None,
        help="length of one episode, s (default: recording.episode_seconds; sim: robot.scripted.episode_seconds)",
    )
    p.add_argument(
        "--reset-seconds",
        type=float,
        default=None,
        help="unrecorded pause between episodes on hardware, s (default: recording.reset_seconds)",
    )
    p.add_argument("--rerun", default=None, help="also show the session: off | spawn | web[:PORT] | FILE.rrd")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="simulator seed of the first episode (default: robot.sim.seed for a new store, else the store's "
        "highest recorded seed + 1)",
    )


def writer_line(lockstep: bool, peak: int, size: int, overflows: int) -> str:
    """The recorder's queue in words. In lock-step with the simulator the loop waits for the writer, so a
    full queue is back-pressure, not a risk; on a real clock a queue that nearly filled is a warning."""
    if lockstep:
        return f"writer: in lock-step with the simulator (the loop waited for it; queue peak {peak}/{size}, nothing lost)"
    if overflows:
        return f"writer: QUEUE OVERFLOWED {overflows} time(s) (peak {peak}/{size}): the disk or CPU could not keep up"
    if peak >= 0.8 * size:
        return f"writer: warning: the queue reached {peak}/{size}; the disk or CPU is close to falling behind"
    return f"writer: kept up (queue peak {peak}/{size})"


def plan_from_args(args: argparse.Namespace, config: AppConfig) -> RecordPlan:
    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    sim = config.robot.type == "sim"
    seconds = args.episode_seconds
    if seconds is None:
        seconds = config.robot.scripted.episode_seconds if sim else config.recording.episode_seconds
    if not seconds > 0:
        raise UserError(f"--episode-seconds must be > 0, got {seconds}")
    reset = config.recording.reset_seconds if args.reset_seconds is None else args.reset_seconds
    if reset < 0:
        raise UserError(f"--reset-seconds must be >= 0, got {reset}")
    path = resolve_dataset(args.dataset, config)
    if path.parent == config.data_root:  # a bare NAME (or the default): the data root may not exist yet
        path.parent.mkdir(parents=True, exist_ok=True)
    rerun = args.rerun if args.rerun is not None else config.viz.rerun
    if args.seed is not None and not sim:
        raise UserError("--seed chooses simulator seeds; it needs --robot sim")
    return RecordPlan(
        path, args.task or default_task(config), args.episodes, seconds, reset, rerun, args.seed
    )


def run(args: argparse.Namespace, config: AppConfig) -> int:
    plan = plan_from_args(args, config)
    interrupt = threading.Event()
    console = keys.Console()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if interrupt.is_set():
            raise KeyboardInterrupt
        interrupt.set()
        console.cue("stopping: the episode is ended now (Ctrl-C again to abort)")

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        report, recorder = record(config, plan, interrupt, console)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    _print_report(plan.path, report, recorder)
    if recorder.error:
        raise UserError(recorder.error)
    if config.recording.compact_after and any(ep["kept"] for ep in report.episodes):
        background_compaction(plan.path, config)
    return 130 if interrupt.is_set() else 0


def _print_report(path: Path, report: RecordReport, recorder: Recorder | None) -> None:
    """One line per attempt, from the writer's own verdict on that attempt (an index freed by a discard is
    used again by the next attempt, so results are matched per attempt, never by index)."""
    print(f"record: {path}")
    for ep in report.episodes:
        verdict = {True: "success", False: "failure", None: "not judged"}[ep["success"]]
        seed = f" seed {ep['seed']}" if ep["seed"] is not None else ""
        if ep["kept"]:
            rate = ep["attrs"].get("loop_rate_hz")
            flag = "" if ep["attrs"].get("rate_ok", True) else f" — LOOP RATE LOW ({rate} Hz)"
            print(
                f"  episode {ep['index']}{seed}: kept, {ep['length']} steps, {verdict} ({ep['outcome']}){flag}"
            )
        elif ep["status"] == "discarded":
            print(f"  episode {ep['index']}{seed}: discarded ({ep['outcome']})")
        else:
            print(
                f"  episode {ep['index']}{seed}: NOT committed ({ep['status']}, {ep['outcome']}); "
                f"{ep['on_disk_steps']} steps had reached the disk: `{prog()} dataset repair --dataset {path}` "
                "recovers them"
            )
    lat = report.lateness_ms
    late = f", loop lateness p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms" if lat else ""
    print(f"  {report.ticks} ticks in {report.wall_s:.1f} s{late}; stale ticks {report.stale_ticks}")
    print(f"  control thread: {report.loop_priority}")
    if recorder is not None:
        print("  " + writer_line(recorder.block, recorder.max_depth, recorder.queue_size, recorder.overflows))
    for alarm in report.alarms:
        print(f"  ALARM: {alarm}")
