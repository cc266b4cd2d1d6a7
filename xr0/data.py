"""The XR0 training data pipeline over episode stores (`recording.reader.EpisodeStore`, read API only).

One sample per recorded step t: the configured camera views at t, the state at t, the episode's
instruction and the T-step action window t…t+T−1. Windows that run past the episode's end are padded
with the last action (the store's `window` rule) and those rows are **masked out of the loss** (`valid`
is 0 there): every step — including the last second of an episode — is a training sample, and no made-up
target is ever trained. (The official code keeps only steps with a full window; on 10-second episodes
that drops a tenth of the data, the part where the arm settles.)

The transform chain is the one `XR0Policy` runs at inference, built from the same functions
(`VIEW_LABELS`, `XR0Processor.encode`, `to_xr0`, `robot_to_model_actions`, `normalize_action`;
tests/xr0/test_data.py checks that a training sample decodes to exactly what the policy returns):
views → labelled prompt → processor (resize to the checkpoint's pixel budget, patches); state → 32-wide
layout, raw; actions → joints relative to the state at t, grippers absolute → 32-wide layout →
per-timestep normalisation with statistics computed here from the training episodes and saved in the
checkpoint (`action_config[robot_type]`, shape (T, 32), std 0 on unused dims).

Sampling is a pure function of the run seed and the global sample number g (step × global batch +
position), so the order, the augmentation and the split across ranks never depend on worker count,
world size or a resume. Several stores are mixed with weights: each "epoch" of Σ N_k draws gives store k
a share proportional to its weight, taken from its own stream of permutations.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recording.reader import EpisodeStore, SampleIndex
from recording.schema import StoreError
from xr0.augment import AugmentConfig, augment_views, drops_state, noisy_state
from xr0.images import model_input_image, processed_size
from xr0.keyframes import next_keyframes
from xr0.policy import (
    PRIVILEGED_DIMS,
    STATE_DIM,
    VIEW_LABELS,
    XR0_INDEX,
    from_xr0,
    robot_to_model_actions,
    state_vector,
)
from xr0.processor import XR0Processor
from xr0.train_config import DataConfig

log = logging.getLogger(__name__)

STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."
# Smallest std of an active robot dim: a joint that never moves in the data must stay active (std > 1e-5
# is what marks a dim active in the checkpoint), and its normalised values stay O(1).
STD_FLOOR = 1e-3


class DataError(ValueError):
    """A dataset cannot be used for training; the message names the store and what is wrong."""


# -- the transform chain (shared with XR0Policy.infer) ------------------------------------------------------
def encode_views(
    processor: XR0Processor, instruction: str, images: Mapping[str, np.ndarray], cameras: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The prompt inputs for one observation: each camera as its labelled view, in `cameras` order."""
    return processor.encode(instruction, [(VIEW_LABELS[cam], images[cam]) for cam in cameras])


def model_state(
    processor: XR0Processor,
    robot_type: str,
    state: np.ndarray,
    privileged: Mapping[str, np.ndarray] | None = None,
) -> torch.Tensor:
    """(14,) robot state → (1, 32) model state, with a diagnostic model's privileged inputs in their unused
    dims (`state_vector`), normalised when the checkpoint has state statistics — as XR0Policy.infer."""
    raw = state_vector(state, privileged)
    return torch.as_tensor(processor.normalize_state(raw, robot_type), dtype=torch.float32)[None]


def model_targets(
    processor: XR0Processor, robot_type: str, actions: np.ndarray, state: np.ndarray, relative: np.ndarray
) -> torch.Tensor:
    """(T, 14) absolute actions and the (14,) state at the window start → (T, 32) normalised targets."""
    raw = robot_to_model_actions(np.asarray(actions, np.float64), np.asarray(state, np.float64), relative)
    return processor.normalize_action(torch.as_tensor(raw[None]), robot_type)[0]


