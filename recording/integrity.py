"""Validation and repair of an episode store, e.g. after the recording process was killed.

`validate(path)` checks every committed episode (all arrays present, of the committed length, every
chunk file there, low-dimensional data decodable; `deep=True` also decodes every image) and names the
partial episodes an interrupted recording left. `repair(path)` removes leftover temporary files and
either recovers each partial episode up to its last complete flush (at most ~1 s before the crash) or,
with `drop=True`, removes it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from recording.codecs import chunk_file, read_segment_chunk, register_codecs
from recording.schema import (
    COMMITTED,
    COMPACT_PREFIX,
    DISCARDED_PREFIX,
    EPISODES_GROUP,
    StoreError,
    StoreSpec,
    check_store,
    episode_attrs,
    episode_dirs,
)
from recording.writer import (
    StoreWriter,
    check_not_being_written,
    fsync_tree,
    remove_episode_dir,
    summarize,
    utc_now,
)

log = logging.getLogger(__name__)
TEMP_FILE_RE = re.compile(r"\.[0-9a-f]{32}\.partial$")


@dataclass(frozen=True)
class PartialEpisode:
    index: int
    flushed_steps: int  # steps every array holds (the last complete flush)
    seconds: float


@dataclass
class ValidationReport:
    path: Path
    committed: int = 0
    steps: int = 0
    partial: list[PartialEpisode] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # damage in committed episodes: one sentence each
    leftovers: list[Path] = field(default_factory=list)  # temporary files / half-deleted episodes

    @property
    def ok(self) -> bool:
        return not self.problems and not self.partial


def _leftovers(path: Path) -> list[Path]:
    found = []
    episodes = path / EPISODES_GROUP
    if episodes.is_dir():
        found += [p for p in episodes.iterdir() if p.name.startswith((DISCARDED_PREFIX, COMPACT_PREFIX))]
    for dirpath, dirnames, files in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith((DISCARDED_PREFIX, COMPACT_PREFIX))]
        found += [Path(dirpath) / f for f in files if TEMP_FILE_RE.search(f)]
    return sorted(found)


def _chunk_files(array_dir: Path, length: int, steps_per_file: int, ndim: int) -> list[Path]:
    return [chunk_file(array_dir, i, ndim) for i in range(math.ceil(length / steps_per_file))]


def _first_bad_step(arr: zarr.Array, n: int, block: int) -> tuple[int, str] | None:
    """Decode steps 0…n-1 block by block; the first step that fails to decode, with the reason."""
    for start in range(0, n, block):
        stop = min(n, start + block)
        try:
            arr[start:stop]
        except Exception:  # noqa: BLE001 - any decoding failure means damaged data; find the step
            for t in range(start, stop):
                try:
                    arr[t]
                except Exception as e:  # noqa: BLE001
                    return t, str(e) or type(e).__name__
    return None


def _check_episode(
    path: Path, spec: StoreSpec, index: int, directory: Path, attrs: dict, deep: bool
) -> list[str]:
    problems = []
    length = attrs.get("length")
    if not isinstance(length, int) or length < 0:
        return [f"episode {index}: committed without a valid length ({length!r})"]
    group = zarr.open_group(directory, mode="r")
    for a in spec.arrays():
        where = f"episode {index}, {a.key}"
        try:
            arr = group[a.key]
        except (KeyError, FileNotFoundError, ValueError) as e:
            problems.append(f"{where}: the array is missing or unreadable ({e})")
            continue
        if tuple(arr.shape) != (length, *a.shape):
            problems.append(f"{where}: shape {tuple(arr.shape)} does not match the committed length {length}")
            continue
        steps_per_file = _steps_per_file(arr)
        missing = [
            f for f in _chunk_files(directory / a.key, length, steps_per_file, arr.ndim) if not f.is_file()
        ]
        if missing:
            first = missing[0].relative_to(path)
            problems.append(f"{where}: {len(missing)} data file(s) are missing, e.g. {first}")
            continue
        if a.image and not deep:
            continue
        if a.image and "segment_digests" in arr.attrs:
            problems += _check_segments(arr, directory / a.key, where, length)
            continue
        bad = _first_bad_step(arr, length, steps_per_file if a.image else max(length, 1))
        if bad is not None:
            problems.append(f"{where}: step {bad[0]} is corrupted ({bad[1]})")
    return problems


def _steps_per_file(arr: zarr.Array) -> int:
    shards = getattr(arr, "shards", None)
    return int((shards or arr.chunks)[0])


def _check_segments(arr: zarr.Array, array_dir: Path, where: str, length: int) -> list[str]:
    """An archived camera array: every segment decodes, to exactly the frames whose quality compaction
    measured (the fingerprint of the decoder's output it recorded)."""
    from recording.video import VideoError, segment_digest

    digests = list(arr.attrs.get("segment_digests", []))
    seg = int(arr.chunks[0])
    codec = arr.metadata.codecs[0].to_dict().get("configuration", {}).get("codec", "av1")
    if len(digests) != math.ceil(length / seg):
        return [
            f"{where}: {len(digests)} segment fingerprints recorded for {math.ceil(length / seg)} segments"
        ]
    for c, want in enumerate(digests):
        step = c * seg
        try:
            inner = read_segment_chunk(array_dir, c)
        except ValueError as e:
            return [f"{where}: step {step} is corrupted ({e})"]
        try:
            got = segment_digest(inner, codec)
        except VideoError as e:
            return [f"{where}: step {step} is corrupted ({e})"]
        if got != want:
            return [
                f"{where}: the segment at step {step} decodes to other frames than were measured when it "
                f"was compacted (fingerprint {got}, recorded {want}): this PyAV/FFmpeg decoder differs"
            ]
    return []


def validate(path: str | Path, deep: bool = False) -> ValidationReport:
    """Check a store without changing it; `deep` also decodes every image (slow on large stores)."""
    register_codecs()
    path = Path(path)
    spec = StoreSpec.from_attrs(check_store(path), f"dataset {path}")
    check_not_being_written(path, "validate")  # a live writer's half-written episode is not damage
    report = ValidationReport(path=path, leftovers=_leftovers(path))
    for index, directory in episode_dirs(path).items():
        try:
            attrs = episode_attrs(directory)
        except StoreError as e:
            report.problems.append(f"episode {index}: {e}")
            continue
        if attrs.get("status") != COMMITTED:
            flushed = int(attrs.get("flushed_steps", 0) or 0)
            report.partial.append(PartialEpisode(index, flushed, round(flushed / spec.fps, 2)))
            continue
        problems = _check_episode(path, spec, index, directory, attrs, deep)
        report.problems += problems
        if not problems:
            report.committed += 1
            report.steps += int(attrs["length"])
    return report


@dataclass
class RepairReport:
    path: Path
    recovered: dict[int, int] = field(default_factory=dict)  # episode -> steps kept
    dropped: list[int] = field(default_factory=list)
    removed_leftovers: int = 0
    problems: list[str] = field(default_factory=list)  # damage repair cannot undo (committed episodes)


def _recoverable_steps(group: zarr.Group, directory: Path, spec: StoreSpec, flushed: int) -> int:
    """How many leading steps every array of a partial episode holds intact (≤ its last flush)."""
    n = flushed
    for a in spec.arrays():
        try:
            arr = group[a.key]
        except (KeyError, FileNotFoundError, ValueError):
            return 0
        n = min(n, arr.shape[0])
        steps_per_file = spec.image_shard_steps if a.image else arr.chunks[0]
        for k, f in enumerate(_chunk_files(directory / a.key, n, steps_per_file, arr.ndim)):
            if not f.is_file():
                n = min(n, k * steps_per_file)
                break
    for a in spec.arrays():
        if n == 0:
            break
        bad = _first_bad_step(group[a.key], n, spec.image_shard_steps if a.image else n)
        if bad is not None:
            n = bad[0]
    return n


def repair(path: str | Path, drop: bool = False, fsync: bool = True) -> RepairReport:
    """Recover (or, with `drop`, remove) partial episodes and remove leftover temporary files."""
    register_codecs()
    path = Path(path)
    report = RepairReport(path=path)
    with StoreWriter(path, allow_partial=True, fsync=fsync) as writer:
        spec = writer.spec
        for leftover in _leftovers(path):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            report.removed_leftovers += 1
        for index, directory in episode_dirs(path).items():
            try:
                attrs = episode_attrs(directory)
            except StoreError:
                attrs = {}
            if attrs.get("status") == COMMITTED:
                continue
            flushed = int(attrs.get("flushed_steps", 0) or 0)
            n = 0
            if not drop and attrs:
                group = zarr.open_group(directory, mode="r+")
                n = _recoverable_steps(group, directory, spec, flushed)
            if n == 0:
                remove_episode_dir(directory)
                report.dropped.append(index)
                log.info("episode %d dropped (%s)", index, "asked" if drop else "nothing to recover")
                continue
            for a in spec.arrays():
                group[a.key].resize((n, *a.shape))
            summary = summarize(
                lambda k, g=group, m=n: np.asarray(g[k][:m]), spec, n, writer.min_rate_fraction
            )
            if fsync:
                fsync_tree(directory)
            group.update_attributes(
                {
                    **summary,
                    "status": COMMITTED,
                    "recovered": True,
                    "interrupted": True,
                    "recovered_utc": utc_now(),
                    "notes": (str(attrs.get("notes", "")) + " recovered by xr0 dataset repair").strip(),
                }
            )
            report.recovered[index] = n
            log.info("episode %d recovered: %d of %d flushed steps", index, n, flushed)
    report.problems = validate(path).problems
    return report
