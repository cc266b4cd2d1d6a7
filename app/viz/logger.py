"""Rerun visualisation as a loop subscriber: the operator's view of teleop, recording and rollouts.

The control thread only puts events on a bounded queue (`on_step`, `on_episode`, `on_chunk` return at
once); a worker thread compresses images to JPEG and logs. A full queue drops the visualisation message
and counts it — the recorder's data is never affected. Two timelines: `tick` (control ticks) and `time`
(seconds since the session started, from the capture/deadline times of the app's one clock).

Entities (what the blueprint lays out; the blueprint opens on the `tick` timeline):
    cameras/<name>                          JPEG images, with history (bounded by the viewer's memory limit)
    arms/<side>/measured|sent               7 series each: 6 joints (rad) + gripper (0..1); "sent" is what
                                            reached the followers, after the safety layer
    chunks/<side>/<joint>/predicted/slot<k> each predicted chunk on the future ticks it covers (4 slots)
    chunks/<side>/<joint>/planned           what the plan asked for at each tick, before the safety layer
    chunks/<side>/<joint>/sent              what was sent at each tick, after it
    chunks/<side>/<joint>/rejected          a refused chunk's values (points), with its reason in `events`
    chunk_timing/latency_ms                 per chunk, at the tick its observation was taken (own axis)
    chunk_timing/ticks/delay|prefix_len     per chunk, in ticks
    loop/lateness_ms, loop/<section>_ms, loop/queue/<name>, counters/<name>
    tasks/per_minute                        tasks completed in each minute of control time, every minute (0 too)
    tasks/rolling_per_min, tasks/success    the rolling rate and a marker at each success
    events                                  text log: episodes, successes, refused chunks with the reason, errors
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.runtime.events import ChunkRecord, EpisodeEvent, StepEvent
from drivers.joints import ARM_JOINTS, SIDES, side_slice

if TYPE_CHECKING:
    from rerun import RecordingStream
    from rerun.blueprint import Blueprint

log = logging.getLogger(__name__)
_STOP = object()
CHUNK_SLOTS = 4
SERIES = [*ARM_JOINTS, "gripper"]


@dataclass(frozen=True)
class VizConfig:
    # Rerun sink: off, spawn (native viewer), web or web:PORT (browser viewer), or a FILE.rrd to write.
    rerun: str = "off"
    # Memory the viewer may use before dropping the oldest data, e.g. "25%" or "4GB".
    memory_limit: str = "25%"
    # JPEG quality of camera images logged to Rerun (keeps viewer memory bounded).
    jpeg_quality: int = 75
    # Bound of the queue between the control loop and the Rerun logger; overflow drops viz messages
    # (counted), never data.
    queue_size: int = 64
    # FILE.rrd only: how long Rerun's SDK batches rows before it writes a chunk (its default, 0.2 s, is for
    # live viewers). Every chunk costs bytes in the file and memory in the logging process: at 2 s a loop's
    # .rrd is half as large or less and the process grows far more slowly (docs/runner.md, "The Rerun view").
    file_flush_seconds: float = 2.0
    # FILE.rrd only: end the file with Rerun's footer (a manifest of every chunk, for fast random access).
    # The SDK keeps that manifest in memory until the file closes, so the logging process grew for as long
    # as a session lasted (+35.5 % over a 30-minute soak; without the footer −1.3 %, docs/benchmarks.md).
    # Off by default: the file is complete and valid without it; `rerun rrd optimize IN -o OUT` adds one.
    file_footer: bool = False
    # Log from a process of its own (`RerunProcess`): Rerun's SDK, its memory (which grows while it writes
    # a file) and its CPU stay out of the control process; if that process dies, the loop goes on. false:
    # a thread of the control process (`RerunLogger`).
    process: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.file_flush_seconds <= 60:
            raise ValueError(f"file_flush_seconds must be in (0, 60] s, got {self.file_flush_seconds}")


class VizError(ValueError):
    """A visualisation sink cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Sink:
    kind: str  # off | spawn | web | file
    port: int | None = None
    path: Path | None = None

    @staticmethod
    def parse(text: str) -> Sink:
        """`off`, `spawn`, `web`, `web:PORT` or `FILE.rrd`."""
        t = text.strip()
        if t in ("", "off", "none"):
            return Sink("off")
        if t == "spawn":
            return Sink("spawn")
        if t == "web" or t.startswith("web:"):
            port = t.partition(":")[2]
            if port and not port.isdigit():
                raise ValueError(f"--rerun {text!r}: the web viewer port must be a number, e.g. web:9090")
            return Sink("web", port=int(port) if port else None)
        if t.endswith(".rrd"):
            return Sink("file", path=Path(t))
        raise ValueError(f"--rerun {text!r}: use off, spawn, web, web:PORT or a FILE.rrd path")


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def resolve_sink(sink: Sink, fallback_file: Path) -> tuple[Sink, str | None]:
    """Check a sink before the loop starts; returns the sink to use and a note for the operator.

    No display for `spawn` falls back to `fallback_file` (and says so); a taken web port or an
    unwritable .rrd path is a `VizError` with one sentence.
    """
    if sink.kind == "spawn" and not has_display():
        return Sink("file", path=fallback_file), (
            f"no display for the Rerun viewer (DISPLAY is not set): writing {fallback_file} instead; "
            f"open it later with `rerun {fallback_file}`"
        )
    if sink.kind == "web" and sink.port is not None and not _port_free(sink.port):
        raise VizError(
            f"--rerun web:{sink.port}: port {sink.port} is already in use; pick another, e.g. web:9091"
        )
    if sink.kind == "file":
        folder = sink.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VizError(f"--rerun {sink.path}: cannot create the folder {folder} ({e.strerror})") from e
        if not os.access(folder, os.W_OK):
            raise VizError(f"--rerun {sink.path}: the folder {folder} is not writable")
    return sink, None