def action_statistics(windows: Sequence[tuple[np.ndarray, np.ndarray]], horizon: int, relative: np.ndarray):
    """Per-timestep mean and std (T, 32) of the model's raw targets over every valid window row.

    `windows`: (actions (n, 14), states (n, 14)) per episode. Unused dims get mean 0 and std 0 (masked);
    active dims get at least `STD_FLOOR`. Returns {"mean", "std"} as float32 arrays and the row count.
    """
    total = np.zeros((horizon, 32))
    total_sq = np.zeros((horizon, 32))
    count = np.zeros((horizon, 1))
    for actions, states in windows:
        n = len(actions)
        steps = np.arange(n)[:, None] + np.arange(horizon)[None, :]  # (n, T)
        valid = steps < n
        raw = robot_to_model_actions(actions[np.minimum(steps, n - 1)], states, relative)  # (n, T, 32)
        raw = raw * valid[..., None]
        total += raw.sum(0)
        total_sq += (raw**2).sum(0)
        count += valid.sum(0)[:, None]
    if count.min() == 0:
        raise DataError("no training window reaches the last chunk step; the episodes are empty")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    active = np.zeros(32, dtype=bool)
    active[list(XR0_INDEX)] = True
    mean = np.where(active, mean, 0.0)
    std = np.where(active, np.maximum(std, STD_FLOOR), 0.0)
    return {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}, int(count[0, 0])


def state_statistics(
    episodes: Sequence[tuple[np.ndarray, Mapping[str, np.ndarray]]],
) -> dict[str, np.ndarray]:
    """Mean and std (32,) of the raw model state (`state_vector`) over every row of the training episodes.

    `episodes`: (states (n, 14), privileged inputs) per episode. Dims no row ever fills get mean 0 and std 0
    (the model reads 0 there); the others get at least `STD_FLOOR`. Returned as float32
    {"state_mean", "state_std"}, for `action_config[robot_type]`."""
    total, total_sq, count = np.zeros(32), np.zeros(32), 0
    filled = np.zeros(32, dtype=bool)
    for states, privileged in episodes:
        rows = np.stack([state_vector(s, privileged) for s in np.asarray(states, np.float64)])
        total += rows.sum(0)
        total_sq += (rows**2).sum(0)
        count += len(rows)
        filled[list(XR0_INDEX)] = True
        for name in privileged:
            filled[list(PRIVILEGED_DIMS[name])] = True
    if count == 0:
        raise DataError("no training rows to compute the state statistics from; the episodes are empty")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    mean = np.where(filled, mean, 0.0)
    std = np.where(filled, np.maximum(std, STD_FLOOR), 0.0)
    return {"state_mean": mean.astype(np.float32), "state_std": std.astype(np.float32)}


# -- stores, splits ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One store with its train/held-out episodes."""

    path: str
    weight: float
    train: SampleIndex
    val: SampleIndex
    draw: SampleIndex | None = None  # what training draws from: `train` with the episodes' starts repeated

    def split(self, name: str) -> SampleIndex:
        if name == "draw":
            return self.draw if self.draw is not None else self.train
        return self.train if name == "train" else self.val


# Decoded video segments a training reader keeps (archived stores): a segment-local window's segments of
# every camera (8 segments × 3 views of 1 s at 640×480 ≈ 660 MB; per loader worker).
TRAINING_SEGMENT_CACHE_MB = 1024.0
# Frames a training reader keeps decoded at the model's input size when the samples are not randomly
# cropped (the resize is then the same every time): the default demo's ~8600 frames at 160×128 are ~530 MB,
# and a sample whose frame is in costs ~0.7 ms instead of ~2.1 (a JPEG decode and a bicubic resize of a
# 320×240 frame). Per loader worker; when it is full, later frames are decoded every time.
TRAINING_FRAME_CACHE_MB = 1024.0


def open_store(path: str, segment_cache_mb: float = 256.0) -> EpisodeStore:
    try:
        return EpisodeStore(path, segment_cache_mb=segment_cache_mb)
    except StoreError as e:
        message = str(e)
        raise DataError(message if str(path) in message else f"dataset {path}: {message}") from e


