"""`xr0 dataset info|validate|repair|compact|stats|view --dataset PATH` — inspect and look after a store.

PATH is a store path, or a bare NAME under recording.root (as `xr0 record --dataset` takes it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.compose.config import AppConfig
from app.compose.store import bytes_on_disk, resolve_dataset
from app.errors import UserError, prog
from app.viz.logger import blueprint

if TYPE_CHECKING:
    from rerun import RecordingStream

    from app.viz.logger import Sink, VizConfig
    from recording.reader import EpisodeStore

SUBCOMMANDS = {
    "info": "summary of a store: episodes, tasks, success, flagged episodes, size",
    "validate": "check every committed episode and name partial ones (exit 1 if anything is wrong)",
    "repair": "recover partial episodes up to their last flush (or --drop them), remove leftovers",
    "compact": "re-encode finished episodes' cameras as video segments (the archive tier; resumable)",
    "stats": "normalisation statistics of a store in one pass (printed; stored with the data with --write)",
    "view": "show one episode (cameras, joints, actions) in Rerun",
    "export-lerobot": "write a store as a LeRobotDataset v3 (through lerobot itself, in its own environment)",
    "import-lerobot": "read a LeRobotDataset v3 into a new store (through lerobot itself)",
    "push": "upload a store to the Hugging Face Hub as a dataset repo (the Zarr store itself)",
    "pull": "download a store from the Hugging Face Hub and validate it",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from app.cli.parsing import add_common

    sub = p.add_subparsers(dest="sub", metavar="{" + ",".join(SUBCOMMANDS) + "}", required=True)
    for name, help_text in SUBCOMMANDS.items():
        s = sub.add_parser(
            name, help=help_text or "LeRobot conversion (not in this version)", description=help_text
        )
        add_common(s, nested=True)
        if name in ("export-lerobot", "import-lerobot"):
            from app.cli import lerobot as lerobot_cli

            (
                lerobot_cli.add_export_arguments
                if name == "export-lerobot"
                else lerobot_cli.add_import_arguments
            )(s)
            continue
        s.add_argument(
            "--dataset", dest="dataset", default=None, help="a store path or a NAME under recording.root"
        )
        if name in ("push", "pull"):
            s.add_argument("--repo-id", required=True, help="USER/NAME of the dataset repo on the Hub")
            if name == "push":
                s.add_argument("--private", action="store_true", help="create the repo private")
        # the earlier positional spelling, kept for one release with a deprecation line
        s.add_argument("path", nargs="?", default=None, help=argparse.SUPPRESS)
        if name == "info":
            s.add_argument("--json", action="store_true", help="print JSON instead of text")
        elif name == "validate":
            s.add_argument(
                "--deep", action="store_true", help="also decode every image (slow on large stores)"
            )
        elif name == "repair":
            s.add_argument(
                "--drop", action="store_true", help="drop partial episodes instead of recovering them"
            )
        elif name == "compact":
            s.add_argument(
                "--episodes", default=None, help="only these episodes, e.g. 0,3,5-9 (default: all finished)"
            )
            s.add_argument(
                "--codec", choices=("av1", "h264"), default=None, help="default: recording.archive_codec"
            )
            s.add_argument("--crf", type=int, default=None, help="default: recording.archive_crf")
            s.add_argument("--preset", default=None, help="default: recording.archive_preset")
            s.add_argument(
                "--segment-steps", type=int, default=None, help="default: recording.archive_segment_steps"
            )
            s.add_argument(
                "--threads",
                type=int,
                default=1,
                help="segments encoded at once, on as many CPUs (default 1: one CPU, leaving the rest to a "
                "recording)",
            )
            s.add_argument(
                "--fast",
                action="store_true",
                help="the fast side of the trade-off: h264 ultrafast crf 18 (faster than real time with "
                "--threads 2 on 2 cores, ~2x LeRobot's bytes at its quality; the default is ~0.3x at 0.8x "
                "real time); --codec/--crf/--preset still override",
            )
            s.add_argument("--json", action="store_true", help="print the report as JSON")
        elif name == "stats":
            s.add_argument(
                "--horizon",
                type=int,
                default=30,
                help="steps of the relative-action chunk statistics (XR0: 30 at 30 Hz; 0: none)",
            )
            s.add_argument(
                "--write",
                action="store_true",
                help="store them in the dataset (for other tools; `xr0 train` computes its own)",
            )
        elif name == "view":
            s.add_argument("--episode", type=int, default=None, help="episode index (default: the first)")
            s.add_argument(
                "--rerun",
                default=None,
                help="spawn | web[:PORT] | FILE.rrd (default: viz.rerun, else a .rrd file)",
            )


def run(args: argparse.Namespace, config: AppConfig) -> int:
    from recording.schema import StoreError

    if args.sub in ("export-lerobot", "import-lerobot"):
        from app.cli import lerobot as lerobot_cli

        return (lerobot_cli.export_lerobot if args.sub == "export-lerobot" else lerobot_cli.import_lerobot)(
            args, config
        )
    path = resolve_dataset(_named_dataset(args), config)
    if args.sub in ("push", "pull"):
        from app.interop import hub

        if args.sub == "push":
            url = hub.push_dataset(path, args.repo_id, private=args.private)
            print(f"pushed {path} to {url}")
        else:
            hub.pull_dataset(args.repo_id, path)
            print(f"pulled {args.repo_id} into {path} (validated)")
        return 0
    try:
        commands = {"info": _info, "validate": _validate, "repair": _repair, "compact": _compact}
        return {**commands, "stats": _stats, "view": _view}[args.sub](args, config, path)
    except StoreError as e:
        raise UserError(str(e)) from e


def _named_dataset(args: argparse.Namespace) -> str:
    """--dataset, as every command names its store; a positional path still works, with a deprecation line."""
    if args.dataset and args.path:
        raise UserError(f"name the dataset once (got --dataset {args.dataset} and {args.path})")
    if args.path:
        print(
            f"{prog()} dataset {args.sub}: a positional dataset is deprecated; write --dataset {args.path} "
            "(as record, replay, train and export-lerobot take it)",
            file=sys.stderr,
        )
        return args.path
    if not args.dataset:
        raise UserError(f"dataset {args.sub} needs --dataset PATH|NAME")
    return args.dataset


def summary(path: Path) -> dict[str, Any]:
    """What `xr0 dataset info` shows, as a dict."""
    from recording.reader import EpisodeStore

    store = EpisodeStore(path)
    infos = [store.info(e) for e in store.episodes]
    seconds = sum(float(i.get("duration_s", 0.0)) for i in infos)
    judged = [i["success"] for i in infos if i.get("success") is not None]
    tasks: dict[str, int] = {}
    for t in store.tasks:
        tasks[t] = tasks.get(t, 0) + 1
    size = bytes_on_disk(path)
    cameras: dict[str, dict[str, Any]] = {}
    for cam in store.spec.cameras:
        key = f"observation.images.{cam}"
        cam_bytes = sum(
            bytes_on_disk(store.path / "episodes" / f"episode_{e:06d}" / key) for e in store.episodes
        )
        codecs: dict[str, int] = {}
        for e in store.episodes:
            name = _codec_name(store.storage(e))
            codecs[name] = codecs.get(name, 0) + 1
        cameras[cam] = {
            "bytes": cam_bytes,
            "bytes_per_minute": round(cam_bytes / (seconds / 60)) if seconds else None,
            "codecs": codecs,
        }
    tiers = {"live": 0, "archive": 0}
    for e in store.episodes:
        tiers[store.storage(e)["tier"]] += 1
    return {
        "path": str(path),
        "format": f"{store.attrs['format']} v{store.attrs['format_version']}",
        "fps": store.fps,
        "robot_type": store.spec.robot_type,
        "cameras": {n: list(s) for n, s in store.spec.cameras.items()},
        "joint_names": list(store.spec.joint_names),
        "image_codec": store.spec.image_codec,
        "episodes": len(store.episodes),
        "partial_episodes": store.partial,
        "steps": int(store.lengths.sum()),
        "seconds": round(seconds, 2),
        "tasks": tasks,
        "success": {"judged": len(judged), "succeeded": int(sum(judged))},
        "flagged_low_rate": [i["index"] for i in infos if not i.get("rate_ok", True)],
        "interrupted": [i["index"] for i in infos if i.get("interrupted")],
        "bytes": size,
        "bytes_per_minute": round(size / (seconds / 60)) if seconds else None,
        "per_camera": cameras,
        "tiers": tiers,
        "stats_computed": (store.stats or {}).get("computed_utc"),
        "episode_table": [
            {
                "index": i["index"],
                "steps": i["length"],
                "seconds": i.get("duration_s"),
                "success": i.get("success"),
                "loop_rate_hz": i.get("loop_rate_hz"),
                "task": i.get("task", ""),
            }
            for i in infos
        ],
    }


def _codec_name(storage: dict[str, Any]) -> str:
    codec = storage.get("codec", {})
    if storage.get("tier") == "archive":
        return f"{codec.get('codec')} crf {codec.get('crf')} ({codec.get('segment_steps')}-frame segments)"
    if codec.get("name") == "jpeg":
        return f"jpeg q{codec.get('jpeg_quality')}"
    return str(codec.get("name"))


def _info(args: argparse.Namespace, config: AppConfig, path: Path) -> int:
    s = summary(path)
    if args.json:
        print(json.dumps(s))
        return 0
    cams = ", ".join(f"{n} {h}×{w}" for n, (h, w, _) in s["cameras"].items()) or "none"
    print(
        f"dataset {s['path']} — {s['format']}, {s['fps']:g} Hz, robot {s['robot_type']}, images {s['image_codec']}"
    )
    print(f"  cameras: {cams}")
    print(f"  joints: {len(s['joint_names'])} ({s['joint_names'][0]} … {s['joint_names'][-1]})")
    partial = (
        f", PARTIAL: {s['partial_episodes']} (run {prog()} dataset repair)" if s["partial_episodes"] else ""
    )
    print(f"  episodes: {s['episodes']} committed, {s['steps']} steps, {s['seconds']:.1f} s{partial}")
    for task, n in s["tasks"].items():
        print(f"  task ×{n}: {task!r}")
    j = s["success"]
    if j["judged"]:
        print(f"  success: {j['succeeded']}/{j['judged']} judged ({j['succeeded'] / j['judged']:.0%})")
    flagged = s["flagged_low_rate"]
    print(f"  flagged (loop rate below target): {flagged if flagged else 'none'}")
    per_min = f", {s['bytes_per_minute'] / 1e6:.1f} MB per minute" if s["bytes_per_minute"] else ""
    print(f"  size: {s['bytes'] / 1e6:.1f} MB{per_min}")
    tiers = s["tiers"]
    print(f"  storage: {tiers['live']} episode(s) live (per-frame), {tiers['archive']} archived (video)")
    for cam, c in s["per_camera"].items():
        rate = f"{c['bytes_per_minute'] / 1e6:.1f} MB/min" if c["bytes_per_minute"] else "-"
        codecs = ", ".join(f"{name} ×{n}" for name, n in c["codecs"].items())
        print(f"    {cam}: {rate}  {codecs}")
    if s["stats_computed"]:  # only for other tools: `xr0 train` computes its own in the model's space
        print(f"  stored statistics: computed {s['stats_computed']} ({prog()} dataset stats --write)")
    for e in s["episode_table"]:
        ok = {True: "success", False: "failure", None: "-"}[e["success"]]
        print(
            f"    {e['index']:>5}  {e['steps']:>6} steps  {e['seconds'] or 0:7.1f} s  {ok:8}  {e['loop_rate_hz']} Hz"
        )
    return 0


def _validate(args: argparse.Namespace, config: AppConfig, path: Path) -> int:
    from recording.integrity import validate

    report = validate(path, deep=args.deep)
    for p in report.partial:
        print(
            f"partial episode {p.index}: an interrupted recording; {p.flushed_steps} steps ({p.seconds:g} s) "
            f"are recoverable — run `{prog()} dataset repair --dataset {path}` (or --drop)"
        )
    for problem in report.problems:
        print(f"problem: {problem}")
    if report.leftovers:
        print(
            f"note: {len(report.leftovers)} leftover temporary file(s); `{prog()} dataset repair` removes them"
        )
    if report.ok:
        print(
            f"ok: {report.committed} committed episode(s), {report.steps} steps{' (deep)' if args.deep else ''}"
        )
        return 0
    return 1


def _repair(args: argparse.Namespace, config: AppConfig, path: Path) -> int:
    from recording.integrity import repair

    report = repair(path, drop=args.drop)
    for index, n in report.recovered.items():
        print(f"episode {index}: recovered {n} steps (marked interrupted, recovered)")
    for index in report.dropped:
        print(f"episode {index}: dropped")
    if report.removed_leftovers:
        print(f"removed {report.removed_leftovers} leftover temporary file(s)")
    if not (report.recovered or report.dropped or report.removed_leftovers):
        print("nothing to repair")
    for problem in report.problems:
        print(f"problem repair cannot fix: {problem}")
    return 1 if report.problems else 0


def episode_list(text: str) -> list[int]:
    """ "0,3,5-9" -> [0, 3, 5, 6, 7, 8, 9]; one sentence naming --episodes when it is not that."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UserError(f"--episodes must be indices and ranges like 0,3,5-9, got {text!r}") from None
    return out


