"""The episode store on real Zarr v3 directories: write, read back, validate, repair, bad input."""

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

from recording.integrity import repair, validate
from recording.reader import EpisodeStore, SampleIndex
from recording.schema import FORMAT_NAME, StoreBusy, StoreError, check_store
from recording.writer import StoreWriter
from tests.recording.synthetic import make_spec, make_step


def write_episode(writer: StoreWriter, n: int, seed: int, flush_every: int = 5, commit: bool = True, **attrs):
    rng = np.random.default_rng(seed)
    steps = [make_step(writer.spec, t, rng) for t in range(n)]
    ep = writer.begin_episode({"task": attrs.pop("task", f"task {seed}"), **attrs}, capacity=4)
    for step in steps:
        ep.append(step)
        if ep.n_pending >= flush_every:
            ep.flush()
    if commit:
        ep.commit({"success": True})
    return ep, steps


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "data.zarr"
    with StoreWriter(path, make_spec()) as w:
        write_episode(w, 23, seed=1, task="pick")
        write_episode(w, 9, seed=2, task="place")
    return path


def test_committed_episodes_read_back_bit_identical(tmp_path):
    path = tmp_path / "data.zarr"
    spec = make_spec()
    with StoreWriter(path, spec) as w:
        _, steps = write_episode(w, 37, seed=3)  # grows past the initial capacity and across shards
    store = EpisodeStore(path)
    assert store.episodes == [0] and store.lengths.tolist() == [37] and store.partial == []
    for a in spec.arrays():
        want = np.stack([np.asarray(s[a.key], dtype=a.dtype) for s in steps])
        got = store.get(0, a.key)
        assert got.dtype == np.dtype(a.dtype), a.key
        assert np.array_equal(got, want), a.key
    assert np.array_equal(
        store.get(0, "observation.images.cam_high", 30), steps[30]["observation.images.cam_high"]
    )
    assert np.array_equal(store.get(0, "action", slice(5, 9)), np.stack([s["action"] for s in steps[5:9]]))


@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_files_written_directly_are_byte_for_byte_what_zarr_writes(tmp_path, codec):
    """The writer bypasses zarr's write path: every chunk and shard file must be exactly what zarr itself
    writes for the same steps (then any zarr reader reads it), at the end and after every flush."""
    spec = make_spec(codec)
    ours = tmp_path / "ours.zarr"
    with StoreWriter(ours, spec) as w:
        rng = np.random.default_rng(7)
        steps = [make_step(spec, t, rng, smooth=codec == "jpeg") for t in range(37)]
        ep = w.begin_episode({"task": "t"}, capacity=4)  # grows; 37 steps cross shards and numeric chunks
        for t, step in enumerate(steps):
            ep.append(step)
            if ep.n_pending >= 5 or t == 36:
                ep.flush()
                flushed = zarr.open_group(ep.directory, mode="r")
                assert np.array_equal(
                    flushed["action"][: t + 1], np.stack([s["action"] for s in steps[: t + 1]])
                )
                cam = flushed["observation.images.cam_high"]
                assert cam[: t + 1].shape[0] == t + 1  # every flushed frame decodes
        ep.commit()
        # the same steps through zarr's own write path, into arrays created the same way
        ref = w.root.create_group("reference")
        for a in spec.arrays():
            arr = w._create_array(ref, a, 37)
            arr[:] = np.stack([np.asarray(s[a.key], dtype=a.dtype) for s in steps])
        mine = ep.directory
        for a in spec.arrays():
            theirs = sorted(
                p.relative_to(ours / "reference" / a.key)
                for p in (ours / "reference" / a.key / "c").rglob("*")
                if p.is_file()
            )
            written = sorted(
                p.relative_to(mine / a.key) for p in (mine / a.key / "c").rglob("*") if p.is_file()
            )
            assert written == theirs, a.key
            for rel in theirs:
                assert (mine / a.key / rel).read_bytes() == (ours / "reference" / a.key / rel).read_bytes(), (
                    a.key,
                    rel,
                )
    assert not list(ours.rglob("*.partial"))


