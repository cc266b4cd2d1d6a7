"""Test content for codec measurements, without a camera: frames that compress like a camera's.

- `camera_like`: real photographs bundled inside scikit-image (read from the installed package's own
  files, never fetched), one scene per camera, filmed by a virtual camera: a slow pan, zoom and roll (faster
  for the wrist cameras, which ride the arms), an object sliding across, the wrist cameras' static gripper
  fingers, illumination drift with mains flicker, vignetting, and sensor noise (read noise σ≈2 plus shot
  noise ∝ √intensity), all from one seed.
- `simulator`: the MuJoCo simulator's own frames while the scripted teleoperator does its task (clean
  renders: flat shading, no noise — what a simulated dataset holds).
- `depth_like`: millimetre depth (uint16) as a RealSense Z16 stream: a table plane seen from above at an
  angle, moving boxes and an arm-like blob, stereo noise growing with the square of distance, disparity and
  millimetre quantisation, and holes (zeros) in the left invalid band, at occluding edges and as speckle.

Every function is deterministic for a given seed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
# Scenes (one per camera, cycled) and the photographs the sliding objects are cut from; file names in
# skimage/data/ (bundled in the scikit-image wheel; the gray ones are made RGB).
SCENES = ("coffee.png", "astronaut.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "ihc.png")
OBJECTS = ("coins.png", "chelsea.png", "ihc.png", "astronaut.png", "coffee.png")

READ_NOISE = 2.0  # σ of the read noise, 8-bit levels
SHOT_NOISE = 0.25  # σ of the shot noise = SHOT_NOISE · √(intensity in 8-bit levels)


# -- photographs ------------------------------------------------------------------------------------------
def bundled_image(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a photograph in scikit-image's package data (gray → RGB, alpha dropped).

    Read straight from the installed package's folder, so nothing can reach the network (scikit-image's
    `skimage.data` loaders may fetch files that are not bundled)."""
    import imagecodecs

    try:
        import skimage.data
    except ImportError as e:
        raise ImportError(
            "camera-like content needs scikit-image: pip install 'scikit-image>=0.24,<0.27'"
        ) from e
    path = Path(skimage.data.__file__).parent / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not bundled in this scikit-image installation")
    data = path.read_bytes()
    image = imagecodecs.png_decode(data) if name.endswith(".png") else imagecodecs.jpeg8_decode(data)
    if image.dtype != np.uint8:
        image = (image >> 8).astype(np.uint8) if image.dtype == np.uint16 else image.astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _smooth(rng: np.random.Generator, t: np.ndarray, freq_hz: float, terms: int = 3) -> np.ndarray:
    """A smooth random signal in about [-1, 1]: a few sinusoids around `freq_hz` with random phases."""
    out = np.zeros_like(t)
    for _ in range(terms):
        f = freq_hz * rng.uniform(0.5, 1.5)
        out += np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return out / math.sqrt(terms * 0.5) / 1.5


def _fingers(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A wrist camera's two gripper fingers: (H, W) float mask and (H, W, 3) shaded dark-grey colour."""
    import cv2

    mask = np.zeros((height, width), np.float32)
    for side in (-1, 1):
        cx = width / 2 + side * width * 0.28
        pts = np.array(
            [
                (cx - side * width * 0.06, height * 0.62),
                (cx + side * width * 0.05, height * 0.60),
                (cx + side * width * 0.20, height * 1.01),
                (cx - side * width * 0.10, height * 1.01),
            ],
            np.int32,
        )
        cv2.fillConvexPoly(mask, pts, 1.0, lineType=cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.6, width / 640))
    shade = np.linspace(70, 25, height, dtype=np.float32)[:, None, None] * np.array(
        [1.0, 1.0, 1.08], np.float32
    )
    return mask, np.broadcast_to(shade, (height, width, 3)).astype(np.float32)


