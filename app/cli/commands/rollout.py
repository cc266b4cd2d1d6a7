"""`xr0 rollout`: run a policy on the robot at 30 Hz for a long session, episode after episode.

    xr0 rollout --policy scripted|hold|ws://HOST:PORT|CHECKPOINT --mode async|sync|async-naive
                --duration 30m --task "…" --robot sim|aloha [--seed N] [--rerun …] [--summary FILE.json]

Composes the rig, the policy, the runner and the subscribers (Rerun, optionally the recorder), runs the
`RolloutSession` (app/runtime/rollout.py) and prints its summary (also `--summary FILE.json`, and a PNG).
The simulator's seeds are held out: they start at `EVAL_SEED_START` (10000) unless `--seed N` says where.
Keys (a terminal only):

    s  success     f  failure     p  pause / resume (the arms hold)     e  SPACE  e-stop     q  Esc  quit
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from app.compose.config import AppConfig
from app.errors import UserError
from app.runtime.events import Publisher
from app.runtime.rig import Rig
from app.runtime.rollout import RolloutReport, RolloutSession, Terminal
from app.runtime.runner import PolicyRunner
from app.viz.plots import summary_png
from drivers.sim.aloha import EVAL_SEED_START

if TYPE_CHECKING:
    from app.runtime.recorder import RecorderSubscriber
    from app.viz.logger import Sink
    from xr0.boundary import Policy

log = logging.getLogger(__name__)


# -- command line: `xr0 rollout` -----------------------------------------------------------------------------------
def parse_duration(text: str) -> float:
    """`30m`, `90s`, `1h`, `1h30m` or plain seconds -> seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|m|s)", t)
    if not parts or "".join(n + u for n, u in parts) != t.replace(" ", ""):
        raise UserError(f"--duration {text!r}: use e.g. 30m, 90s, 1h30m or a number of seconds")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        default=None,
        help="scripted | hold | ws://HOST:PORT | CHECKPOINT (default: policy.source)",
    )
    p.add_argument(
        "--mode", choices=("async", "sync", "async-naive"), default=None, help="default: policy.mode"
    )
    p.add_argument("--duration", default="30m", help="how long to run: 30m, 90s, 1h (control time)")
    p.add_argument(
        "--task", default=None, help="the instruction given to the policy (default: policy.instruction)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"simulator seed of the first episode (default {EVAL_SEED_START}: held out from recordings)",
    )
    p.add_argument("--record", default=None, metavar="DATASET.zarr", help="store the rollout as episodes")
    p.add_argument("--rerun", default=None, help="off | spawn | web[:PORT] | FILE.rrd (default: viz.rerun)")
    p.add_argument("--summary", default=None, metavar="FILE.json", help="also write the summary as JSON")


def run_rollout(
    config: AppConfig,
    source: str,
    duration_s: float,
    rerun: str = "off",
    instruction: str | None = None,
    record: Path | None = None,
    seed: int | None = None,
) -> tuple[RolloutReport, Sink]:
    """Compose rig, policy, runner and subscribers from config; run; always shut down cleanly.

    In the simulator the episodes run on seeds `seed`, `seed`+1, … (default `EVAL_SEED_START`: held out
    from the recordings). With `record`, every episode of the rollout is stored (with the chunk ids, the
    planned actions and each chunk received) in that dataset, ready for the next fine-tune."""
    from app.compose.policies import open_policy
    from app.compose.rig import build_rig
    from app.viz.logger import open_sink, rerun_logger

    sink, note = open_sink(rerun, "rollout")
    if note:
        log.warning("%s", note)
    rig = build_rig(config)
    publisher = Publisher()
    policy = None
    try:
        policy = open_policy(source, config, rig)
        if hasattr(policy, "on_step"):  # the scripted policy follows the task's progress from step events
            publisher.subscribers.append(policy)
        if record is not None:
            publisher.subscribers.append(_recorder(config, rig, policy, record, source, instruction))
        if sink.kind != "off":
            publisher.subscribers.append(
                rerun_logger(sink, config.viz, cameras=list(rig.robot.cameras), with_chunks=True)
            )
        runner = PolicyRunner(
            rig.robot, rig.clock, policy, config.policy, config.control.fps, publisher, instruction
        )
        episode_s = config.policy.episode_seconds if rig.sim is not None else None
        first_seed = (EVAL_SEED_START if seed is None else seed) if rig.sim is not None else None
        session = RolloutSession(
            rig,
            runner,
            config.control.fps,
            publisher,
            episode_s,
            first_seed=first_seed,
            priority=config.runtime.loop_priority,
        )
        with Terminal(session):
            report = session.run(duration_s)
    finally:
        publisher.close()
        if policy is not None and hasattr(policy, "close"):
            policy.close()
        rig.close()
    report.policy = source
    report.latency_samples_ms = [round(float(x), 3) for x in runner.stats.inference_ms]
    return report, sink


