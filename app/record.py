"""`xr0 record` — teleoperated episodes into a Zarr episode store — and the subscriber that records a loop.

`RecorderSubscriber` turns any control loop's events (`app.events`) into recorder calls: an episode
`start` opens one, each `StepEvent` becomes a step (non-blocking), `end` commits it (or discards it when
`info["discard"]`). `record()` checks the store and the disk, composes rig, recorder and subscribers and
runs the `RecordSession` (app/record_session.py: keys, status line, cues). In the simulator the scripted
teleoperator is the operator, each episode is a fresh seed (a re-recorded one keeps its seed) and
success is the task done at any tick (`StageTracker`). A store's seeds never repeat by accident: appending
to a store continues after its highest recorded seed (`first_seed`) unless `--seed` says otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app import terminal as keys
from app.compose import Rig
from app.config import AppConfig
from app.errors import CliError, prog
from app.events import EpisodeEvent, Publisher, StepEvent
from app.record_session import RecordReport, RecordSession
from drivers.clock import SimClock

if TYPE_CHECKING:
    from recording.recorder import Recorder
    from recording.schema import StoreSpec

log = logging.getLogger(__name__)


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


# -- what is recorded about the set-up --------------------------------------------------------------------------
def calibration_identity(config: AppConfig) -> dict[str, Any]:
    """Which robot and calibration produced the data: the sim scene, or each arm's calibration file hash."""
    if config.robot.type == "sim":
        sim = config.robot.sim
        return {"kind": "sim", "task": sim.task, "physics_timestep_s": sim.physics_timestep_s}
    arms = {}
    for name, arm in config.robot.arms.items():
        path = config.resolve(arm.calibration) if arm.calibration else None
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path and path.is_file() else None
        arms[name] = {"file": str(path) if path else None, "sha256": digest}
    return {"kind": config.robot.type, "arms": arms}


def build_spec(config: AppConfig, rig: Rig, velocity: bool, effort: bool) -> StoreSpec:
    """The store's layout for this set-up (velocity/effort: whether the arms measure them)."""
    from recording.schema import StoreSpec

    features = rig.robot.features()
    rec = config.recording
    return StoreSpec(
        fps=config.control.fps,
        joint_names=tuple(features.joint_names),
        cameras={n: tuple(s) for n, s in features.cameras.items()},
        robot_type=config.robot.type,
        velocity=velocity,
        effort=effort,
        leader=features.has_leaders,
        image_codec=rec.image_codec,
        jpeg_quality=rec.jpeg_quality,
        image_shard_steps=rec.image_shard_steps,
    )


def default_task(config: AppConfig) -> str:
    sim_tasks = {
        "transfer_cube": "transfer the cube to the other arm",
        "insertion": "insert the peg into the socket",
    }
    if config.robot.type == "sim":
        return sim_tasks.get(config.robot.sim.task, config.policy.instruction)
    return config.policy.instruction


def resolve_dataset(arg: str | None, config: AppConfig) -> Path:
    """`--dataset`: a path (relative to the current folder), or a bare NAME under recording.root."""
    if not arg:
        name = config.robot.sim.task if config.robot.type == "sim" else "teleop"
        return config.data_root / f"{config.robot.type}_{name}.zarr"
    p = Path(arg).expanduser()
    if p.is_absolute() or len(p.parts) > 1:
        return p.resolve()
    return config.data_root / (arg if arg.endswith(".zarr") else f"{arg}.zarr")