def camera_like(
    seconds: float,
    fps: float = 30.0,
    cameras: Sequence[str] = CAMERAS,
    height: int = 480,
    width: int = 640,
    seed: int = 0,
    noise: bool = True,
) -> dict[str, np.ndarray]:
    """(N, H, W, 3) uint8 frames per camera, N = round(seconds · fps); see the module's docstring.
    `noise=False`: the same frames without the sensor noise (a clean reference for quality)."""
    import cv2

    n = max(1, round(seconds * fps))
    t = np.arange(n, dtype=np.float64) / fps
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (height / 2)) ** 2
    vignette = (1.0 - 0.12 * r2)[:, :, None]
    out: dict[str, np.ndarray] = {}
    for i, cam in enumerate(cameras):
        rng = np.random.default_rng([seed, i])
        wrist = "wrist" in cam
        speed = 4.0 if wrist else 1.0
        # the scene, scaled to cover the frame with room to pan and zoom
        scene = bundled_image(SCENES[i % len(SCENES)])
        scale = 1.3 * max(height / scene.shape[0], width / scene.shape[1])
        scene = cv2.resize(
            scene, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        )
        sh, sw = scene.shape[:2]
        margin_x, margin_y = (sw - width) / 2, (sh - height) / 2
        pan_x = (0.35 if not wrist else 0.8) * margin_x * _smooth(rng, t, 0.05 * speed)
        pan_y = (0.35 if not wrist else 0.8) * margin_y * _smooth(rng, t, 0.04 * speed)
        zoom = 1.0 + (0.03 if not wrist else 0.12) * (1 + _smooth(rng, t, 0.03 * speed)) / 2
        roll = np.radians(0.5 if not wrist else 6.0) * _smooth(rng, t, 0.04 * speed)
        # the sliding object: an elliptical cut of another photograph, with a soft edge
        obj_img = bundled_image(OBJECTS[(i + 1) % len(OBJECTS)])
        oh = max(4, int(height * (0.45 if wrist else 0.3)))
        ow = max(4, int(oh * rng.uniform(0.8, 1.4)))
        y0 = int(rng.integers(0, max(1, obj_img.shape[0] - obj_img.shape[0] // 2)))
        x0 = int(rng.integers(0, max(1, obj_img.shape[1] - obj_img.shape[1] // 2)))
        cut = obj_img[y0 : y0 + obj_img.shape[0] // 2, x0 : x0 + obj_img.shape[1] // 2]
        obj = cv2.resize(cut, (ow, oh), interpolation=cv2.INTER_AREA).astype(np.float32)
        alpha = np.zeros((oh, ow), np.float32)
        cv2.ellipse(alpha, (ow // 2, oh // 2), (max(1, ow // 2 - 2), max(1, oh // 2 - 2)), 0, 0, 360, 1.0, -1)
        alpha = cv2.GaussianBlur(alpha, (0, 0), max(0.8, oh / 40))[:, :, None]
        crossing_s = rng.uniform(5.0, 7.0) / speed * 2  # the time one pass across the frame takes
        phase = rng.uniform(0.3, 0.6)  # where along its pass the object starts (in view)
        obj_y = height * (0.5 + 0.15 * _smooth(rng, t, 0.1 * speed)) - oh / 2
        fingers = _fingers(height, width) if wrist else None
        # illumination: slow gain drift, white-balance drift and 100 Hz mains flicker aliased to 10 Hz at 30 fps
        gain = 1.0 + 0.06 * _smooth(rng, t, 0.05) + 0.01 * np.sin(2 * np.pi * (100.0 % fps) * t)
        white = 1.0 + 0.02 * np.stack([_smooth(rng, t, 0.03) for _ in range(3)], axis=1)
        frames = np.empty((n, height, width, 3), np.uint8)
        for k in range(n):
            a = (
                np.array([[math.cos(roll[k]), -math.sin(roll[k])], [math.sin(roll[k]), math.cos(roll[k])]])
                / zoom[k]
            )
            centre = np.array([sw / 2 + pan_x[k], sh / 2 + pan_y[k]])
            m = np.hstack([a, (centre - a @ np.array([width / 2, height / 2]))[:, None]])
            img = cv2.warpAffine(
                scene,
                m,
                (width, height),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REFLECT_101,
            ).astype(np.float32)
            ox = int(round(((t[k] / crossing_s + phase) % 1.0) * (width + 2 * ow) - ow))
            oy = int(round(obj_y[k]))
            _paste(img, obj, alpha, ox, oy)
            if fingers is not None:
                fm = fingers[0][:, :, None]
                img += fm * (fingers[1] - img)
            img *= vignette
            img *= (gain[k] * white[k]).astype(np.float32)
            np.clip(img, 0, 255, out=img)
            if noise:  # the last random draw of a frame: the noise-free frames match the noisy ones
                sigma = np.sqrt(READ_NOISE**2 + SHOT_NOISE**2 * img)
                img += sigma * rng.standard_normal(img.shape, dtype=np.float32)
                np.clip(img, 0, 255, out=img)
            frames[k] = np.rint(img)
        out[cam] = frames
    return out


def _paste(img: np.ndarray, obj: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Blend `obj` (h, w, 3) with `alpha` (h, w, 1) into `img` at top-left (x, y), clipped to the frame."""
    h, w = obj.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, img.shape[1]), min(y + h, img.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    region = img[y0:y1, x0:x1]
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x]
    region += a * (obj[y0 - y : y1 - y, x0 - x : x1 - x] - region)


# -- the simulator ----------------------------------------------------------------------------------------
def simulator(
    seconds: float,
    fps: float = 30.0,
    cameras: Sequence[str] = CAMERAS,
    height: int = 480,
    width: int = 640,
    seed: int = 0,
    task: str = "transfer_cube",
) -> dict[str, np.ndarray]:
    """(N, H, W, 3) uint8 renders per camera of the simulated ALOHA while the scripted teleoperator does
    `task`, in lockstep at `fps` (the same per-tick safety clamp as the control loop); when one
    demonstration ends the next seed's starts."""
    os.environ.setdefault("MUJOCO_GL", "egl")  # before MuJoCo creates a GL context
    from drivers.clock import NS_PER_S, SimClock
    from drivers.joints import SIDES, side_slice
    from drivers.safety import SafetyConfig, SafetyLayer
    from drivers.sim.aloha import AlohaSim, SimConfig
    from drivers.sim.scripted import ScriptedTeleoperator

    n = max(1, round(seconds * fps))
    sim = AlohaSim(SimConfig(task=task, seed=seed), SimClock())
    try:
        teleop = ScriptedTeleoperator(sim)
        period_ns = round(NS_PER_S / fps)
        ticks = math.ceil(teleop.config.episode_seconds * fps)
        out = {cam: np.empty((n, height, width, 3), np.uint8) for cam in cameras}
        k = ticks
        start_ns = 0
        safety = None
        for i in range(n):
            if k >= ticks:  # a new demonstration
                if i:
                    sim.reset()
                    teleop.reset()
                initial = np.concatenate([sim.joint_state(side)[0] for side in SIDES])
                safety = SafetyLayer(SafetyConfig(), sim.limits(), initial)
                start_ns, k = sim.clock.now_ns(), 0
            for cam in cameras:
                out[cam][i] = sim.render(cam, width, height)
            command = safety.filter(teleop.action(sim.time_s)).action
            for side in SIDES:
                sim.set_targets(side, command[side_slice(side)])
            k += 1
            sim.clock.sleep_until(start_ns + k * period_ns)
    finally:
        sim.close()
    return out


# -- depth ------------------------------------------------------------------------------------------------
def depth_like(
    seconds: float, fps: float = 30.0, height: int = 480, width: int = 640, seed: int = 0
) -> np.ndarray:
    """(N, H, W) uint16 depth in millimetres (0: no data), like a RealSense D4xx Z16 stream of a table."""
    import cv2

    rng = np.random.default_rng([seed, 16])
    n = max(1, round(seconds * fps))
    t = np.arange(n, dtype=np.float64) / fps
    f = 0.6 * width  # focal length, px (a D435 at 640×480: about 385)
    baseline_mm = 50.0
    cam_h_mm, tilt = 550.0, np.radians(40.0)  # camera height above the table, tilt from straight down
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    ray_y = (yy - height / 2) / f
    down = np.cos(tilt) + np.sin(tilt) * ray_y  # cosine-like factor of each pixel's ray towards the table
    z_table = np.where(down > 1e-3, cam_h_mm / np.maximum(down, 1e-3), np.inf)
    floor = np.where(down > 1e-3, (cam_h_mm + 750.0) / np.maximum(down, 1e-3), np.inf)
    table_far_mm = 1300.0
    background = np.where(z_table <= table_far_mm, z_table, np.minimum(floor, 2600.0))
    # objects: boxes resting on the table, and one faster arm-like blob above it
    boxes = []
    for _ in range(3):
        boxes.append(
            {
                "w": rng.uniform(0.08, 0.16) * width,
                "h": rng.uniform(0.08, 0.16) * height,
                "top_mm": rng.uniform(40, 120),
                "cx": width * (0.5 + 0.3 * _smooth(rng, t, 0.05)),
                "cy": height * (0.6 + 0.2 * _smooth(rng, t, 0.05)),
                "angle": 30 * _smooth(rng, t, 0.03),
            }
        )
    arm_cx = width * (0.5 + 0.4 * _smooth(rng, t, 0.2))
    arm_cy = height * (0.45 + 0.25 * _smooth(rng, t, 0.2))
    arm_r = 0.12 * min(width, height)
    band = max(1, int(round(0.04 * width)))  # D4xx: the left columns see no stereo match
    shadow = max(1, int(round(0.012 * width)))  # occlusion shadow, left of each near edge
    kernel = np.ones((1, 2 * shadow + 1), np.uint8)
    kernel[:, :shadow] = 0  # dilate leftwards only: a pixel is lost when a near edge is to its right
    out = np.empty((n, height, width), np.uint16)
    for k in range(n):
        z = background.copy()
        for b in boxes:
            mask = np.zeros((height, width), np.uint8)
            rect = (
                (float(b["cx"][k]), float(b["cy"][k])),
                (float(b["w"]), float(b["h"])),
                float(b["angle"][k]),
            )
            cv2.fillConvexPoly(mask, cv2.boxPoints(rect).astype(np.int32), 1)
            base = z_table[int(np.clip(b["cy"][k], 0, height - 1)), int(np.clip(b["cx"][k], 0, width - 1))]
            z = np.where(mask > 0, np.minimum(z, base - b["top_mm"]), z)
        d2 = ((xx - arm_cx[k]) ** 2 + (yy - arm_cy[k]) ** 2) / arm_r**2
        arm = np.where(d2 < 1, 450.0 - 80.0 * np.sqrt(np.clip(1 - d2, 0, 1)), np.inf)
        z = np.minimum(z, arm)
        # stereo: disparity noise (white + a blotchy low-frequency part), sub-pixel quantisation to 1/32 px
        disparity = f * baseline_mm / z
        blotch = cv2.resize(rng.normal(0, 0.04, (6, 8)), (width, height), interpolation=cv2.INTER_CUBIC)
        disparity = disparity + rng.normal(0, 0.08, z.shape) + blotch
        disparity = np.round(disparity * 32) / 32
        depth = np.where(disparity > 0.5, f * baseline_mm / np.maximum(disparity, 0.5), 0.0)
        # holes: near edges (occlusion), speckle, far range, the left band
        near_edge = (np.diff(z, axis=1, append=z[:, -1:]) < -25.0).astype(np.uint8)
        edge_any = (np.abs(np.diff(z, axis=0, append=z[-1:])) > 25.0).astype(np.uint8) | near_edge
        occluded = cv2.dilate(near_edge, kernel) | cv2.dilate(edge_any, np.ones((3, 3), np.uint8))
        drop = occluded.astype(bool) & (rng.random(z.shape) < 0.85)
        drop |= rng.random(z.shape) < 0.003
        drop |= (z > 2000.0) & (rng.random(z.shape) < 0.25)
        depth[drop] = 0
        depth[:, :band] = 0
        out[k] = np.clip(np.rint(depth), 0, 65535).astype(np.uint16)
    return out
