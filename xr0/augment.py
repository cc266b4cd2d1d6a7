"""Training-time image augmentation for XR0 (spec §3.3, the [PT] training recipe).

Per sample, one random draw is applied to every view (the views of one observation stay consistent):
a random crop of `crop_scale` of the height and width, resized back to the original size (or, in training,
straight to the model's input size: one resampling instead of two); then colour
jitter — brightness ±`brightness`, contrast and saturation factors in their ranges — each op applied
with probability `prob`. Inference never augments: the deploy path sees the frames as they are.

Everything is a function of the `numpy.random.Generator` passed in, so a sample's augmentation depends
only on its seed (the trainer derives it from the run seed and the sample's global number): the same
sample looks the same whatever the worker, the rank or a resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    # Apply augmentation to training samples (never to held-out ones or at inference).
    enabled: bool = True
    # Side of the random crop as a fraction of each image side (0.95 official); 1 disables cropping.
    crop_scale: float = 0.95
    # Brightness shift range, in fractions of full scale (32/255 official).
    brightness: float = 32 / 255
    # Contrast factor range (blend with the image's mean grey).
    contrast: tuple[float, float] = (0.5, 1.5)
    # Saturation factor range (blend with the per-pixel grey).
    saturation: tuple[float, float] = (0.5, 1.5)
    # Probability of each colour op (brightness, contrast, saturation), drawn independently.
    prob: float = 0.5
    # Std of Gaussian noise added to the arm joints of the state the model sees (rad; 0 = off). The
    # targets stay relative to the measured state, so the model cannot read the demonstration's path off
    # the exact joint positions and must use the images (the "copycat" problem of behaviour cloning).
    state_noise_rad: float = 0.0
    # Probability that a training sample's state is hidden: the model sees the training mean (0 after
    # normalisation) and must tell the arms' pose, and everything else, from the cameras. Needs a
    # normalised state (new models) and absolute arm actions (relative targets need the state).
    state_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"augment.crop_scale must be in (0, 1], got {self.crop_scale}")
        if not 0 <= self.brightness <= 1:
            raise ValueError(f"augment.brightness must be in [0, 1], got {self.brightness}")
        for name in ("contrast", "saturation"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"augment.{name} must be a range [low, high] with 0 <= low <= high")
        if not 0 <= self.prob <= 1:
            raise ValueError(f"augment.prob must be in [0, 1], got {self.prob}")
        if not 0 <= self.state_noise_rad <= 0.5:
            raise ValueError(f"augment.state_noise_rad must be in [0, 0.5] rad, got {self.state_noise_rad}")
        if not 0 <= self.state_dropout < 1:
            raise ValueError(f"augment.state_dropout must be in [0, 1), got {self.state_dropout}")


@dataclass(frozen=True)
class AugmentDraw:
    """One sample's random choices, shared by all its views."""

    crop: tuple[float, float] | None  # (top, left) offsets as fractions of the free margin, or None
    brightness: float | None  # additive shift in [0, 1] units
    contrast: float | None
    saturation: float | None


def draw_augment(config: AugmentConfig, rng: np.random.Generator) -> AugmentDraw:
    """The random choices for one sample (always the same number of draws, so streams stay aligned)."""
    u = rng.random(8)
    crop = (float(u[0]), float(u[1])) if config.crop_scale < 1 else None
    b = config.brightness * (2 * u[3] - 1) if u[2] < config.prob else None
    (c_lo, c_hi), (s_lo, s_hi) = config.contrast, config.saturation
    c = c_lo + (c_hi - c_lo) * u[5] if u[4] < config.prob else None
    s = s_lo + (s_hi - s_lo) * u[7] if u[6] < config.prob else None
    return AugmentDraw(
        crop,
        None if b is None else float(b),
        None if c is None else float(c),
        None if s is None else float(s),
    )


def _crop_box(shape: tuple[int, ...], scale: float, offset: tuple[float, float]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the crop of `scale` of each side at `offset`."""
    h, w = shape[:2]
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = round(offset[0] * (h - ch)), round(offset[1] * (w - cw))
    return left, top, left + cw, top + ch


def apply_augment(
    image: np.ndarray,
    draw: AugmentDraw,
    config: AugmentConfig,
    size: tuple[int, int] | None = None,
    resample: int | None = None,
) -> np.ndarray:
    """One H×W×3 uint8 view under a draw → a new view: H×W×3, or `size` (height, width) when given.

    With `size` the crop and the resize to the model's input size are one resampling (`resample`, PIL's
    code, bicubic by default: the image processor's), done before the colour jitter, which then touches
    a quarter of the pixels at 160×128 from 320×240; without a crop that resize is exactly the one the
    processor would make, so training and deployment see the same pixels."""
    from PIL import Image

    box = _crop_box(image.shape, config.crop_scale, draw.crop) if draw.crop is not None else None
    if size is not None and (box is not None or tuple(size) != image.shape[:2]):
        mode = Image.BICUBIC if resample is None else resample
        image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), mode, box=box))
    elif box is not None:
        left, top, right, bottom = box
        crop = image[top:bottom, left:right]
        image = np.asarray(Image.fromarray(crop).resize(image.shape[1::-1], Image.BILINEAR))
    if draw.brightness is None and draw.contrast is None and draw.saturation is None:
        return image
    # The same float32 operations in the same order as the plain formulas in the comments, done in place:
    # the results are identical, without a temporary per step (numpy's out-of-place clip alone cost ~2 ms
    # per 320×256 view).
    x = image.astype(np.float32)
    x /= 255.0
    if draw.brightness is not None:  # clip(x + b, 0, 1)
        x += np.float32(draw.brightness)
        np.clip(x, 0, 1, out=x)
    if draw.contrast is not None:  # clip(mean + c·(x − mean), 0, 1), mean of the luma
        mean = np.float32((x @ _LUMA).mean())
        x -= mean
        x *= np.float32(draw.contrast)
        x += mean
        np.clip(x, 0, 1, out=x)
    if draw.saturation is not None:  # clip(grey + s·(x − grey), 0, 1), grey the per-pixel luma
        grey = (x @ _LUMA)[..., None]
        x -= grey
        x *= np.float32(draw.saturation)
        x += grey
        np.clip(x, 0, 1, out=x)
    x *= 255
    x += 0.5
    return x.astype(np.uint8)


def augment_views(
    images: Sequence[np.ndarray],
    config: AugmentConfig,
    rng: np.random.Generator,
    sizes: Sequence[tuple[int, int] | None] | None = None,
    resample: int | None = None,
) -> list[np.ndarray]:
    """All views of one sample under one draw (views may differ in size: offsets are relative);
    `sizes[i]` (height, width): resize view i to it as part of the crop (`apply_augment`)."""
    if not config.enabled:
        return list(images)
    draw = draw_augment(config, rng)
    sizes = sizes if sizes is not None else [None] * len(images)
    return [
        apply_augment(image, draw, config, size, resample) for image, size in zip(images, sizes, strict=True)
    ]


def noisy_state(state: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """The (14,) state the model sees in training: the arm joints plus `state_noise_rad` of Gaussian noise
    (grippers untouched); the state itself when augmentation or the noise is off."""
    if not config.enabled or config.state_noise_rad == 0:
        return state
    noise = rng.normal(0.0, config.state_noise_rad, np.shape(state))
    noise[[6, 13]] = 0.0
    return np.asarray(state, np.float64) + noise


def drops_state(config: AugmentConfig, rng: np.random.Generator) -> bool:
    """Whether this training sample hides its state from the model (`state_dropout`)."""
    return config.enabled and config.state_dropout > 0 and bool(rng.random() < config.state_dropout)