def test_store_and_episode_attributes_follow_the_design(store):
    s = EpisodeStore(store)
    assert s.attrs["format"] == FORMAT_NAME and s.attrs["format_version"] == 1
    assert s.attrs["fps"] == 30.0 and len(s.attrs["joint_names"]) == 14
    assert s.attrs["cameras"] == {"cam_high": [24, 32, 3], "cam_left_wrist": [24, 32, 3]}
    assert "units" in s.attrs and s.attrs["keys"]["action"]["shape"] == [14]
    info = s.info(0)
    assert info["status"] == "committed" and info["task"] == "pick" and info["success"] is True
    assert info["length"] == 23 and info["fps"] == 30.0 and info["start_time_utc"]
    assert info["loop_rate_hz"] == pytest.approx(30.0, rel=1e-3) and info["rate_ok"] is True
    assert info["skipped_ticks"] == 0 and info["repeated_frames"] == {"cam_high": 0, "cam_left_wrist": 0}
    assert s.tasks == ["pick", "place"]


def test_sample_index_and_training_sample(store):
    s = EpisodeStore(store)
    assert len(s) == 32
    assert s.sample_index.locate(0) == (0, 0) and s.sample_index.locate(22) == (0, 22)
    assert s.sample_index.locate(23) == (1, 0) and s.sample_index.locate(31) == (1, 8)
    with pytest.raises(IndexError):
        s.sample_index.locate(32)
    sample = s.sample(30, horizon=5)  # episode 1, step 7 of 9: the window runs past the end
    actions = s.get(1, "action")
    assert sample["episode"] == 1 and sample["step"] == 7 and sample["task"] == "place"
    assert np.array_equal(sample["action"], actions[[7, 8, 8, 8, 8]])
    assert sample["action_is_pad"].tolist() == [False, False, True, True, True]
    assert np.array_equal(sample["observation.state"], s.get(1, "observation.state", 7))
    assert sample["observation.images.cam_high"].shape == (24, 32, 3)
    idx = SampleIndex.build([4, 9], [2, 3])
    assert [idx.locate(i) for i in range(5)] == [(4, 0), (4, 1), (9, 0), (9, 1), (9, 2)]


def test_jpeg_images_are_small_and_close(tmp_path):
    spec = make_spec("jpeg", cameras={"cam_high": (96, 128, 3)}, jpeg_quality=90)
    rng = np.random.default_rng(0)
    steps = [make_step(spec, t, rng, smooth=True) for t in range(10)]
    with StoreWriter(tmp_path / "j.zarr", spec) as w:
        ep = w.begin_episode({"task": "x"})
        for st in steps:
            ep.append(st)
        ep.commit()
    s = EpisodeStore(tmp_path / "j.zarr")
    got = s.get(0, "observation.images.cam_high").astype(float)
    want = np.stack([st["observation.images.cam_high"] for st in steps]).astype(float)
    psnr = 10 * np.log10(255**2 / np.mean((got - want) ** 2))
    assert psnr > 35
    shard_bytes = sum(
        f.stat().st_size for f in (tmp_path / "j.zarr").rglob("*") if f.is_file() and "images" in str(f)
    )
    assert shard_bytes < want.nbytes / 5