def _recorder(
    config: AppConfig, rig: Rig, policy: Policy, path: Path, source: str, instruction: str | None
) -> RecorderSubscriber:
    """A recorder subscriber for the rollout's episodes (no leader command; the policy.* arrays instead)."""
    from app.compose.store import build_spec, calibration_identity, preflight
    from app.runtime.recorder import RecorderSubscriber
    from drivers.clock import SimClock
    from recording.recorder import Recorder
    from recording.schema import StoreError

    preflight(path)
    spec = replace(build_spec(config, rig, True, True), leader=False, policy_chunk=policy.spec.chunk_length)
    try:
        recorder = Recorder(path, spec, config.recording, block=isinstance(rig.clock, SimClock))
    except StoreError as e:
        raise UserError(str(e)) from e
    attrs = {
        "robot_type": config.robot.type,
        "calibration": calibration_identity(config),
        "policy": source,
        "mode": config.policy.mode,
    }
    return RecorderSubscriber(recorder, instruction or config.policy.instruction, attrs)


def print_summary(r: RolloutReport) -> None:
    print(f"rollout: {r.policy} in {r.mode} mode on {r.robot}, stopped by {r.stopped_by}")
    print(f"  {r.ticks} ticks = {r.control_s / 60:.2f} min of control time ({r.wall_s:.1f} s wall)")
    rate = f"{r.success_rate:.0%}" if r.success_rate is not None else "—"
    print(
        f"  tasks completed: {r.tasks} ({r.tasks_per_min:.2f}/min); per minute: {r.tasks_per_minute_bucket}"
    )
    print(f"  success rate: {rate} of {sum(e.success is not None for e in r.episodes)} judged episodes")
    seeds = [e.seed for e in r.episodes if e.seed is not None]
    if seeds:
        note = "held out" if min(seeds) >= EVAL_SEED_START else f"below {EVAL_SEED_START}: not held out"
        n = len(seeds)
        print(f"  seeds: {seeds[0]}…{seeds[-1]} ({n} episode{'' if n == 1 else 's'}; {note})")
    if r.inference_ms:
        print(f"  inference latency p50 {r.inference_ms['p50']:.1f} ms, p99 {r.inference_ms['p99']:.1f} ms")
    print(f"  delay (ticks: chunks): {r.delay_ticks}")
    c, s = r.chunks, r.runner
    print(
        f"  chunks: {c['requests']} requested, {c['on_time']} on time, {c['late']} late, "
        f"{c['late_discarded']} late+discarded, {c['expired']} expired, {c['failed']} failed "
        f"({s['inference_errors']} errors, {s['rejected_chunks']} rejected)"
    )
    print(
        f"  starvations: {s['starvations']} ({s['starved_ticks']} ticks); longest stall {s['longest_stall_ms']:.0f} ms; "
        f"largest step {s['max_step_rad']:.3f} rad, at a switch {s['max_switch_jump_rad']:.3f} rad"
    )
    print(f"  safety: {r.safety}")
    if r.lateness_ms:
        lat = r.lateness_ms
        print(
            f"  loop lateness p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms; "
            f"skipped ticks {s['skipped_ticks']}"
        )
    print(f"  control thread: {r.loop_priority}")