def open_sources(config: DataConfig, cameras: Sequence[str]) -> list[Source]:
    """Check every store (episodes, cameras, state/action arrays) and split off the held-out episodes."""
    if not config.datasets:
        raise DataError("no dataset given: pass --dataset PATH (a store recorded by `xr0 record`)")
    weights = config.weights or (1.0,) * len(config.datasets)
    sources = []
    for path, weight in zip(config.datasets, weights, strict=True):
        store = open_store(path)
        if not store.episodes:
            partial = f" ({len(store.partial)} partial; `xr0 dataset repair {path}`)" if store.partial else ""
            raise DataError(
                f"dataset {path} has no committed episodes{partial}; record some with `xr0 record`"
            )
        have = sorted(k.removeprefix(IMAGE_PREFIX) for k in store.image_keys)
        for cam in cameras:
            if IMAGE_PREFIX + cam not in store.key_specs:
                raise DataError(
                    f"dataset {path} has no camera {cam!r} (it has: {', '.join(have) or 'none'}); "
                    "train with --cameras naming cameras it has"
                )
        for key in (STATE_KEY, ACTION_KEY):
            spec = store.key_specs.get(key)
            if spec is None or spec.shape != (STATE_DIM,):
                raise DataError(
                    f"dataset {path} has no {STATE_DIM}-wide {key!r} array; it is not a bimanual store"
                )
        for ep, task in zip(store.episodes, store.tasks, strict=True):
            if not task.strip():
                raise DataError(f"dataset {path}: episode {ep} has no task instruction")
            for name in config.privileged:
                if name not in store.info(ep):
                    raise DataError(
                        f"dataset {path}: episode {ep} has no {name!r} (the privileged diagnostic needs "
                        "episodes recorded in the simulator by this version of `xr0 record`)"
                    )
        episodes, lengths = list(store.episodes), [int(n) for n in store.lengths]
        n_val = config.val_episodes if len(episodes) > config.val_episodes else 0
        if config.val_episodes and not n_val:
            log.warning("dataset %s has %d episode(s): none held out for evaluation", path, len(episodes))
        cut = len(episodes) - n_val
        train_eps, train_lengths = episodes[:cut], lengths[:cut]
        draw = None
        if config.start_repeat and config.start_steps:
            starts = [min(config.start_steps, n) for n in train_lengths]
            draw = SampleIndex.build(
                train_eps * (1 + config.start_repeat), train_lengths + starts * config.start_repeat
            )
        sources.append(
            Source(
                path=path,
                weight=float(weight),
                train=SampleIndex.build(train_eps, train_lengths),
                val=SampleIndex.build(episodes[cut:], lengths[cut:]),
                draw=draw,
            )
        )
    return sources


def source_windows(sources: Sequence[Source]):
    """(actions, states) of every training episode, for the statistics."""
    for source in sources:
        store = open_store(source.path)
        for ep in source.train.episodes.tolist():
            yield store.get(ep, ACTION_KEY), store.get(ep, STATE_KEY)


def source_states(sources: Sequence[Source], privileged: Sequence[str] = ()):
    """(states, privileged inputs) of every training episode, for the state statistics."""
    for source in sources:
        store = open_store(source.path)
        for ep in source.train.episodes.tolist():
            info = store.info(ep)
            yield store.get(ep, STATE_KEY), {name: np.asarray(info[name], np.float64) for name in privileged}


