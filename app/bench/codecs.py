"""`xr0 bench codecs`: a rate–distortion study of how to store camera frames — bytes per minute, quality,
encode speed and random access for each image and video codec, on camera-like and simulator content.

Rows (one per codec setting):

- still images, one per frame (what the episode store records today): JPEG (libjpeg-turbo, 4:2:0) at
  quality 75…95, JPEG XL (distance 1 and 2, effort 3), AVIF (quality 60 and 80, speed 8, 4:2:0);
- video segments (`recording/video.py`, the archive tier): each camera cut into segments of 30 frames
  (1 s) encoded on their own — AV1 as LeRobot stores it (GOP 2, CRF 30, SVT-AV1's default preset), AV1
  with one keyframe per segment at CRF 24/28/32 and presets 8 and 10, H.264 (x264 veryfast) at CRF 18/23.

Measured per row and content source (`app/bench/content.py`: `camera` = photographs filmed by a moving,
noisy virtual camera; `sim` = the MuJoCo simulator's renders while the scripted teleoperator works):

- bytes per minute, all cameras together and per camera, and bits per pixel;
- PSNR (dB, RGB, mean over frames) and SSIM (every `--ssim-every`th frame) against the original; for
  camera content also `psnr_clean_db`, against the same frames without sensor noise (the original's own
  noise, `noise_psnr_db`, caps `psnr_db`: a codec that smooths noise away loses PSNR to the noisy original
  while it may keep the scene as well as one that spends its bits on the noise);
- encode speed: × real time for all cameras together, with `--threads` workers each running one
  single-threaded encoder over (camera, segment) jobs (imagecodecs and PyAV release the GIL);
- decode: ms per frame decoding everything in order (one thread);
- random access: ms to get one frame at a random step (a video decodes its segment from the start up to
  it), and ms for one training sample (three views at one random step, plus the 30-step window of a
  numeric array); for AV1 with keyframes inside the segment (LeRobot's GOP 2) also `frame_ms_seek` and
  `sample_ms_seek`, decoding from the last keyframe at or before the step, as LeRobot's reader seeks.

Depth (Z16 millimetres from `content.depth_like`) gets lossless codecs only — PNG, zstd (plain, after a
delta filter, after delta + bitshuffle), LZ4, JPEG-LS, JPEG XL lossless — and every one must round-trip
exactly. A codec the installed imagecodecs or PyAV lacks gets a row with `skipped` naming the package.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from app.bench import machine
from app.errors import UserError

if TYPE_CHECKING:
    from app.compose.config import AppConfig
    from recording.video import VideoSettings

log = logging.getLogger(__name__)

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
SOURCES = ("camera", "sim")
SEGMENT = 30  # frames per video segment (1 s at 30 fps)
HORIZON = 30  # the action window a training sample reads
PSNR_CAP_DB = 100.0  # an identical frame (MSE 0) counts as this, so the mean stays a number


# -- rows -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StillRow:
    """One image per frame through imagecodecs."""

    name: str
    codec: str  # the imagecodecs codec class name (JPEG8, JPEGXL, AVIF, PNG, …)
    encode: Callable[[np.ndarray], Any]
    decode: Callable[[bytes], np.ndarray]
    settings: dict[str, Any] = field(default_factory=dict)

    def missing(self) -> str | None:
        import imagecodecs

        codec = getattr(imagecodecs, self.codec, None)
        if codec is None or not codec.available:
            return f"the installed imagecodecs {imagecodecs.__version__} has no {self.codec} codec"
        return None


@dataclass(frozen=True)
class VideoRow:
    """Segments of `segment` frames through recording/video.py."""

    name: str
    video: VideoSettings
    segment: int = SEGMENT

    @property
    def settings(self) -> dict[str, Any]:
        return {**self.video.to_dict(), "segment": self.segment}

    def missing(self) -> str | None:
        from recording.video import missing

        return missing(self.video.codec)


def _ic(name: str) -> Callable[..., Any]:
    """imagecodecs' function `name`, looked up when called (a build without the codec fails only then)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        import imagecodecs

        return getattr(imagecodecs, name)(*args, **kwargs)

    return call