def summary_facts(r: RolloutReport) -> dict[str, str]:
    """What the summary plot states beside its panels: which policy (and checkpoint step), how many
    episodes, how they went, and what the runner and the safety layer had to do."""
    judged = [e for e in r.episodes if e.success is not None]
    wins = sum(bool(e.success) for e in judged)
    c, s = r.chunks, r.runner
    delays = ", ".join(f"{d}:{n}" for d, n in sorted(r.delay_ticks.items())) or "—"
    facts = {
        "policy": _policy_label(r.policy),
        "mode": f"{r.mode} on {r.robot}",
        "episodes": f"{len(r.episodes)} attempted, {len(judged)} judged",
        "success": f"{wins}/{len(judged)}" + (f" ({wins / len(judged):.0%})" if judged else ""),
        "control time": f"{r.control_s / 60:.1f} min ({r.stopped_by})",
        "chunks": f"{c.get('requests', 0)} requested, {c.get('failed', 0)} failed",
        "rejected": f"{int(s.get('rejected_chunks', 0))} chunks (beyond limits, NaN, shape)",
        "delays (ticks:chunks)": delays,
        "clamps": f"{r.safety.get('clamped_limit', 0)} limit, {r.safety.get('clamped_delta', 0)} step size",
    }
    if r.inference_ms:
        facts["latency"] = f"p50 {r.inference_ms['p50']:.0f} ms, p99 {r.inference_ms['p99']:.0f} ms"
    return facts


def _policy_label(policy: str) -> str:
    """A checkpoint path as `…/run/checkpoints/step-001500 (step 1500)`; other sources as given."""
    path = Path(policy)
    try:
        resolved = path.resolve() if path.exists() else path
    except OSError:
        resolved = path
    name = resolved.name
    if name.startswith("step-") and name[5:].isdigit():
        tail = "/".join(resolved.parts[-3:])
        return f"…/{tail} (step {int(name[5:])})"
    return policy if len(policy) <= 48 else "…" + policy[-47:]


def run(args: argparse.Namespace, config: AppConfig) -> int:
    if args.mode:
        config = replace(config, policy=replace(config.policy, mode=args.mode))
    if args.seed is not None and config.robot.type != "sim":
        raise UserError("--seed chooses simulator seeds; it needs --robot sim")
    duration_s = parse_duration(args.duration)
    source = args.policy or config.policy.source
    rerun = args.rerun if args.rerun is not None else config.viz.rerun
    record = None
    if args.record:
        from app.compose.store import resolve_dataset

        record = resolve_dataset(args.record, config)
    report, sink = run_rollout(config, source, duration_s, rerun, args.task, record, args.seed)
    print_summary(report)
    if record is not None:
        print(f"  recorded episodes: {record}")
        if config.recording.compact_after:
            from app.cli.recording import background_compaction

            background_compaction(record, config)
    if sink.path is not None:
        print(f"  Rerun recording: {sink.path}")
    if args.summary:
        path = Path(args.summary)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(report), indent=2))
        print(f"  summary: {path}")
    png = summary_plot_path(args.summary, sink)
    summary_png(
        png,
        report.control_s,
        report.success_times_s(config.control.fps),
        report.latency_samples_ms,
        summary_facts(report),
    )
    print(f"  summary plot: {png}")
    return 0


def summary_plot_path(summary: str | None, sink: Sink) -> Path:
    """The end-of-rollout plot goes beside the JSON summary, else beside the .rrd, else under runs/rollout/."""
    if summary:
        return Path(summary).with_suffix(".png")
    if sink.path is not None:
        return sink.path.with_suffix(".png")
    return Path.cwd() / "runs" / "rollout" / f"summary-{time.strftime('%Y%m%d-%H%M%S')}.png"
