"""Writing an episode store: open (or create) a store, begin an episode, append steps, commit or discard.

Crash safety, in the order things reach the disk:
1. `begin_episode` creates `episodes/episode_N` with `status: recording` and its arrays, sized for a
   capacity that doubles when exceeded (so the array metadata is rarely rewritten).
2. `append` encodes a step's frames at once (JPEG/PNG, one thread per camera) and keeps the bytes;
   `flush` writes the pending steps of every array, then records `flushed_steps` in the episode's
   attributes: after a crash, every array holds at least `flushed_steps` valid steps. The chunk and shard
   files are written directly in zarr's format (recording.codecs; tested byte for byte against zarr):
   zarr's own write path re-read and re-encoded the open chunk of every numeric array at every flush and
   cost more CPU than the JPEG encoding itself.
3. `commit` flushes, trims the arrays to the exact length, fsyncs the episode's files (optional), and
   writes `status: committed` last. Every file (chunk, shard, metadata) is written to a temporary name
   and renamed into place, so it is either the old or the new version, never torn.
A committed episode's files are never written again except its attributes (atomically, e.g. a success
mark). `discard` renames the episode away in one step, then deletes it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import signal
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from recording.codecs import (
    NumericChunkEncoder,
    atomic_write,
    chunk_file,
    image_codec,
    numeric_compressor,
    register_codecs,
    shard_bytes,
)
from recording.schema import (
    COMMITTED,
    DISCARDED_PREFIX,
    EPISODES_GROUP,
    RECORDING,
    ArraySpec,
    StoreBusy,
    StoreError,
    StoreSpec,
    check_store,
    episode_attrs,
    episode_dirs,
    episode_name,
)

log = logging.getLogger(__name__)
LOCK_FILE = ".xr0-writer.lock"
COMPACT_ROLE = "compact"  # the lock holder is a compaction, which a recording may stop


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def fsync_tree(directory: Path) -> None:
    """fsync every file and folder under `directory` (so a power cut cannot undo what is there)."""
    for dirpath, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def summarize(read, spec: StoreSpec, n: int, min_rate_fraction: float) -> dict[str, Any]:
    """Per-episode health derived from the stored arrays: loop rate, skipped ticks, repeated frames.

    `read(key)` returns the first `n` steps of a per-step array."""
    out: dict[str, Any] = {"length": int(n)}
    if n == 0:
        return {**out, "duration_s": 0.0, "loop_rate_hz": None, "rate_ok": False, "skipped_ticks": 0}
    ts = read("timestamp_ns")
    duration = (int(ts[-1]) - int(ts[0])) / 1e9
    rate = (n - 1) / duration if duration > 0 else None
    ticks = read("tick")
    out["duration_s"] = round(duration + 1.0 / spec.fps, 4)
    out["loop_rate_hz"] = None if rate is None else round(rate, 3)
    out["rate_ok"] = bool(rate is not None and rate >= min_rate_fraction * spec.fps)
    out["skipped_ticks"] = int(ticks[-1] - ticks[0] + 1 - n)
    out["clamped_ticks"] = int(np.count_nonzero(read("action.clamped")))
    out["rejected_ticks"] = int(np.count_nonzero(read("action.rejected")))
    out["repeated_frames"] = {
        cam: int(np.count_nonzero(np.diff(read(f"observation.images.{cam}.index")) == 0))
        for cam in spec.cameras
    }
    return out


def _lock_file(path: Path) -> tuple[int | None, str]:
    """(pid, role) written into the lock file by its last holder: role "compact" for a compaction, "" for
    a recording or a repair; (None, "") when it cannot be read."""
    try:
        pid, _, role = (path / LOCK_FILE).read_text().strip().partition(" ")
    except OSError:
        return None, ""
    return (int(pid) if pid.isdigit() else None), role


def _holder(path: Path) -> str:
    """' (pid N)' of the process that wrote the lock file last, or '' when it cannot be read."""
    pid, role = _lock_file(path)
    return "" if pid is None else f" (pid {pid}{', a compaction' if role == COMPACT_ROLE else ''})"


def _locked(path: Path) -> bool:
    """Whether a live process holds the store's writer lock (a killed writer's lock file holds none)."""
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def stop_compaction(path: str | Path, timeout_s: float = 30.0) -> int | None:
    """A recording comes first: if a compaction holds the store's lock, stop it (SIGTERM; compaction is
    safe to kill at any instant: the episode it was building is discarded and redone next time) and wait
    until the lock is free. Returns the stopped process's pid, or None when no compaction held the lock."""
    path = Path(path)
    if not _locked(path):
        return None
    pid, role = _lock_file(path)
    if role != COMPACT_ROLE or pid is None:
        return None  # a recording or a repair: the caller's own refusal names it
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise StoreBusy(
            f"dataset {path} is being compacted by pid {pid} of another user; stop it before recording"
        ) from None
    deadline = time.monotonic() + timeout_s
    while _locked(path):
        if time.monotonic() > deadline:
            raise StoreBusy(
                f"dataset {path}: the compaction (pid {pid}) did not stop within {timeout_s:.0f} s"
            )
        time.sleep(0.02)
    return pid


