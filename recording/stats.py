"""Normalisation statistics, computed in one streaming pass over a store and stored with it.

Per dimension of every low-dimensional float array (state, velocity, effort, action, leader command):
mean, std, min, max and the 1st/99th percentiles. Quantiles come from per-dimension histograms whose
range grows with the data (memory stays bounded whatever the dataset size). Optionally also per
chunk-timestep statistics of *relative* actions — action[t+k] − state[t] for k = 0…H-1, padded by
repeating the episode's last action exactly as `EpisodeStore.window` does — for models that predict
action chunks relative to the current state and normalise each timestep separately (XR0 post-training).

`xr0 dataset stats` writes the result into the store's root attribute `stats`; `NormStats.from_dict`
turns one entry back into arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recording.reader import EpisodeStore
from recording.writer import StoreWriter, utc_now

QUANTILES = (0.01, 0.99)


class RunningStats:
    """Streaming per-dimension mean/std (Chan's merge), min/max and histogram quantiles."""

    def __init__(self, bins: int = 4096) -> None:
        self.bins = bins
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None
        self.counts: np.ndarray | None = None  # (D, bins)
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None

    def update(self, batch: np.ndarray) -> None:
        x = np.asarray(batch, dtype=np.float64)
        x = x.reshape(len(x), -1)
        if len(x) == 0:
            return
        if not np.isfinite(x).all():
            raise ValueError("statistics input contains NaN or infinite values")
        b_n, b_mean = len(x), x.mean(axis=0)
        b_m2 = ((x - b_mean) ** 2).sum(axis=0)
        b_min, b_max = x.min(axis=0), x.max(axis=0)
        if self.mean is None:
            self.n, self.mean, self.m2, self.min, self.max = b_n, b_mean, b_m2, b_min, b_max
            self.lo, self.hi = b_min.copy(), np.maximum(b_max, b_min + 1e-9)
            self.counts = np.zeros((x.shape[1], self.bins))
        else:
            n = self.n + b_n
            delta = b_mean - self.mean
            self.mean = self.mean + delta * b_n / n
            self.m2 = self.m2 + b_m2 + delta**2 * self.n * b_n / n
            self.n = n
            self.min, self.max = np.minimum(self.min, b_min), np.maximum(self.max, b_max)
            if (b_min < self.lo).any() or (b_max > self.hi).any():
                lo, hi = np.minimum(self.lo, b_min), np.maximum(self.hi, b_max)
                margin = 0.1 * (hi - lo)  # room to grow, so that re-binning (which blurs) stays rare
                self._rebin(np.where(lo < self.lo, lo - margin, lo), np.where(hi > self.hi, hi + margin, hi))
        self._histogram_add(x, np.ones(len(x)))

    def _bin_of(self, x: np.ndarray) -> np.ndarray:
        width = (self.hi - self.lo) / self.bins
        return np.clip(((x - self.lo) / width).astype(np.int64), 0, self.bins - 1)

    def _histogram_add(self, x: np.ndarray, weights: np.ndarray) -> None:
        d = x.shape[1]
        flat = self._bin_of(x) + np.arange(d) * self.bins
        w = np.broadcast_to(weights[:, None] if weights.ndim == 1 else weights, x.shape)
        self.counts += np.bincount(flat.ravel(), w.ravel(), minlength=d * self.bins).reshape(d, self.bins)

    def _rebin(self, lo: np.ndarray, hi: np.ndarray) -> None:
        old_lo, old_hi, old = self.lo, self.hi, self.counts
        centers = (
            old_lo[:, None] + (np.arange(self.bins) + 0.5)[None, :] * ((old_hi - old_lo) / self.bins)[:, None]
        )
        self.lo, self.hi = lo, np.maximum(hi, lo + 1e-9)
        self.counts = np.zeros_like(old)
        self._histogram_add(centers.T, old.T)

    def quantile(self, q: float) -> np.ndarray:
        cdf = np.cumsum(self.counts, axis=1)
        target = q * cdf[:, -1:]
        k = np.clip((cdf < target).sum(axis=1), 0, self.bins - 1)
        rows = np.arange(len(k))
        before = np.where(k > 0, cdf[rows, np.maximum(k - 1, 0)], 0.0)
        in_bin = np.maximum(self.counts[rows, k], 1e-12)
        frac = np.clip((target[:, 0] - before) / in_bin, 0.0, 1.0)
        width = (self.hi - self.lo) / self.bins
        value = self.lo + (k + frac) * width
        return np.clip(value, self.min, self.max)

    def result(self) -> dict[str, Any]:
        if self.mean is None:
            raise ValueError("no data was given to the statistics")
        std = np.sqrt(self.m2 / self.n)
        return {
            "count": int(self.n),
            "mean": self.mean.tolist(),
            "std": std.tolist(),
            "min": self.min.tolist(),
            "max": self.max.tolist(),
            "q01": self.quantile(QUANTILES[0]).tolist(),
            "q99": self.quantile(QUANTILES[1]).tolist(),
        }


@dataclass(frozen=True)
class NormStats:
    """One key's statistics as arrays (shape (D,), or (H, D) for per-timestep relative actions)."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    count: int

    @staticmethod
    def from_dict(d: dict[str, Any], shape: Sequence[int] | None = None) -> NormStats:
        def arr(name: str) -> np.ndarray:
            a = np.asarray(d[name], dtype=np.float64)
            return a.reshape(shape) if shape is not None else a

        return NormStats(
            arr("mean"), arr("std"), arr("min"), arr("max"), arr("q01"), arr("q99"), int(d["count"])
        )


def stat_keys(store: EpisodeStore) -> list[str]:
    """The low-dimensional float arrays statistics are computed for."""
    return [k for k, a in store.key_specs.items() if not a.image and a.dtype.startswith("float") and a.shape]


def relative_windows(actions: np.ndarray, states: np.ndarray, horizon: int) -> np.ndarray:
    """(T, horizon, D): action[min(t+k, T-1)] − state[t] — the padding rule of `EpisodeStore.window`."""
    t = len(actions)
    idx = np.minimum(np.arange(t)[:, None] + np.arange(horizon)[None, :], t - 1)
    return actions[idx] - states[:, None, :]


def compute_stats(
    store: EpisodeStore,
    keys: Sequence[str] | None = None,
    relative_horizon: int | None = 30,
    action_key: str = "action",
    state_key: str = "observation.state",
    episodes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """One pass over the committed episodes; returns the JSON-able dict stored in the root attributes."""
    keys = stat_keys(store) if keys is None else list(keys)
    chosen = store.episodes if episodes is None else list(episodes)
    if not chosen:
        raise ValueError(f"{store.path} has no committed episodes to compute statistics from")
    running = {k: RunningStats() for k in keys}
    relative = RunningStats() if relative_horizon else None
    steps = 0
    for ep in chosen:
        for k in keys:
            running[k].update(store.get(ep, k))
        if relative is not None:
            windows = relative_windows(store.get(ep, action_key), store.get(ep, state_key), relative_horizon)
            relative.update(windows.reshape(len(windows), -1))
        steps += store.length(ep)
    out: dict[str, Any] = {
        "computed_utc": utc_now(),
        "episodes": len(chosen),
        "steps": steps,
        "quantiles": list(QUANTILES),
        "keys": {k: r.result() for k, r in running.items()},
    }
    if relative is not None:
        out["relative_action"] = {
            "key": action_key,
            "relative_to": state_key,
            "horizon": int(relative_horizon),
            "shape": [int(relative_horizon), len(store.spec.joint_names)],
            **relative.result(),
        }
    return out


def write_stats(path: Any, stats: dict[str, Any]) -> None:
    """Store the statistics in the root attributes (atomically; takes the writer lock)."""
    with StoreWriter(path, allow_partial=True) as writer:
        writer.update_root({"stats": stats})
