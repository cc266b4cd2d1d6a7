"""Camera images → the vision tower's patches, as Qwen's image processor computes them, several times faster.

transformers' (PIL-backend) Qwen2-VL image processor resizes each view to a multiple of 32 pixels within the
pixel budget (bicubic, a no-op when the size already fits), rescales by 1/255 in float64, casts to float32,
normalises per channel in float32, and cuts 16×16 patches in merge-block order, each repeated over the 2
temporal slots. Every step after the resize is a function of one uint8 value and its channel, so
`image_patches` computes it once per value (a 3 × 256 table, by exactly those operations) and then only
gathers and reorders bytes: the output equals the processor's bit for bit (tests/xr0/test_processor.py
compares them) at a fraction of the CPU time — which matters at 30 Hz, where three views through the
processor cost ~10 ms of a ~40 ms chunk on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize


@lru_cache(maxsize=8)
def _table(scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(C, 256) float32: the processor's value for each uint8 value of each channel."""
    values = np.arange(256, dtype=np.uint8).astype(np.float64) * scale  # rescale: float64, then float32
    values = values.astype(np.float32)
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return ((values[None, :] - m[:, None]) / s[:, None]).astype(np.float32)  # normalise in float32


def processed_size(image_processor, height: int, width: int) -> tuple[int, int]:
    """(height, width) the image processor resizes an image of this size to (a multiple of 32 pixels within
    its pixel budget; unchanged when it does not resize)."""
    ip = image_processor
    if not ip.do_resize:
        return height, width
    size = ip.size
    return smart_resize(
        height,
        width,
        factor=ip.patch_size * ip.merge_size,
        min_pixels=size["shortest_edge"],
        max_pixels=size["longest_edge"],
    )


def model_input_image(image_processor, image: np.ndarray) -> np.ndarray:
    """An H×W×3 uint8 view at the size the image processor resizes it to, by its resampling (the view
    itself when it already has that size)."""
    h, w = image.shape[:2]
    rh, rw = processed_size(image_processor, h, w)
    if (rh, rw) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((rw, rh), resample=image_processor.resample))


def image_patches(image_processor, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """H×W×3 uint8 views → (`pixel_values` (N, C·t·p·p) float32, `image_grid_thw` (n_views, 3) int64), equal to
    `image_processor(images=…, return_tensors="pt")` for Qwen's image processors."""
    ip = image_processor
    p, m, tps = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    table = _table(
        float(ip.rescale_factor) if ip.do_rescale else 1.0,
        tuple(float(x) for x in (ip.image_mean if ip.do_normalize else (0.0, 0.0, 0.0))),
        tuple(float(x) for x in (ip.image_std if ip.do_normalize else (1.0, 1.0, 1.0))),
    )
    channel = np.arange(3)[:, None, None]
    same_channels = bool((table == table[0]).all())
    views, grids = [], []
    for image in images:
        image = model_input_image(ip, image)
        h, w = image.shape[:2]
        views.append(image)
        grids.append((1, h // p, w // p))
    pixel_values = np.empty((sum(gh * gw for _, gh, gw in grids), 3 * tps * p * p), np.float32)
    row = 0
    for image, (_, gh, gw) in zip(views, grids, strict=True):
        # bytes first, in the patch order: (gh/m, gw/m, m, m, C, p, p) — merge blocks, then patches in each
        order = np.ascontiguousarray(
            image.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)
        )
        # then each byte's float32 value (one table for all channels when they share mean and std)
        values = np.take(table[0], order) if same_channels else table[channel, order]
        out = pixel_values[row : row + gh * gw].reshape(*order.shape[:5], tps, p, p)
        for k in range(tps):  # the temporal copies
            out[:, :, :, :, :, k] = values
        row += gh * gw
    return torch.from_numpy(pixel_values), torch.tensor(grids, dtype=torch.int64)