def test_a_corrupted_chunk_is_one_clear_sentence_and_only_that_step_fails(tmp_path):
    path = tmp_path / "c.zarr"
    spec = make_spec(image_shard_steps=8)
    with StoreWriter(path, spec) as w:
        write_episode(w, 16, seed=5)
    shard = path / "episodes/episode_000000/observation.images.cam_high/c/0/0/0/0"
    data = bytearray(shard.read_bytes())
    data[40] ^= 0xFF  # inside the first frame's PNG, before the shard index
    shard.write_bytes(bytes(data))
    s = EpisodeStore(path)
    assert s.get(0, "observation.images.cam_high", 9).shape == (24, 32, 3)  # another shard: fine
    assert s.get(0, "observation.images.cam_high", 1).shape == (24, 32, 3)  # same shard, other frame: fine
    with pytest.raises(StoreError) as e:
        s.get(0, "observation.images.cam_high", 0)
    msg = str(e.value)
    assert (
        "episode 0" in msg and "observation.images.cam_high" in msg and "corrupted" in msg and "\n" not in msg
    )
    assert validate(path).ok  # the quick check does not decode images ...
    report = validate(path, deep=True)  # ... the deep one does, and names the step
    assert report.problems == [report.problems[0]] and "step 0 is corrupted" in report.problems[0]


@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_frames_read_straight_from_shards_equal_zarrs_reads(tmp_path, codec):
    path = tmp_path / "d.zarr"
    with StoreWriter(path, make_spec(codec, image_shard_steps=8)) as w:
        write_episode(w, 13, seed=3)  # the second shard holds 5 of its 8 frames
    s = EpisodeStore(path)
    key = "observation.images.cam_high"
    assert s._shard_layout(0, key, s.array(0, key)) is not None  # the direct path is the one under test
    via_zarr = zarr.open_array(path / "episodes/episode_000000" / key, mode="r")
    for t in range(13):  # the same bytes through the same decoder (imagecodecs): equal on any CPU
        assert np.array_equal(s.get(0, key, t), via_zarr[t]), t


def test_a_shard_chunk_never_written_reads_as_none_like_zarrs_fill_value(tmp_path):
    from recording.codecs import chunk_file, read_shard_chunk, shard_bytes, with_checksum

    array_dir = tmp_path / "a"
    chunk_file(array_dir, 0, 4).parent.mkdir(parents=True)
    chunk_file(array_dir, 0, 4).write_bytes(
        shard_bytes([with_checksum(b"one"), None, with_checksum(b"three")])
    )
    got = [read_shard_chunk(array_dir, t, 3, 4) for t in range(3)]
    assert got == [b"one", None, b"three"]
    assert read_shard_chunk(array_dir, 3, 3, 4) is None  # shard 1 was never written


def test_a_corrupted_shard_index_is_one_clear_sentence(tmp_path):
    path = tmp_path / "c.zarr"
    with StoreWriter(path, make_spec(image_shard_steps=8)) as w:
        write_episode(w, 16, seed=5)
    shard = path / "episodes/episode_000000/observation.images.cam_high/c/1/0/0/0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the index at the end of the shard
    shard.write_bytes(bytes(data))
    s = EpisodeStore(path)
    assert s.get(0, "observation.images.cam_high", 7).shape == (24, 32, 3)  # the first shard: fine
    with pytest.raises(StoreError, match=r"episode 0, observation.images.cam_high, steps 9: .*corrupted"):
        s.get(0, "observation.images.cam_high", 9)


def test_a_corrupted_numeric_chunk_is_found_by_the_quick_validation(store):
    chunk = store / "episodes/episode_000001/action/c/0/0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    report = validate(store)
    assert not report.ok and len(report.problems) == 1
    assert "episode 1, action" in report.problems[0] and "corrupted" in report.problems[0]