# -- sampling ---------------------------------------------------------------------------------------------
def segment_groups(index: SampleIndex, segments: dict[int, int]) -> np.ndarray:
    """For every flat index of `index`, the id of the video segment its step falls in (episode e's steps
    in segments of `segments[e]` steps; 1 = per-frame storage, every step its own group). Repeated
    episodes (start emphasis) share their segments' ids."""
    parts = []
    for episode, length in zip(index.episodes.tolist(), index.lengths.tolist(), strict=True):
        seg = max(1, int(segments.get(episode, 1)))
        parts.append(episode * (1 << 32) + np.arange(length, dtype=np.int64) // seg)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def segment_order(sources: Sequence[Source], window: int) -> tuple[list[np.ndarray] | None, int]:
    """`MixtureSchedule`'s segment groups and window for `data.segment_window` (-1: auto)."""
    segments = []
    for source in sources:
        store = open_store(source.path)
        segments.append(
            {e: int(store.storage(e).get("codec", {}).get("segment_steps", 1)) for e in store.episodes}
        )
    longest = max((max(s.values(), default=1) for s in segments), default=1)
    if window == -1:
        window = 8 * longest if longest > 1 else 0
    if window <= 0:
        return None, 0
    return [segment_groups(s.split("draw"), seg) for s, seg in zip(sources, segments, strict=True)], window


class MixtureSchedule:
    """Global sample number g → (source k, index i within its training split), from the seed alone.

    Epoch e has E = Σ N_k draws: store k gets a share of E proportional to its weight (largest
    remainder, at least one), taken from its own endless stream of seeded permutations, and the epoch's
    draws are shuffled together.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        seed: int,
        groups: Sequence[np.ndarray] | None = None,
        window: int = 0,
    ) -> None:
        self.sizes = [int(n) for n in sizes]
        # Segment-local order (archived stores): `groups[k][i]` is the video segment of source k's index i.
        # Each source's permutation then visits whole segments in random order, and the epoch's draws are
        # shuffled only within windows of `window` draws — every index still once per cycle, but the
        # steps of one segment are drawn close together, so a segment is decoded once for many samples.
        self.groups = None if groups is None or window <= 0 else [np.asarray(g) for g in groups]
        self.window = int(window)
        if not self.sizes or min(self.sizes) < 1:
            raise DataError("every dataset needs at least one training sample")
        self.seed = seed
        total = sum(self.sizes)
        share = np.asarray(weights, dtype=np.float64) / float(np.sum(weights)) * total
        quotas = np.maximum(np.floor(share).astype(np.int64), 1)
        for k in np.argsort(-(share - np.floor(share)))[: max(0, total - int(quotas.sum()))]:
            quotas[k] += 1
        self.quotas = quotas.tolist()
        self.epoch_length = int(quotas.sum())
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _perm(self, k: int, cycle: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, k, cycle])
        if self.groups is None:
            return rng.permutation(self.sizes[k])
        ids, inverse = np.unique(self.groups[k], return_inverse=True)
        rank = rng.permutation(len(ids))[inverse]  # a random order of segments …
        return np.lexsort((rng.random(self.sizes[k]), rank))  # … each segment's steps shuffled inside it

    def _order(self, e: int, src: np.ndarray) -> np.ndarray:
        """How the sources' draws of epoch e are merged: a full shuffle, or (segment-local) an interleave
        that keeps each source's order, shuffled within windows."""
        rng = np.random.default_rng([self.seed, 2, e])
        if self.groups is None:
            return rng.permutation(self.epoch_length)
        position = np.empty(self.epoch_length, dtype=np.float64)
        for k, q in enumerate(self.quotas):
            sel = np.flatnonzero(src == k)
            position[sel] = (np.arange(q) + rng.random(q)) / q
        order = np.argsort(position, kind="stable")
        for start in range(0, self.epoch_length, self.window):
            order[start : start + self.window] = rng.permutation(order[start : start + self.window])
        return order

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        cached = self._epochs.get(e)
        if cached is not None:
            return cached
        src, idx = [], []
        for k, (n, q) in enumerate(zip(self.sizes, self.quotas, strict=True)):
            draws = e * q + np.arange(q)
            cycles, pos = draws // n, draws % n
            picked = np.empty(q, dtype=np.int64)
            for c in np.unique(cycles):
                sel = cycles == c
                picked[sel] = self._perm(k, int(c))[pos[sel]]
            idx.append(picked)
            src.append(np.full(q, k, dtype=np.int64))
        all_src = np.concatenate(src)
        order = self._order(e, all_src)
        result = (all_src[order], np.concatenate(idx)[order])
        self._epochs[e] = result
        while len(self._epochs) > 2:
            self._epochs.popitem(last=False)
        return result

    def __getitem__(self, g: int) -> tuple[int, int]:
        src, idx = self.epoch(g // self.epoch_length)
        p = g % self.epoch_length
        return int(src[p]), int(idx[p])


class RankBatches(torch.utils.data.Sampler):
    """This rank's part of each global batch, for steps start…stop−1: keys (source, index, g)."""

    def __init__(
        self, schedule: MixtureSchedule, global_batch: int, rank: int, world: int, start: int, stop: int
    ):
        self.schedule, self.global_batch = schedule, global_batch
        self.local = global_batch // world
        self.rank, self.start, self.stop = rank, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            first = step * self.global_batch + self.rank * self.local
            yield [(*self.schedule[g], g) for g in range(first, first + self.local)]


# -- samples ----------------------------------------------------------------------------------------------
class TrainingSamples(torch.utils.data.Dataset):
    """Keys (source, index, g) → one encoded sample. g ≥ 0 seeds the augmentation; g < 0: no augmentation.

    Stores are opened lazily in whichever process reads (each loader worker opens its own)."""

    def __init__(
        self,
        sources: Sequence[Source],
        processor: XR0Processor,
        cameras: Sequence[str],
        relative: np.ndarray,
        horizon: int,
        robot_type: str,
        augment: AugmentConfig,
        seed: int,
        split: str = "train",
        privileged: Sequence[str] = (),
        keyframes: bool = False,
        frame_cache_mb: float = TRAINING_FRAME_CACHE_MB,
    ) -> None:
        self.sources = list(sources)
        self.privileged = tuple(privileged)
        # add "keyframe": the normalised state at the next keyframe (xr0.keyframes)
        self.keyframes = keyframes
        self._episode_keyframes: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.processor = processor
        self.cameras = tuple(cameras)
        self.relative = np.asarray(relative, dtype=bool)
        self.horizon, self.robot_type = horizon, robot_type
        self.augment, self.seed, self.split = augment, seed, split
        self._stores: dict[int, EpisodeStore] = {}
        self._pid = os.getpid()
        self.frame_cache_bytes = int(frame_cache_mb * 2**20)
        self._frames: dict[tuple[int, int, int, str], np.ndarray] = {}
        self._frame_bytes = 0

    def _store(self, k: int) -> EpisodeStore:
        if self._pid != os.getpid():  # a forked worker: zarr handles are not shared across processes
            self._stores, self._episode_keyframes, self._pid = {}, {}, os.getpid()
            self._frames, self._frame_bytes = {}, 0
        if k not in self._stores:
            self._stores[k] = open_store(self.sources[k].path, TRAINING_SEGMENT_CACHE_MB)
        return self._stores[k]

    def __len__(self) -> int:
        return sum(len(s.split(self.split)) for s in self.sources)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        k, i, g = key
        store = self._store(k)
        episode, t = self.sources[k].split(self.split).locate(i)
        ip = self.processor.image_processor
        crops = g >= 0 and self.augment.enabled and self.augment.crop_scale < 1
        if crops:
            images = [store.get(episode, IMAGE_PREFIX + cam, t) for cam in self.cameras]
            sizes = [processed_size(ip, *image.shape[:2]) for image in images]
        else:  # no crop: each frame at the model's input size, kept once made (the same pixels either way)
            images = [self._frame(k, store, episode, t, cam) for cam in self.cameras]
            sizes = [image.shape[:2] for image in images]
        if g >= 0:  # crop and resize to the model's input size in one go, then the colour ops
            rng = np.random.default_rng([self.seed, 3, g])
            images = augment_views(images, self.augment, rng, sizes, ip.resample)
        state = store.get(episode, STATE_KEY, t)
        actions, is_pad = store.window(episode, ACTION_KEY, t, self.horizon)
        info = store.info(episode)
        task = info["task"]
        seen = noisy_state(state, self.augment, np.random.default_rng([self.seed, 4, g])) if g >= 0 else state
        privileged = {name: np.asarray(info[name], np.float64) for name in self.privileged}
        model_in = model_state(self.processor, self.robot_type, seen, privileged)  # (1, 32)
        if g >= 0 and drops_state(self.augment, np.random.default_rng([self.seed, 5, g])):
            model_in = torch.zeros_like(model_in)  # the training mean of a normalised state
        return {
            "inputs": encode_views(
                self.processor, task, dict(zip(self.cameras, images, strict=True)), self.cameras
            ),
            "state": model_in,
            "actions": model_targets(self.processor, self.robot_type, actions, state, self.relative).float(),
            "valid": torch.as_tensor(~is_pad, dtype=torch.float32),  # (T,)
            "robot_state": torch.as_tensor(state, dtype=torch.float64),  # (14,) for the open-loop error
            "robot_actions": torch.as_tensor(actions, dtype=torch.float64),  # (T, 14)
            "key": torch.tensor([k, i, g]),
        } | ({"keyframe": self._keyframe(k, store, episode, t)} if self.keyframes else {})

    def _frame(self, k: int, store: EpisodeStore, episode: int, t: int, cam: str) -> np.ndarray:
        """One camera frame resized to the model's input size as the image processor resizes it (bicubic, a
        multiple of 32 pixels within its budget) — from the frame cache when it was made before."""
        key = (k, episode, t, cam)
        image = self._frames.get(key)
        if image is not None:
            return image
        image = model_input_image(self.processor.image_processor, store.get(episode, IMAGE_PREFIX + cam, t))
        if self._frame_bytes + image.nbytes <= self.frame_cache_bytes:
            image.flags.writeable = False  # shared by every later sample of this frame
            self._frames[key] = image
            self._frame_bytes += image.nbytes
        return image

    def _keyframe(self, k: int, store: EpisodeStore, episode: int, t: int) -> torch.Tensor:
        """(14,) the model's normalised state at step t's next keyframe (robot dims, no privileged inputs)."""
        cached = self._episode_keyframes.get((k, episode))
        if cached is None:
            cached = next_keyframes(store.get(episode, ACTION_KEY)), store.get(episode, STATE_KEY)
            self._episode_keyframes[(k, episode)] = cached
        ticks, states = cached
        return from_xr0(model_state(self.processor, self.robot_type, states[ticks[t]])[0])


class Collate:
    """Batch samples: the processor pads the prompts; the rest is stacked."""

    def __init__(self, processor: XR0Processor) -> None:
        self.processor = processor

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = {"inputs": self.processor.collate([s["inputs"] for s in samples])}
        for name in ("state", "actions", "valid", "robot_state", "robot_actions", "key", "keyframe"):
            if name in samples[0]:
                batch[name] = torch.stack([s[name] for s in samples])
        return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the processor's tensor ops; the loader's parallelism is the workers


def make_loader(
    dataset: TrainingSamples, batches, num_workers: int, prefetch_factor: int = 2, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """A loader over `batches` (lists of keys, e.g. `RankBatches`), with worker processes when asked
    (`pin_memory` for fast copies to a GPU)."""
    kwargs: dict[str, Any] = {}
    if num_workers:
        kwargs = {
            "num_workers": num_workers,
            "prefetch_factor": prefetch_factor,
            "worker_init_fn": _worker_init,
            "persistent_workers": False,
        }
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=Collate(dataset.processor), pin_memory=pin_memory, **kwargs
    )


def start_keys(sources: Sequence[Source], split: str, count: int) -> list[tuple[int, int, int]]:
    """The first step of up to `count` episodes of a split (for `vision_dependence`)."""
    out = [(k, int(i), -1) for k, s in enumerate(sources) for i in s.split(split).starts]
    return out[:count]


def eval_keys(sources: Sequence[Source], split: str, count: int) -> list[tuple[int, int, int]]:
    """`count` samples spread evenly over a split's steps (deterministic; no augmentation)."""
    flat = [(k, i) for k, s in enumerate(sources) for i in range(len(s.split(split)))]
    if not flat or not count:
        return []
    picks = np.linspace(0, len(flat) - 1, num=min(count, len(flat))).round().astype(int)
    return [(*flat[p], -1) for p in picks]
