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
  and no recording can start while it runs. By default it encodes on one core (one encoder thread,
  cameras in turn) at lowered priority, so a recording into another store keeps the other core;
  `threads` > 1 encodes that many cameras at once (for a machine with nothing else to do).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from recording.codecs import VideoCodec, register_codecs
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
from recording.video import MAX_AV1_PRESET, VideoSettings, decode_with_digest, missing
from recording.writer import StoreWriter, fsync_tree, utc_now

log = logging.getLogger(__name__)

ARCHIVE = "archive"


@dataclass(frozen=True)
class ArchiveSettings:
    """The archive tier's codec: video codec, CRF, preset and frames per segment (= per Zarr chunk)."""

    codec: str = "av1"
    crf: int = 20
    preset: str = "10"
    segment_steps: int = 30
    threads: int = 1  # cameras encoded at once (1: one core, safe beside a recording)

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
    spec: StoreSpec, index: int, directory: Path, settings: ArchiveSettings, bar: Any
) -> dict[str, Any]:
    attrs = episode_attrs(directory)
    length = int(attrs["length"])
    image_keys = [a.key for a in spec.arrays() if a.image]
    new = directory.with_name(f"{COMPACT_PREFIX}{directory.name}")
    _link_tree(directory, new, set(image_keys))
    old_group = zarr.open_group(directory, mode="r")
    group = zarr.open_group(new, mode="r+")
    seg = int(settings.segment_steps)

    def one_camera(key: str) -> tuple[str, dict[str, float]]:
        source = old_group[key]
        shape = tuple(source.shape[1:])
        if shape[0] % 2 or shape[1] % 2:
            raise StoreError(f"{key}: video needs an even frame size, the store has {shape[1]}×{shape[0]}")
        codec = VideoCodec(settings.codec, int(settings.crf), str(settings.preset), float(spec.fps))
        arr = group.create_array(
            key,
            shape=(length, *shape),
            chunks=(seg, *shape),
            dtype="uint8",
            serializer=codec,
            compressors=[Crc32cCodec()],
            fill_value=0,
            attributes=dict(source.attrs),
            config={"write_empty_chunks": True},
            overwrite=True,
        )
        digests, squared, worst = [], 0.0, float("inf")
        for start in range(0, length, seg):
            frames = np.asarray(source[start : start + seg])
            arr[start : start + len(frames)] = frames  # encodes one segment (a short last one is padded)
            decoded, digest = decode_with_digest(_chunk_bytes(new / key, start // seg), settings.codec)
            decoded = decoded[: len(frames)]
            digests.append(digest)
            diff = decoded.astype(np.int32) - frames  # integer arithmetic: exact, and faster than float64
            seg_squared = float(np.square(diff).sum(dtype=np.int64))
            worst = min(worst, _psnr_of(seg_squared, diff.size))
            squared += seg_squared
            bar.update(len(frames))
        mean = _psnr_of(squared, length * int(np.prod(shape)))
        arr.update_attributes({"segment_digests": digests})
        return key, {"psnr_db": round(mean, 2), "worst_segment_psnr_db": round(worst, 2)}

    # cameras in turn on one core (the default: beside a recording), or in parallel threads (PyAV and
    # the JPEG decoder release the GIL)
    with ThreadPoolExecutor(max(1, settings.threads)) as pool:
        quality = dict(pool.map(one_camera, image_keys))
    storage = {
        "tier": ARCHIVE,
        "codec": {**settings.video().to_dict(), "segment_steps": seg},
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


def _chunk_bytes(array_dir: Path, chunk: int) -> bytes:
    """The encoded segment of chunk `chunk` of a 4-D video array (without its crc32c trailer)."""
    data = array_dir.joinpath("c", str(chunk), "0", "0", "0").read_bytes()
    return data[:-4]


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
        writer = StoreWriter(path, allow_partial=True, fsync=True)
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
        if nice:
            try:
                os.nice(nice)  # the whole process: compaction is background work
            except OSError:
                pass
        frames = sum(n for _, _, n in todo) * max(1, len(spec.cameras))
        t0 = time.monotonic()
        bar = progress_bar(frames, "compacting", "frame", file=progress) if todo else None
        try:
            for index, directory, length in todo:
                storage = _compact_episode(spec, index, directory, settings, bar)
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
