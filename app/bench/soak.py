"""`xr0 bench soak --minutes 30`: does anything drift over a long session?

An async rollout in the simulator against the wall clock, with a small torch policy served over the wire
from its own process (`PolicyServer`), recording every episode to a Zarr store and logging to an `.rrd`
file — everything a lab's 30-minute rollout does. Each minute: the loop's lateness p99 and skipped ticks,
frames the recorder could not take (queue full) and viewer messages dropped, duplicated camera frames,
chunk latency p50/p99, the RSS of every process (the loop, the recorder's writer, the policy server) and
the growth of the store and the `.rrd` file. The summary says whether a per-minute metric drifts and how
much RSS grew after the first minute (targets: no drift, ≤ 5 %, 0 dropped frames).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.errors import UserError
from app.runtime.episodes import percentiles

if TYPE_CHECKING:
    from app.compose.config import AppConfig
    from app.runtime.events import EpisodeEvent, StepEvent
    from app.runtime.runner import PolicyRunner
    from drivers.robot import BimanualRobot

log = logging.getLogger(__name__)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=30.0, help="length of the session")
    p.add_argument("--cameras", type=int, default=3, help="how many of the configured cameras to render")
    p.add_argument(
        "--out", default=None, help="keep the store and the .rrd here (default: a temporary folder)"
    )
    p.add_argument(
        "--viz", action=argparse.BooleanOptionalAction, default=True, help="log to an .rrd file (default: on)"
    )
    p.add_argument(
        "--trace-memory",
        action="store_true",
        help="diagnose RSS growth: count the loop process's Python objects by type each minute, trace its "
        "Python allocations (tracemalloc), and report the kinds and source lines that grew since minute 1 "
        "(slows every allocation and pauses the loop: lateness figures of such a run do not count)",
    )


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process (MB) from /proc; None when it is gone or unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def folder_mb(path: Path) -> float:
    from app.compose.store import bytes_on_disk

    return round(bytes_on_disk(path) / 2**20, 2) if path.exists() else 0.0


def _serve(camera: str, queue: Any) -> None:
    """The policy server's process: the tiny torch CNN of `xr0 bench loop` behind a WebSocket."""
    from app.bench.loop import TinyTorchPolicy
    from app.serving.server import PolicyServer

    server = PolicyServer(TinyTorchPolicy(camera, threads=1), "127.0.0.1", 0)
    server.start()
    queue.put(server.port)
    while True:
        time.sleep(3600)


class MinuteSampler:
    """A loop subscriber that closes one row of measurements per minute of ticks. On the loop's thread it
    only copies counters; file sizes and /proc are read on a thread of its own (a store holds thousands
    of files: walking it in the loop would make that tick late)."""

    def __init__(self, fps: float, runner: PolicyRunner, robot: BimanualRobot, pids: dict[str, int],
                 files: dict[str, Path], counters: dict[str, Any]) -> None:  # fmt: skip
        self.ticks_per_minute = round(60 * fps)
        self.runner, self.robot, self.pids, self.files, self.counters = runner, robot, pids, files, counters
        self.rows: list[dict] = []
        self._lateness: list[int] = []
        self._marks = self._counters()
        self._sizes = {k: 0.0 for k in files}
        self._threads: list[threading.Thread] = []
        self._snapshot: Any = None
        self._first: Any = None  # the tracemalloc snapshot compared against (--trace-memory)
        self.trace_memory = False

    def _counters(self) -> dict[str, Any]:
        st = self.runner.stats
        return {
            "skipped": st.skipped_ticks,
            "inference": len(st.inference_ms),
            "duplicated": self.robot.observation_counters["duplicated_frames"],
            **{k: f() for k, f in self.counters.items()},
        }

    def on_step(self, event: StepEvent) -> None:
        self._lateness.append(event.lateness_ns)
        if len(self._lateness) >= self.ticks_per_minute:
            now = self._counters()
            before, self._marks = self._marks, now
            row = {
                "minute": len(self._threads) + 1,
                "lateness_ms": percentiles(self._lateness, 1e-6),
                "skipped_ticks": now["skipped"] - before["skipped"],
                "duplicated_frames": now["duplicated"] - before["duplicated"],
                "chunk_ms": percentiles(self.runner.stats.inference_ms[before["inference"] :], digits=1),
                **{k: now[k] - before[k] for k in self.counters},
            }
            self._lateness = []
            t = threading.Thread(target=self._finish, args=(row,), name="soak-sampler", daemon=True)
            self._threads.append(t)
            t.start()

    def _finish(self, row: dict) -> None:
        row["rss_mb"] = {name: rss_mb(pid) for name, pid in self.pids.items()}
        if self.trace_memory:  # which kinds of Python objects accumulate (cheap: a count by type)
            import gc
            from collections import Counter

            counts = Counter(type(o).__name__ for o in gc.get_objects())
            arrays = sum(o.nbytes for o in gc.get_objects() if isinstance(o, np.ndarray))
            if self._snapshot is not None:
                grew = (counts - self._snapshot).most_common(8)
                row["python_growth"] = {"objects": dict(grew), "ndarray_mb": round(arrays / 2**20, 1)}
            self._snapshot = counts
            row["python_growth"] = row.get("python_growth", {}) | self._allocations()
        for k, path in self.files.items():
            size = folder_mb(path)
            row[f"{k}_growth_mb"] = round(size - self._sizes[k], 2)
            self._sizes[k] = size
        self.rows.append(row)
        self.rows.sort(key=lambda r: r["minute"])
        log.info("minute %d: %s", row["minute"], row)

    def _allocations(self) -> dict:
        """The source lines whose live Python allocations grew most since the first minute (tracemalloc)."""
        import tracemalloc

        if not tracemalloc.is_tracing():
            tracemalloc.start(4)  # frames per allocation: enough to see the caller of a library's allocation
            return {}
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        if self._first is None:
            self._first = snapshot
            return {"traced_mb": round(tracemalloc.get_traced_memory()[0] / 2**20, 1)}
        top = snapshot.compare_to(self._first, "traceback")[:5]
        return {
            "traced_mb": round(tracemalloc.get_traced_memory()[0] / 2**20, 1),
            "lines_kb": {  # "a < b < c": allocated at a, called from b, from c
                " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(stat.traceback)): round(
                    stat.size_diff / 1024
                )
                for stat in top
            },
        }

    def on_episode(self, event: EpisodeEvent) -> None:
        pass

    def close(self) -> None:
        for t in self._threads:
            t.join(timeout=60)
        self._threads = []