def _avif_encode(img: np.ndarray, level: int, speed: int) -> bytes:
    import imagecodecs

    return imagecodecs.avif_encode(
        img, level=level, speed=speed, pixelformat=imagecodecs.AVIF.PIXEL_FORMAT.YUV420, numthreads=1
    )


def _jxl_encode(img: np.ndarray, distance: float, effort: int) -> bytes:
    return _ic("jpegxl_encode")(img, distance=distance, effort=effort, numthreads=1)


def image_rows() -> list[StillRow | VideoRow]:
    """The RGB rows, in report order."""
    from recording.video import VideoSettings

    rows: list[StillRow | VideoRow] = []
    for q in (75, 85, 90, 95):
        rows.append(
            StillRow(
                f"jpeg-q{q}",
                "JPEG8",
                partial(_ic("jpeg8_encode"), level=q),
                _ic("jpeg8_decode"),
                {"quality": q, "subsampling": "4:2:0"},
            )
        )
    for d in (1.0, 2.0):
        rows.append(
            StillRow(
                f"jxl-d{d:.1f}",
                "JPEGXL",
                partial(_jxl_encode, distance=d, effort=3),
                partial(_ic("jpegxl_decode"), numthreads=1),
                {"distance": d, "effort": 3},
            )
        )
    for q in (60, 80):
        rows.append(
            StillRow(
                f"avif-q{q}-s8",
                "AVIF",
                partial(_avif_encode, level=q, speed=8),
                partial(_ic("avif_decode"), numthreads=1),
                {"quality": q, "speed": 8, "subsampling": "4:2:0"},
            )
        )
    # LeRobot's default: libsvtav1, yuv420p, CRF 30, GOP 2, the encoder's default preset.
    rows.append(VideoRow("av1-g2-crf30 (lerobot)", VideoSettings("av1", 30, preset="", gop=2, threads=1)))
    for preset in ("8", "10", "12"):
        for crf in (20, 24, 28, 32):
            rows.append(
                VideoRow(f"av1-g{SEGMENT}-crf{crf}-p{preset}", VideoSettings("av1", crf, preset, SEGMENT, 1))
            )
    for crf in (18, 23):
        rows.append(
            VideoRow(f"h264-g{SEGMENT}-crf{crf}-veryfast", VideoSettings("h264", crf, "veryfast", SEGMENT, 1))
        )
    return rows