def check_disk(path: Path, bytes_needed: float, margin: float) -> float:
    """Free bytes at `path`; refuses (CliError) when below `bytes_needed × margin`."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < bytes_needed * margin:
        raise CliError(
            f"not enough disk space for the planned episodes at {path}: they need about "
            f"{bytes_needed / 1e9:.2f} GB (×{margin:g} margin) but {free / 1e9:.2f} GB are free; free space, "
            "record fewer or shorter episodes, or lower recording.jpeg_quality"
        )
    return free


# -- command line: `xr0 record` ---------------------------------------------------------------------------------
EPILOG = f"""While recording (the same keys in a terminal or over SSH; a status line shows the episode):
  {keys.HELP}"""


def add_arguments(p) -> None:
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


def first_seed(path: Path, explicit: int | None, default: int, episodes: int) -> tuple[int, list[str]]:
    """The simulator seed to record the first episode on, and warning lines for the operator.

    Without `explicit`, a new store starts at `default` (robot.sim.seed) and an existing one continues
    after its highest recorded seed, so a second session never repeats the first one. An explicit seed is
    used as given; planned seeds that the store already holds, or that reach the held-out evaluation
    seeds (`EVAL_SEED_START` on), are warned about."""
    from drivers.sim.aloha import EVAL_SEED_START
    from recording.reader import recorded_seeds
    from recording.schema import StoreError

    try:
        recorded = recorded_seeds(path) if path.exists() else set()
    except StoreError as e:
        raise CliError(str(e)) from e
    seed = explicit if explicit is not None else max(default, max(recorded, default=-1) + 1)
    planned = range(seed, seed + episodes)
    warnings = []
    repeated = sorted(recorded.intersection(planned))
    if repeated:
        warnings.append(
            f"warning: {path.name} already holds episodes recorded on seed(s) {_seed_list(repeated)}; "
            f"recording them again repeats those demonstrations (its seeds end at {max(recorded)})"
        )
    if planned[-1] >= EVAL_SEED_START:
        warnings.append(
            f"warning: seeds from {EVAL_SEED_START} on are held out for evaluation; recording seed(s) "
            f"{seed}…{planned[-1]} makes them training seeds"
        )
    return seed, warnings


def _seed_list(seeds: list[int], most: int = 8) -> str:
    text = ", ".join(map(str, seeds[:most]))
    return text + (f" … ({len(seeds)} in all)" if len(seeds) > most else "")


def _planned_bytes(config: AppConfig, episodes: int, seconds: float) -> float:
    from recording.schema import BYTES_PER_PIXEL, NUMERIC_BYTES_PER_STEP

    pixels = sum(c.width * c.height for c in config.cameras.values())
    per_step = pixels * BYTES_PER_PIXEL[config.recording.image_codec] + NUMERIC_BYTES_PER_STEP
    return episodes * seconds * config.control.fps * per_step


def preflight(path: Path) -> None:
    """Fail before touching the robot if the store cannot be appended to."""
    from recording.schema import COMMITTED, StoreError, check_store, episode_attrs, episode_dirs

    if not path.exists():
        if not path.parent.exists():
            raise CliError(f"cannot create dataset {path}: the folder {path.parent} does not exist")
        return
    try:
        check_store(path)
        partial = []
        for index, directory in episode_dirs(path).items():
            try:
                status = episode_attrs(directory).get("status")
            except StoreError:
                status = None
            if status != COMMITTED:
                partial.append(index)
    except StoreError as e:
        raise CliError(str(e)) from e
    if partial:
        raise CliError(
            f"dataset {path} has partial episode(s) {', '.join(map(str, partial))} left by an interrupted "
            f"recording; run `{prog()} dataset repair --dataset {path}` (recover, or --drop) first"
        )


@dataclass(frozen=True)
class RecordPlan:
    """What `xr0 record` was asked to do, resolved against the config."""

    path: Path
    task: str
    episodes: int
    seconds: float
    reset_seconds: float
    rerun: str = "off"
    seed: int | None = None  # simulator seed of the first episode (None: continue the store's seeds)


def plan_from_args(args, config: AppConfig) -> RecordPlan:
    if args.episodes < 1:
        raise CliError(f"--episodes must be at least 1, got {args.episodes}")
    sim = config.robot.type == "sim"
    seconds = args.episode_seconds
    if seconds is None:
        seconds = config.robot.scripted.episode_seconds if sim else config.recording.episode_seconds
    if not seconds > 0:
        raise CliError(f"--episode-seconds must be > 0, got {seconds}")
    reset = config.recording.reset_seconds if args.reset_seconds is None else args.reset_seconds
    if reset < 0:
        raise CliError(f"--reset-seconds must be >= 0, got {reset}")
    path = resolve_dataset(args.dataset, config)
    if path.parent == config.data_root:  # a bare NAME (or the default): the data root may not exist yet
        path.parent.mkdir(parents=True, exist_ok=True)
    rerun = args.rerun if args.rerun is not None else config.viz.rerun
    if args.seed is not None and not sim:
        raise CliError("--seed chooses simulator seeds; it needs --robot sim")
    return RecordPlan(
        path, args.task or default_task(config), args.episodes, seconds, reset, rerun, args.seed
    )


def record(
    config: AppConfig,
    plan: RecordPlan,
    interrupt: threading.Event | None = None,
    console: keys.Console | None = None,
    extra_subscribers: tuple = (),
    rig: Rig | None = None,
) -> tuple[RecordReport, Recorder]:
    """Check the store and the disk, compose rig, recorder and subscribers, record, always shut down cleanly.

    `extra_subscribers` see every event after the recorder (tests use one to checksum what was sent);
    `rig` replaces the one built from the config (it is closed at the end either way)."""
    from app.compose import build_rig
    from app.viz import RerunLogger, open_sink
    from recording.recorder import Recorder
    from recording.schema import StoreError

    preflight(plan.path)
    check_disk(plan.path, _planned_bytes(config, plan.episodes, plan.seconds), config.recording.disk_margin)
    sink, note = open_sink(plan.rerun, "record")
    console = console or keys.Console()
    if note:
        console.cue(note)
    rig = rig or build_rig(config)
    publisher = Publisher()
    recorder = None
    try:
        seed = None
        if rig.sim is not None:
            seed, warnings = first_seed(plan.path, plan.seed, rig.sim.seed, plan.episodes)
            for line in warnings:
                console.cue(line)
        with rig.robot:
            _, velocity, effort, _ = rig.robot.read_joints()
            spec = build_spec(config, rig, velocity is not None, effort is not None)
            try:
                recorder = Recorder(plan.path, spec, config.recording, block=isinstance(rig.clock, SimClock))
            except StoreError as e:
                raise CliError(str(e)) from e
            attrs = {"robot_type": config.robot.type, "calibration": calibration_identity(config)}
            publisher.subscribers.append(RecorderSubscriber(recorder, plan.task, attrs))
            if sink.kind != "off":
                publisher.subscribers.append(RerunLogger(sink, config.viz, cameras=list(spec.cameras)))
            publisher.subscribers += list(extra_subscribers)
            with keys.Keyboard() as keyboard:
                session = RecordSession(
                    rig, config, recorder, publisher, plan.task, keyboard, console, interrupt, seed
                )
                report = session.run(plan.episodes, plan.seconds, plan.reset_seconds)
    finally:
        publisher.close()  # closes the recorder: everything queued is written, then committed or discarded
        rig.close()
    return report, recorder


def run(args, config: AppConfig) -> int:
    plan = plan_from_args(args, config)
    interrupt = threading.Event()
    console = keys.Console()

    def on_sigint(signum, frame) -> None:
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
        raise CliError(recorder.error)
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
    if recorder is not None:
        print("  " + writer_line(recorder.block, recorder.max_depth, recorder.queue_size, recorder.overflows))
    for alarm in report.alarms:
        print(f"  ALARM: {alarm}")