def summarize(rows: list[dict]) -> dict:
    """Drift and growth across the minutes (the first minute is warm-up for RSS)."""
    if not rows:
        return {}
    p99 = [r["lateness_ms"].get("p99", 0.0) for r in rows]
    out: dict[str, Any] = {
        "lateness_p99_ms": {
            "first": p99[0],
            "last": p99[-1],
            "max": max(p99),
            "median": float(np.median(p99)),
        },
        "skipped_ticks": sum(r["skipped_ticks"] for r in rows),
        "recorder_overflows": sum(r.get("recorder_overflows", 0) for r in rows),
        "viz_dropped": sum(r.get("viz_dropped", 0) for r in rows),
        "duplicated_frames": sum(r["duplicated_frames"] for r in rows),
    }
    if len(rows) >= 2:
        growth = {}
        for name in rows[0]["rss_mb"]:
            first, last = rows[0]["rss_mb"].get(name), rows[-1]["rss_mb"].get(name)
            if first and last:
                growth[name] = round(100.0 * (last - first) / first, 1)
        out["rss_growth_after_minute_1_pct"] = growth
        half = len(rows) // 2
        out["lateness_p99_ms_first_half_vs_second"] = [
            round(float(np.median(p99[:half])), 3), round(float(np.median(p99[half:])), 3)
        ]  # fmt: skip
    return out


def bench(args: argparse.Namespace, config: AppConfig) -> dict:
    from app.bench import machine
    from app.bench.loop import _recorder
    from app.compose.rig import build_sim_rig
    from app.runtime.events import Publisher
    from app.runtime.rollout import RolloutSession
    from app.runtime.runner import PolicyRunner
    from app.serving.client import RemotePolicy
    from app.viz.logger import Sink, rerun_logger

    if args.minutes <= 0 or not 1 <= args.cameras <= len(config.cameras):
        raise UserError(f"--minutes must be > 0 and --cameras 1..{len(config.cameras)}")
    cfg = replace(
        config,
        cameras=dict(list(config.cameras.items())[: args.cameras]),
        robot=replace(config.robot, type="sim"),
        control=replace(config.control, sim_timing="realtime"),
        policy=replace(config.policy, mode="async"),
    )
    keep = Path(args.out) if args.out else None
    folder = keep or Path(tempfile.mkdtemp(prefix="xr0-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(
        target=_serve, args=(next(iter(cfg.cameras)), ports), daemon=True, name="xr0-soak-server"
    )
    server.start()
    rig = build_sim_rig(cfg)
    publisher = Publisher()
    policy = None
    try:
        policy = RemotePolicy(f"ws://127.0.0.1:{ports.get(timeout=120)}", timeout_s=10.0)
        runner = PolicyRunner(rig.robot, rig.clock, policy, cfg.policy, cfg.control.fps, publisher)
        recorder, note = _recorder(cfg, rig, folder)
        if recorder is None:
            raise UserError(f"bench soak needs the recorder: {note}")
        publisher.subscribers.append(recorder)
        rrd = folder / "soak.rrd"
        viz = None
        if args.viz:
            viz = rerun_logger(Sink("file", path=rrd), cfg.viz, cameras=list(cfg.cameras), with_chunks=True)
            publisher.subscribers.append(viz)
        writer = next(c for c in multiprocessing.active_children() if c.name == "xr0-recorder-writer")
        sampler = MinuteSampler(
            cfg.control.fps,
            runner,
            rig.robot,
            {"loop": os.getpid(), "writer": writer.pid, "server": server.pid}
            | ({"viz": viz.process.pid} if hasattr(viz, "process") else {}),
            {"store": folder / "bench_loop.zarr", "rrd": rrd},
            {
                "recorder_overflows": lambda: recorder.recorder.overflows,
                "viz_dropped": lambda: viz.dropped if viz is not None else 0,
            },
        )
        sampler.trace_memory = args.trace_memory
        publisher.subscribers.append(sampler)
        session = RolloutSession(
            rig, runner, cfg.control.fps, publisher, cfg.policy.episode_seconds,
            priority=cfg.runtime.loop_priority,
        )  # fmt: skip
        report = session.run(args.minutes * 60.0)
    finally:
        publisher.close()
        rig.close()
        if policy is not None:
            policy.close()
        server.kill()
        server.join(10)
    result = {
        "bench": "soak",
        "minutes": args.minutes,
        "cameras": {n: [c.width, c.height] for n, c in cfg.cameras.items()},
        "control_thread": report.loop_priority,
        "episodes": len(report.episodes),
        "summary": summarize(sampler.rows),
        "per_minute": sampler.rows,
        "files": str(folder) if keep else "deleted",
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "machine": machine(),
    }
    if keep is None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return result
