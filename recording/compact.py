"""`xr0 dataset compact`: rewrite finished episodes' camera arrays into the archive tier (video segments).

Live recording stores one JPEG per frame (crash-safe, real time, one decode per random read). Compaction
re-encodes a committed episode's images as segments of `segment_steps` frames (AV1 or H.264, one Zarr
chunk each, see `recording.video`); the numeric arrays are carried over unchanged (hard links). It is:

- **atomic per episode**: the new episode is built beside the old one (`episodes/.compact-episode_N`),
  fsynced, then the two folders are exchanged in one `renameat2(RENAME_EXCHANGE)`; a reader sees the old
  episode or the new one, never half of either. The old folder is then deleted.
- **resumable**: archived episodes are skipped; a leftover `.compact-*` folder (a half-built new episode,
  or an old one not yet deleted) is removed when compaction starts again.
- **verifiable**: each episode records, per camera, the PSNR of the decoded frames against the frames it
  replaced (mean and worst) and a fingerprint of every decoded segment; `validate --deep` re-decodes and
  compares the fingerprints, so the frames read later are the ones whose quality was measured.
- **exclusive**: it holds the store's writer lock, so it is refused while a recording writes to the store
  and no recording can start while it runs. By default it keeps to one CPU (every thread of the process
  pinned to it) at niceness +10, so a recording into another store keeps the other cores and wins the
  shared one; `threads` N encodes N segments at once on N CPUs (for a machine with nothing else to do).
- **fast enough**: segments of all cameras form one queue, so N threads stay busy to the end of each
  episode; a segment is encoded once, written as it was verified, and the colour conversions and the
  error sums are OpenCV's (see `recording.video`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from recording.codecs import VideoCodec, register_codecs, write_segment_chunk
from recording.progress import progress_bar
from recording.schema import (
    COMMITTED,
    COMPACT_PREFIX,
    DISCARDED_PREFIX,
    EPISODES_GROUP,
    StoreBusy,
    StoreError,
    StoreSpec,
    bytes_on_disk,
    episode_attrs,
    episode_dirs,
)
from recording.video import MAX_AV1_PRESET, VideoSettings, decode_with_digest, encode_segment, missing
from recording.writer import COMPACT_ROLE, StoreWriter, fsync_tree, utc_now

log = logging.getLogger(__name__)

ARCHIVE = "archive"


@dataclass(frozen=True)
class ArchiveSettings:
    """The archive tier's codec: video codec, CRF, preset and frames per segment (= per Zarr chunk)."""

    codec: str = "av1"
    crf: int = 24
    preset: str = "10"
    segment_steps: int = 30
    threads: int = 1  # segments encoded at once, on as many CPUs (1: safe beside a recording)

    def __post_init__(self) -> None:
        VideoSettings(self.codec, int(self.crf), str(self.preset))
        if self.codec == "av1" and str(self.preset).isdigit() and int(self.preset) > MAX_AV1_PRESET:
            raise StoreError(
                f"av1 preset must be 0..{MAX_AV1_PRESET} for the archive: SVT-AV1's faster presets are for "
                "tooling only (preset 12 made a segment that dav1d refuses to decode)"
            )
        if not 1 <= int(self.threads) <= 64:
            raise StoreError(f"threads must be 1..64, got {self.threads}")
        if not 1 <= int(self.segment_steps) <= 300:
            raise StoreError(f"segment_steps must be 1..300, got {self.segment_steps}")

    def video(self) -> VideoSettings:
        return VideoSettings(self.codec, int(self.crf), str(self.preset), threads=1)


# The other side of the trade-off (docs/benchmarks.md): faster than real time on 2 cores with 2 threads
# (1.29× for three 640×480 camera-like streams) at LeRobot's PSNR or better, with ~2× LeRobot's bytes
# (the default: ~0.3× its bytes at 0.8× real time). `xr0 dataset compact --fast`.
FAST_ARCHIVE = ArchiveSettings(codec="h264", crf=18, preset="ultrafast")


@dataclass
class CompactReport:
    path: Path
    compacted: list[int] = field(default_factory=list)
    already: int = 0  # episodes that were archived before
    bytes_before: int = 0  # of the compacted episodes
    bytes_after: int = 0
    seconds_recorded: float = 0.0  # of the compacted episodes
    seconds_taken: float = 0.0
    psnr_db: dict[str, float] = field(default_factory=dict)  # camera -> worst episode mean
    removed_leftovers: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": str(self.path),
            "compacted": len(self.compacted),
            "already_archived": self.already,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "ratio": round(self.bytes_before / self.bytes_after, 2) if self.bytes_after else None,
            "realtime": round(self.seconds_recorded / self.seconds_taken, 2)
            if self.seconds_recorded
            else None,
            "psnr_db_worst_episode": {k: round(v, 2) for k, v in self.psnr_db.items()},
            "removed_leftovers": self.removed_leftovers,
        }