def _raw_decoder(decode: Callable[[bytes], Any], *filters: Callable[[np.ndarray], np.ndarray]) -> Callable:
    """A decoder of byte codecs: bytes → uint16 array of the frame's shape (set by `depth_rows`) → filters."""

    def run(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        out = np.frombuffer(decode(data), np.uint16).reshape(shape)
        for f in filters:
            out = f(out)
        return out

    return run


def _delta(img: np.ndarray) -> np.ndarray:
    return _ic("delta_encode")(img, axis=-1)


def _undelta(img: np.ndarray) -> np.ndarray:
    return _ic("delta_decode")(np.array(img), axis=-1)


def _bitshuffle(img: np.ndarray) -> np.ndarray:
    return _ic("bitshuffle_encode")(img)


def _unbitshuffle(img: np.ndarray) -> np.ndarray:
    return _ic("bitshuffle_decode")(np.array(img))


def _chain(*steps: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run(x: Any) -> Any:
        for step in steps:
            x = step(x)
        return x

    return run


@dataclass(frozen=True)
class DepthRow:
    """A lossless codec of (H, W) uint16 frames; `raw` decoders get the frame shape as well."""

    name: str
    codecs: tuple[str, ...]  # imagecodecs codec class names it needs
    encode: Callable[[np.ndarray], Any]
    decode: Callable[..., np.ndarray]
    raw: bool = False  # a byte codec: decode(data, shape)
    settings: dict[str, Any] = field(default_factory=dict)

    def missing(self) -> str | None:
        import imagecodecs

        for name in self.codecs:
            codec = getattr(imagecodecs, name, None)
            if codec is None or not codec.available:
                return f"the installed imagecodecs {imagecodecs.__version__} has no {name} codec"
        return None


def depth_rows() -> list[DepthRow]:
    zstd, unzstd = partial(_ic("zstd_encode"), level=3), _ic("zstd_decode")
    return [
        DepthRow("depth-png", ("PNG",), _ic("png_encode"), _ic("png_decode"), settings={"level": "default"}),
        DepthRow("depth-zstd3", ("ZSTD",), zstd, _raw_decoder(unzstd), raw=True, settings={"level": 3}),
        DepthRow(
            "depth-zstd3-delta",
            ("ZSTD", "DELTA"),
            _chain(_delta, zstd),
            _raw_decoder(unzstd, _undelta),
            raw=True,
            settings={"level": 3, "filter": "delta along rows"},
        ),
        DepthRow(
            "depth-zstd3-delta-bitshuffle",
            ("ZSTD", "DELTA", "BITSHUFFLE"),
            _chain(_delta, _bitshuffle, zstd),
            _raw_decoder(unzstd, _unbitshuffle, _undelta),
            raw=True,
            settings={"level": 3, "filter": "delta along rows, then bitshuffle"},
        ),
        DepthRow("depth-lz4", ("LZ4",), _ic("lz4_encode"), _raw_decoder(_ic("lz4_decode")), raw=True),
        DepthRow("depth-jpegls", ("JPEGLS",), _ic("jpegls_encode"), _ic("jpegls_decode")),
        DepthRow(
            "depth-jxl-lossless",
            ("JPEGXL",),
            partial(_ic("jpegxl_encode"), lossless=True, effort=3, numthreads=1),
            partial(_ic("jpegxl_decode"), numthreads=1),
            settings={"effort": 3},
        ),
    ]


def _selected(name: str, only: Sequence[str]) -> bool:
    return not only or any(s in name for s in only)


# -- measuring RGB rows -----------------------------------------------------------------------------------
def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    import cv2

    mse = cv2.norm(a, b, cv2.NORM_L2SQR) / a.size
    return PSNR_CAP_DB if mse <= 0 else min(PSNR_CAP_DB, float(10 * np.log10(255.0**2 / mse)))


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def _jobs(n: int, length: int) -> list[tuple[int, int]]:
    return [(s, min(s + length, n)) for s in range(0, n, length)]


class _Encoded:
    """One row's encoded content: per camera, a list of blobs (one per frame, or one per segment)."""

    def __init__(self, row: StillRow | VideoRow, fps: float) -> None:
        self.row, self.fps = row, fps
        self.length = row.segment if isinstance(row, VideoRow) else SEGMENT
        self.blobs: dict[str, list[bytes]] = {}

    def encode(self, frames: np.ndarray, start: int, stop: int) -> list[bytes]:
        from recording.video import encode_segment

        if isinstance(self.row, VideoRow):
            return [encode_segment(frames[start:stop], self.row.video, self.fps)]
        return [bytes(self.row.encode(frames[i])) for i in range(start, stop)]

    @property
    def can_seek(self) -> bool:
        """Whether a segment has keyframes after its first one (GOP shorter than the segment) that a reader
        could start from, as LeRobot's decoder does. Only AV1: one packet per shown frame, in display order
        (x264's B-frames reorder packets)."""
        video = self.row.video if isinstance(self.row, VideoRow) else None
        return video is not None and video.codec == "av1" and 0 < video.gop < self.length

    def read(self, cam: str, t: int, seek: bool = False) -> np.ndarray:
        """Frame t of `cam`, as a random access does it: a video decodes its segment from the start up to
        t, or with `seek` from the last keyframe at or before t."""
        from recording.video import decode_segment

        if not isinstance(self.row, VideoRow):
            return self.row.decode(self.blobs[cam][t])
        seg, k = divmod(t, self.length)
        data = self.blobs[cam][seg]
        if seek and self.can_seek:
            key = k - k % self.row.video.gop
            data, k = _from_packet(data, key), k - key
        return decode_segment(data, self.row.video.codec, count=k + 1)[k]

    def decode_all(self, cam: str) -> list[np.ndarray]:
        """Every frame of `cam`, in order, a segment (or frame) at a time."""
        from recording.video import decode_segment

        if isinstance(self.row, VideoRow):
            return [decode_segment(b, self.row.video.codec) for b in self.blobs[cam]]
        return [self.row.decode(b)[None] for b in self.blobs[cam]]


def measure_row(
    row: StillRow | VideoRow,
    frames: dict[str, np.ndarray],
    fps: float,
    threads: int,
    ssim_every: int,
    reads: int,
    seed: int = 0,
    clean: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """One RGB row on `frames` (camera → (N, H, W, 3)); `clean`: the same frames without sensor noise, for
    a PSNR against the scene rather than against the scene plus its noise."""
    cams = list(frames)
    n, h, w = next(iter(frames.values())).shape[:3]
    seconds = n / fps
    enc = _Encoded(row, fps)
    jobs = [(cam, s, e) for cam in cams for s, e in _jobs(n, enc.length)]
    enc.encode(frames[cams[0]], 0, min(n, 2))  # warm-up, untimed: libraries loaded, first-call costs paid
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(lambda j: enc.encode(frames[j[0]], j[1], j[2]), jobs))
    wall = time.perf_counter() - t0
    for cam in cams:
        enc.blobs[cam] = []
    for (cam, _, _), blobs in zip(jobs, results, strict=True):
        enc.blobs[cam] += blobs
    per_cam = {cam: sum(len(b) for b in enc.blobs[cam]) for cam in cams}
    total = sum(per_cam.values())
    # quality, and the cost of decoding everything in order
    psnr: dict[str, float] = {}
    psnr_clean: dict[str, float] = {}
    ssim: dict[str, float] = {}
    decode_s = 0.0
    for cam in cams:
        values, values_clean, structural, t = [], [], [], 0
        t1 = time.perf_counter()
        decoded = enc.decode_all(cam)
        decode_s += time.perf_counter() - t1
        for block in decoded:
            for img in block:
                ref = frames[cam][t]
                if img.shape != ref.shape:
                    raise RuntimeError(f"{row.name} decoded a {img.shape} frame for a {ref.shape} original")
                values.append(_psnr(img, ref))
                if clean is not None:
                    values_clean.append(_psnr(img, clean[cam][t]))
                if t % ssim_every == 0:
                    structural.append(_ssim(img, ref))
                t += 1
        if t != n:
            raise RuntimeError(f"{row.name} decoded {t} frames of {cam}, expected {n}")
        psnr[cam], ssim[cam] = float(np.mean(values)), float(np.mean(structural))
        if clean is not None:
            psnr_clean[cam] = float(np.mean(values_clean))
    access = _random_access(enc, cams, n, reads, seed, seek=False)
    if enc.can_seek:
        seek = _random_access(enc, cams, n, reads, seed, seek=True)
        access |= {"frame_ms_seek": seek["frame_ms"], "sample_ms_seek": seek["sample_ms"]}
    per_min = 60.0 / seconds
    return {
        "name": row.name,
        "kind": "video" if isinstance(row, VideoRow) else "image",
        "settings": row.settings,
        "bytes_per_min": round(total * per_min),
        "mb_per_min": round(total * per_min / 1e6, 3),
        "bytes_per_min_per_camera": {cam: round(b * per_min) for cam, b in per_cam.items()},
        "bits_per_pixel": round(8 * total / (n * h * w * len(cams)), 4),
        "psnr_db": round(float(np.mean(list(psnr.values()))), 2),
        "psnr_db_per_camera": {cam: round(v, 2) for cam, v in psnr.items()},
        **(
            {"psnr_clean_db": round(float(np.mean(list(psnr_clean.values()))), 2)}
            if clean is not None
            else {}
        ),
        "ssim": round(float(np.mean(list(ssim.values()))), 4),
        "ssim_per_camera": {cam: round(v, 4) for cam, v in ssim.items()},
        "encode_realtime_x": round(seconds / wall, 2),
        "encode_wall_s": round(wall, 3),
        "decode_ms_per_frame": round(decode_s / (n * len(cams)) * 1e3, 3),
        **access,
    }


def _from_packet(data: bytes, first: int) -> bytes:
    """The segment `data` without its first `first` packets (which must leave a keyframe first)."""
    import struct

    from recording.video import FORMAT, MAGIC

    (count,) = struct.unpack_from("<I", data, 5)
    pos = 9
    for _ in range(first):
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4 + size
    return MAGIC + bytes([FORMAT]) + struct.pack("<I", count - first) + data[pos:]


def _random_access(enc: _Encoded, cams: list[str], n: int, reads: int, seed: int, seek: bool) -> dict:
    """Mean ms to read one frame at a random step, and one training sample: the first three views at one
    random step plus the `HORIZON`-step window of a numeric array."""
    rng = np.random.default_rng(seed)
    actions = rng.normal(size=(n + HORIZON, 14)).astype(np.float32)
    first = enc.read(cams[0], n - 1, seek)  # warm-up, untimed; with `seek`, checked against a full decode
    if seek and not np.array_equal(first, enc.read(cams[0], n - 1)):
        raise RuntimeError(f"{enc.row.name}: decoding from the keyframe before a frame gives another picture")
    frame_ms = []
    for _ in range(reads):
        cam, t = cams[int(rng.integers(len(cams)))], int(rng.integers(n))
        t1 = time.perf_counter()
        enc.read(cam, t, seek)
        frame_ms.append((time.perf_counter() - t1) * 1e3)
    sample_ms = []
    for _ in range(reads):
        t = int(rng.integers(n))
        t1 = time.perf_counter()
        views = [enc.read(cam, t, seek) for cam in cams[:3]]
        window = actions[t : t + HORIZON].copy()
        sample_ms.append((time.perf_counter() - t1) * 1e3)
        del views, window
    return {
        "frame_ms": round(float(np.mean(frame_ms)), 3),
        "frame_ms_max": round(float(np.max(frame_ms)), 3),
        "sample_ms": round(float(np.mean(sample_ms)), 3),
    }


# -- measuring depth rows ---------------------------------------------------------------------------------
def measure_depth_row(row: DepthRow, depth: np.ndarray, fps: float) -> dict[str, Any]:
    n = len(depth)
    t0 = time.perf_counter()
    blobs = [bytes(row.encode(np.ascontiguousarray(img))) for img in depth]
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = [row.decode(b, depth.shape[1:]) if row.raw else row.decode(b) for b in blobs]
    decode_s = time.perf_counter() - t0
    for t, (img, ref) in enumerate(zip(decoded, depth, strict=True)):
        img = np.asarray(img)
        if img.shape != ref.shape or img.dtype != ref.dtype or not np.array_equal(img, ref):
            bad = "shape/dtype" if img.shape != ref.shape or img.dtype != ref.dtype else "values"
            raise RuntimeError(
                f"the lossless depth codec {row.name} does not round-trip frame {t} exactly ({bad} differ: "
                f"{img.shape} {img.dtype} vs {ref.shape} {ref.dtype})"
            )
    total = sum(len(b) for b in blobs)
    per_min = 60.0 * fps / n
    return {
        "name": row.name,
        "settings": row.settings,
        "bytes_per_min": round(total * per_min),
        "mb_per_min": round(total * per_min / 1e6, 3),
        "ratio": round(depth.nbytes / total, 2),
        "encode_ms_per_frame": round(encode_s / n * 1e3, 3),
        "decode_ms_per_frame": round(decode_s / n * 1e3, 3),
        "lossless": True,
    }


# -- content ----------------------------------------------------------------------------------------------
def make_content(
    source: str, seconds: float, fps: float, height: int, width: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """The frames of `source` per camera, and (camera content only) the same frames without sensor noise."""
    from app.bench import content

    if source == "camera":
        frames = content.camera_like(seconds, fps, CAMERAS, height, width, seed)
        return frames, content.camera_like(seconds, fps, CAMERAS, height, width, seed, noise=False)
    return content.simulator(seconds, fps, CAMERAS, height, width, seed), None


def _ms(row: dict, key: str) -> str:
    seek = row.get(f"{key}_seek")
    return f"{row[key]:.2f}" + (f" ({seek:.2f} seek)" if seek is not None else "")


def markdown(result: dict) -> str:
    """The RGB rows of every source and the depth rows as markdown tables."""
    lines = []
    for source, block in result["content"].items():
        lines += [
            f"**{source}** ({block['frames']} frames × {len(block['cameras'])} cameras, "
            f"{result['settings']['width']}×{result['settings']['height']}"
            + (
                f"; the sensor noise alone: {block['noise_psnr_db']:.2f} dB"
                if "noise_psnr_db" in block
                else ""
            )
            + ")",
            "",
            "| row | MB/min (all cams) | bits/px | PSNR dB | PSNR vs clean dB | SSIM | encode × RT "
            "| decode ms/frame | frame ms | sample ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in block["rows"]:
            if "skipped" in r:
                lines.append(f"| {r['name']} | skipped: {r['skipped']} | | | | | | | | |")
                continue
            clean = f"{r['psnr_clean_db']:.2f}" if "psnr_clean_db" in r else "–"
            lines.append(
                f"| {r['name']} | {r['mb_per_min']:.2f} | {r['bits_per_pixel']:.3f} | {r['psnr_db']:.2f} | {clean} | "
                f"{r['ssim']:.4f} | {r['encode_realtime_x']:.2f} | {r['decode_ms_per_frame']:.2f} | "
                f"{_ms(r, 'frame_ms')} | {_ms(r, 'sample_ms')} |"
            )
        lines.append("")
    if result["depth"]["rows"]:
        lines += [
            "**depth** (Z16, lossless, round-trip checked)",
            "",
            "| row | MB/min | ratio | encode ms/frame | decode ms/frame |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in result["depth"]["rows"]:
            if "skipped" in r:
                lines.append(f"| {r['name']} | skipped: {r['skipped']} | | | |")
                continue
            lines.append(
                f"| {r['name']} | {r['mb_per_min']:.2f} | {r['ratio']:.2f} | {r['encode_ms_per_frame']:.2f} | "
                f"{r['decode_ms_per_frame']:.2f} |"
            )
    return "\n".join(lines)


# -- the command --------------------------------------------------------------------------------------------
def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of content per source and camera")
    p.add_argument("--content", default="camera,sim", help="content sources, comma-separated: camera, sim")
    p.add_argument("--width", type=int, default=640, help="frame width (even)")
    p.add_argument("--height", type=int, default=480, help="frame height (even)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of the content")
    p.add_argument(
        "--only", default="", help="run only rows whose name contains one of these (comma-separated)"
    )
    p.add_argument(
        "--markdown", action="store_true", help="also give the tables in markdown (stderr and JSON)"
    )
    p.add_argument("--threads", type=int, default=2, help="encoder workers (each encoder single-threaded)")
    p.add_argument("--ssim-every", type=int, default=10, help="SSIM on every Nth frame")
    p.add_argument("--reads", type=int, default=20, help="random reads per random-access figure")
    p.add_argument("--seed", type=int, default=0, help="seed of the content and of the random reads")


def bench(args: argparse.Namespace, config: AppConfig) -> dict:
    from recording.progress import progress_bar
    from recording.video import VideoError

    sources = [s.strip() for s in args.content.split(",") if s.strip()]
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        raise UserError(f"--content takes {', '.join(SOURCES)} (comma-separated), got {args.content!r}")
    if args.width % 2 or args.height % 2 or args.width < 16 or args.height < 16:
        raise UserError(
            f"--width and --height must be even and at least 16 (video is 4:2:0), got {args.width}×{args.height}"
        )
    if not args.seconds > 0 or args.threads < 1 or args.ssim_every < 1 or args.reads < 1:
        raise UserError("--seconds must be positive and --threads, --ssim-every and --reads at least 1")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    rows = [r for r in image_rows() if _selected(r.name, only)]
    drows = [r for r in depth_rows() if _selected(r.name, only)]
    if not rows and not drows:
        raise UserError(f"--only {args.only!r} matches no row")
    fps = float(args.fps)
    result: dict[str, Any] = {
        "bench": "codecs",
        "machine": machine(),
        "content": {},
        "depth": {"rows": []},
        "settings": {
            "seconds": args.seconds,
            "fps": fps,
            "width": args.width,
            "height": args.height,
            "cameras": list(CAMERAS),
            "threads": args.threads,
            "segment_frames": SEGMENT,
            "ssim_every": args.ssim_every,
            "reads": args.reads,
            "seed": args.seed,
            "raw_mb_per_min_per_camera": round(args.width * args.height * 3 * fps * 60 / 1e6, 1),
            "only": only,
        },
    }
    bar = progress_bar(len(rows) * len(sources) + len(drows), "codecs", "row")
    try:
        for source in sources if rows else []:
            log.info("making %g s of %s content at %d×%d …", args.seconds, source, args.width, args.height)
            t0 = time.perf_counter()
            frames, clean = make_content(source, args.seconds, fps, args.height, args.width, args.seed)
            n = len(next(iter(frames.values())))
            block: dict[str, Any] = {
                "frames": n,
                "cameras": list(frames),
                "generate_s": round(time.perf_counter() - t0, 2),
            }
            if clean is not None:  # the ceiling of `psnr_db`: the sensor noise itself
                block["noise_psnr_db"] = round(
                    float(np.mean([_psnr(frames[c][t], clean[c][t]) for c in frames for t in range(n)])), 2
                )
            block["rows"] = []
            result["content"][source] = block
            for row in rows:
                bar.set_postfix_str(f"{source} {row.name}")
                why = row.missing()
                if why:
                    block["rows"].append({"name": row.name, "skipped": why})
                    log.info("%s %s: skipped (%s)", source, row.name, why)
                else:
                    try:
                        r = measure_row(
                            row, frames, fps, args.threads, args.ssim_every, args.reads, args.seed, clean
                        )
                    except VideoError as e:  # an encoder whose output its decoder refuses: a finding
                        block["rows"].append({"name": row.name, "skipped": f"FAILED: {e}"})
                        log.warning("%s %s: %s", source, row.name, e)
                        bar.update(1)
                        continue
                    block["rows"].append(r)
                    log.info(
                        "%s %s: %.2f MB/min, PSNR %.2f dB, SSIM %.4f, encode %.2f× real time, frame %.2f ms",
                        source,
                        row.name,
                        r["mb_per_min"],
                        r["psnr_db"],
                        r["ssim"],
                        r["encode_realtime_x"],
                        r["frame_ms"],
                    )
                bar.update(1)
            del frames, clean
        if drows:
            from app.bench.content import depth_like

            log.info("making %g s of depth at %d×%d …", args.seconds, args.width, args.height)
            depth = depth_like(args.seconds, fps, args.height, args.width, args.seed)
            result["depth"]["frames"] = len(depth)
            result["depth"]["raw_mb_per_min"] = round(depth[0].nbytes * fps * 60 / 1e6, 2)
            for row in drows:
                bar.set_postfix_str(row.name)
                why = row.missing()
                if why:
                    result["depth"]["rows"].append({"name": row.name, "skipped": why})
                else:
                    r = measure_depth_row(row, depth, fps)
                    result["depth"]["rows"].append(r)
                    log.info("%s: %.2f MB/min (%.2f:1)", row.name, r["mb_per_min"], r["ratio"])
                bar.update(1)
    finally:
        bar.close()
    if args.markdown:
        result["markdown"] = markdown(result)
        print(result["markdown"], file=sys.stderr)
    return result