def test_a_missing_chunk_file_is_reported(store):
    os.remove(store / "episodes/episode_000000/timestamp_ns/c/1")
    report = validate(store)
    assert report.problems and "timestamp_ns: 1 data file(s) are missing" in report.problems[0]


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("x"), "is a file"),
        (lambda p: p.mkdir(), "not a Zarr store (it has no zarr.json)"),
        (lambda p: (p.mkdir(), (p / ".zgroup").write_text('{"zarr_format": 2}')), "Zarr v2 store"),
        (
            lambda p: zarr.open_group(p, mode="w", attributes={"format": "lerobot"}),
            "another format (format 'lerobot')",
        ),
        (lambda p: zarr.open_group(p, mode="w"), "another format (no format attribute)"),
        (
            lambda p: zarr.open_group(p, mode="w", attributes={"format": FORMAT_NAME, "format_version": 7}),
            "version 7, newer than this xr0 reads",
        ),
        (lambda p: (p.mkdir(), (p / "zarr.json").write_text("{not json")), "cannot be read as JSON"),
    ],
)
def test_bad_store_paths_and_formats_are_one_sentence(tmp_path, make, expect):
    path = tmp_path / "bad.zarr"
    make(path)
    for open_it in (check_store, EpisodeStore, validate):
        with pytest.raises(StoreError) as e:
            open_it(path)
        assert expect in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_appending_with_a_different_setup_is_refused(store):
    with pytest.raises(StoreError, match="fps is 30.0 in the store but 15.0 now"):
        StoreWriter(store, replace(make_spec(), fps=15.0))


def test_bad_steps_name_the_key(tmp_path):
    with StoreWriter(tmp_path / "s.zarr", make_spec()) as w:
        ep = w.begin_episode({"task": "x"})
        step = make_step(w.spec, 0, np.random.default_rng(0))
        with pytest.raises(StoreError, match="observation.state has shape \\(13,\\), expected \\(14,\\)"):
            ep.append({**step, "observation.state": np.zeros(13)})
        with pytest.raises(StoreError, match="missing action"):
            ep.append({k: v for k, v in step.items() if k != "action"})
        with pytest.raises(StoreError, match="must be uint8 RGB"):
            ep.append({**step, "observation.images.cam_high": np.zeros((24, 32, 3), np.float32)})


def test_one_writer_at_a_time(store):
    with StoreWriter(store):
        with pytest.raises(StoreBusy, match=rf"being written by another process \(pid {os.getpid()}\)"):
            StoreWriter(store)


def test_validate_and_repair_refuse_a_store_a_live_writer_holds_and_a_dead_ones_lock_is_no_lock(store):
    from recording.integrity import repair

    with StoreWriter(store):
        with pytest.raises(
            StoreBusy, match=r"being written by another process \(pid \d+\); validate it when"
        ):
            validate(store)
        with pytest.raises(StoreBusy, match="being written"):
            repair(store)
    # the lock file stays behind (as after a killed writer), but the lock died with its holder
    assert (store / ".xr0-writer.lock").read_text() == str(os.getpid())
    assert validate(store).ok


def test_partial_episode_is_named_recovered_up_to_its_last_flush_or_dropped(tmp_path):
    path = tmp_path / "p.zarr"
    with StoreWriter(path, make_spec()) as w:
        write_episode(w, 12, seed=1)
        ep, steps = write_episode(w, 17, seed=2, flush_every=5, commit=False)  # 15 flushed, 2 pending
    (path / "episodes/episode_000001/action/c/0/0.0123456789abcdef0123456789abcdef.partial").write_bytes(b"x")
    report = validate(path)
    assert not report.ok and [(p.index, p.flushed_steps) for p in report.partial] == [(1, 15)]
    assert len(report.leftovers) == 1
    with pytest.raises(StoreError, match="episode 1 of .* is partial"):
        EpisodeStore(path).get(1, "action")
    with pytest.raises(StoreError, match="partial episode\\(s\\) 1 left by an interrupted recording"):
        StoreWriter(path)
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)

    fixed = repair(path)
    assert fixed.recovered == {1: 15} and fixed.dropped == [] and fixed.removed_leftovers == 1
    assert validate(path).ok and not validate(path).leftovers
    s = EpisodeStore(path)
    info = s.info(1)
    assert info["length"] == 15 and info["recovered"] is True and info["interrupted"] is True
    assert np.array_equal(s.get(1, "action"), np.stack([st["action"] for st in steps[:15]]))
    for t in (0, 14):
        assert np.array_equal(
            s.get(1, "observation.images.cam_left_wrist", t), steps[t]["observation.images.cam_left_wrist"]
        )

    dropped = repair(copy, drop=True)
    assert dropped.dropped == [1] and EpisodeStore(copy).episodes == [0] and validate(copy).ok