def open_sink(rerun: str, name: str) -> tuple[Sink, str | None]:
    """`--rerun` as the operator gave it, checked before anything starts: a relative .rrd path is taken
    from the current folder, and `spawn` without a display falls back to runs/NAME/NAME.rrd (the note
    says so). Bad input is one sentence (`UserError`)."""
    from app.errors import UserError

    try:
        sink = Sink.parse(rerun)
        if sink.path is not None and not sink.path.is_absolute():
            sink = Sink("file", path=Path.cwd() / sink.path)
        return resolve_sink(sink, fallback_file=Path.cwd() / "runs" / name / f"{name}.rrd")
    except ValueError as e:  # VizError is a ValueError
        raise UserError(str(e)) from e


def blueprint(cameras: list[str], with_chunks: bool, timeline: str = "tick") -> Blueprint:
    """The operator's layout: cameras on top, per-arm joints, then (with a policy) the chunks of one joint
    at a time per arm, chunk timing on its own axes, loop metrics and throughput; opened on `timeline`."""
    import rerun.blueprint as rrb

    cams = [rrb.Spatial2DView(origin=f"cameras/{c}", name=c) for c in cameras] or [
        rrb.TextDocumentView(origin="cameras", name="no cameras")
    ]
    arms = [rrb.TimeSeriesView(origin=f"arms/{s}", name=f"{s} arm: measured vs sent") for s in SIDES]
    rows = [rrb.Horizontal(*cams), rrb.Horizontal(*arms)]
    shares = [3, 2]
    if with_chunks:
        per_arm = [
            rrb.Tabs(
                *[
                    rrb.TimeSeriesView(origin=f"chunks/{s}/{j}", name=f"{s} {j}: predicted, planned, sent")
                    for j in SERIES
                ],
                name=f"{s} arm chunks",
            )
            for s in SIDES
        ]
        rows.append(rrb.Horizontal(*per_arm))
        rows.append(
            rrb.Horizontal(
                rrb.TimeSeriesView(origin="chunk_timing/latency_ms", name="inference latency (ms)"),
                rrb.TimeSeriesView(origin="chunk_timing/ticks", name="delay and prefix (ticks)"),
            )
        )
        shares += [3, 1]
    rows.append(
        rrb.Horizontal(
            rrb.TimeSeriesView(origin="loop", name="loop timing"),
            rrb.TimeSeriesView(origin="tasks", name="throughput"),
            rrb.TimeSeriesView(origin="counters", name="counters"),
            rrb.TextLogView(origin="events"),
        )
    )
    shares.append(2)
    return rrb.Blueprint(
        rrb.Vertical(*rows, row_shares=shares),
        rrb.TimePanel(timeline=timeline, state="collapsed"),
        collapse_panels=True,
    )


