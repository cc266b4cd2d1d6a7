"""Synthetic steps for store and recorder tests, and the checksum tests use to compare what was sent."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from drivers.joints import JOINT_NAMES
from recording.schema import StoreSpec

CAMS = {"cam_high": (24, 32, 3), "cam_left_wrist": (24, 32, 3)}


def make_spec(codec: str = "png", cameras: dict | None = None, **kw) -> StoreSpec:
    return StoreSpec(
        fps=30.0,
        joint_names=JOINT_NAMES,
        cameras=CAMS if cameras is None else cameras,
        robot_type="test",
        image_codec=codec,
        image_shard_steps=kw.pop("image_shard_steps", 8),
        numeric_chunk_steps=kw.pop("numeric_chunk_steps", 16),
        **kw,
    )


def make_step(spec: StoreSpec, t: int, rng: np.random.Generator, smooth: bool = False) -> dict:
    """One step with every key of `spec`; images are noise, or a smooth gradient (JPEG-friendly)."""
    step = {
        "timestamp_ns": 1_000_000_000 + t * 33_333_333,
        "tick": t,
        "lateness_ns": int(rng.integers(0, 100_000)),
        "observation.state": rng.normal(size=14),
        "observation.state.t_ns": t * 33_333_333,
        "action": rng.normal(size=14),
        "action.t_ns": t * 33_333_333 + 1000,
        "action.clamped": int(rng.integers(0, 3)),
        "action.rejected": bool(rng.integers(0, 2)),
    }
    if spec.velocity:
        step["observation.velocity"] = rng.normal(size=14)
    if spec.effort:
        step["observation.effort"] = rng.normal(size=14)
    if spec.leader:
        step["leader.action"] = rng.normal(size=14)
        step["leader.t_ns"] = t * 33_333_333 - 500
    for cam, shape in spec.cameras.items():
        if smooth:
            h, w, _ = shape
            yy, xx = np.mgrid[0:h, 0:w]
            img = np.stack([xx * 200 // w + t, yy * 255 // h, (xx + yy) * 255 // (h + w)], axis=-1).astype(
                np.uint8
            )
        else:
            img = rng.integers(0, 256, shape, dtype=np.uint8)
        step[f"observation.images.{cam}"] = img
        step[f"observation.images.{cam}.t_ns"] = t * 33_333_333 - 2000
        step[f"observation.images.{cam}.index"] = t
    return step


def stored_checksum(spec: StoreSpec, step: Mapping) -> str:
    """The checksum of a step after conversion to the store's dtypes (what reads back bit-identically)."""
    h = hashlib.sha256()
    for a in sorted(spec.arrays(), key=lambda a: a.key):
        h.update(a.key.encode())
        h.update(np.ascontiguousarray(np.asarray(step[a.key]), dtype=a.dtype).tobytes())
    return h.hexdigest()