def _compact(args: argparse.Namespace, config: AppConfig, path: Path) -> int:
    from recording.compact import FAST_ARCHIVE, ArchiveSettings, compact
    from recording.schema import StoreError

    rec = config.recording
    base = (
        FAST_ARCHIVE if args.fast else ArchiveSettings(rec.archive_codec, rec.archive_crf, rec.archive_preset)
    )
    try:
        settings = ArchiveSettings(
            codec=args.codec or base.codec,
            crf=base.crf if args.crf is None else args.crf,
            preset=base.preset if args.preset is None else args.preset,
            segment_steps=rec.archive_segment_steps if args.segment_steps is None else args.segment_steps,
            threads=args.threads,
        )
    except (ValueError, StoreError) as e:
        raise UserError(f"dataset compact: {e}") from None
    episodes = episode_list(args.episodes) if args.episodes else None
    report = compact(path, settings, episodes).as_dict()
    if args.json:
        print(json.dumps(report))
        return 0
    if not report["compacted"]:
        print(f"nothing to compact: {report['already_archived']} episode(s) already archived")
        return 0
    psnr = ", ".join(f"{cam} {db:.1f} dB" for cam, db in report["psnr_db_worst_episode"].items())
    print(
        f"compacted {report['compacted']} episode(s) to {settings.codec} crf {settings.crf}: "
        f"{report['bytes_before'] / 1e6:.1f} MB → {report['bytes_after'] / 1e6:.1f} MB "
        f"({report['ratio']}× smaller), {report['realtime']}× real time; PSNR (worst episode) {psnr}"
    )
    return 0