def check_not_being_written(path: str | Path, what: str) -> None:
    """Refuse (StoreBusy, one sentence) while a live writer holds the store's lock; a lock file left by a
    killed writer holds no lock and passes."""
    path = Path(path)
    if _locked(path):
        raise StoreBusy(
            f"dataset {path} is being written by another process{_holder(path)}; {what} it when that "
            "recording has ended"
        )


class StoreWriter:
    """The one writer of a store (an advisory lock keeps a second process out)."""

    def __init__(
        self,
        path: str | Path,
        spec: StoreSpec | None = None,
        *,
        fsync: bool = True,
        min_rate_fraction: float = 0.9,
        allow_partial: bool = False,
        role: str = "",
    ) -> None:
        register_codecs()
        self.role = role  # written into the lock file: COMPACT_ROLE lets a recording stop this writer
        self.path = Path(path)
        self.fsync = fsync
        self.min_rate_fraction = min_rate_fraction
        self._encoder: ThreadPoolExecutor | None = None
        if self.path.exists():
            stored = StoreSpec.from_attrs(check_store(self.path), f"dataset {self.path}")
            if spec is not None:
                diff = stored.difference(spec)
                if diff:
                    raise StoreError(
                        f"dataset {self.path} does not match this recording: {diff}; record into a new dataset"
                    )
            self.spec = stored
        else:
            if spec is None:
                raise StoreError(f"dataset {self.path} does not exist")
            if not self.path.parent.is_dir():
                raise StoreError(
                    f"cannot create dataset {self.path}: the folder {self.path.parent} does not exist"
                )
            self.spec = spec
        self._lock_fd = self._lock()
        try:
            if not (self.path / "zarr.json").exists():
                self._create()
            self.root = zarr.open_group(self.path, mode="r+")
            partial = [i for i, d in episode_dirs(self.path).items() if _status(d) != COMMITTED]
            if partial and not allow_partial:
                raise StoreError(
                    f"dataset {self.path} has partial episode(s) {', '.join(map(str, partial))} left by an "
                    f"interrupted recording; run `xr0 dataset repair --dataset {self.path}` (recover or --drop) first"
                )
        except BaseException:
            self.close()
            raise

    def _lock(self) -> int:
        try:
            self.path.mkdir(exist_ok=True)
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot open dataset {self.path} for writing: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreBusy(
                f"dataset {self.path} is being written by another process{_holder(self.path)}"
            ) from None
        # who holds it, for the messages of those who find it locked (the lock itself dies with the process:
        # a stale file from a killed writer locks nothing)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.role}".strip().encode())
        return fd

    def _create(self) -> None:
        root = zarr.open_group(
            self.path, mode="w", attributes={**self.spec.to_attrs(), "created_utc": utc_now()}
        )
        root.create_group(EPISODES_GROUP)

    @property
    def encoder(self) -> ThreadPoolExecutor:
        """Threads that encode a step's frames side by side (libjpeg-turbo and zlib release the GIL)."""
        if self._encoder is None:
            n = max(1, min(len(self.spec.cameras), os.cpu_count() or 1))
            self._encoder = ThreadPoolExecutor(n, thread_name_prefix="xr0-encode")
        return self._encoder

    def close(self) -> None:
        if getattr(self, "_encoder", None) is not None:
            self._encoder.shutdown()
            self._encoder = None
        if getattr(self, "_lock_fd", None) is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def next_index(self) -> int:
        dirs = episode_dirs(self.path)
        return max(dirs) + 1 if dirs else 0

    def begin_episode(
        self, attrs: Mapping[str, Any], capacity: int = 1024, index: int | None = None
    ) -> EpisodeWriter:
        """Create episode `index` (default: after the last one) with status `recording`."""
        index = self.next_index if index is None else index
        if (self.path / EPISODES_GROUP / episode_name(index)).exists():
            raise StoreError(f"dataset {self.path} already has an episode {index}")
        meta = {
            **dict(attrs),
            "status": RECORDING,
            "index": index,
            "fps": self.spec.fps,
            "robot_type": attrs.get("robot_type", self.spec.robot_type),
            "start_time_utc": attrs.get("start_time_utc", utc_now()),
            "flushed_steps": 0,
        }
        group = self.root.create_group(f"{EPISODES_GROUP}/{episode_name(index)}", attributes=meta)
        arrays = {a.key: self._create_array(group, a, max(1, capacity)) for a in self.spec.arrays()}
        return EpisodeWriter(self, index, group, arrays, max(1, capacity))

    def _create_array(self, group: zarr.Group, a: ArraySpec, capacity: int) -> zarr.Array:
        if a.image:
            codec = image_codec(self.spec.image_codec, self.spec.jpeg_quality)
            return group.create_array(
                a.key,
                shape=(capacity, *a.shape),
                chunks=(1, *a.shape),
                shards=(self.spec.image_shard_steps, *a.shape),
                dtype=a.dtype,
                serializer=codec,
                compressors=[Crc32cCodec()],
                fill_value=0,
                attributes={"unit": a.unit, "description": a.description},
                config={"write_empty_chunks": True},  # chunk files present = data written (for validate)
            )
        steps = self.spec.numeric_chunk_steps
        itemsize = np.dtype(a.dtype).itemsize
        return group.create_array(
            a.key,
            shape=(capacity, *a.shape),
            chunks=(steps, *a.shape),
            dtype=a.dtype,
            compressors=[numeric_compressor(itemsize), Crc32cCodec()],
            fill_value=0,
            attributes={"unit": a.unit, "description": a.description},
            config={"write_empty_chunks": True},
        )

    def update_episode(self, index: int, attrs: Mapping[str, Any]) -> None:
        """Change attributes of a committed episode (e.g. the operator's success mark), atomically."""
        forbidden = {"status", "length", "flushed_steps", "index"} & set(attrs)
        if forbidden:
            raise StoreError(
                f"episode attributes {sorted(forbidden)} are managed by the store and cannot be set"
            )
        group = self.root[f"{EPISODES_GROUP}/{episode_name(index)}"]
        group.update_attributes({**dict(attrs), "updated_utc": utc_now()})
        if self.fsync:
            fsync_file(self.path / EPISODES_GROUP / episode_name(index) / "zarr.json")

    def update_root(self, attrs: Mapping[str, Any]) -> None:
        """Change store-level attributes (e.g. normalisation stats), atomically."""
        self.root.update_attributes(dict(attrs))

    def adopt(self, source: str | Path) -> list[int]:
        """Move the committed episodes of another store of the same set-up into this one, after its last
        episode and in the source's order; remove the source once it holds no episode. Returns the new
        indices (e.g. `xr0 demo` records half its demonstrations in a second process into a side store).

        Each episode moves by one directory rename on the same filesystem, so a crash at any point leaves
        every episode whole in exactly one of the two stores. Its `index` attribute is rewritten in the
        source first (the store being emptied). Partial episodes stay where they are (repair that store,
        then adopt it again)."""
        source = Path(source)
        with StoreWriter(source, fsync=self.fsync, allow_partial=True, role="adopt") as src:
            diff = src.spec.difference(self.spec)
            if diff:
                raise StoreError(f"dataset {source} does not match {self.path}: {diff}")
            moved, n = [], self.next_index
            for i, directory in episode_dirs(source).items():
                if _status(directory) != COMMITTED:
                    continue
                src.root[f"{EPISODES_GROUP}/{episode_name(i)}"].update_attributes({"index": n})
                target = self.path / EPISODES_GROUP / episode_name(n)
                try:
                    os.rename(directory, target)
                except OSError as e:
                    if e.errno == errno.EXDEV:
                        raise StoreError(
                            f"dataset {source} is on another filesystem than {self.path}; episodes move "
                            "between stores by renaming"
                        ) from None
                    raise
                moved.append(n)
                n += 1
            if self.fsync and moved:
                for folder in (source / EPISODES_GROUP, self.path / EPISODES_GROUP):
                    fsync_file(folder)
            empty = not episode_dirs(source)
        if empty:
            shutil.rmtree(source, ignore_errors=True)
        return moved


