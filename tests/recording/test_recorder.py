"""The recorder and its writer process on real stores: round trip, overflow alarm, back-pressure, failures."""

import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import replace

import numpy as np
import pytest
import zarr

from recording.config import RecordingConfig
from recording.integrity import validate
from recording.reader import EpisodeStore
from recording.recorder import Recorder
from recording.schema import StoreError
from recording.writer import StoreWriter
from tests.recording.synthetic import make_spec, make_step, stored_checksum

CONFIG = RecordingConfig(queue_seconds=0.5, flush_seconds=0.2, fsync=False)


def record(recorder: Recorder, steps: list[dict], commit: bool = True, **attrs) -> int:
    index = recorder.start_episode({"task": "test", **attrs})
    taken = sum(recorder.add_step(s) for s in steps)
    recorder.end_episode(commit, {"success": True})
    return taken if index >= 0 else -1


def test_round_trip_through_the_writer_process(tmp_path):
    spec = make_spec()
    rng = np.random.default_rng(0)
    steps = [make_step(spec, t, rng) for t in range(40)]
    rec = Recorder(tmp_path / "r.zarr", spec, replace(CONFIG, queue_seconds=3.0))
    try:
        assert rec.next_index == 0
        assert record(rec, steps) == 40
        assert rec.wait_idle(30)
        record(rec, steps[:7], commit=False)  # discarded: its number is used again
        assert record(rec, steps[:5]) == 5
        rec.mark(0, {"notes": "checked"})
        assert rec.wait_idle(30)
    finally:
        rec.close()
    assert rec.error is None and rec.alarm is None
    assert [(r.index, r.status, r.length) for r in rec.results] == [
        (0, "committed", 40),
        (1, "discarded", 0),
        (1, "committed", 5),
    ]
    store = EpisodeStore(tmp_path / "r.zarr")
    assert store.episodes == [0, 1] and store.info(0)["notes"] == "checked"
    for t, step in enumerate(steps):
        got = {a.key: store.get(0, a.key, t) for a in spec.arrays()}
        assert stored_checksum(spec, got) == stored_checksum(spec, step), t


def test_queue_overflow_stops_the_episode_with_an_alarm_and_keeps_what_was_taken(tmp_path):
    spec = make_spec(cameras={"cam_high": (240, 320, 3)})  # noise PNGs: slow to write, so the queue fills
    rng = np.random.default_rng(1)
    steps = [make_step(spec, t, rng) for t in range(300)]
    rec = Recorder(tmp_path / "o.zarr", spec, CONFIG)
    try:
        taken = record(rec, steps)
        assert rec.alarm is not None and "queue overflowed" in rec.alarm
        assert rec.overflows == 1 and rec.refused_steps == 300 - taken
        assert 15 <= taken < 300  # the queue (15 steps) filled before the writer caught up
    finally:
        rec.close()
    store = EpisodeStore(tmp_path / "o.zarr")
    info = store.info(0)
    assert info["length"] == taken and info["interrupted"] is True and "overflowed" in info["alarm"]
    for t in (0, taken - 1):  # the kept steps are exactly the first ones sent
        assert np.array_equal(
            store.get(0, "observation.images.cam_high", t), steps[t]["observation.images.cam_high"]
        )


def test_back_pressure_waits_instead_of_dropping(tmp_path):
    spec = make_spec(cameras={"cam_high": (240, 320, 3)})
    rng = np.random.default_rng(2)
    steps = [make_step(spec, t, rng) for t in range(60)]
    rec = Recorder(tmp_path / "b.zarr", spec, CONFIG, block=True)
    try:
        assert record(rec, steps) == 60
    finally:
        rec.close()
    assert rec.alarm is None and rec.max_depth <= rec.queue_size
    assert EpisodeStore(tmp_path / "b.zarr").lengths.tolist() == [60]


def test_a_dead_writer_process_is_an_error_not_a_hang(tmp_path):
    spec = make_spec()
    rec = Recorder(tmp_path / "k.zarr", spec, CONFIG)
    try:
        rec.start_episode({"task": "x"})
        os.kill(rec._proc.pid, signal.SIGKILL)
        rec._proc.join(10)
        step = make_step(spec, 0, np.random.default_rng(0))
        for _ in range(100):
            rec.add_step(step)
            if rec.error:
                break
            rec.wait_idle(0.05)
        assert rec.error is not None and "writer process" in rec.error
    finally:
        rec.close(timeout=5)


def test_bad_stores_fail_when_the_recorder_is_made(tmp_path):
    other = tmp_path / "other.zarr"
    zarr.open_group(other, mode="w", attributes={"format": "something-else"})
    with pytest.raises(StoreError, match="another format"):
        Recorder(other, make_spec(), CONFIG)
    partial = tmp_path / "partial.zarr"
    with StoreWriter(partial, make_spec()) as w:
        w.begin_episode({"task": "x"})
    with pytest.raises(StoreError, match="partial episode\\(s\\) 0"):
        Recorder(partial, make_spec(), CONFIG)
    with pytest.raises(StoreError, match="does not match this recording: cameras"):
        Recorder(partial, make_spec(cameras={"cam_high": (8, 8, 3)}), CONFIG)


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs (needs root, as in CI containers and on this workstation class)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a size-limited tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_is_a_clear_error_and_committed_episodes_stay_intact(small_disk):
    path = small_disk / "full.zarr"
    spec = make_spec(cameras={"cam_high": (120, 160, 3)})  # ~58 kB per noise PNG: 6 MiB is ~100 steps
    rng = np.random.default_rng(3)
    first = [make_step(spec, t, rng) for t in range(20)]
    rec = Recorder(path, spec, CONFIG, block=True)
    try:
        assert record(rec, first) == 20
        assert rec.wait_idle(30) and rec.error is None
        rec.start_episode({"task": "fills the disk"})
        for t in range(400):
            if not rec.add_step(make_step(spec, t, rng)):
                break
        rec.end_episode(True)
        rec.wait_idle(30)
    finally:
        rec.close()
    assert rec.error is not None and "disk is full" in rec.error and str(path) in rec.error
    assert rec.results[-1].status == "failed"
    store = EpisodeStore(path)
    assert store.episodes == [0] and store.partial == [1]
    report = validate(path, deep=True)
    assert report.problems == [] and report.committed == 1
    for t in (0, 19):
        assert np.array_equal(
            store.get(0, "observation.images.cam_high", t), first[t]["observation.images.cam_high"]
        )


def test_the_config_is_validated_with_the_field_named():
    for field, value in (
        ("flush_seconds", 2.0),
        ("jpeg_quality", 0),
        ("queue_seconds", 0.1),
        ("on_interrupt", "x"),
    ):
        with pytest.raises(ValueError, match=field):
            RecordingConfig(**{field: value})
