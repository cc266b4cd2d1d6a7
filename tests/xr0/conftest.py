"""Shared fixtures: one tiny XR0 model and processor for the whole tests/xr0 session (built in ~0.1 s)."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from xr0.config import variant
from xr0.model import create_model
from xr0.policy import XR0_INDEX
from xr0.processor import XR0Processor

T = 16  # chunk length of the test robot type


def aloha_stats(T: int = T, seed: int = 0) -> dict:
    """Per-timestep statistics active on the 14 bimanual dims only."""
    rng = np.random.default_rng(seed)
    mean = np.zeros((T, 32), np.float32)
    std = np.zeros((T, 32), np.float32)
    idx = list(XR0_INDEX)
    mean[:, idx] = rng.normal(0, 0.1, (T, 14))
    std[:, idx] = rng.uniform(0.05, 0.5, (T, 14))
    return {"mean": mean.tolist(), "std": std.tolist()}


def libero_stats() -> dict:
    """Like the LIBERO release: (10, 32), rows identical, the first 7 dims active."""
    mean = np.zeros((10, 32), np.float32)
    std = np.zeros((10, 32), np.float32)
    mean[:, :7] = np.linspace(-0.1, 0.1, 7)
    std[:, :7] = 0.3
    return {"mean": mean.tolist(), "std": std.tolist()}


def with_config(model, **changes):
    """The same weights under other switches (mask mode, offset): a shallow copy with a new config."""
    other = copy.copy(model)
    other.config = replace(model.config, **changes)
    return other


@pytest.fixture(scope="session")
def model():
    return create_model(variant("tiny"), seed=0).eval()


@pytest.fixture(scope="session")
def processor():
    return XR0Processor.build({"aloha": aloha_stats(), "libero_all": libero_stats()})


def make_images(seed: int = 0, sizes=((64, 96), (64, 64), (64, 64))) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.fixture(scope="session")
def inputs(processor):
    labels = ("Ego View", "Left-Wrist View", "Right-Wrist View")
    return processor.encode(
        "transfer the cube to the other arm", list(zip(labels, make_images(), strict=True))
    )


@pytest.fixture(scope="session")
def context(model, inputs):
    with torch.no_grad():
        return model.encode(inputs)