def _status(directory: Path) -> str | None:
    try:
        return episode_attrs(directory).get("status")
    except StoreError:
        return None


class _ImageShards:
    """One image array's encoded frames, written a whole shard file at a time. The frames of a shard that
    is not full yet stay in memory, so each flush rewrites that shard complete (never read back)."""

    def __init__(self, array_dir: Path, shard_steps: int) -> None:
        self.array_dir = array_dir
        self.shard_steps = shard_steps
        self.frames: dict[int, bytes] = {}  # step -> chunk bytes, for shards still open

    def write(self, start: int, stop: int) -> None:
        s = self.shard_steps
        for shard in range(start // s, (stop - 1) // s + 1):
            chunks = [self.frames.get(shard * s + i) for i in range(s)]
            atomic_write(chunk_file(self.array_dir, shard, 4), shard_bytes(chunks))
            if all(c is not None for c in chunks):  # full: never written again
                for i in range(s):
                    del self.frames[shard * s + i]


class _NumericChunks:
    """One numeric array's open chunk, kept in memory and written whole at each flush."""

    def __init__(self, array_dir: Path, spec: ArraySpec, chunk_steps: int) -> None:
        self.array_dir = array_dir
        self.ndim = 1 + len(spec.shape)
        self.encoder = NumericChunkEncoder(np.dtype(spec.dtype))
        self.chunk_steps = chunk_steps
        self.index = 0
        self.buffer = np.zeros((chunk_steps, *spec.shape), dtype=spec.dtype)

    def write(self, start: int, rows: np.ndarray) -> None:
        n = self.chunk_steps
        done = 0
        while done < len(rows):
            step = start + done
            chunk, offset = divmod(step, n)
            if chunk != self.index:  # steps arrive in order: the next chunk starts empty (the fill value)
                self.index = chunk
                self.buffer[...] = 0
            k = min(len(rows) - done, n - offset)
            self.buffer[offset : offset + k] = rows[done : done + k]
            atomic_write(chunk_file(self.array_dir, chunk, self.ndim), self.encoder.encode(self.buffer))
            done += k


class EpisodeWriter:
    """One episode being recorded. Not thread-safe: one thread appends, flushes and commits."""

    def __init__(
        self, store: StoreWriter, index: int, group: zarr.Group, arrays: dict[str, zarr.Array], capacity: int
    ) -> None:
        self.store = store
        self.index = index
        self.group = group
        self.arrays = arrays
        self.specs = {a.key: a for a in store.spec.arrays()}
        self.capacity = capacity
        self.flushed = 0
        spec = store.spec
        self.codec = image_codec(spec.image_codec, spec.jpeg_quality)
        self.shards = {
            k: _ImageShards(self.directory / k, spec.image_shard_steps)
            for k, a in self.specs.items()
            if a.image
        }
        self.numeric = {
            k: _NumericChunks(self.directory / k, a, spec.numeric_chunk_steps)
            for k, a in self.specs.items()
            if not a.image
        }
        self.pending: dict[str, list[np.ndarray]] = {k: [] for k in self.numeric}
        self.n_pending = 0
        self.closed = False
        self.flush_seconds_total = 0.0

    @property
    def length(self) -> int:
        return self.flushed + self.n_pending

    @property
    def directory(self) -> Path:
        return self.store.path / EPISODES_GROUP / episode_name(self.index)

    def append(self, step: Mapping[str, Any]) -> None:
        """Queue one step: every key of the store's spec is required, nothing else is allowed. The frames
        are encoded and the numbers copied before this returns, so the caller may reuse its buffers."""
        if self.closed:
            raise StoreError(f"episode {self.index} is already committed or discarded")
        missing = [k for k in self.specs if k not in step]
        extra = [k for k in step if k not in self.specs]
        if missing or extra:
            raise StoreError(
                f"step {self.length} of episode {self.index}: "
                + (f"missing {', '.join(missing)}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unknown {', '.join(extra)}" if extra else "")
            )
        converted = {}
        for key, spec in self.specs.items():
            value = np.asarray(step[key])
            if value.shape != spec.shape:
                raise StoreError(
                    f"step {self.length} of episode {self.index}: {key} has shape {value.shape}, expected {spec.shape}"
                )
            if spec.image and value.dtype != np.uint8:
                raise StoreError(
                    f"step {self.length} of episode {self.index}: {key} must be uint8 RGB, got {value.dtype}"
                )
            converted[key] = value if spec.image else np.array(value, dtype=spec.dtype)
        t = self.length
        encoded = {k: self.store.encoder.submit(self.codec.chunk_bytes, converted[k]) for k in self.shards}
        for key, shards in self.shards.items():
            shards.frames[t] = encoded[key].result()
        for key in self.numeric:
            self.pending[key].append(converted[key])
        self.n_pending += 1

    def flush(self) -> None:
        """Write the pending steps of every array, then record how many steps are safely on disk."""
        if self.n_pending == 0 or self.closed:
            return
        t0 = time.perf_counter()
        start, stop = self.flushed, self.flushed + self.n_pending
        if stop > self.capacity:
            self.capacity = max(2 * self.capacity, stop)
            for key, arr in self.arrays.items():
                arr.resize((self.capacity, *self.specs[key].shape))
        for shards in self.shards.values():
            shards.write(start, stop)
        for key, chunks in self.numeric.items():
            chunks.write(start, np.stack(self.pending[key]))
            self.pending[key].clear()
        self.n_pending = 0
        self.flushed = stop
        self.group.update_attributes({"flushed_steps": stop})
        self.flush_seconds_total += time.perf_counter() - t0

    def commit(self, attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Flush, trim, make durable, then mark the episode committed (the last write). Returns its attributes."""
        self.flush()
        n = self.flushed
        for key, arr in self.arrays.items():
            arr.resize((n, *self.specs[key].shape))
        summary = summarize(lambda k: self.arrays[k][:n], self.store.spec, n, self.store.min_rate_fraction)
        if self.store.fsync:
            fsync_tree(self.directory)
        final = {**dict(attrs or {}), **summary, "end_time_utc": utc_now(), "status": COMMITTED}
        self.group.update_attributes(final)
        if self.store.fsync:
            fsync_file(self.directory / "zarr.json")
        self.closed = True
        log.debug("episode %d committed: %d steps", self.index, n)
        return dict(self.group.attrs)

    def discard(self) -> None:
        """Remove the episode: one rename makes it vanish, then its files are deleted."""
        if self.closed:
            return
        self.closed = True
        remove_episode_dir(self.directory)


def remove_episode_dir(directory: Path) -> None:
    """Rename an episode folder out of the listing (atomic), then delete it."""
    trash = directory.with_name(f"{DISCARDED_PREFIX}{directory.name}-{uuid.uuid4().hex[:8]}")
    os.rename(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)
