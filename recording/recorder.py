"""The recorder: takes steps from a live control loop and writes them in a separate writer process.

The loop thread only calls `start_episode`, `add_step` and `end_episode`. `add_step` copies the step's
arrays into a free slot of a shared-memory ring and sends a few bytes down a pipe; everything else —
JPEG encoding, zarr, the disk, fsync — happens in the writer process, so the loop never waits for disk
and never waits for the Python lock of a busy writer thread (measured: a writer *thread* put ~5 ms on
the loop's p99 lateness; see docs/benchmarks.md).

The ring is bounded (`queue_seconds` of steps). When it is full the step is not silently dropped: the
episode raises an alarm (`alarm`), takes no further steps, and is ended by the caller — committed up to
the last step it kept, marked interrupted, or discarded, as the caller decides. With `block=True`
(lockstep simulation, where the world waits for the loop) `add_step` waits for room instead.

Steps are plain dicts key -> array/number with exactly the keys of the store's spec
(`StoreSpec.arrays()`). A write error (disk full, …) stops the writer; `error` says what happened in one
sentence, the partial episode stays on disk for `xr0 dataset repair`, and committed episodes are
untouched. If the recording process dies, the writer flushes what it received and exits, leaving the
episode partial. Messages between the processes are JSON; the arrays travel through shared memory.
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from recording.config import RecordingConfig
from recording.schema import ArraySpec, StoreError, StoreSpec, check_store

log = logging.getLogger(__name__)
START_TIMEOUT_S = 60.0
WRITER_NICE = 10  # the writer process's niceness: ~1/10 of the CPU share of the loop when both want it


@dataclass(frozen=True)
class EpisodeResult:
    index: int
    status: str  # committed | discarded | failed
    length: int
    attrs: dict[str, Any] = field(default_factory=dict)


def describe_error(e: BaseException, path: Path) -> str:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return (
            f"the disk is full: could not write to {path} (no space left on device); committed episodes are "
            f"intact, the episode being recorded was kept as a partial episode (free space, then run "
            f"`xr0 dataset repair --dataset {path}`)"
        )
    if isinstance(e, StoreError):
        return str(e)
    if isinstance(e, OSError):
        return f"could not write to {path}: {e.strerror or e} ({getattr(e, 'filename', '') or 'file'})"
    return f"writing to {path} failed: {e}"


class StepRing:
    """Fixed-size step slots in shared memory: every array of the spec at a fixed offset in each slot."""

    def __init__(self, arrays: list[ArraySpec], slots: int, name: str | None = None) -> None:
        self.slots = slots
        self.layout: list[tuple[str, int, np.dtype, tuple[int, ...], bool]] = []
        offset = 0
        for a in arrays:
            dtype = np.dtype(a.dtype)
            self.layout.append((a.key, offset, dtype, a.shape, a.image))
            offset += -(-dtype.itemsize * int(np.prod(a.shape, dtype=np.int64)) // 64) * 64  # 64-byte aligned
        self.slot_bytes = offset
        size = max(1, offset * slots)
        try:
            self.shm = shared_memory.SharedMemory(
                name=name, create=name is None, size=size if name is None else 0
            )
        except OSError as e:
            raise StoreError(
                f"cannot reserve {size / 2**20:.0f} MiB of shared memory for the recorder's queue ({e.strerror}); "
                "lower recording.queue_seconds or give the machine/container more /dev/shm"
            ) from e
        if name is None:  # touch every page now: first-touch page faults would cost the loop ~2 ms per step
            np.frombuffer(self.shm.buf, dtype=np.uint8)[:] = 0
        self.views = [
            {
                key: np.ndarray(shape, dtype, buffer=self.shm.buf, offset=s * self.slot_bytes + off)
                for key, off, dtype, shape, _ in self.layout
            }
            for s in range(slots)
        ]

    def write(self, slot: int, step: Mapping[str, Any]) -> None:
        views = self.views[slot]
        if step.keys() != views.keys():
            missing = sorted(set(views) - set(step))
            extra = sorted(set(step) - set(views))
            raise StoreError(
                f"a step must have exactly the store's keys (missing {missing}, unknown {extra})"
            )
        for key, _, _, shape, image in self.layout:
            value = np.asarray(step[key])
            if value.shape != shape:
                raise StoreError(f"step {key} has shape {value.shape}, the store expects {shape}")
            if image and value.dtype != np.uint8:
                raise StoreError(f"step {key} must be uint8 RGB, got {value.dtype}")
            views[key][...] = value

    def read(self, slot: int) -> dict[str, np.ndarray]:
        """The slot's arrays, as views: valid until the slot is handed back."""
        return dict(self.views[slot])

    def close(self, unlink: bool = False) -> None:
        self.views = []
        self.shm.close()
        if unlink:
            self.shm.unlink()