def is_archived(attrs: dict[str, Any]) -> bool:
    storage = attrs.get("storage")
    return isinstance(storage, dict) and storage.get("tier") == ARCHIVE


# -- the atomic exchange ---------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Swap two directories in one atomic step (Linux renameat2 RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise StoreError("compaction needs renameat2 (Linux, glibc ≥ 2.28) to swap an episode atomically")
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise StoreError(
                f"the filesystem of {a.parent} cannot swap two folders atomically (renameat2 "
                f"RENAME_EXCHANGE: {os.strerror(err)}); compact the dataset on a local Linux filesystem"
            )
        raise OSError(err, os.strerror(err), str(a))


# -- compaction ------------------------------------------------------------------------------------------
def _link_tree(src: Path, dst: Path, skip: set[str]) -> None:
    """Copy an episode folder by hard links (its files are never modified in place), without `skip`."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, ignore=lambda d, names: skip if Path(d) == src else set(), copy_function=link)


def _compact_episode(
    spec: StoreSpec,
    index: int,
    directory: Path,
    settings: ArchiveSettings,
    pool: ThreadPoolExecutor,
    bar: Any,
) -> dict[str, Any]:
    attrs = episode_attrs(directory)
    length = int(attrs["length"])
    image_keys = [a.key for a in spec.arrays() if a.image]
    new = directory.with_name(f"{COMPACT_PREFIX}{directory.name}")
    _link_tree(directory, new, set(image_keys))
    old_group = zarr.open_group(directory, mode="r")
    group = zarr.open_group(new, mode="r+")
    seg = int(settings.segment_steps)
    video = settings.video()
    for key in image_keys:
        source = old_group[key]
        shape = tuple(source.shape[1:])
        if shape[0] % 2 or shape[1] % 2:
            raise StoreError(f"{key}: video needs an even frame size, the store has {shape[1]}×{shape[0]}")
        group.create_array(
            key,
            shape=(length, *shape),
            chunks=(seg, *shape),
            dtype="uint8",
            serializer=VideoCodec(settings.codec, int(settings.crf), str(settings.preset), float(spec.fps)),
            compressors=[Crc32cCodec()],
            fill_value=0,
            attributes=dict(source.attrs),
            overwrite=True,
        )

    def one_segment(job: tuple[str, int]) -> tuple[str, int, str, int, float, int]:
        """Encode, write and verify one segment of one camera: (key, chunk, digest, squared error, worst
        segment PSNR, values). Runs on the pool's threads; every CPU-heavy step releases the GIL."""
        key, chunk = job
        frames = np.asarray(old_group[key][chunk * seg : (chunk + 1) * seg])
        padded = (
            frames
            if len(frames) == seg
            else np.concatenate([frames, frames[-1:].repeat(seg - len(frames), 0)])
        )
        data = encode_segment(padded, video, float(spec.fps))
        write_segment_chunk(new / key, chunk, data)  # the bytes just verified, encoded once
        decoded, digest = decode_with_digest(data, settings.codec)
        squared = sum(int(cv2.norm(d, f, cv2.NORM_L2SQR)) for d, f in zip(decoded, frames, strict=False))
        bar.update(len(frames))
        return key, chunk, digest, squared, _psnr_of(squared, frames.size), frames.size

    # segments of all cameras as one queue: `threads` encoders stay busy to the end of the episode
    jobs = [(key, chunk) for key in image_keys for chunk in range(-(-length // seg))]
    digests: dict[str, list[str]] = {key: [] for key in image_keys}
    totals = {key: [0, 0, float("inf")] for key in image_keys}  # squared error, values, worst segment
    for key, _, digest, squared, worst, size in pool.map(one_segment, jobs):  # in job order
        digests[key].append(digest)
        total = totals[key]
        total[0], total[1], total[2] = total[0] + squared, total[1] + size, min(total[2], worst)
    quality = {}
    for key in image_keys:
        group[key].update_attributes({"segment_digests": digests[key]})
        squared, values, worst = totals[key]
        quality[key] = {
            "psnr_db": round(_psnr_of(squared, values), 2),
            "worst_segment_psnr_db": round(worst, 2),
        }
    storage = {
        "tier": ARCHIVE,
        "codec": {**video.to_dict(), "segment_steps": seg},
        "quality": quality,
        "bytes_before": bytes_on_disk(directory),
        "compacted_utc": utc_now(),
    }
    storage["bytes_after"] = bytes_on_disk(new)
    group.update_attributes({"storage": storage})
    fsync_tree(new)
    exchange(new, directory)  # the instant the episode becomes its archived self
    fsync_tree(directory.parent)
    trash = new.with_name(f"{DISCARDED_PREFIX}{directory.name}-compacted")
    os.rename(new, trash)  # `new` now holds the old episode
    shutil.rmtree(trash, ignore_errors=True)
    return storage


def _psnr_of(squared: float, count: int) -> float:
    mse = squared / max(1, count)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


@contextmanager
def background(cores: int, nice: int) -> Iterator[None]:
    """Compaction as background work: every thread of this process, and every thread started during the
    block (they inherit it), runs at niceness +`nice` on at most `cores` CPUs, so that a recording beside
    it keeps the other cores and wins the shared one. Linux keeps both per thread (zarr's event loop and
    its pool threads too), hence all of /proc/self/task; restored afterwards where the OS allows."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
        tids = [int(t) for t in os.listdir("/proc/self/task")]
        saved = {t: (os.sched_getaffinity(t), os.getpriority(os.PRIO_PROCESS, t)) for t in tids}
    except (AttributeError, OSError):  # not Linux
        yield
        return
    me = saved[threading.get_native_id()]
    cpus = set(allowed[-cores:]) if 0 < cores < len(allowed) else set(allowed)
    for t, (_, prio) in saved.items():
        with suppress(OSError):  # a thread may have ended meanwhile
            os.sched_setaffinity(t, cpus)
            os.setpriority(os.PRIO_PROCESS, t, min(19, prio + max(0, nice)))
    try:
        yield
    finally:
        for name in os.listdir("/proc/self/task"):
            affinity, prio = saved.get(int(name), me)
            with suppress(OSError):  # raising priority back may need CAP_SYS_NICE: then it stays lowered
                os.sched_setaffinity(int(name), affinity)
                os.setpriority(os.PRIO_PROCESS, int(name), prio)


def remove_leftovers(path: Path) -> int:
    episodes = path / EPISODES_GROUP
    removed = 0
    if episodes.is_dir():
        for child in episodes.iterdir():
            if child.name.startswith(COMPACT_PREFIX):
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
    return removed


def compact(
    path: str | Path,
    settings: ArchiveSettings | None = None,
    episodes: Sequence[int] | None = None,
    progress: IO[str] | None = None,
    nice: int = 10,
) -> CompactReport:
    """Compact the committed episodes of a store (or only `episodes`) into the archive tier."""
    register_codecs()
    settings = settings or ArchiveSettings()
    path = Path(path)
    why = missing(settings.codec)
    if why:
        raise StoreError(f"cannot compact into {settings.codec}: {why}")
    report = CompactReport(path=path)
    try:
        writer = StoreWriter(path, allow_partial=True, fsync=True, role=COMPACT_ROLE)
    except StoreBusy as e:
        raise StoreBusy(
            f"{e}; a store that is being recorded into cannot be compacted: run it after the recording ends"
        ) from None
    with writer:
        spec = writer.spec
        report.removed_leftovers = remove_leftovers(path)
        todo: list[tuple[int, Path, int]] = []
        for index, directory in episode_dirs(path).items():
            if episodes is not None and index not in episodes:
                continue
            try:
                attrs = episode_attrs(directory)
            except StoreError:
                continue
            if attrs.get("status") != COMMITTED:
                continue  # partial: `dataset repair` first; never touched here
            if is_archived(attrs):
                report.already += 1
                continue
            todo.append((index, directory, int(attrs.get("length", 0))))
        if episodes is not None:
            unknown = sorted(set(episodes) - set(episode_dirs(path)))
            if unknown:
                raise StoreError(f"dataset {path} has no episode {unknown[0]}")
        frames = sum(n for _, _, n in todo) * max(1, len(spec.cameras))
        t0 = time.monotonic()
        bar = progress_bar(frames, "compacting", "frame", file=progress) if todo else None
        try:
            with background(int(settings.threads), nice), ThreadPoolExecutor(int(settings.threads)) as pool:
                for index, directory, length in todo:
                    storage = _compact_episode(spec, index, directory, settings, pool, bar)
                    report.compacted.append(index)
                    report.bytes_before += storage["bytes_before"]
                    report.bytes_after += storage["bytes_after"]
                    report.seconds_recorded += length / spec.fps
                    for key, q in storage["quality"].items():
                        cam = key.removeprefix("observation.images.")
                        report.psnr_db[cam] = min(report.psnr_db.get(cam, float("inf")), q["psnr_db"])
                    log.info("episode %d archived (%s)", index, storage["quality"])
        finally:
            if bar is not None:
                bar.close()
        report.seconds_taken = time.monotonic() - t0
    return report
