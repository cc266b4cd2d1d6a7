"""The archive tier on real Zarr stores and real AV1/H.264 (PyAV): compaction, reading both tiers, crash
safety (a SIGKILLed compaction), validation, and refusing a store that is being recorded into."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest
import zarr

from recording.compact import ArchiveSettings, compact, is_archived
from recording.integrity import repair, validate
from recording.reader import EpisodeStore
from recording.schema import COMPACT_PREFIX, StoreBusy, StoreError, episode_attrs, episode_dirs
from recording.video import VideoSettings, decode_segment, encode_segment, psnr, segment_digest
from recording.writer import StoreWriter
from tests.recording.synthetic import make_spec, make_step

CAMS = {"cam_high": (48, 64, 3), "cam_left_wrist": (48, 64, 3)}
FAST = ArchiveSettings(codec="av1", crf=24, preset="10", segment_steps=10)


def write_store(path: Path, episodes: int = 2, steps: int = 25) -> list[list[dict]]:
    spec = make_spec("jpeg", cameras=CAMS, jpeg_quality=95)
    out = []
    with StoreWriter(path, spec, fsync=False) as w:
        for e in range(episodes):
            rng = np.random.default_rng(e)
            ep = w.begin_episode({"task": f"task {e}"}, capacity=8)
            rows = [make_step(spec, t, rng, smooth=True) for t in range(steps)]
            for row in rows:
                ep.append(row)
            ep.commit({"success": True})
            out.append(rows)
    return out


def test_a_segment_round_trips_within_tolerance_and_its_fingerprint_is_stable():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    frames = np.stack(
        [
            np.stack([xx * 3 + t, yy * 4, (xx + yy) * 2], -1) + rng.integers(0, 4, (48, 64, 3))
            for t in range(12)
        ]
    ).astype(np.uint8)
    before = os.sched_getscheduler(0)
    for settings in (VideoSettings("av1", 20, "10"), VideoSettings("h264", 18, "veryfast")):
        data = encode_segment(frames, settings)
        decoded = decode_segment(data, settings.codec)
        assert decoded.shape == frames.shape
        assert psnr(decoded, frames) > 30, settings
        assert np.array_equal(decode_segment(data, settings.codec, count=3), decoded[:3])
        assert segment_digest(data, settings.codec) == segment_digest(data, settings.codec)
    assert os.sched_getscheduler(0) == before  # SVT-AV1 raises its caller to SCHED_FIFO; we put it back
    with pytest.raises(ValueError, match="even width and height"):
        encode_segment(frames[:, :47], VideoSettings())
    with pytest.raises(ValueError, match="bad magic"):
        decode_segment(b"not a segment at all", "av1")


def test_compacted_store_reads_like_the_original_and_keeps_numeric_arrays_exact(tmp_path):
    path = tmp_path / "d.zarr"
    rows = write_store(path, episodes=2, steps=25)
    before = EpisodeStore(path)
    live = {k: before.get(1, k) for k in before.image_keys}
    numeric = {k: before.get(1, k) for k in before.keys if k not in before.image_keys}
    size_before = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    report = compact(path, FAST).as_dict()
    assert report["compacted"] == 2 and report["already_archived"] == 0
    assert report["bytes_after"] < report["bytes_before"]
    store = EpisodeStore(path)
    assert store.episodes == [0, 1] and store.lengths.tolist() == [25, 25]
    storage = store.storage(1)
    assert storage["tier"] == "archive" and storage["codec"]["segment_steps"] == 10
    for key in store.image_keys:
        whole = store.get(1, key)
        assert whole.shape == live[key].shape
        assert psnr(whole, live[key]) > 32, key
        assert storage["quality"][key]["psnr_db"] > 32
        # a single step (through the segment cache) is the same frame as the slice
        for t in (0, 9, 10, 24, 13):
            assert np.array_equal(store.get(1, key, t), whole[t])
    for key, want in numeric.items():
        assert np.array_equal(store.get(1, key), want), key  # carried over, not re-encoded
    sample = store.sample(store.sample_index.starts[1] + 7, horizon=30)
    assert np.array_equal(sample["action"][:18], np.stack([r["action"] for r in rows[1][7:]]))
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) < size_before
    assert validate(path, deep=True).ok
    again = compact(path, FAST).as_dict()
    assert again["compacted"] == 0 and again["already_archived"] == 2


def test_validate_deep_catches_a_changed_segment_and_a_damaged_file(tmp_path):
    path = tmp_path / "d.zarr"
    write_store(path, episodes=1, steps=20)
    compact(path, FAST)
    key = "observation.images.cam_high"
    meta_file = path / "episodes" / "episode_000000" / key / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["segment_digests"][1] = "00000000"
    meta_file.write_text(json.dumps(meta))
    problems = validate(path, deep=True).problems
    assert len(problems) == 1 and "step 10" in problems[0] and "other frames" in problems[0]
    assert validate(path).ok  # the shallow check does not decode

    chunk = (
        path
        / "episodes"
        / "episode_000000"
        / "observation.images.cam_left_wrist"
        / "c"
        / "0"
        / "0"
        / "0"
        / "0"
    )
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    problems = validate(path, deep=True).problems
    assert any("cam_left_wrist: step 0 is corrupted" in p for p in problems)


def test_compaction_is_refused_while_the_store_is_being_recorded(tmp_path):
    path = tmp_path / "d.zarr"
    write_store(path, episodes=1, steps=10)
    with StoreWriter(path, fsync=False):
        with pytest.raises(StoreBusy, match="being recorded into cannot be compacted"):
            compact(path, FAST)
    with pytest.raises(StoreError, match="has no episode 7"):
        compact(path, FAST, episodes=[7])
    with pytest.raises(ValueError, match="crf must be 0..63"):
        ArchiveSettings(crf=99)
    with pytest.raises(StoreError, match="av1 preset must be 0..10 for the archive"):
        ArchiveSettings(preset="12")


def _compact_child(path: str) -> None:
    compact(path, ArchiveSettings(codec="av1", crf=24, preset="10", segment_steps=10), nice=0)


def test_a_killed_compaction_leaves_every_episode_whole_and_resumes(tmp_path):
    path = tmp_path / "d.zarr"
    write_store(path, episodes=6, steps=40)
    reference = EpisodeStore(path)
    live = {e: reference.get(e, "observation.images.cam_high") for e in reference.episodes}
    ctx = multiprocessing.get_context("spawn")
    kills = 0
    for extra in (0.0, 0.05, 0.15, 0.3):
        archived = sum(is_archived(episode_attrs(d)) for d in episode_dirs(path).values())
        child = ctx.Process(target=_compact_child, args=(str(path),))
        child.start()
        deadline = time.monotonic() + 60
        while child.is_alive() and time.monotonic() < deadline:  # kill it in the middle of the work
            building = [d for d in os.listdir(path / "episodes") if d.startswith(COMPACT_PREFIX)]
            done = sum(is_archived(episode_attrs(d)) for d in episode_dirs(path).values())
            if building or done > archived:
                break
            time.sleep(0.005)
        time.sleep(extra)
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
        child.join(30)
        if child.is_alive():  # never leave it running, whatever happened
            child.kill()
        store = EpisodeStore(path)
        assert store.episodes == list(range(6)) and store.partial == []  # never half an episode
        for e in store.episodes:
            frames = store.get(e, "observation.images.cam_high")
            assert psnr(frames, live[e]) > 32  # old (identical) or new (archived), readable either way
    assert kills >= 1
    compact(path, FAST)  # resumes: leftovers removed, the rest compacted
    dirs = os.listdir(path / "episodes")
    assert not [d for d in dirs if d.startswith(COMPACT_PREFIX)], dirs
    assert all(is_archived(episode_attrs(d)) for d in episode_dirs(path).values())
    assert validate(path, deep=True).ok
    assert repair(path).problems == []


def test_a_leftover_half_built_episode_is_ignored_by_readers_and_removed(tmp_path):
    path = tmp_path / "d.zarr"
    write_store(path, episodes=1, steps=10)
    half = path / "episodes" / f"{COMPACT_PREFIX}episode_000000"
    zarr.open_group(half, mode="w", attributes={"status": "committed", "length": 3})
    assert EpisodeStore(path).episodes == [0]
    report = validate(path)
    assert report.ok and half in report.leftovers
    assert compact(path, FAST).removed_leftovers == 1 and not half.exists()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to show that it keeps to one")
def test_compaction_keeps_every_thread_to_one_cpu_at_lower_priority_never_real_time_and_restores_them(
    tmp_path,
):
    path = tmp_path / "d.zarr"
    write_store(path, episodes=2, steps=40)
    me = threading.get_native_id()
    before = (os.sched_getaffinity(me), os.getpriority(os.PRIO_PROCESS, me))
    seen: list[tuple[int, int, int]] = []  # (CPUs, niceness, policy) of every thread, while it works
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for name in os.listdir("/proc/self/task"):
                try:
                    tid = int(name)
                    cpus, nice = len(os.sched_getaffinity(tid)), os.getpriority(os.PRIO_PROCESS, tid)
                    seen.append((cpus, nice, os.sched_getscheduler(tid)))
                except OSError:
                    pass  # the thread ended
            time.sleep(0.002)

    probe = threading.Thread(target=sample, daemon=True)
    probe.start()
    try:
        compact(path, FAST)
    finally:
        stop.set()
        probe.join()
    during = [s for s in seen if s[0] == 1]
    assert during, "no thread was ever pinned to one CPU"
    assert all(nice >= before[1] + 10 or nice == 19 for _, nice, _ in during)
    # SVT-AV1 raises the thread that opens an encoder to SCHED_FIFO (as root); neither that thread nor the
    # encoder's own workers may keep it: a compaction never outranks a control loop
    assert not {policy for *_, policy in seen} & {os.SCHED_FIFO, os.SCHED_RR}
    assert (os.sched_getaffinity(me), os.getpriority(os.PRIO_PROCESS, me)) == before
    for name in os.listdir("/proc/self/task"):  # zarr's pool threads too, those started during compaction
        with suppress(OSError):
            assert len(os.sched_getaffinity(int(name))) == len(before[0])
