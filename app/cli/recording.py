"""Recording sessions composed from a plan: the store, the recorder process, the rig and the session (used by `xr0 record` and `xr0 demo`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.compose.config import AppConfig
from app.compose.store import (
    COMPACT_LOG,
    build_spec,
    calibration_identity,
    check_disk,
    compact_in_background,
    preflight,
)
from app.errors import UserError
from app.runtime import terminal as keys
from app.runtime.events import Publisher
from app.runtime.record import RecordReport, RecordSession
from app.runtime.recorder import RecorderSubscriber
from app.runtime.rig import Rig
from drivers.clock import SimClock

if TYPE_CHECKING:
    from recording.recorder import Recorder


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
    from app.compose.rig import build_rig
    from app.viz.logger import open_sink, rerun_logger
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
                raise UserError(str(e)) from e
            attrs = {"robot_type": config.robot.type, "calibration": calibration_identity(config)}
            publisher.subscribers.append(RecorderSubscriber(recorder, plan.task, attrs))
            if sink.kind != "off":
                publisher.subscribers.append(rerun_logger(sink, config.viz, cameras=list(spec.cameras)))
            publisher.subscribers += list(extra_subscribers)
            with keys.Keyboard() as keyboard:
                session = RecordSession(
                    rig,
                    config.control.fps,
                    config.recording.on_interrupt,
                    recorder,
                    publisher,
                    plan.task,
                    keyboard,
                    console,
                    interrupt,
                    seed,
                    priority=config.runtime.loop_priority,
                )
                report = session.run(plan.episodes, plan.seconds, plan.reset_seconds)
    finally:
        publisher.close()  # closes the recorder: everything queued is written, then committed or discarded
        rig.close()
    return report, recorder


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
        raise UserError(str(e)) from e
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


def background_compaction(path: Path, config: AppConfig) -> None:
    """recording.compact_after: the session's store is compacted by a detached process; say so."""
    pid = compact_in_background(path, config)
    if pid is not None:
        print(
            f"compacting {path} in the background (pid {pid}, one CPU, nice +10; log {path / COMPACT_LOG}); "
            "recording into it again stops it"
        )