def _stats(args: argparse.Namespace, config: AppConfig, path: Path) -> int:
    from recording.reader import EpisodeStore
    from recording.stats import compute_stats, write_stats

    horizon = args.horizon
    if horizon < 0:
        raise UserError(f"--horizon must be >= 0, got {horizon}")
    store = EpisodeStore(path)
    if not store.episodes:
        raise UserError(f"dataset {path} has no committed episodes to compute statistics from")
    stats = compute_stats(store, relative_horizon=horizon or None)
    if args.write:
        write_stats(path, stats)
    where = f"stored in {path}" if args.write else "not stored (--write stores them)"
    print(f"stats over {stats['episodes']} episode(s), {stats['steps']} steps, {where}:")
    for key, st in stats["keys"].items():
        lo, hi = min(st["min"]), max(st["max"])
        print(
            f"  {key:24} mean |{sum(abs(m) for m in st['mean']) / len(st['mean']):.3f}|  range [{lo:.3f}, {hi:.3f}]"
        )
    if "relative_action" in stats:
        r = stats["relative_action"]
        print(
            f"  relative action chunks: {r['horizon']} steps × {r['shape'][1]} dims (action[t+k] − state[t])"
        )
    return 0


def log_episode(path: Path, episode: int | None, sink: Sink, viz: VizConfig) -> tuple[int, int]:
    """Log one episode to a Rerun sink: cameras, measured/sent/leader joints, on its recorded times."""
    import rerun as rr

    from drivers.joints import ARM_JOINTS, SIDES, side_slice
    from recording.reader import EpisodeStore

    store = EpisodeStore(path)
    if not store.episodes:
        raise UserError(f"dataset {path} has no committed episodes")
    episode = store.episodes[0] if episode is None else episode
    n = store.length(episode)
    rec = rr.RecordingStream("xr0-dataset", recording_id=f"{path.stem}-{episode}")
    has_chunks = "policy.new_chunk" in store.key_specs
    bp = blueprint([k.rsplit(".", 1)[-1] for k in store.image_keys], with_chunks=has_chunks, timeline="step")
    if sink.kind == "file":
        sink.path.parent.mkdir(parents=True, exist_ok=True)
        rec.save(str(sink.path), default_blueprint=bp)
    elif sink.kind == "spawn":
        rec.spawn(memory_limit=viz.memory_limit, default_blueprint=bp)
    else:
        uri = rec.serve_grpc(default_blueprint=bp)
        rr.serve_web_viewer(web_port=sink.port, open_browser=False, connect_to=uri)
    info = store.info(episode)
    rec.log("episode", rr.TextDocument(json.dumps(info, indent=2), media_type="text/markdown"), static=True)
    names = [*ARM_JOINTS, "gripper"]
    series = {"observation.state": "measured", "action": "sent", "leader.action": "leader"}
    series = {k: v for k, v in series.items() if k in store.key_specs}
    for side in SIDES:
        for label in series.values():
            rec.log(
                f"arms/{side}/{label}", rr.SeriesLines(names=[f"{j} ({label})" for j in names]), static=True
            )
    ts = store.get(episode, "timestamp_ns")
    lows = {k: store.get(episode, k) for k in series}
    for t in range(n):
        rec.set_time("step", sequence=t)
        rec.set_time("time", duration=(int(ts[t]) - int(ts[0])) / 1e9)
        for key in store.image_keys:
            image = store.get(episode, key, t)
            rec.log(
                f"cameras/{key.rsplit('.', 1)[-1]}", rr.Image(image).compress(jpeg_quality=viz.jpeg_quality)
            )
        for side in SIDES:
            for key, label in series.items():
                rec.log(f"arms/{side}/{label}", rr.Scalars(lows[key][t][side_slice(side)]))
    if has_chunks:
        _log_chunks(rec, store, episode)
    rec.flush()
    if sink.kind == "file":
        rec.disconnect()
    return episode, n


