"""The training data pipeline on real (tiny) episode stores: samples, statistics, the shared transform
chain, augmentation, sampling order, loader workers and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recording.reader import EpisodeStore, SampleIndex
from recording.writer import StoreWriter
from tests.recording.synthetic import make_spec, make_step
from xr0.augment import AugmentConfig, augment_views
from xr0.data import (
    STD_FLOOR,
    Collate,
    DataError,
    MixtureSchedule,
    RankBatches,
    TrainingSamples,
    action_statistics,
    make_loader,
    model_state,
    open_sources,
    segment_groups,
    source_states,
    source_windows,
    state_statistics,
)
from xr0.flow import sample_actions, seeded_noise
from xr0.policy import RELATIVE_JOINTS, XR0_INDEX, XR0Policy, XR0PolicyConfig, model_to_robot_actions
from xr0.processor import XR0Processor
from xr0.train_config import DataConfig

CAMS = ("cam_high", "cam_left_wrist")
REL = np.asarray(RELATIVE_JOINTS)
H = 8  # chunk length in these tests


def make_store(path, lengths=(40, 25, 30), cameras=CAMS, task="transfer the cube", seed=0):
    """A real store with smooth images and random joints (`tests/recording/synthetic.py`)."""
    spec = make_spec(codec="png", cameras={c: (24, 32, 3) for c in cameras})
    rng = np.random.default_rng(seed)
    with StoreWriter(path, spec, fsync=False) as writer:
        for n in lengths:
            ep = writer.begin_episode({"task": task})
            for t in range(n):
                ep.append(make_step(spec, t, rng, smooth=True))
            ep.commit()
    return path


def stats_processor(sources, horizon=H, normalize_state=False) -> XR0Processor:
    stats, _ = action_statistics(list(source_windows(sources)), horizon, REL)
    if normalize_state:
        stats.update(state_statistics(source_states(sources)))
    entry = {k: v.tolist() for k, v in stats.items()}
    return XR0Processor.build({"aloha": entry}, action_length=horizon)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("data") / "s.zarr")


@pytest.fixture(scope="module")
def sources(store):
    return open_sources(DataConfig(datasets=(str(store),), val_episodes=1), CAMS)


@pytest.fixture(scope="module")
def proc(sources):
    return stats_processor(sources)


NO_AUGMENT = AugmentConfig(enabled=False)


def samples(sources, proc, augment=NO_AUGMENT, split="train"):
    return TrainingSamples(sources, proc, CAMS, REL, H, "aloha", augment, seed=0, split=split)


def test_the_last_episode_is_held_out_and_every_step_is_a_sample(sources):
    (s,) = sources
    assert s.train.episodes.tolist() == [0, 1] and s.val.episodes.tolist() == [2]
    assert len(s.train) == 65 and len(s.val) == 30


def test_statistics_are_the_mean_and_std_of_valid_window_rows():
    rng = np.random.default_rng(1)
    episodes = [(rng.normal(size=(n, 14)), rng.normal(size=(n, 14))) for n in (12, 5)]
    for actions, states in episodes:  # the left waist never moves: relative targets are all 0
        actions[:, 0] = states[:, 0] = 0.3
    stats, rows = action_statistics(episodes, 4, REL)
    # brute force: every (t, k) with t + k inside the episode
    per_k = [[] for _ in range(4)]
    for actions, states in episodes:
        for t in range(len(actions)):
            for k in range(4):
                if t + k < len(actions):
                    target = actions[t + k].copy()
                    target[[6, 13]] = np.clip(target[[6, 13]], 0.0, 1.0)  # grippers are fractions
                    per_k[k].append(target - REL * states[t])
    for k in range(4):
        rows_k = np.array(per_k[k])
        idx = list(XR0_INDEX)
        np.testing.assert_allclose(stats["mean"][k, idx], rows_k.mean(0), rtol=1e-5, atol=1e-6)
        expect = np.maximum(rows_k.std(0), STD_FLOOR)
        np.testing.assert_allclose(stats["std"][k, idx], expect, rtol=1e-4, atol=1e-6)
    assert rows == 17
    assert np.all(stats["std"][:, 7] == np.float32(STD_FLOOR))  # a never-moving joint stays active
    unused = np.setdiff1d(np.arange(32), XR0_INDEX)
    assert not stats["std"][:, unused].any() and not stats["mean"][:, unused].any()


def test_a_sample_is_the_step_with_its_window_padded_and_masked(store, sources, proc):
    ds = samples(sources, proc)
    s = EpisodeStore(store)
    i = 39 - 3  # episode 0 (40 steps), step 36: rows 0..3 real, 4..7 past the end
    out = ds[(0, i, -1)]
    assert out["valid"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    actions = s.get(0, "action")
    window = actions[np.minimum(np.arange(36, 36 + H), 39)]
    np.testing.assert_array_equal(out["robot_actions"].numpy(), window)
    state = s.get(0, "observation.state", 36)
    raw = window[:, :].copy()
    raw[:, [6, 13]] = np.clip(raw[:, [6, 13]], 0.0, 1.0)  # gripper targets are clipped to fractions
    raw[:, REL] -= state[REL]
    mean, std = (t[0].numpy() for t in proc.stats["aloha"])
    idx = list(XR0_INDEX)
    np.testing.assert_allclose(out["actions"].numpy()[:, idx], (raw - mean[:, idx]) / std[:, idx], rtol=1e-5)
    assert out["state"].shape == (1, 32) and np.allclose(out["state"][0, idx].numpy(), state)
    views = [
        (label, s.get(0, f"observation.images.{c}", 36))
        for label, c in zip(("Ego View", "Left-Wrist View"), CAMS, strict=True)
    ]
    expected = proc.encode("transfer the cube", views)
    for key, value in expected.items():
        assert torch.equal(out["inputs"][key], value), key


@pytest.mark.parametrize("normalize_state", [False, True], ids=["raw-state", "normalised-state"])
def test_training_targets_and_inference_share_one_transform_chain(store, sources, model, normalize_state):
    """A training sample, run through the model and decoded the training way, equals XR0Policy.infer on
    the same observation — and the targets decode back to the demonstrated actions. With and without
    state statistics (a from-scratch model reads a normalised state, the official one a raw state)."""
    from xr0.boundary import PolicyObservation

    s = EpisodeStore(store)
    proc = stats_processor(sources, normalize_state=normalize_state)
    ds = samples(sources, proc)
    out = ds[(0, 10, -1)]
    batch = Collate(proc)([out])
    mask = proc.get_action_mask("aloha")
    with torch.no_grad():
        ctx = model.encode(batch["inputs"])
        x = sample_actions(model, ctx, batch["state"], mask, noise=seeded_noise(7, mask))
    state = s.get(0, "observation.state", 10)
    seen = batch["state"][0, 0, list(XR0_INDEX)].double().numpy()
    if normalize_state:
        mean, std = (proc.state_stats["aloha"][i][list(XR0_INDEX)] for i in (0, 1))
        np.testing.assert_allclose(seen, (state - mean) / std, rtol=1e-5, atol=1e-6)
        assert not np.allclose(seen, state, atol=1e-3)
    else:
        np.testing.assert_allclose(seen, state, rtol=1e-6)
    decoded = proc.decode_action(x, "aloha")[0].double().numpy()
    ours = model_to_robot_actions(decoded, state, REL)
    policy = XR0Policy(model, proc, XR0PolicyConfig(cameras=CAMS, seed=7))
    images = {c: s.get(0, f"observation.images.{c}", 10) for c in CAMS}
    obs = PolicyObservation(images=images, state=state, instruction="transfer the cube", t_ns=0)
    # two call paths through the same ops: equal to float32 precision (bit equality would also depend on
    # which kernel each path's tensor layout picks on a given CPU)
    np.testing.assert_allclose(policy.infer(obs, np.zeros((0, 14))).actions, ours, rtol=0, atol=1e-5)
    # the normalised targets decode (the policy's way) to the recorded actions, grippers as fractions
    back = model_to_robot_actions(
        proc.decode_action(out["actions"][None], "aloha")[0].double().numpy(), state, REL
    )
    recorded = s.get(0, "action")[10 : 10 + H].copy()
    recorded[:, [6, 13]] = np.clip(recorded[:, [6, 13]], 0.0, 1.0)
    np.testing.assert_allclose(back, recorded, atol=1e-5)


def test_state_statistics_cover_the_joints_and_the_privileged_inputs_they_fill():
    rng = np.random.default_rng(2)
    episodes = [(rng.normal(1.0, 0.5, size=(n, 14)), {"object_start": rng.normal(size=3)}) for n in (30, 20)]
    for states, _ in episodes:
        states[:, 3] = 0.7  # a joint that never moves keeps the floor std
    stats = state_statistics(episodes)
    rows = np.concatenate([states for states, _ in episodes])
    idx = list(XR0_INDEX)
    np.testing.assert_allclose(stats["state_mean"][idx], rows.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["state_std"][idx], np.maximum(rows.std(0), STD_FLOOR), rtol=1e-4)
    assert stats["state_std"][idx][3] == np.float32(STD_FLOOR)
    starts = np.repeat([p["object_start"] for _, p in episodes], [30, 20], axis=0)
    np.testing.assert_allclose(stats["state_mean"][:3], starts.mean(0), rtol=1e-5)
    unused = np.setdiff1d(np.arange(32), [*idx, 0, 1, 2])
    assert not stats["state_std"][unused].any() and not stats["state_mean"][unused].any()
    assert state_statistics([(states, {}) for states, _ in episodes])["state_std"][:3].tolist() == [0, 0, 0]
    with pytest.raises(DataError, match="no training rows"):
        state_statistics([])


def test_augmentation_is_one_seeded_draw_for_all_views():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cfg = AugmentConfig(prob=1.0)
    a, b = augment_views([img, img.copy()], cfg, np.random.default_rng(5))
    assert np.array_equal(a, b) and not np.array_equal(a, img)  # same draw for every view
    again = augment_views([img], cfg, np.random.default_rng(5))[0]
    other = augment_views([img], cfg, np.random.default_rng(6))[0]
    assert np.array_equal(again, a) and not np.array_equal(other, a)
    assert augment_views([img], AugmentConfig(enabled=False), rng)[0] is img
    flat = np.full((8, 8, 3), 100, np.uint8)
    bright = AugmentConfig(crop_scale=1.0, prob=1.0, contrast=(1, 1), saturation=(1, 1))
    shifts = {
        int(augment_views([flat], bright, np.random.default_rng(s))[0][0, 0, 0]) - 100 for s in range(50)
    }
    assert max(shifts) <= 33 and min(shifts) >= -33 and len(shifts) > 10  # ±32/255


def test_colour_augmentation_is_exactly_the_plain_formulas():
    """apply_augment works in place for speed; the values must be those of the formulas written plainly
    (the same float32 operations in the same order, so equal on any CPU)."""
    from xr0.augment import _LUMA, AugmentDraw, apply_augment

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    cfg = AugmentConfig(crop_scale=1.0)
    for b, c, sat in [(0.1, 1.3, 0.7), (-0.12, None, 1.5), (None, 0.5, None), (0.05, 1.49, 0.51)]:
        x = image.astype(np.float32) / 255.0
        if b is not None:
            x = np.clip(x + b, 0, 1)
        if c is not None:
            mean = float((x @ _LUMA).mean())
            x = np.clip(mean + c * (x - mean), 0, 1)
        if sat is not None:
            grey = (x @ _LUMA)[..., None]
            x = np.clip(grey + sat * (x - grey), 0, 1)
        want = (x * 255 + 0.5).astype(np.uint8)
        assert np.array_equal(apply_augment(image, AugmentDraw(None, b, c, sat), cfg), want)


def test_augmented_samples_depend_only_on_their_sample_number(sources, proc):
    ds = samples(sources, proc, augment=AugmentConfig(prob=1.0))
    a, b, c = ds[(0, 5, 11)], ds[(0, 5, 11)], ds[(0, 5, 12)]
    assert torch.equal(a["inputs"]["pixel_values"], b["inputs"]["pixel_values"])
    assert not torch.equal(a["inputs"]["pixel_values"], c["inputs"]["pixel_values"])
    assert torch.equal(a["actions"], c["actions"])  # targets are never augmented


def test_state_dropout_hides_the_normalised_state_of_some_training_samples_only(sources):
    proc = stats_processor(sources, normalize_state=True)
    ds = samples(sources, proc, augment=AugmentConfig(state_dropout=0.5))
    plain = samples(sources, proc)
    hidden = 0
    for g in range(40):
        sample, reference = ds[(0, 5, g)], plain[(0, 5, g)]
        assert torch.equal(sample["actions"], reference["actions"])  # targets never change
        if torch.count_nonzero(sample["state"]) == 0:
            hidden += 1
        else:
            assert torch.equal(sample["state"], reference["state"])
    assert 8 <= hidden <= 32 and torch.count_nonzero(plain[(0, 5, 0)]["state"]) > 0
    assert torch.equal(ds[(0, 5, -1)]["state"], plain[(0, 5, -1)]["state"])  # held-out: never hidden
    with pytest.raises(ValueError, match="state_dropout"):
        AugmentConfig(state_dropout=1.0)


def test_mixture_schedule_covers_each_epoch_and_follows_the_weights():
    single = MixtureSchedule([10], [1.0], seed=3)
    for e in range(3):
        assert sorted(single[g][1] for g in range(10 * e, 10 * e + 10)) == list(range(10))
    assert [single[g] for g in range(10)] != [MixtureSchedule([10], [1.0], seed=4)[g] for g in range(10)]
    mix = MixtureSchedule([10, 10], [1.0, 3.0], seed=0)
    counts = np.bincount([mix[g][0] for g in range(200)], minlength=2)
    assert counts.tolist() == [50, 150]


def test_segment_local_schedule_still_draws_every_step_once_but_few_segments_per_window():
    index = SampleIndex.build([0, 1, 2], [70, 45, 100])
    groups = segment_groups(index, {0: 30, 1: 30, 2: 30})
    assert groups[29] == groups[0] != groups[30] and groups[70] != groups[69]  # per episode, not flat
    local = MixtureSchedule([len(index)], [1.0], seed=0, groups=[groups], window=60)
    uniform = MixtureSchedule([len(index)], [1.0], seed=0)
    n = len(index)
    for schedule in (local, uniform):
        for e in range(2):
            assert sorted(schedule[g][1] for g in range(e * n, (e + 1) * n)) == list(range(n))

    def segments_per_window(schedule):
        picks = [schedule[g][1] for g in range(n)]
        return np.mean([len(set(groups[picks[s : s + 30]])) for s in range(0, n - 30, 30)])

    assert segments_per_window(local) <= 3.0 < 6.0 <= segments_per_window(uniform)
    two = MixtureSchedule([len(index), 40], [1.0, 1.0], 0, [groups, np.arange(40)], window=60)
    src = np.array([two[g][0] for g in range(two.epoch_length)])
    assert np.bincount(src).tolist() == two.quotas == [128, 127]  # the weights hold with the local order too


def test_ranks_split_each_global_batch_into_contiguous_parts():
    schedule = MixtureSchedule([50], [1.0], seed=0)
    one = list(RankBatches(schedule, 8, 0, 1, 2, 5))
    r0, r1 = list(RankBatches(schedule, 8, 0, 2, 2, 5)), list(RankBatches(schedule, 8, 1, 2, 2, 5))
    assert [a + b for a, b in zip(r0, r1, strict=True)] == one
    assert one[0][0][2] == 16  # step 2 starts at global sample 16


def test_loader_workers_give_the_same_batches_as_one_process(sources, proc):
    ds = samples(sources, proc, augment=AugmentConfig())
    batches = list(RankBatches(MixtureSchedule([len(sources[0].train)], [1.0], 0), 4, 0, 1, 0, 3))
    a = list(make_loader(ds, batches, num_workers=0))
    b = list(make_loader(ds, batches, num_workers=2))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["inputs"]["pixel_values"], y["inputs"]["pixel_values"])
        assert torch.equal(x["actions"], y["actions"]) and torch.equal(x["key"], y["key"])


class ThreadProbe:
    """Samples whose `key` carries the torch thread count of the process that made them."""

    def __init__(self, dataset: TrainingSamples) -> None:
        self.dataset, self.processor = dataset, dataset.processor

    def __getitem__(self, key):
        return {**self.dataset[key], "key": torch.tensor([torch.get_num_threads()] * 3)}


def test_loader_workers_compute_with_one_thread(sources, proc):
    """docs/architecture.md, Threads: a loader worker is a helper with one thread, whatever its parent uses."""
    batches = list(RankBatches(MixtureSchedule([len(sources[0].train)], [1.0], 0), 2, 0, 1, 0, 2))
    torch.set_num_threads(2)  # the trainer's share (tests/conftest.py puts it back)
    keys = [b["key"] for b in make_loader(ThreadProbe(samples(sources, proc)), batches, num_workers=1)]
    assert torch.get_num_threads() == 2 and len(keys) == 2 and all((k == 1).all() for k in keys)


def test_bad_stores_are_one_sentence_each(tmp_path):
    empty = tmp_path / "empty.zarr"
    StoreWriter(empty, make_spec(codec="png"), fsync=False).close()
    with pytest.raises(DataError, match="has no committed episodes"):
        open_sources(DataConfig(datasets=(str(empty),)), CAMS)
    one_cam = make_store(tmp_path / "one.zarr", lengths=(5,), cameras=("cam_high",))
    with pytest.raises(DataError, match="no camera 'cam_left_wrist' \\(it has: cam_high\\)"):
        open_sources(DataConfig(datasets=(str(one_cam),)), CAMS)
    with pytest.raises(DataError, match="no dataset given"):
        open_sources(DataConfig(), CAMS)
    with pytest.raises(DataError, match="missing.zarr"):
        open_sources(DataConfig(datasets=(str(tmp_path / "missing.zarr"),)), CAMS)
    with pytest.raises(ValueError, match="data.weights has 2 entries for 1 datasets"):
        DataConfig(datasets=("a",), weights=(1.0, 2.0))


def test_next_keyframe_is_the_next_gripper_switch_or_the_last_tick(sources, proc, store):
    from xr0.keyframes import next_keyframes
    from xr0.policy import from_xr0

    actions = np.ones((10, 14))
    actions[3:, 13] = 0.0  # the right gripper closes at tick 3 ...
    actions[7:, 6] = 0.2  # ... the left one at tick 7 (both below the half-open line)
    assert next_keyframes(actions).tolist() == [3, 3, 3, 7, 7, 7, 7, 9, 9, 9]
    assert next_keyframes(np.ones((4, 14))).tolist() == [3, 3, 3, 3]  # no switch: the last tick
    # a training sample's target is the normalised state at that tick, in the robot's 14 dims
    ds = TrainingSamples(sources, proc, CAMS, REL, H, "aloha", NO_AUGMENT, seed=0, keyframes=True)
    episode, t = sources[0].train.locate(2)
    reader = EpisodeStore(str(store))
    tick = next_keyframes(reader.get(episode, "action"))[t]
    expected = from_xr0(model_state(proc, "aloha", reader.get(episode, "observation.state", tick))[0])
    assert torch.equal(ds[(0, 2, 0)]["keyframe"], expected)
    assert "keyframe" not in samples(sources, proc)[(0, 2, 0)]


def test_augmentation_resizes_to_the_model_input_in_the_same_resampling_as_the_processor():
    from PIL import Image

    from xr0.augment import AugmentDraw, apply_augment

    image = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    cfg = AugmentConfig(crop_scale=0.9)
    plain = AugmentDraw(crop=None, brightness=None, contrast=None, saturation=None)
    # what deployment does; exact equality below compares the same PIL resampling of the same pixels
    want = np.asarray(Image.fromarray(image).resize((64, 48), Image.BICUBIC))
    assert np.array_equal(apply_augment(image, plain, cfg, (48, 64)), want)
    assert apply_augment(image, plain, cfg, (96, 128)) is image  # already the input size: untouched
    cropped = apply_augment(image, AugmentDraw((0.0, 1.0), None, None, None), cfg, (48, 64))
    right = np.asarray(Image.fromarray(image[:86, 13:]).resize((64, 48), Image.BICUBIC))  # the top-right 90 %
    # PIL resamples the box from the whole image (the filter reads a pixel or two past the box's edge)
    assert cropped.shape == (48, 64, 3) and np.abs(cropped.astype(int) - right).mean() < 8
    assert np.abs(cropped.astype(int) - want).mean() > 2 * np.abs(cropped.astype(int) - right).mean()


def test_uncropped_frames_are_kept_at_the_input_size_and_give_the_pixels_of_the_uncached_path(
    store, sources, proc
):
    from xr0.data import IMAGE_PREFIX, encode_views

    raw = EpisodeStore(store)
    ip = proc.image_processor
    colour = AugmentConfig(crop_scale=1.0, prob=1.0)
    cached = TrainingSamples(sources, proc, CAMS, REL, H, "aloha", colour, seed=0)
    for key in [(0, 5, 11), (0, 5, 12), (0, 5, -1), (0, 7, 3), (0, 5, 11)]:  # the last read is all cached
        episode, t = sources[0].split("train").locate(key[1])
        frames = [raw.get(episode, IMAGE_PREFIX + cam, t) for cam in CAMS]  # 24×32: the processor resizes
        if key[2] >= 0:  # what the sample was before the cache: resize and colour ops on the stored frame
            sizes = [(32, 32)] * len(CAMS)
            frames = augment_views(frames, colour, np.random.default_rng([0, 3, key[2]]), sizes, ip.resample)
        want = encode_views(proc, "transfer the cube", dict(zip(CAMS, frames, strict=True)), CAMS)
        # exact: the same PIL resize and colour ops on the same bytes in this process, then a table lookup
        assert torch.equal(cached[key]["inputs"]["pixel_values"], want["pixel_values"]), key
    assert len(cached._frames) == 2 * len(CAMS)  # two steps' frames, each kept once
    assert all(f.shape == (32, 32, 3) and not f.flags.writeable for f in cached._frames.values())
    # a random crop reads the stored frame whole (the crop and the resize are one resampling): nothing kept
    cropping = TrainingSamples(sources, proc, CAMS, REL, H, "aloha", AugmentConfig(crop_scale=0.9), seed=0)
    cropping[(0, 5, 11)]
    assert cropping._frames == {}
    # the budget bounds it: room for one frame
    small = TrainingSamples(sources, proc, CAMS, REL, H, "aloha", colour, seed=0, frame_cache_mb=3072 / 2**20)
    small[(0, 5, 11)], small[(0, 7, 3)]
    assert len(small._frames) == 1 and small._frame_bytes == 3072