def test_discard_removes_the_episode_and_frees_its_number(tmp_path):
    path = tmp_path / "d.zarr"
    with StoreWriter(path, make_spec()) as w:
        write_episode(w, 5, seed=1)
        ep, _ = write_episode(w, 5, seed=2, commit=False)
        ep.discard()
        assert w.next_index == 1
    assert EpisodeStore(path).episodes == [0] and validate(path).ok


def test_success_mark_after_commit_is_atomic_and_kept(store):
    with StoreWriter(store) as w:
        w.update_episode(0, {"success": False, "success_source": "operator"})
        with pytest.raises(StoreError, match="managed by the store"):
            w.update_episode(0, {"length": 3})
    info = EpisodeStore(store).info(0)
    assert info["success"] is False and info["status"] == "committed" and info["length"] == 23
    meta = json.loads((store / "episodes/episode_000000/zarr.json").read_text())
    assert meta["attributes"]["success_source"] == "operator"


def test_a_slow_loop_is_flagged_and_gaps_are_counted(tmp_path):
    path = tmp_path / "slow.zarr"
    spec = make_spec()
    rng = np.random.default_rng(4)
    with StoreWriter(path, spec, min_rate_fraction=0.9) as w:
        ep = w.begin_episode({"task": "slow"})
        for t in range(20):  # 25 Hz instead of 30, one tick in four lost, a frame repeated
            step = make_step(spec, t, rng)
            step["timestamp_ns"] = t * 40_000_000
            step["tick"] = t + t // 4
            step["observation.images.cam_high.index"] = t if t != 7 else 6
            ep.append(step)
        info = ep.commit()
    assert info["loop_rate_hz"] == pytest.approx(25.0) and info["rate_ok"] is False
    assert info["skipped_ticks"] == 4 and info["repeated_frames"]["cam_high"] == 1


def test_adopt_moves_committed_episodes_in_order_and_leaves_partial_ones(tmp_path, store):
    side = tmp_path / "side.zarr"
    with StoreWriter(side, make_spec()) as w:
        _, first = write_episode(w, 7, seed=5, task="side a")
        _, second = write_episode(w, 11, seed=6, task="side b")
        write_episode(w, 4, seed=7, commit=False)  # an interrupted one: stays behind
        w.begin_episode({"task": "never flushed"})
    with StoreWriter(store) as w:
        assert w.adopt(side) == [2, 3]
    got = EpisodeStore(store)
    assert got.episodes == [0, 1, 2, 3] and got.lengths.tolist() == [23, 9, 7, 11]
    assert [got.info(e)["task"] for e in (2, 3)] == ["side a", "side b"]
    assert [got.info(e)["index"] for e in (2, 3)] == [2, 3]
    for e, steps in ((2, first), (3, second)):
        assert np.array_equal(got.get(e, "action"), np.stack([s["action"] for s in steps]))
        assert np.array_equal(
            got.get(e, "observation.images.cam_high", 3), steps[3]["observation.images.cam_high"]
        )
    assert validate(store).ok
    assert sorted(EpisodeStore(side).partial) == [2, 3]  # the source keeps what it could not give
    repair(side, drop=True)  # once nothing is left in the source, it goes
    with StoreWriter(store) as w:
        assert w.adopt(side) == []
    assert not side.exists()


def test_adopt_refuses_a_store_of_another_setup_and_moves_nothing(tmp_path, store):
    side = tmp_path / "side.zarr"
    with StoreWriter(side, replace(make_spec(), fps=15.0)) as w:
        write_episode(w, 3, seed=5)
    with StoreWriter(store) as w, pytest.raises(StoreError, match=f"dataset {side} does not match .*fps"):
        w.adopt(side)
    assert EpisodeStore(store).episodes == [0, 1] and EpisodeStore(side).episodes == [0]
