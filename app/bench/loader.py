"""`xr0 bench loader`: training samples per second from an episode store, beside LeRobot's LeRobotDataset.

A sample is what one training example needs: every view at step t (decoded RGB), the state at t and the
T-step action window t…t+T−1, at random steps. Measured on the same episodes:

- `ours_raw`: our store (`EpisodeStore`: one JPEG per view, numeric arrays cached per episode), one
  process and `--workers` loader processes;
- `ours_pipeline`: the full XR0 training sample (`xr0.data.TrainingSamples`: + augmentation, prompt, image
  processor, normalised targets) through the training DataLoader with `--workers` processes;
- `lerobot`: the same episodes exported with `xr0 dataset export-lerobot` (lerobot 0.4.4 in its isolated
  environment; AV1 video by default, LeRobot's standard) and read with `LeRobotDataset` using
  `delta_timestamps` for the action window — one process and `--workers` processes.

Without `--dataset` a store of synthetic episodes (smooth moving images, JPEG quality 90) is written
first. The LeRobot half runs inside the LeRobot environment as `python -m app.bench.loader --lerobot …`;
this module therefore imports only the standard library at the top.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from app.compose.config import AppConfig

log = logging.getLogger(__name__)

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=None, help="an existing store (default: synthesize one)")
    p.add_argument("--episodes", type=int, default=4, help="synthetic episodes")
    p.add_argument("--episode-steps", type=int, default=150, help="steps per synthetic episode")
    p.add_argument("--width", type=int, default=320, help="synthetic image width")
    p.add_argument("--height", type=int, default=256, help="synthetic image height")
    p.add_argument("--views", type=int, default=3, choices=(1, 2, 3), help="camera views per sample")
    p.add_argument("--horizon", type=int, default=30, help="action window T")
    p.add_argument("--samples", type=int, default=200, help="timed samples per measurement")
    p.add_argument("--workers", type=int, default=2, help="loader processes for the multi-process numbers")
    p.add_argument("--lerobot", choices=("video", "images", "off"), default="video",
                   help="LeRobot export format to compare with (off: skip)")  # fmt: skip
    p.add_argument("--keep", default=None, help="keep the generated store and export in this folder")
    p.add_argument("--content", choices=("shapes", "camera"), default="shapes",
                   help="synthetic images: moving shapes, or camera-like photographs (app/bench/content.py)")  # fmt: skip
    p.add_argument("--archive", action="store_true",
                   help="also compact the store (recording.archive_*) and time the archive tier")  # fmt: skip


# -- a synthetic store ------------------------------------------------------------------------------------
def synthesize(
    path: Path, episodes: int, steps: int, height: int, width: int, views: int, content: str = "shapes"
) -> None:
    """Episodes with every key of the schema: moving coloured shapes on gradients (or camera-like
    photographs, `content="camera"`), random-walk joints."""
    import numpy as np

    from drivers.joints import JOINT_NAMES
    from recording.schema import StoreSpec
    from recording.writer import StoreWriter

    spec = StoreSpec(
        fps=30.0,
        joint_names=JOINT_NAMES,
        cameras={cam: (height, width, 3) for cam in CAMERAS[:views]},
        robot_type="bench",
        jpeg_quality=90,
    )
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    with StoreWriter(path, spec, fsync=False) as writer:
        for e in range(episodes):
            ep = writer.begin_episode({"task": "transfer the cube to the other arm"}, capacity=steps)
            q = rng.normal(0, 0.3, 14)
            photos = None
            if content == "camera":
                from app.bench.content import camera_like

                cams = tuple(spec.cameras)
                photos = camera_like(steps / 30.0, cameras=cams, height=height, width=width, seed=e)
            for t in range(steps):
                q = q + rng.normal(0, 0.01, 14)
                step = {a.key: np.zeros(a.shape, a.dtype) for a in spec.arrays() if not a.image}
                step["timestamp_ns"] = step["action.t_ns"] = t * 33_333_333
                step["tick"] = t
                step["observation.state"] = q
                step["action"] = q + 0.01
                for k, cam in enumerate(spec.cameras):
                    cx, cy = (40 + 3 * t + 50 * k) % width, (height // 2 + 20 * e) % height
                    img = np.stack([(xx * 255 // width), (yy * 255 // height), np.full_like(xx, 60 * k)], -1)
                    img[(xx - cx) ** 2 + (yy - cy) ** 2 < 400] = (200, 30, 30)
                    img = (img + rng.integers(0, 8, img.shape)).astype(np.uint8)
                    step[f"observation.images.{cam}"] = img if photos is None else photos[cam][t]
                    step[f"observation.images.{cam}.index"] = t
                ep.append(step)
            ep.commit()


# -- our side ---------------------------------------------------------------------------------------------
class RawSamples:
    """Decoded views at t, state at t, action window — what LeRobotDataset returns, from our store."""

    def __init__(self, path: str, cameras: Iterable[str], horizon: int) -> None:
        self.path, self.cameras, self.horizon = path, list(cameras), horizon
        self.store = None

    def __len__(self) -> int:
        from recording.reader import EpisodeStore

        return len(EpisodeStore(self.path))

    def __getitem__(self, i: int) -> dict[str, Any]:
        from recording.reader import EpisodeStore

        if self.store is None:  # with the decoded-segment cache a training reader has (archived stores)
            from xr0.data import TRAINING_SEGMENT_CACHE_MB

            self.store = EpisodeStore(self.path, segment_cache_mb=TRAINING_SEGMENT_CACHE_MB)
        return self.store.sample(int(i), self.horizon, [f"observation.images.{c}" for c in self.cameras])


def _rate(fetch: Callable[[Any], object], indices: Sequence[Any]) -> float:
    fetch(indices[0])  # open files, warm caches
    t0 = time.perf_counter()
    for i in indices:
        fetch(i)
    return len(indices) / (time.perf_counter() - t0)


def _loader_rate(
    dataset: Any,
    indices: Sequence[Any],
    workers: int,
    batch: int = 8,
    collate: Callable[[list[Any]], Any] | None = None,
) -> float:
    import torch

    batches = [list(indices[i : i + batch]) for i in range(0, len(indices), batch)]
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate or (lambda samples: samples),
        prefetch_factor=4 if workers else None,
    )
    it = iter(loader)
    next(it)  # workers started and warm
    t0 = time.perf_counter()
    n = 0
    for b in it:
        n += len(b) if isinstance(b, list) else b["state"].shape[0]
    return n / (time.perf_counter() - t0)


def sample_order(path: str, count: int) -> list[int]:
    """The first `count` flat indices a training run would draw from this store: uniformly random for
    per-frame (live) episodes, segment-local for archived ones (`data.segment_window` auto)."""
    from xr0.data import MixtureSchedule, open_sources, segment_order
    from xr0.train_config import DataConfig

    sources = open_sources(DataConfig(datasets=(path,), val_episodes=0), [])
    groups, window = segment_order(sources, -1)
    schedule = MixtureSchedule([len(sources[0].train)], [1.0], 0, groups, window)
    return [schedule[g][1] for g in range(count)]


def _ours(path: str, cameras: Sequence[str], horizon: int, samples: int, workers: int) -> dict:
    import numpy as np

    from xr0.augment import AugmentConfig
    from xr0.data import TrainingSamples, open_sources
    from xr0.policy import RELATIVE_JOINTS, XR0_INDEX
    from xr0.processor import XR0Processor
    from xr0.train_config import DataConfig

    raw = RawSamples(path, cameras, horizon)
    indices = sample_order(path, samples + 8)
    out = {
        "raw_1proc": round(_rate(raw.__getitem__, indices), 1),
        f"raw_{workers}workers": round(_loader_rate(raw, indices, workers), 1),
    }
    std = np.zeros((horizon, 32), np.float32)
    std[:, list(XR0_INDEX)] = 0.1
    processor = XR0Processor.build({"aloha": {"mean": np.zeros_like(std).tolist(), "std": std.tolist()}})
    sources = open_sources(DataConfig(datasets=(path,), val_episodes=0), cameras)
    pipeline = TrainingSamples(
        sources, processor, cameras, np.asarray(RELATIVE_JOINTS), horizon, "aloha", AugmentConfig(), 0
    )
    keys = [(0, i, g) for g, i in enumerate(indices)]
    from xr0.data import Collate

    out[f"pipeline_{workers}workers"] = round(
        _loader_rate(pipeline, keys, workers, collate=Collate(processor)), 1
    )
    out["pipeline_1proc"] = round(_rate(pipeline.__getitem__, keys[: max(16, samples // 4)]), 1)
    return out


def _ours_uniform(path: str, cameras: Sequence[str], horizon: int, samples: int) -> float:
    """Samples/s at uniformly random steps, one process (what segment-local order avoids)."""
    import numpy as np

    raw = RawSamples(path, cameras, horizon)
    indices = np.random.default_rng(0).integers(0, len(raw), max(8, samples // 4)).tolist()
    return round(_rate(raw.__getitem__, indices), 1)


def _image_bytes(path: Path, cameras: Sequence[str]) -> int:
    from app.compose.store import bytes_on_disk

    return sum(
        bytes_on_disk(d / f"observation.images.{cam}")
        for d in (path / "episodes").iterdir()
        for cam in cameras
    )


def _lerobot_video(export: Path, store: Any, cameras: Sequence[str]) -> dict[str, Any]:
    """LeRobot's video files: bytes, and PSNR of every decoded frame against the store's frames (the
    frames LeRobot was given), per camera."""
    import av
    import numpy as np

    out: dict[str, Any] = {"bytes": 0, "psnr_db": {}}
    for cam in cameras:
        files = sorted((export / "videos" / f"observation.images.{cam}").rglob("*.mp4"))
        out["bytes"] += sum(f.stat().st_size for f in files)
        decoded = []
        for f in files:
            with av.open(str(f)) as container:
                decoded += [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
        key = f"observation.images.{cam}"
        ours = np.concatenate([store.get(e, key) for e in store.episodes])
        if len(decoded) != len(ours):
            out["psnr_db"][cam] = f"{len(decoded)} frames decoded for {len(ours)} steps"
            continue
        errors = [np.mean((a.astype(np.float64) - b) ** 2) for a, b in zip(decoded, ours, strict=True)]
        out["psnr_db"][cam] = round(float(10 * np.log10(255.0**2 / np.mean(errors))), 2)
    return out


def _archive(path: Path, out: Path, config: AppConfig) -> dict[str, Any]:
    """A compacted copy of the store (the archive tier with the configured codec)."""
    import shutil

    from recording.compact import ArchiveSettings, compact

    rec = config.recording
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(path, out)
    settings = ArchiveSettings(
        rec.archive_codec, rec.archive_crf, rec.archive_preset, rec.archive_segment_steps
    )
    log.info("compacting a copy to %s crf %d …", settings.codec, settings.crf)
    return {"path": out, "report": compact(out, settings, nice=0).as_dict()}


# -- the LeRobot side (runs inside the LeRobot environment) -------------------------------------------------
def lerobot_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lerobot", required=True)
    p.add_argument("--samples", type=int, required=True)
    p.add_argument("--horizon", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    args = p.parse_args(argv)
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    def open_ds() -> LeRobotDataset:
        meta_fps = json.load(open(f"{args.lerobot}/meta/info.json"))["fps"]
        deltas = {"action": [k / meta_fps for k in range(args.horizon)]}
        return LeRobotDataset(
            "bench/loader", root=args.lerobot, delta_timestamps=deltas, video_backend="pyav"
        )

    ds = open_ds()
    indices = np.random.default_rng(0).integers(0, len(ds), args.samples + 8).tolist()
    sample = ds[indices[0]]
    result = {
        "keys": sorted(k for k in sample if k.startswith(("observation", "action"))),
        "action_shape": list(sample["action"].shape),
        "1proc": round(_rate(ds.__getitem__, indices), 1),
        f"{args.workers}workers": round(_loader_rate(ds, indices, args.workers), 1),
    }
    print(json.dumps(result))


def _lerobot(path: Path, export_dir: Path, fmt: str, samples: int, horizon: int, workers: int) -> dict:
    import os
    import subprocess

    from app.interop.lerobot_env import PROJECT_ROOT, ensure_env, run_bridge

    t0 = time.perf_counter()
    args = ["export", "--dataset", str(path), "--out", str(export_dir), "--repo-id", "bench/loader"]
    report = run_bridge(args + ([] if fmt == "video" else ["--images"]))
    export_s = time.perf_counter() - t0
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [str(ensure_env()), "-m", "app.bench.loader", "--lerobot", str(export_dir)]
    cmd += ["--samples", str(samples), "--horizon", str(horizon), "--workers", str(workers)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"the LeRobot timing failed: {result.stderr.strip().splitlines()[-1:]}")
    out = json.loads(lines[-1])
    out.update(format=fmt, export_s=round(export_s, 1), bytes=report.get("bytes"))
    return out


def bench(args: argparse.Namespace, config: AppConfig) -> dict:
    import shutil
    import tempfile
    from pathlib import Path

    from app.bench import machine
    from app.errors import UserError
    from recording.reader import EpisodeStore

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="xr0-bench-loader-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.dataset:
            path = Path(args.dataset)
            store = EpisodeStore(path)
            cameras = [c for c in CAMERAS if f"observation.images.{c}" in store.key_specs][: args.views]
        else:
            path = work / "bench.zarr"
            if not path.exists():
                log.info("writing %d synthetic episodes of %d steps …", args.episodes, args.episode_steps)
                synthesize(
                    path, args.episodes, args.episode_steps, args.height, args.width, args.views, args.content
                )
            store = EpisodeStore(path)
            cameras = list(CAMERAS[: args.views])
        if len(cameras) < args.views:
            raise UserError(f"--dataset {path} has only {len(cameras)} of the cameras {', '.join(CAMERAS)}")
        shape = store.spec.cameras[cameras[0]]
        result = {
            "bench": "loader",
            "dataset": str(path) if args.dataset else "synthetic",
            "steps": len(store),
            "views": len(cameras),
            "height": shape[0],
            "width": shape[1],
            "horizon": args.horizon,
            "samples": args.samples,
            "workers": args.workers,
        }
        log.info("timing our store …")
        result["ours"] = _ours(str(path), cameras, args.horizon, args.samples, args.workers)
        result["ours"]["image_bytes"] = _image_bytes(path, cameras)
        if args.archive:
            archived = _archive(path, work / "archive.zarr", config)
            result["archive"] = {
                "compact": archived["report"],
                "image_bytes": _image_bytes(archived["path"], cameras),
                "uniform_1proc": _ours_uniform(str(archived["path"]), cameras, args.horizon, args.samples),
                **_ours(str(archived["path"]), cameras, args.horizon, args.samples, args.workers),
            }
        if args.lerobot != "off":
            export = work / f"lerobot-{args.lerobot}"
            shutil.rmtree(export, ignore_errors=True)
            log.info("exporting to LeRobot (%s) and timing LeRobotDataset …", args.lerobot)
            lr = _lerobot(path, export, args.lerobot, args.samples, args.horizon, args.workers)
            if args.lerobot == "video":
                lr["video"] = _lerobot_video(export, store, cameras)
            result["lerobot"] = lr
            ours = result["ours"]
            result["speedup_1proc"] = round(ours["raw_1proc"] / lr["1proc"], 2)
            key = f"{args.workers}workers"
            result[f"speedup_{key}"] = round(ours[f"raw_{key}"] / lr[key], 2)
            if args.archive:
                arc = result["archive"]
                result["archive_speedup_1proc"] = round(arc["raw_1proc"] / lr["1proc"], 2)
                result[f"archive_speedup_{key}"] = round(arc[f"raw_{key}"] / lr[key], 2)
        result["machine"] = machine()
        return result
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # the LeRobot half, inside the LeRobot environment
    lerobot_main(sys.argv[1:])
