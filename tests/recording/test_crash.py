"""Nothing lost: a real recording process (simulator, real time) killed with SIGKILL at random moments.

After each kill: the store opens, every committed episode reads back bit-identical to what was sent
(checksums journaled by the recording process itself), `validate` names the partial episode, and
`repair` recovers it up to at most ~1 s before the kill — or drops it.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recording.integrity import repair, validate
from recording.reader import EpisodeStore
from recording.schema import StoreSpec
from tests.recording.synthetic import stored_checksum

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
cameras:
  cam_high: {type: sim, width: 32, height: 24}
  cam_left_wrist: {type: sim, width: 32, height: 24}
control: {sim_timing: realtime}
recording: {image_codec: png, flush_seconds: 0.5}
"""


def read_journal(path: Path) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # the line being written when the process died
            continue
        out.setdefault(entry["ep"], []).append(entry["sha"])
    return out


def checksums(store: EpisodeStore, spec: StoreSpec, episode: int) -> list[str]:
    data = {a.key: store.get(episode, a.key) for a in spec.arrays()}
    return [stored_checksum(spec, {k: v[t] for k, v in data.items()}) for t in range(store.length(episode))]


def kill_while_recording(tmp_path: Path, seed: int, whole_group: bool) -> tuple[Path, dict[int, list[str]]]:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG)
    store, journal, log = tmp_path / "crash.zarr", tmp_path / "journal.jsonl", tmp_path / "child.log"
    env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONPATH": str(ROOT)}
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.recording.crash_child", str(store), str(journal), str(cfg)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the writer process is in it too
        )
    try:
        deadline = time.monotonic() + 90
        while not (journal.exists() and journal.stat().st_size > 0):
            assert child.poll() is None, f"the recording process exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the recording process did not start recording"
            time.sleep(0.05)
        time.sleep(random.Random(seed).uniform(0.2, 4.0))  # 1.5 s episodes: mid-episode, or mid-commit
        if whole_group:
            os.killpg(child.pid, signal.SIGKILL)  # the recorder and its writer die at once (power-cut-like)
        else:
            os.kill(child.pid, signal.SIGKILL)  # the recorder dies; its writer keeps what it was sent
        child.wait(30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while subprocess.run(["pgrep", "-g", str(child.pid)], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the writer process outlived its recorder by 30 s"
        time.sleep(0.1)
    return store, read_journal(journal)


@pytest.mark.parametrize("seed, whole_group", [(0, True), (1, True), (2, False), (3, True)])
def test_sigkill_at_a_random_moment_loses_nothing_committed_and_at_most_a_second(tmp_path, seed, whole_group):
    path, journal = kill_while_recording(tmp_path, seed, whole_group)
    store = EpisodeStore(path)  # opens after the kill
    spec = store.spec
    for ep in store.episodes:  # committed episodes: bit-identical to what was sent
        assert checksums(store, spec, ep) == journal[ep], f"committed episode {ep} differs from what was sent"

    report = validate(path)
    assert report.problems == []
    assert len(report.partial) <= 1
    assert store.episodes or report.partial, "the kill left neither a committed nor a partial episode"
    partial = report.partial[0].index if report.partial else None
    dropped_copy = path.with_name("dropped.zarr")
    shutil.copytree(path, dropped_copy)

    fixed = repair(path)
    assert validate(path).ok
    if partial is not None:
        sent = len(journal.get(partial, []))
        kept = fixed.recovered.get(partial, 0)
        fps = spec.fps
        assert kept >= sent - fps - 2, f"recovered {kept} of {sent} steps sent: more than ~1 s was lost"
        assert kept <= sent + 1  # (the step being journaled when the process died may be on disk)
        if kept:
            recovered = EpisodeStore(path)
            assert (
                checksums(recovered, spec, partial)[: min(kept, sent)] == journal[partial][: min(kept, sent)]
            )
            assert recovered.info(partial)["recovered"] is True
        dropped = repair(dropped_copy, drop=True)
        assert dropped.dropped == [partial] and partial not in EpisodeStore(dropped_copy).episodes
        assert validate(dropped_copy).ok
