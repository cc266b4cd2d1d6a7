"""Rerun logging as a loop subscriber: cameras, measured vs commanded joints, loop timing.

The control thread only puts events on a bounded queue; a worker thread compresses images to JPEG and
logs them. When the queue is full the visualisation message is dropped and counted — the data the
recorder keeps is never affected. Two timelines: `tick` (control ticks) and `time` (seconds since the
session started, from capture timestamps).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from app.config import VizConfig
from app.events import EpisodeEvent, StepEvent
from drivers.joints import ARM_JOINTS, SIDES, side_slice

log = logging.getLogger(__name__)
_STOP = object()


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


class RerunLogger:
    """Subscriber that logs loop events to Rerun from its own thread."""

    def __init__(self, sink: Sink, config: VizConfig, app_id: str = "xr0") -> None:
        import rerun as rr

        self.rr = rr
        self.sink = sink
        self.config = config
        self.dropped = 0
        self.logged = 0
        self._t0_ns: int | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self.rec = rr.RecordingStream(app_id, recording_id=None)
        if sink.kind == "file":
            sink.path.parent.mkdir(parents=True, exist_ok=True)
            self.rec.save(str(sink.path))
        elif sink.kind == "spawn":
            self.rec.spawn(memory_limit=config.memory_limit)
        elif sink.kind == "web":
            uri = self.rec.serve_grpc(
                server_memory_limit=config.memory_limit if "%" not in config.memory_limit else "1GiB"
            )
            rr.serve_web_viewer(web_port=sink.port, open_browser=False, connect_to=uri)
            log.info("Rerun web viewer on port %s", sink.port or "default")
        self._log_static()
        self._worker = threading.Thread(target=self._run, name="rerun-logger", daemon=True)
        self._worker.start()

    def _log_static(self) -> None:
        rr = self.rr
        for side in SIDES:
            names = [*ARM_JOINTS, "gripper"]
            for kind in ("measured", "commanded"):
                self.rec.log(
                    f"arms/{side}/{kind}", rr.SeriesLines(names=[f"{n} ({kind})" for n in names]), static=True
                )

    # -- subscriber API (called on the control thread: never blocks) --------------------------------------
    def on_step(self, event: StepEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def on_episode(self, event: EpisodeEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        self._queue.put(_STOP)
        self._worker.join(timeout=30)
        self.rec.flush()
        if self.sink.kind == "file":
            self.rec.disconnect()
        if self.dropped:
            log.warning(
                "Rerun: %d visualisation messages were dropped (queue full); recorded data is unaffected",
                self.dropped,
            )

    # -- worker ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                if isinstance(item, StepEvent):
                    self._log_step(item)
                else:
                    self._log_episode(item)
            except Exception:
                log.exception("Rerun logging failed; visualisation stops, the loop goes on")
                return

    def _set_time(self, tick: int, t_ns: int) -> None:
        if self._t0_ns is None:
            self._t0_ns = t_ns
        self.rec.set_time("tick", sequence=tick)
        self.rec.set_time("time", duration=(t_ns - self._t0_ns) / 1e9)

    def _log_step(self, e: StepEvent) -> None:
        rr, rec = self.rr, self.rec
        self._set_time(e.tick, e.deadline_ns)
        for name, image in e.observation.images.items():
            rec.log(f"cameras/{name}", rr.Image(image).compress(jpeg_quality=self.config.jpeg_quality))
        for side in SIDES:
            sl = side_slice(side)
            rec.log(f"arms/{side}/measured", rr.Scalars(e.observation.state[sl]))
            rec.log(f"arms/{side}/commanded", rr.Scalars(e.action[sl]))
        rec.log("loop/lateness_ms", rr.Scalars(e.lateness_ns / 1e6))
        for section, ms in e.timings_ms.items():
            rec.log(f"loop/{section}_ms", rr.Scalars(ms))
        if e.clamped or e.rejected:
            rec.log("safety/clamped", rr.Scalars(e.clamped))
        self.logged += 1

    def _log_episode(self, e: EpisodeEvent) -> None:
        rr = self.rr
        if self._t0_ns is None:
            self._t0_ns = e.t_ns
        self.rec.set_time("time", duration=(e.t_ns - self._t0_ns) / 1e9)
        text = f"episode {e.episode} {e.kind}"
        if e.success is not None:
            text += " — success" if e.success else " — failure"
        self.rec.log("events", rr.TextLog(text, level="INFO" if e.success is not False else "WARN"))