def _log_chunks(rec: RecordingStream, store: EpisodeStore, episode: int) -> None:
    """A rollout episode's predicted chunks, each on the steps it covers, and the actions sent (the same
    entities as the live view, app/viz/logger.py)."""
    from app.viz.logger import CHUNK_SLOTS, send_chunk

    ticks = store.get(episode, "tick")
    ids = store.get(episode, "policy.new_chunk_id")
    starts = store.get(episode, "policy.new_chunk_start")
    sent = store.get(episode, "action")
    send_chunk(rec, "step", 0, sent, "sent")
    for t in np.flatnonzero(ids >= 0):
        chunk = store.get(episode, "policy.new_chunk", int(t))  # (T, 14)
        first = int(starts[t] - ticks[0])  # the episode step its row 0 belongs to
        send_chunk(rec, "step", first, chunk, f"predicted/slot{int(ids[t]) % CHUNK_SLOTS}")


def _view(args: argparse.Namespace, config: AppConfig, path: Path) -> int:
    from app.viz.logger import Sink, VizError, resolve_sink

    fallback = Path.cwd() / "runs" / "view" / f"{path.stem}_episode_{args.episode or 0}.rrd"
    choice = args.rerun if args.rerun is not None else config.viz.rerun
    try:
        sink = Sink("file", path=fallback) if choice in ("", "off", "none") else Sink.parse(choice)
        sink, note = resolve_sink(sink, fallback)
    except (ValueError, VizError) as e:
        raise UserError(str(e)) from e
    if note:
        print(note)
    episode, steps = log_episode(path, args.episode, sink, config.viz)
    where = sink.path if sink.path is not None else sink.kind
    print(f"episode {episode} of {path}: {steps} steps logged to Rerun ({where})")
    if sink.path is not None:
        print(f"  open it with: .venv/bin/rerun {sink.path}")
    if sink.kind == "web":  # the web viewer lives in this process: keep serving until Ctrl-C
        print(f"  web viewer on port {sink.port or 9090}; Ctrl-C to stop")
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    return 0