class Recorder:
    def __init__(
        self, path: str | Path, spec: StoreSpec, config: RecordingConfig, block: bool = False
    ) -> None:
        self.path = Path(path)
        self.config = config
        self.block = block
        if self.path.exists():  # the writer re-checks under its lock; this gives the caller the spec at once
            stored = StoreSpec.from_attrs(check_store(self.path), f"dataset {self.path}")
            diff = stored.difference(spec)
            if diff:
                raise StoreError(
                    f"dataset {self.path} does not match this recording: {diff}; record into a new dataset"
                )
            spec = stored
        self.spec = spec
        self.queue_size = max(2, round(config.queue_seconds * spec.fps))
        self.alarm: str | None = None  # set when the queue overflowed in the current episode
        self.error: str | None = None  # set when the writer failed; it then stops writing
        self.results: list[EpisodeResult] = []
        self.steps_received = 0
        self.steps_in_episode = 0
        self.overflows = 0  # episodes stopped because the queue was full
        self.refused_steps = 0  # steps handed over during an episode but not taken (after an alarm or error)
        self.max_depth = 0
        self.written_steps = 0  # steps of the current episode safely on disk
        self.flush_seconds_total = 0.0  # writer process time spent writing (wall)
        self.writer_cpu_s = 0.0  # CPU time the writer process has used (all its threads)
        self._current: int | None = None
        self._accepting = False
        self._produced = 0
        self._closing = False
        self._send_lock = threading.Lock()
        self._synced = threading.Condition()
        self._sync_sent = self._sync_seen = 0
        ctx = mp.get_context("spawn")  # never fork a process that holds GL contexts and threads
        self._ring = StepRing(spec.arrays(), self.queue_size)
        self._consumed = ctx.RawValue("q", 0)
        self._conn, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=_writer_main,
            args=(str(self.path), json.dumps(spec.to_attrs()), json.dumps(asdict(config)), self._ring.shm.name,
                  self.queue_size, child, self._consumed),
            name="xr0-recorder-writer",
            daemon=True,
        )  # fmt: skip
        self._proc.start()
        child.close()
        first = self._recv(START_TIMEOUT_S)
        if first is None or first.get("k") != "ready":
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.terminate()
            self._ring.close(unlink=True)
            if first is not None and first.get("message"):
                raise StoreError(first["message"])
            code = self._proc.exitcode
            raise StoreError(
                f"the recorder's writer process for {self.path} did not start "
                f"({f'exit code {code}' if code is not None else 'no answer'} within {START_TIMEOUT_S:g} s)"
            )
        self._next_index = int(first["next_index"])
        self._listener = threading.Thread(target=self._listen, name="recorder-status", daemon=True)
        self._listener.start()

    # -- the loop thread's API: never blocks (unless block=True) ------------------------------------------
    def start_episode(self, attrs: Mapping[str, Any]) -> int:
        """Begin a new episode (task, seed, … as JSON-able attributes); returns its index."""
        if self._current is not None:
            raise RuntimeError(f"episode {self._current} is still open; end it before starting another")
        index = self._next_index
        self._next_index += 1
        self._current = index
        self.steps_in_episode = 0
        self.written_steps = 0
        self._accepting = self.error is None
        self.alarm = None
        self._send({"k": "begin", "index": index, "attrs": _jsonable(dict(attrs))})
        return index

    def add_step(self, step: Mapping[str, Any]) -> bool:
        """Hand one step to the writer. False if it was not taken (overflow alarm, writer error, no episode)."""
        if not self._accepting or self.error is not None:
            self.refused_steps += self._current is not None
            return False
        depth = self._produced - self._consumed.value
        if depth >= self.queue_size:
            if self.block:
                while self._produced - self._consumed.value >= self.queue_size and self.error is None:
                    time.sleep(0.0005)
                depth = self._produced - self._consumed.value
            else:
                self.overflows += 1
                self.alarm = (
                    f"the recorder's queue overflowed ({self.queue_size} steps, {self.config.queue_seconds:g} s "
                    f"behind): episode {self._current} stopped at step {self.steps_in_episode}"
                )
                log.error("%s", self.alarm)
            if self.error is not None or self.alarm is not None:
                self._accepting = False
                self.refused_steps += 1
                return False
        try:
            self._ring.write(self._produced % self.queue_size, step)
        except StoreError as e:
            self.error = f"step {self.steps_in_episode} of episode {self._current}: {e}"
            self._accepting = False
            return False
        self._produced += 1
        self.max_depth = max(self.max_depth, depth + 1)
        self.steps_in_episode += 1
        self.steps_received += 1
        self._send({"k": "step"})
        return True

    def end_episode(self, commit: bool, attrs: Mapping[str, Any] | None = None) -> None:
        """Close the current episode: commit it (with these attributes) or discard it."""
        if self._current is None:
            return
        extra = _jsonable(dict(attrs or {}))
        if self.alarm:
            extra.setdefault("alarm", self.alarm)
            extra["interrupted"] = True
        self._send({"k": "end", "index": self._current, "commit": bool(commit), "attrs": extra})
        if not commit and self._current == self._next_index - 1:
            self._next_index -= 1  # the number is free again once the episode is gone
        self._current = None
        self._accepting = False

    def mark(self, index: int, attrs: Mapping[str, Any]) -> None:
        """Change attributes of an episode already committed (e.g. the operator marks success afterwards)."""
        self._send({"k": "mark", "index": index, "attrs": _jsonable(dict(attrs))})

    @property
    def next_index(self) -> int:
        """The index the next `start_episode` will get."""
        return self._next_index

    @property
    def current(self) -> int | None:
        return self._current

    @property
    def queue_depth(self) -> int:
        return self._produced - self._consumed.value

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until everything sent so far has been written (True) or the timeout passed (False)."""
        with self._synced:
            self._sync_sent += 1
            target = self._sync_sent
        self._send({"k": "sync", "n": target})
        with self._synced:
            self._synced.wait_for(lambda: self._sync_seen >= target or not self._proc.is_alive(), timeout)
            return self._sync_seen >= target

    def wait_result(self, index: int, after: int, timeout: float = 60.0) -> EpisodeResult | None:
        """The writer's verdict on episode `index` (committed, discarded or failed), the first one among
        `results[after:]` — what is on disk, not what was asked; None if the writer died or `timeout` passed.
        An index can come back after a discard, hence `after` (len(results) when the episode ended)."""

        def found() -> EpisodeResult | None:
            return next((r for r in self.results[after:] if r.index == index), None)

        with self._synced:
            self._synced.wait_for(lambda: found() is not None or not self._proc.is_alive(), timeout)
            return found()

    def close(self, timeout: float = 120.0) -> None:
        """Write everything queued, end an open episode per `on_interrupt`, stop the writer process."""
        if self._closing:
            return
        if self._current is not None:
            self.end_episode(commit=self.config.on_interrupt == "commit", attrs={"interrupted": True})
        self._closing = True
        self._send({"k": "stop"})
        self._proc.join(timeout)
        if self._proc.is_alive():
            log.error("the recorder's writer did not finish within %.0f s; stopping it", timeout)
            self._proc.terminate()
            self._proc.join(5)
        self._listener.join(5)
        self._conn.close()
        self._ring.close(unlink=True)

    # -- plumbing ------------------------------------------------------------------------------------------
    def _send(self, msg: dict[str, Any]) -> None:
        with self._send_lock:
            try:
                self._conn.send_bytes(json.dumps(msg).encode())
            except (OSError, ValueError):
                if self.error is None:
                    self.error = f"the recorder's writer process for {self.path} is gone"
                self._accepting = False

    def _recv(self, timeout: float) -> dict[str, Any] | None:
        try:
            if not self._conn.poll(timeout):
                return None
            return json.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            return None

    def _listen(self) -> None:
        while True:
            try:
                msg = json.loads(self._conn.recv_bytes())
            except (EOFError, OSError):
                if not self._closing and self.error is None:
                    self.error = f"the recorder's writer process died (exit code {self._proc.exitcode})"
                    self._accepting = False
                with self._synced:
                    self._synced.notify_all()
                return
            kind = msg["k"]
            if kind == "flushed":
                self.written_steps = msg["steps"]
                self.flush_seconds_total = msg["busy_s"]
                self.writer_cpu_s = msg["cpu_s"]
            elif kind == "result":
                with self._synced:
                    self.results.append(
                        EpisodeResult(msg["index"], msg["status"], msg["length"], msg["attrs"])
                    )
                    self._synced.notify_all()
                self.flush_seconds_total = msg["busy_s"]
                self.writer_cpu_s = msg["cpu_s"]
            elif kind == "error":
                self.error = msg["message"]
                self._accepting = False
                log.error("recorder: %s", self.error)
            elif kind == "synced":
                with self._synced:
                    self._sync_seen = max(self._sync_seen, msg["n"])
                    self._synced.notify_all()


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """Attributes as JSON-able values (numpy scalars and arrays become Python numbers and lists)."""
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# -- the writer process ---------------------------------------------------------------------------------------
def _writer_main(
    path: str, spec_json: str, config_json: str, shm_name: str, slots: int, conn, consumed
) -> None:
    """Entry point of the writer process: consume steps from the ring, write, flush, commit."""
    from recording.writer import StoreWriter

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent decides
    # Background work: on a busy CPU the control loop must get the core first (threads made later inherit).
    os.nice(WRITER_NICE)
    # Warnings only: the recording process reports each episode's result to the operator itself.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    config = RecordingConfig(**json.loads(config_json))
    spec = StoreSpec.from_attrs(json.loads(spec_json))
    store_path = Path(path)

    def send(msg: dict[str, Any]) -> None:
        try:
            conn.send_bytes(json.dumps(msg).encode())
        except (OSError, ValueError):
            pass  # the parent is gone; keep writing what was received

    try:
        ring = StepRing(spec.arrays(), slots, name=shm_name)  # shares the parent's resource tracker
        writer = StoreWriter(store_path, spec, fsync=config.fsync, min_rate_fraction=config.min_rate_fraction)
    except Exception as e:  # noqa: BLE001 - reported to the parent as one sentence
        send({"k": "error", "message": describe_error(e, store_path)})
        return
    send({"k": "ready", "next_index": writer.next_index})
    _WriterLoop(writer, ring, config, consumed, send).run(conn)
    writer.close()
    ring.close()


class _WriterLoop:
    def __init__(self, writer, ring: StepRing, config: RecordingConfig, consumed, send) -> None:
        self.writer, self.ring, self.config, self.consumed, self.send = writer, ring, config, consumed, send
        self.episode = None
        self.error: str | None = None
        self.flush_steps = max(1, round(config.flush_seconds * writer.spec.fps))
        self.capacity = max(16, round(config.episode_seconds * writer.spec.fps * 1.25))
        self.busy_s = 0.0
        self.last_flush = time.monotonic()

    def guard(self, fn, *args):
        """Run one write step; a failure stops all writing and is reported in one sentence."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001
            self.error = describe_error(e, self.writer.path)
            self.send({"k": "error", "message": self.error})
            return None
        finally:
            self.busy_s += time.perf_counter() - t0

    def flush(self) -> None:
        self.guard(self.episode.flush)
        self.last_flush = time.monotonic()
        if self.error is None:
            self.send(
                {
                    "k": "flushed",
                    "steps": self.episode.flushed,
                    "busy_s": self.busy_s,
                    "cpu_s": time.process_time(),
                }
            )

    def run(self, conn) -> None:
        while True:
            try:
                ready = conn.poll(self.config.flush_seconds / 2)
                data = conn.recv_bytes() if ready else None
            except (EOFError, OSError):
                # The recording process is gone (killed?): keep what was received; the episode stays partial.
                if self.episode is not None and self.error is None:
                    self.flush()
                return
            if data is None:
                due = time.monotonic() - self.last_flush >= self.config.flush_seconds
                if self.episode is not None and self.episode.n_pending and due and self.error is None:
                    self.flush()
                continue
            msg = json.loads(data)
            if not self.handle(msg):
                return

    def handle(self, msg: dict[str, Any]) -> bool:
        kind = msg["k"]
        if kind == "step":
            write = self.error is None and self.episode is not None
            if write:  # append encodes the frames and copies the numbers before it returns
                self.guard(self.episode.append, self.ring.read(self.consumed.value % self.ring.slots))
            self.consumed.value += 1  # the slot is free again
            if write and self.error is None:
                due = time.monotonic() - self.last_flush >= self.config.flush_seconds
                if self.episode.n_pending >= self.flush_steps or due:
                    self.flush()
        elif kind == "begin":
            if self.error is None:
                self.episode = self.guard(
                    self.writer.begin_episode, msg["attrs"], self.capacity, msg["index"]
                )
                self.last_flush = time.monotonic()
        elif kind == "end":
            self.end(msg["index"], msg["commit"], msg["attrs"])
        elif kind == "mark":
            if self.error is None:
                self.guard(self.writer.update_episode, msg["index"], msg["attrs"])
        elif kind == "sync":
            self.send({"k": "synced", "n": msg["n"]})
        elif kind == "stop":
            if self.episode is not None:
                self.end(self.episode.index, self.config.on_interrupt == "commit", {"interrupted": True})
            return False
        return True

    def end(self, index: int, commit: bool, attrs: dict[str, Any]) -> None:
        episode, self.episode = self.episode, None
        if self.error is not None or episode is None:
            self.send({"k": "result", "index": index, "status": "failed", "length": 0,
                       "attrs": {"error": self.error}, "busy_s": self.busy_s, "cpu_s": time.process_time()})  # fmt: skip
            return
        if commit and episode.length > 0:
            final = self.guard(episode.commit, attrs)
            if final is not None:
                log.info("episode %d committed: %d steps", episode.index, final["length"])
                self.send({"k": "result", "index": index, "status": "committed", "length": final["length"],
                           "attrs": final, "busy_s": self.busy_s, "cpu_s": time.process_time()})  # fmt: skip
                return
        else:
            self.guard(episode.discard)
            if self.error is None:
                log.info("episode %d discarded", episode.index)
                self.send({"k": "result", "index": index, "status": "discarded", "length": 0,
                           "attrs": attrs, "busy_s": self.busy_s, "cpu_s": time.process_time()})  # fmt: skip
                return
        self.send({"k": "result", "index": index, "status": "failed", "length": 0,
                   "attrs": {"error": self.error}, "busy_s": self.busy_s, "cpu_s": time.process_time()})  # fmt: skip
