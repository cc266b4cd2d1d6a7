"""Reading an episode store: episodes, lengths, tasks, any array slice, and training samples.

`EpisodeStore(path)` lists the committed episodes (partial ones are reported, never read as data).
`get(episode, key, steps)` decodes only the chunks the steps fall in: one JPEG per image step, or one video
segment of an archived episode (`xr0 dataset compact`), kept decoded in a small cache for the steps after.
`SampleIndex` numbers every step of every committed episode 0…N-1 for a training sampler, and
`sample()` returns what one training example needs — images and state at t, actions t…t+H-1 — with one
read per array. Low-dimensional arrays are small, so whole episodes of them are cached (bounded by bytes).
`recorded_seeds(store)` lists the simulator seeds a store already holds (so that none is recorded twice and
no evaluation runs on one).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from recording.codecs import ImageCodec, read_shard_chunk, register_codecs
from recording.schema import (
    COMMITTED,
    EPISODES_GROUP,
    StoreError,
    StoreSpec,
    check_store,
    episode_attrs,
    episode_dirs,
    episode_name,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleIndex:
    """A flat index over all steps of the given episodes: i ↔ (episode, step)."""

    episodes: np.ndarray  # (E,) episode indices
    lengths: np.ndarray  # (E,) steps per episode
    starts: np.ndarray  # (E,) flat index of each episode's first step

    @staticmethod
    def build(episodes: Sequence[int], lengths: Sequence[int]) -> SampleIndex:
        lengths_arr = np.asarray(lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths_arr)[:-1]]).astype(np.int64)
        return SampleIndex(np.asarray(episodes, dtype=np.int64), lengths_arr, starts)

    def __len__(self) -> int:
        return int(self.lengths.sum())

    def locate(self, i: int) -> tuple[int, int]:
        """(episode, step) of flat index `i`."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} is out of range: the index has {n} steps")
        i = i % n
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        return int(self.episodes[k]), int(i - self.starts[k])


