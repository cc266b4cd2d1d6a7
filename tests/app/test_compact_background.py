"""Compaction in the background after a session (`recording.compact_after`): a real detached
`xr0 dataset compact` process, stopped by the next recording into the same store (recording comes first),
and finishing when started again."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from app.compose.config import load_config
from app.compose.store import COMPACT_LOG, compact_in_background, preflight
from recording.compact import is_archived
from recording.integrity import validate
from recording.reader import EpisodeStore
from recording.schema import StoreBusy, episode_attrs, episode_dirs
from recording.writer import COMPACT_ROLE, LOCK_FILE, StoreWriter, stop_compaction
from tests.recording.test_compact import write_store


def _archived(path) -> int:
    return sum(is_archived(episode_attrs(d)) for d in episode_dirs(path).values())


def _wait(what, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        if time.monotonic() > deadline:
            raise TimeoutError("the background compaction did not get there in time")
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it ended (it is our child)
    except ChildProcessError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_recording_stops_a_background_compaction_and_the_next_one_finishes_the_store(tmp_path):
    path = tmp_path / "d.zarr"
    write_store(path, episodes=8, steps=50)
    config = load_config()
    config = replace(config, recording=replace(config.recording, archive_segment_steps=10))
    pid = compact_in_background(path, config)
    assert pid is not None
    _wait(lambda: (path / LOCK_FILE).exists() and (path / LOCK_FILE).read_text().endswith(COMPACT_ROLE))

    preflight(path)  # what `xr0 record` and a recorded rollout do first: the compaction is stopped
    _wait(lambda: not _alive(pid), 30)
    done = _archived(path)
    assert done < 8, "the compaction had finished before it could be stopped: give it more work"
    with StoreWriter(path, allow_partial=True):  # the lock is free for the recording
        pass
    store = EpisodeStore(path)
    assert store.episodes == list(range(8)) and store.partial == []  # every episode whole, old or new

    pid = compact_in_background(path, config)  # after the session: it resumes
    _wait(lambda: not _alive(pid))
    assert _archived(path) == 8, (path / COMPACT_LOG).read_text()[-2000:]
    assert validate(path, deep=True).ok


def test_only_a_compaction_is_stopped_never_a_recording(tmp_path):
    path = tmp_path / "d.zarr"
    write_store(path, episodes=1, steps=5)
    with StoreWriter(path):  # a recording holds the store
        assert stop_compaction(path) is None
        with pytest.raises(StoreBusy, match=r"being written by another process \(pid \d+\)"):
            StoreWriter(path)