def send_chunk(rec: RecordingStream, timeline: str, start: int, actions: np.ndarray, where: str) -> None:
    """A (T, 14) chunk onto `chunks/<side>/<joint>/<where>`, row k on `start + k` of `timeline`."""
    import rerun as rr

    actions = np.asarray(actions, dtype=np.float64)
    index = [rr.TimeColumn(timeline, sequence=np.arange(start, start + len(actions)))]
    for side in SIDES:
        part = actions[:, side_slice(side)]
        for j, joint in enumerate(SERIES):
            rec.send_columns(
                f"chunks/{side}/{joint}/{where}",
                indexes=index,
                columns=rr.Scalars.columns(scalars=part[:, j]),
            )


class Throughput:
    """Completed tasks per minute: fixed one-minute buckets and a rolling rate over the last minute."""

    def __init__(self) -> None:
        self.successes: list[float] = []  # seconds since the session started
        self._recent: deque[float] = deque()

    def add(self, t_s: float) -> tuple[int, int, float]:
        """Record a success at t_s; returns (minute bucket, tasks in that bucket, rolling tasks/min)."""
        self.successes.append(t_s)
        self._recent.append(t_s)
        while self._recent and self._recent[0] < t_s - 60.0:
            self._recent.popleft()
        minute = int(t_s // 60)
        in_bucket = sum(1 for s in self.successes if int(s // 60) == minute)
        return minute, in_bucket, float(len(self._recent))  # tasks within the last 60 s = per minute

    def per_minute(self, duration_s: float) -> list[int]:
        buckets = [0] * max(1, int(np.ceil(duration_s / 60.0)))
        for s in self.successes:
            buckets[min(int(s // 60), len(buckets) - 1)] += 1
        return buckets


class RerunLogger:
    """Subscriber that logs loop events to Rerun from its own thread."""

    def __init__(
        self,
        sink: Sink,
        config: VizConfig,
        cameras: list[str] | None = None,
        with_chunks: bool = False,
        app_id: str = "xr0",
        threaded: bool = True,
    ) -> None:
        import rerun as rr

        self.rr = rr
        self.sink = sink
        self.config = config
        self.dropped = 0
        self.logged = 0
        self.error: str | None = None
        self.relayed_queue: int | None = None  # RerunProcess: the control process's queue length
        self.throughput = Throughput()
        self._t0_ns: int | None = None
        self._tick = 0
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self.with_chunks = with_chunks
        self._minutes_logged = 0
        self._t_last_s: float | None = None
        self._counts: dict[str, int] = {}
        batcher = None
        if sink.kind == "file":  # nobody watches a file live: fewer, larger chunks
            batcher = rr.ChunkBatcherConfig(flush_tick=config.file_flush_seconds)
        self.rec = rr.RecordingStream(app_id, batcher_config=batcher)
        bp = blueprint(cameras or [], with_chunks)
        if sink.kind == "file":
            self.rec.save(str(sink.path), default_blueprint=bp, write_footer=config.file_footer)
        elif sink.kind == "spawn":
            self.rec.spawn(memory_limit=config.memory_limit, default_blueprint=bp)
        elif sink.kind == "web":
            limit = config.memory_limit if "%" not in config.memory_limit else "1GiB"
            uri = self.rec.serve_grpc(server_memory_limit=limit, default_blueprint=bp)
            rr.serve_web_viewer(web_port=sink.port, open_browser=False, connect_to=uri)
            log.info("Rerun web viewer on port %s", sink.port or "default")
        self._log_static()
        self._worker = None
        if threaded:  # else the caller feeds `handle` itself (the logging process of `RerunProcess`)
            self._worker = threading.Thread(target=self._run, name="rerun-logger", daemon=True)
            self._worker.start()

    def _log_static(self) -> None:
        rr, rec = self.rr, self.rec
        for side in SIDES:
            for kind in ("measured", "sent"):
                names = [f"{n} ({kind})" for n in SERIES]
                rec.log(f"arms/{side}/{kind}", rr.SeriesLines(names=names), static=True)
            for j in SERIES:
                base = f"chunks/{side}/{j}"
                for k in range(CHUNK_SLOTS):
                    rec.log(f"{base}/predicted/slot{k}", rr.SeriesLines(names=f"predicted (slot {k})", widths=1.0), static=True)  # fmt: skip
                rec.log(f"{base}/planned", rr.SeriesLines(names="planned", widths=2.0), static=True)
                rec.log(f"{base}/sent", rr.SeriesLines(names="sent", widths=2.5), static=True)
                rec.log(f"{base}/rejected", rr.SeriesPoints(names="rejected", marker_sizes=3.0), static=True)
        rec.log("tasks/success", rr.SeriesPoints(marker_sizes=8.0, names="success"), static=True)

    # -- subscriber API (called on the control thread: never blocks) --------------------------------------
    def _put(self, item: object) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def on_step(self, event: StepEvent) -> None:
        self._put(event)

    def on_episode(self, event: EpisodeEvent) -> None:
        self._put(event)

    def on_chunk(self, event: object) -> None:
        """A chunk from the policy runner: fields chunk_id, tick_start, actions (T, 14), prefix_len,
        delay_ticks, latency_ms."""
        self._put(event)

    def close(self) -> None:
        if self._worker is not None:
            self._queue.put(_STOP)
            self._worker.join(timeout=60)
        self.finish()
        if self.dropped:
            log.warning(
                "Rerun: %d visualisation messages were dropped (queue full); recorded data is unaffected",
                self.dropped,
            )

    def finish(self) -> None:
        """Log the last, partial minute and flush the sink (after the last `handle`)."""
        if self.error is None and self._t_last_s is not None:
            self._log_minutes(self._t_last_s, final=True)
        self.rec.flush()
        if self.sink.kind == "file":
            self.rec.disconnect()

    # -- worker ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            self.handle(item)

    def handle(self, item: object) -> None:
        """Log one event (a step, an episode event or a chunk record); errors stop logging, never the loop."""
        if self.error is not None:
            return  # visualisation failed earlier: keep draining so the loop never notices
        try:
            if isinstance(item, StepEvent):
                self._log_step(item)
            elif isinstance(item, EpisodeEvent):
                self._log_episode(item)
            else:
                self._log_chunk(item)
        except Exception as e:  # noqa: BLE001 - a viewer that went away must not stop the robot
            self.error = f"Rerun logging stopped: {e}"
            log.error("%s; the control loop goes on without visualisation", self.error)

    def _seconds(self, t_ns: int) -> float:
        if self._t0_ns is None:
            self._t0_ns = t_ns
        return (t_ns - self._t0_ns) / 1e9

    def _set_time(self, tick: int, t_ns: int) -> None:
        self.rec.set_time("tick", sequence=tick)
        self.rec.set_time("time", duration=self._seconds(t_ns))

    def _log_step(self, e: StepEvent) -> None:
        rr, rec = self.rr, self.rec
        self._tick = e.tick
        self._set_time(e.tick, e.deadline_ns)
        for name, image in e.observation.images.items():
            rec.log(f"cameras/{name}", rr.Image(image).compress(jpeg_quality=self.config.jpeg_quality))
        planned = getattr(e, "planned", None)
        for side in SIDES:
            sl = side_slice(side)
            rec.log(f"arms/{side}/measured", rr.Scalars(e.observation.state[sl]))
            rec.log(f"arms/{side}/sent", rr.Scalars(e.action[sl]))
            if self.with_chunks:
                for j, (sent, plan) in enumerate(zip(e.action[sl], planned[sl] if planned is not None else [None] * len(SERIES), strict=True)):  # fmt: skip
                    rec.log(f"chunks/{side}/{SERIES[j]}/sent", rr.Scalars(sent))
                    if plan is not None:
                        rec.log(f"chunks/{side}/{SERIES[j]}/planned", rr.Scalars(plan))
        self._log_minutes(self._seconds(e.deadline_ns))
        rec.log("loop/lateness_ms", rr.Scalars(e.lateness_ns / 1e6))
        for section, ms in e.timings_ms.items():
            rec.log(f"loop/{section}_ms", rr.Scalars(ms))
        queued = self._queue.qsize() if self.relayed_queue is None else self.relayed_queue
        rec.log("loop/queue/viz", rr.Scalars(queued))
        rec.log("counters/viz_dropped", rr.Scalars(self.dropped))
        if e.clamped or e.rejected:
            rec.log("counters/clamped_this_tick", rr.Scalars(e.clamped))
        if e.observation.duplicated:
            rec.log("counters/duplicated_frames_this_tick", rr.Scalars(len(e.observation.duplicated)))
        self.logged += 1

    def _log_episode(self, e: EpisodeEvent) -> None:
        rr = self.rr
        t_s = self._seconds(e.t_ns)
        self.rec.set_time("time", duration=t_s)
        self.rec.set_time("tick", sequence=self._tick)
        text = f"episode {e.episode} {e.kind}"
        if e.seed is not None:
            text += f" (seed {e.seed})"
        if e.success is not None:
            text += " — success" if e.success else " — failure"
        if e.info.get("error"):
            text += f" — {e.info['error']}"
        level = "ERROR" if e.info.get("error") else ("WARN" if e.success is False else "INFO")
        self.rec.log("events", rr.TextLog(text, level=level))
        if e.kind == "end" and e.success:
            _, _, rolling = self.throughput.add(t_s)
            self.rec.log("tasks/success", rr.Scalars(1.0))
            self.rec.log("tasks/rolling_per_min", rr.Scalars(rolling))

    def _log_minutes(self, t_s: float, final: bool = False) -> None:
        """At each full minute of control time (and for the last, partial one at the end), that minute's
        tasks — zero included, so a run without successes reads as one."""
        self._t_last_s = t_s
        while t_s >= 60.0 * (self._minutes_logged + 1) or (final and t_s > 60.0 * self._minutes_logged):
            m = self._minutes_logged
            done = sum(1 for s in self.throughput.successes if int(s // 60) == m)
            self.rec.log("tasks/per_minute", self.rr.Scalars(done))
            self._minutes_logged += 1

    def _log_chunk(self, c: ChunkRecord) -> None:
        rr, rec = self.rr, self.rec
        problem = getattr(c, "problem", None)
        if c.actions is not None:  # a chunk that was not spliced in (discarded, expired) has no actions
            where = "rejected" if problem else f"predicted/slot{c.chunk_id % CHUNK_SLOTS}"
            send_chunk(rec, "tick", c.tick_start, c.actions, where)
        rec.set_time("tick", sequence=c.tick_start)
        if problem:
            rec.log("events", rr.TextLog(f"chunk {c.chunk_id} {c.outcome}: {problem}", level="WARN"))
            rec.log("counters/rejected_chunks", rr.Scalars(self._count("rejected")))
        rec.log("chunk_timing/ticks/prefix_len", rr.Scalars(c.prefix_len))
        rec.log("chunk_timing/ticks/delay", rr.Scalars(c.delay_ticks))
        rec.log("chunk_timing/latency_ms", rr.Scalars(c.latency_ms))

    def _count(self, name: str) -> int:
        self._counts[name] = self._counts.get(name, 0) + 1
        return self._counts[name]


# -- Rerun in a process of its own ------------------------------------------------------------------------------
# Importing rerun and opening the sink in a fresh interpreter takes seconds on a busy CPU.
STARTUP_TIMEOUT_S = 120.0


class RerunProcess:
    """`RerunLogger` in a child process, behind the same subscriber API (the default, `viz.process`).

    The control thread only puts events on a bounded inter-process queue (`put_nowait`; the queue's own
    feeder thread serialises them), so Rerun's SDK — its memory, which grows while it writes a file
    (docs/benchmarks.md, `bench soak`), and its JPEG and encoding work — lives outside the control process.
    A full queue drops the message and counts it, as the thread logger does. If the logging process dies,
    the loop goes on without visualisation (one error line). The events are this program's own dataclasses,
    sent between its own two processes on this machine (never over a network)."""

    def __init__(
        self,
        sink: Sink,
        config: VizConfig,
        cameras: list[str] | None = None,
        with_chunks: bool = False,
        app_id: str = "xr0",
    ) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # never fork a process that has a control thread
        self.sink = sink
        self.dropped = 0
        self.logged = 0
        self.error: str | None = None
        self._lost = False
        self._queue = ctx.Queue(maxsize=config.queue_size)
        self._reply, reply = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_logging_process,
            args=(sink, config, cameras, with_chunks, app_id, self._queue, reply, os.getpid()),
            name="xr0-rerun",
            daemon=True,
        )
        self.process.start()
        reply.close()
        answer = self._answer(STARTUP_TIMEOUT_S)
        if answer is None or answer[0] != "ready":
            self.process.kill()
            self.process.join(10)
            why = answer[1] if answer is not None else f"it did not start within {STARTUP_TIMEOUT_S:.0f} s"
            raise VizError(f"the Rerun logging process could not open {_describe(sink)}: {why}")

    def _answer(self, timeout_s: float) -> tuple[str, object] | None:
        try:
            return self._reply.recv() if self._reply.poll(timeout_s) else None
        except (EOFError, OSError):
            return ("gone", f"it ended (exit code {self.process.exitcode})")

    # -- subscriber API (called on the control thread: never blocks) --------------------------------------
    def _put(self, item: tuple) -> None:
        if self._lost:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if not self.process.is_alive():
                self._lost = True
                self.error = f"the Rerun logging process ended (exit code {self.process.exitcode})"
                log.error("%s; the control loop goes on without visualisation", self.error)

    def on_step(self, event: StepEvent) -> None:
        obs = event.observation
        if not isinstance(obs.images, dict):  # deferred frames: only their pixels can travel
            event = replace(event, observation=replace(obs, images=dict(obs.images)))
        self._put((event, self._queue.qsize(), self.dropped))

    def on_episode(self, event: EpisodeEvent) -> None:
        self._put((event, None, self.dropped))

    def on_chunk(self, event: object) -> None:
        self._put((event, None, self.dropped))

    def close(self) -> None:
        if not self._lost:
            try:
                self._queue.put(None, timeout=10)
            except queue.Full:
                pass
        answer = self._answer(120.0 if self.process.is_alive() else 0.0)
        if answer is not None and answer[0] == "done":
            self.logged, error = answer[1]
            self.error = self.error or error
        else:
            self.error = self.error or (
                f"the Rerun logging process did not finish ({answer[1] if answer else 'no answer in 120 s'})"
            )
            self.process.kill()
        self.process.join(10)
        self._queue.cancel_join_thread()  # anything still queued is visualisation only
        self._queue.close()
        if self.error:
            log.error("Rerun: %s", self.error)
        if self.dropped:
            log.warning(
                "Rerun: %d visualisation messages were dropped (queue full); recorded data is unaffected",
                self.dropped,
            )


def _describe(sink: Sink) -> str:
    return str(sink.path) if sink.kind == "file" else f"the {sink.kind} viewer"


# Set in the logging process before it imports rerun (an operator's own values win):
# - Rerun's native code allocates with mimalloc, which by default holds freed pages for a while before it
#   hands them back: the logging process's RSS crept up for as long as it ran (130 → 173 MB over 54 000
#   ticks of the scalars alone). Purging at once (delay 0) kept it flat (125 → 126–138 MB over 18 000 ticks;
#   docs/benchmarks.md, "Ninth session"). mimalloc reads its options when the library loads.
# - A file sink without a footer (`file_footer: false`) warns on every open; the choice is ours and
#   documented, so that one warning is filtered (Rerun's other warnings stay).
RERUN_PROCESS_ENV = {
    "MIMALLOC_PURGE_DELAY": "0",
    "RUST_LOG": "warn,re_log_encoding::rrd::file_sink=error",
}


def _logging_process(
    sink: Sink,
    config: VizConfig,
    cameras: list[str] | None,
    with_chunks: bool,
    app_id: str,
    events: Any,  # multiprocessing.Queue
    reply: Any,  # multiprocessing.connection.Connection
    parent_pid: int,
) -> None:
    """The child of `RerunProcess`: log what arrives until told to stop, or until the parent is gone."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the control process's: it closes us in order
    for name, value in RERUN_PROCESS_ENV.items():
        os.environ.setdefault(name, value)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        logger = RerunLogger(sink, config, cameras, with_chunks, app_id, threaded=False)
    except Exception as e:  # noqa: BLE001 - reported to the parent in one sentence
        reply.send(("error", f"{type(e).__name__}: {e}"))
        return
    reply.send(("ready", None))
    while True:
        try:
            item = events.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:  # the control process died: keep what was logged, stop
                break
            continue
        if item is None:
            break
        event, queued, dropped = item
        logger.relayed_queue, logger.dropped = queued, dropped
        logger.handle(event)
    logger.finish()
    reply.send(("done", (logger.logged, logger.error)))


def rerun_logger(
    sink: Sink, config: VizConfig, cameras: list[str] | None = None, with_chunks: bool = False
) -> RerunLogger | RerunProcess:
    """The loop's Rerun subscriber: in a process of its own (`viz.process`, the default) or a thread."""
    kind = RerunProcess if config.process else RerunLogger
    return kind(sink, config, cameras=cameras, with_chunks=with_chunks)