class EpisodeStore:
    """Read access to an xr0 episode store (safe while a recorder appends new episodes; call `refresh()`)."""

    def __init__(
        self, path: str | Path, numeric_cache_mb: float = 256.0, segment_cache_mb: float = 256.0
    ) -> None:
        register_codecs()
        self.path = Path(path)
        self.attrs = check_store(self.path)
        self.spec = StoreSpec.from_attrs(self.attrs, f"dataset {self.path}")
        self.key_specs = {a.key: a for a in self.spec.arrays()}
        self._root = zarr.open_group(self.path, mode="r")
        self._arrays: dict[tuple[int, str], zarr.Array] = {}
        self._cache: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = int(numeric_cache_mb * 2**20)
        # decoded video segments of archived episodes: reading step t decodes its whole segment once
        self._segments: OrderedDict[tuple[int, str, int], np.ndarray] = OrderedDict()
        self._segments_bytes = 0
        self._segments_limit = int(segment_cache_mb * 2**20)
        # live-tier image arrays read without zarr's pipeline: (array directory, shard steps, codec)
        self._shards: dict[tuple[int, str], tuple[Path, int, ImageCodec] | None] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-list the episodes (a recorder may have committed new ones)."""
        self._arrays.clear()  # an episode may have been rewritten meanwhile (`xr0 dataset compact`)
        self._shards.clear()
        self._info: dict[int, dict[str, Any]] = {}
        self.partial: list[int] = []
        for index, directory in episode_dirs(self.path).items():
            try:
                attrs = episode_attrs(directory)
            except StoreError:
                self.partial.append(index)
                continue
            if attrs.get("status") == COMMITTED:
                self._info[index] = attrs
            else:
                self.partial.append(index)
        self.episodes: list[int] = sorted(self._info)
        self.lengths = np.array([int(self._info[e]["length"]) for e in self.episodes], dtype=np.int64)
        self.sample_index = SampleIndex.build(self.episodes, self.lengths)

    # -- metadata ---------------------------------------------------------------------------------------------
    @property
    def fps(self) -> float:
        return self.spec.fps

    @property
    def keys(self) -> list[str]:
        return list(self.key_specs)

    @property
    def image_keys(self) -> list[str]:
        return [k for k, a in self.key_specs.items() if a.image]

    @property
    def tasks(self) -> list[str]:
        """The task instruction of each committed episode (aligned with `episodes`)."""
        return [str(self._info[e].get("task", "")) for e in self.episodes]

    @property
    def stats(self) -> dict[str, Any] | None:
        """Normalisation statistics stored by `xr0 dataset stats` (None if never computed)."""
        return self.attrs.get("stats")

    def info(self, episode: int) -> dict[str, Any]:
        """The attributes of a committed episode (task, success, fps, start time, length, …)."""
        self._check_episode(episode)
        return dict(self._info[episode])

    def length(self, episode: int) -> int:
        self._check_episode(episode)
        return int(self._info[episode]["length"])

    def __len__(self) -> int:
        return len(self.sample_index)

    def _check_episode(self, episode: int) -> None:
        if episode not in self._info:
            if episode in self.partial:
                raise StoreError(
                    f"episode {episode} of {self.path} is partial (an interrupted recording); "
                    f"run `xr0 dataset repair --dataset {self.path}` to recover or drop it"
                )
            raise StoreError(
                f"{self.path} has no episode {episode}; it has {len(self.episodes)} committed episode(s)"
                + (f" ({self.episodes[0]}…{self.episodes[-1]})" if self.episodes else "")
            )

    # -- data -------------------------------------------------------------------------------------------------
    def array(self, episode: int, key: str) -> zarr.Array:
        """The zarr array behind (episode, key), opened once."""
        self._check_episode(episode)
        if key not in self.key_specs:
            raise StoreError(f"{self.path} has no array {key!r}; its keys are {', '.join(self.key_specs)}")
        handle = self._arrays.get((episode, key))
        if handle is None:
            try:
                handle = self._root[f"{EPISODES_GROUP}/{episode_name(episode)}/{key}"]
            except (KeyError, FileNotFoundError, ValueError) as e:
                raise StoreError(f"{self.path}: episode {episode} has no readable array {key} ({e})") from e
            self._arrays[(episode, key)] = handle
        return handle

    def _read(self, episode: int, key: str, selection: Any) -> np.ndarray:
        arr = self.array(episode, key)
        try:
            return np.asarray(arr[selection])
        except (ValueError, RuntimeError, OSError, TypeError) as e:
            raise self._corrupted(episode, key, _describe(selection), e) from e

    def _corrupted(self, episode: int, key: str, steps: str, e: Exception) -> StoreError:
        return StoreError(
            f"{self.path}: episode {episode}, {key}, steps {steps}: the stored data is corrupted ({e}); "
            f"check with `xr0 dataset validate --dataset {self.path} --deep`"
        )

    def get(self, episode: int, key: str, steps: int | slice = slice(None)) -> np.ndarray:
        """Steps of one array of one episode, decoding only the chunks they fall in."""
        n = self.length(episode)
        if isinstance(steps, int | np.integer):
            if not -n <= steps < n:
                raise IndexError(f"step {steps} is out of range: episode {episode} has {n} steps")
            steps = int(steps) % n
        elif not isinstance(steps, slice):
            raise TypeError(f"steps must be an int or a slice, got {type(steps).__name__}")
        if self.key_specs.get(key) is not None and not self.key_specs[key].image:
            return np.array(self._numeric(episode, key)[steps])
        if isinstance(steps, int):
            return self._frame(episode, key, steps)
        return self._read(episode, key, steps)

    def _frame(self, episode: int, key: str, t: int) -> np.ndarray:
        """One image step. From an archived episode (several frames per chunk) the whole segment is
        decoded once and kept in a small LRU cache, so reading on through it costs no further decoding."""
        arr = self.array(episode, key)
        seg = int(arr.chunks[0])
        if seg == 1:
            direct = self._shard_layout(episode, key, arr)
            return (
                self._read(episode, key, t) if direct is None else self._shard_frame(episode, key, t, *direct)
            )
        c = t // seg
        cached = self._segments.get((episode, key, c))
        if cached is None:
            cached = self._read(episode, key, slice(c * seg, min((c + 1) * seg, arr.shape[0])))
            cached.setflags(write=False)
            self._segments[(episode, key, c)] = cached
            self._segments_bytes += cached.nbytes
            while self._segments_bytes > self._segments_limit and len(self._segments) > 1:
                _, old = self._segments.popitem(last=False)
                self._segments_bytes -= old.nbytes
        else:
            self._segments.move_to_end((episode, key, c))
        return np.array(cached[t - c * seg])

    def _shard_layout(self, episode: int, key: str, arr: zarr.Array) -> tuple[Path, int, ImageCodec] | None:
        """How to read one frame of a live-tier image array straight from its shard files (the layout the
        recorder writes: one-frame chunks of an image codec + crc32c in shards indexed at the end, in a local
        directory), or None to read through zarr."""
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
        from zarr.codecs.sharding import ShardingCodecIndexLocation
        from zarr.storage import LocalStore

        known = self._shards.get((episode, key), False)
        if known is not False:
            return known
        layout = None
        codecs = arr.metadata.codecs
        store = self._root.store
        if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec) and isinstance(store, LocalStore):
            c = codecs[0]
            if (
                [type(x) for x in c.codecs] == [type(c.codecs[0]), Crc32cCodec]
                and isinstance(c.codecs[0], ImageCodec)
                and [type(x) for x in c.index_codecs] == [BytesCodec, Crc32cCodec]
                and getattr(c.index_codecs[0].endian, "value", None) == "little"
                and c.index_location == ShardingCodecIndexLocation.end
                and tuple(c.chunk_shape) == (1, *arr.shape[1:])
                and tuple(arr.shards[1:]) == tuple(arr.shape[1:])
                and arr.metadata.chunk_key_encoding.to_dict()
                == {"name": "default", "configuration": {"separator": "/"}}
            ):
                layout = (Path(store.root) / arr.path, int(arr.shards[0]), c.codecs[0])
        self._shards[(episode, key)] = layout
        return layout

    def _shard_frame(
        self, episode: int, key: str, t: int, array_dir: Path, shard_steps: int, codec: ImageCodec
    ) -> np.ndarray:
        shape = tuple(self.array(episode, key).shape[1:])
        try:
            data = read_shard_chunk(array_dir, t, shard_steps, 1 + len(shape))
            image = np.zeros(shape, np.uint8) if data is None else codec.decode_image(data)
        except (ValueError, RuntimeError, OSError) as e:
            raise self._corrupted(episode, key, str(t), e) from e
        if image.shape != shape:
            raise StoreError(
                f"{self.path}: episode {episode}, {key}, step {t}: decoded a {image.shape} image where "
                f"{shape} was stored; check with `xr0 dataset validate --dataset {self.path} --deep`"
            )
        return image

    def storage(self, episode: int) -> dict[str, Any]:
        """How an episode's images are stored: {"tier": "live", codec…} or the archive tier's record."""
        info = self.info(episode)
        stored = info.get("storage")
        if isinstance(stored, dict) and stored.get("tier") == "archive":
            return stored
        return {
            "tier": "live",
            "codec": {"name": self.spec.image_codec, "jpeg_quality": self.spec.jpeg_quality},
        }

    def _numeric(self, episode: int, key: str) -> np.ndarray:
        """A whole low-dimensional array (a few kB per episode second), from an LRU cache bounded in bytes."""
        cached = self._cache.get((episode, key))
        if cached is not None:
            self._cache.move_to_end((episode, key))
            return cached
        data = self._read(episode, key, slice(0, self.length(episode)))
        data.setflags(write=False)
        self._cache[(episode, key)] = data
        self._cache_bytes += data.nbytes
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes
        return data

    def window(self, episode: int, key: str, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Steps start…start+length-1 of a low-dimensional array; steps past the end repeat the last one.

        Returns (values, is_pad) where is_pad marks the repeated steps. Training samplers and the
        per-timestep statistics use this same padding rule."""
        data = self._numeric(episode, key)
        n = len(data)
        if not 0 <= start < n:
            raise IndexError(f"window start {start} is out of range: episode {episode} has {n} steps")
        idx = np.arange(start, start + length)
        is_pad = idx >= n
        return data[np.minimum(idx, n - 1)], is_pad

    def sample(
        self,
        i: int,
        horizon: int = 30,
        image_keys: Sequence[str] | None = None,
        state_key: str = "observation.state",
        action_key: str = "action",
    ) -> dict[str, Any]:
        """One training example for flat index `i`: images and state at t, actions t…t+horizon-1."""
        episode, t = self.sample_index.locate(i)
        out: dict[str, Any] = {"episode": episode, "step": t, "task": self._info[episode].get("task", "")}
        for key in self.image_keys if image_keys is None else image_keys:
            out[key] = self._frame(episode, key, t)
        out[state_key] = np.array(self._numeric(episode, state_key)[t])
        out[action_key], out[f"{action_key}_is_pad"] = self.window(episode, action_key, t, horizon)
        return out


def recorded_seeds(store: EpisodeStore | str | Path) -> set[int]:
    """The simulator seeds of a store's episodes (the `seed` episode attribute), committed or partial —
    a partial episode's seed was used too. Episodes recorded on hardware have none."""
    path = store.path if isinstance(store, EpisodeStore) else Path(store)
    check_store(path)
    seeds = set()
    for directory in episode_dirs(path).values():
        try:
            seed = episode_attrs(directory).get("seed")
        except StoreError:
            continue  # an episode cut off before its attributes were written: no seed to read
        if isinstance(seed, int) and not isinstance(seed, bool):
            seeds.add(seed)
    return seeds


def _describe(selection: Any) -> str:
    if isinstance(selection, slice):
        start = 0 if selection.start is None else selection.start
        return f"{start}…{'end' if selection.stop is None else selection.stop - 1}"
    return str(selection)
