"""Convert between our Zarr episode stores and LeRobotDataset v3 — through the `lerobot` library itself.

Runs only inside the isolated LeRobot environment (`app/interop/lerobot_env.py` creates it and starts this as
`python -m recording.lerobot_bridge …`): lerobot pins older torch/rerun than the project. Besides lerobot
it needs only what our store needs (numpy, zarr, imagecodecs). Progress goes to stderr; the last line on
stdout is one JSON report (or {"error": "…"} with one sentence).

    export  --dataset X.zarr --out DIR --repo-id user/name [--images]
    import  --src DIR --out Y.zarr [--repo-id user/name]
    verify  --dataset X.zarr --lerobot DIR        (load DIR with LeRobotDataset; compare with X.zarr)

Mapping (ours → LeRobot): observation.state, observation.velocity, observation.effort, action → float32
vectors with the joint names; observation.images.<cam> → video (AV1 through lerobot's encoder) or PNG
images; the episode's task string; fps and robot type; our tick deadlines as `timestamp_ns` (int64), so
the real timing survives next to LeRobot's nominal `frame_index / fps` timestamps; every other per-step
array of ours (leader command, loop lateness, clamp/reject counters, capture times) as an `xr0.<key>`
feature, and the episodes' attributes (success, seed, outcome, …) in meta/xr0_episodes.jsonl. `import`
restores all of it; another dataset's features we cannot hold are refused unless `--drop-features` names them.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from recording.progress import progress_iter
from recording.reader import EpisodeStore
from recording.schema import StoreError, StoreSpec
from recording.writer import StoreWriter

log = logging.getLogger("xr0.lerobot_bridge")
# Our other per-step arrays (leader command, loop counters, capture times) travel as LeRobot features named
# EXTRA_PREFIX + our key, and the episodes' attributes (success, seed, outcome, …) as EPISODES_FILE in meta/,
# a file LeRobot leaves alone; `import` restores both.
EXTRA_PREFIX = "xr0."
EPISODES_FILE = "xr0_episodes.jsonl"
# Episode attributes the store computes itself on commit (never carried over).
STORE_MANAGED = {
    "status", "index", "fps", "flushed_steps", "length", "duration_s", "loop_rate_hz", "rate_ok",
    "skipped_ticks", "clamped_ticks", "rejected_ticks", "repeated_frames", "end_time_utc", "start_time_utc",
}  # fmt: skip
VECTOR_KEYS = ("observation.state", "observation.velocity", "observation.effort", "action")
IMAGE_PREFIX = "observation.images."
# LeRobot features we add ourselves, or that LeRobot manages.
LEROBOT_MANAGED = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
TIMESTAMP_NS = "timestamp_ns"


class BridgeError(Exception):
    """One sentence for the operator."""


def _progress(iterable, total: int, desc: str):
    return progress_iter(iterable, total, desc, "episode", file=sys.stderr)  # the bridge logs only warnings


# -- export -------------------------------------------------------------------------------------------------
def extra_name(key: str) -> str:
    """Our key as a LeRobot feature name. LeRobot treats any name containing "observation.images" as an
    image (its statistics checks fail on a capture-time column), so cameras are spelled "camera." there."""
    return EXTRA_PREFIX + key.replace(IMAGE_PREFIX, "camera.")


def key_of_extra(name: str) -> str:
    return name[len(EXTRA_PREFIX) :].replace("camera.", IMAGE_PREFIX, 1)


def extra_keys(store: EpisodeStore) -> list[str]:
    """Our per-step arrays beyond LeRobot's own features: everything but the images, the vectors LeRobot
    names itself and the timestamp (which goes as TIMESTAMP_NS)."""
    cams = {IMAGE_PREFIX + cam for cam in store.spec.cameras}
    return [k for k in store.key_specs if k not in cams and k not in VECTOR_KEYS and k != TIMESTAMP_NS]


def _extra_feature(spec, names: list[str]) -> dict[str, Any]:
    shape = tuple(spec.shape) or (1,)
    floating = np.dtype(spec.dtype).kind == "f"
    return {
        "dtype": "float32" if floating else "int64",
        "shape": shape,
        "names": names if len(shape) == 1 and shape[0] == len(names) else None,
    }


def lerobot_features(store: EpisodeStore, video: bool) -> dict[str, dict[str, Any]]:
    names = list(store.spec.joint_names)
    feats: dict[str, dict[str, Any]] = {}
    for key in VECTOR_KEYS:
        if key in store.key_specs:
            feats[key] = {"dtype": "float32", "shape": (len(names),), "names": names}
    for key in extra_keys(store):
        feats[extra_name(key)] = _extra_feature(store.key_specs[key], names)
    for cam, (h, w, c) in store.spec.cameras.items():
        feats[IMAGE_PREFIX + cam] = {
            "dtype": "video" if video else "image",
            "shape": (h, w, c),
            "names": ["height", "width", "channels"],
        }
    feats[TIMESTAMP_NS] = {"dtype": "int64", "shape": (1,), "names": None}
    return feats


def export(dataset: Path, out: Path, repo_id: str, video: bool) -> dict[str, Any]:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    store = EpisodeStore(dataset)
    if not store.episodes:
        raise BridgeError(f"dataset {dataset} has no committed episodes to export")
    if out.exists():
        raise BridgeError(f"--out {out} already exists; choose a new folder (LeRobot creates it)")
    feats = lerobot_features(store, video)
    ds = LeRobotDataset.create(
        repo_id=repo_id,
        fps=round(store.fps),
        features=feats,
        root=out,
        robot_type=store.spec.robot_type,
        use_videos=video,
    )
    frames = 0
    for ep in _progress(store.episodes, len(store.episodes), "export"):
        n = store.length(ep)
        task = store.info(ep).get("task") or "unspecified task"
        vectors = {k: store.get(ep, k).astype(np.float32) for k in VECTOR_KEYS if k in store.key_specs}
        for key in extra_keys(store):
            f = feats[extra_name(key)]
            values = store.get(ep, key).astype(np.float32 if f["dtype"] == "float32" else np.int64)
            vectors[extra_name(key)] = values.reshape(n, *f["shape"])
        stamps = store.get(ep, "timestamp_ns").astype(np.int64)
        for t in range(n):
            frame: dict[str, Any] = {k: v[t] for k, v in vectors.items()}
            for cam in store.spec.cameras:
                frame[IMAGE_PREFIX + cam] = store.get(ep, IMAGE_PREFIX + cam, t)
            frame[TIMESTAMP_NS] = stamps[t : t + 1]
            frame["task"] = task
            ds.add_frame(frame)
        ds.save_episode()
        frames += n
    ds.finalize()
    with open(out / "meta" / EPISODES_FILE, "w") as f:  # success, seed, outcome, …: restored on import
        for ep in store.episodes:
            info = {k: v for k, v in store.info(ep).items() if k not in STORE_MANAGED}
            f.write(json.dumps({"source_episode": ep, **info}, default=_plain) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {
        "episodes": len(store.episodes),
        "frames": frames,
        "out": str(out),
        "repo_id": repo_id,
        "video": video,
        "bytes": size,
        "source_bytes": sum(f.stat().st_size for f in dataset.rglob("*") if f.is_file()),
    }


def _plain(value: Any) -> Any:
    """numpy scalars/arrays in episode attributes, as JSON."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


# -- reading LeRobot datasets ----------------------------------------------------------------------------------
def _open_lerobot(root: Path, repo_id: str | None):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if not (root / "meta" / "info.json").is_file():
        raise BridgeError(
            f"{root} is not a LeRobot dataset (no meta/info.json); pass the dataset's folder, e.g. "
            "~/.cache/huggingface/lerobot/USER/NAME after `huggingface-cli download --repo-type dataset USER/NAME`"
        )
    # PyAV bundles its own FFmpeg; torchcodec would need system FFmpeg libraries.
    return LeRobotDataset(repo_id or f"local/{root.name}", root=root, video_backend="pyav")


def _to_uint8_hwc(image: Any) -> np.ndarray:
    """LeRobot returns images as float CHW in [0, 1]; our store holds uint8 HWC."""
    arr = np.asarray(image.numpy() if hasattr(image, "numpy") else image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
    return arr


def _episode_rows(ds, episode: int) -> range:
    ep = ds.meta.episodes[episode]
    return range(int(ep["dataset_from_index"]), int(ep["dataset_to_index"]))


def unsupported_features(features: dict[str, dict[str, Any]], drop: tuple[str, ...] = ()) -> list[str]:
    """Features an xr0 store cannot hold (each with why), leaving out those the user chose to `drop`."""
    bad = []
    for key, f in features.items():
        if key in LEROBOT_MANAGED or key == TIMESTAMP_NS or key in drop or key.startswith(EXTRA_PREFIX):
            continue
        if key in VECTOR_KEYS:
            if f["dtype"] not in ("float32", "float64") or len(f["shape"]) != 1:
                bad.append(f"{key} ({f['dtype']} {tuple(f['shape'])}: a flat float vector is needed)")
        elif key.startswith(IMAGE_PREFIX):
            shape = tuple(f["shape"])
            if f["dtype"] not in ("image", "video") or 3 not in (shape[0], shape[-1]):
                bad.append(f"{key} ({f['dtype']} {shape}: only RGB images/videos are stored)")
        else:
            bad.append(f"{key} ({f['dtype']} {tuple(f['shape'])})")
    return bad


def import_(src: Path, out: Path, repo_id: str | None, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    ds = _open_lerobot(src, repo_id)
    missing = [name for name in drop if name not in ds.meta.features]
    if missing:
        raise BridgeError(f"--drop-features: {src} has no feature {', '.join(missing)}")
    feats = {k: v for k, v in ds.meta.features.items() if k not in drop}
    bad = unsupported_features(feats)
    if bad:
        raise BridgeError(
            f"{src} has features an xr0 store cannot represent: {'; '.join(bad)} "
            "(leave them out with --drop-features NAME …)"
        )
    for key in ("observation.state", "action"):
        if key not in feats:
            raise BridgeError(f"{src} has no {key} feature; an xr0 store needs observation.state and action")
    dims = {key: int(feats[key]["shape"][0]) for key in VECTOR_KEYS if key in feats}
    if len(set(dims.values())) != 1:
        raise BridgeError(f"{src}: the vector features have different lengths {dims}; they must match")
    n_joints = dims["observation.state"]
    names = feats["observation.state"].get("names")
    if isinstance(names, dict):  # some datasets nest the names: {"motors": [...]}
        names = next(iter(names.values()), None)
    joint_names = (
        tuple(names) if names and len(names) == n_joints else tuple(f"joint_{i}" for i in range(n_joints))
    )
    cameras = {}
    for key, f in feats.items():
        if key.startswith(IMAGE_PREFIX):
            shape = tuple(int(s) for s in f["shape"])
            cameras[key[len(IMAGE_PREFIX) :]] = shape if shape[-1] == 3 else (shape[1], shape[2], shape[0])
    if out.exists():
        raise BridgeError(f"--out {out} already exists; choose a new dataset path")
    spec = StoreSpec(
        fps=float(ds.fps),
        joint_names=joint_names,
        cameras=cameras,
        robot_type=str(ds.meta.robot_type or "unknown"),
        velocity="observation.velocity" in feats,
        effort="observation.effort" in feats,
        leader=extra_name("leader.action") in feats,
        image_codec="png",  # lossless: never add a second lossy step on top of the source's encoding
        extra={"imported_from": str(src)},
    )
    episode_info = _episode_file(src)
    try:
        frames, restored = _import_episodes(ds, feats, cameras, spec, out, episode_info)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # a new store we created: leave nothing half-written behind
        raise
    return {
        "episodes": ds.meta.total_episodes,
        "frames": frames,
        "out": str(out),
        "joints": len(joint_names),
        "restored": sorted(restored),
        "episode_attributes": bool(episode_info),
        "dropped": list(drop),
    }


def _episode_file(root: Path) -> list[dict[str, Any]]:
    """The episodes' attributes an xr0 export wrote (EPISODES_FILE), or none for another dataset."""
    path = root / "meta" / EPISODES_FILE
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as e:
        raise BridgeError(
            f"{path} is not JSON lines ({e}); remove it to import without episode attributes"
        ) from e


def _import_episodes(
    ds, feats: dict, cameras: dict, spec: StoreSpec, out: Path, episode_info: list[dict[str, Any]]
) -> tuple[int, set[str]]:
    frames = 0
    arrays = {a.key: a for a in spec.arrays()}
    extras = [key_of_extra(k) for k in feats if k.startswith(EXTRA_PREFIX)]
    restored = {k for k in extras if k in arrays}
    with StoreWriter(out, spec) as writer:
        episodes = list(range(ds.meta.total_episodes))
        for ep in _progress(episodes, len(episodes), "import"):
            rows = _episode_rows(ds, ep)
            numeric = ds.hf_dataset.select(list(rows)).with_format("numpy")
            tasks = (
                [ds.meta.tasks.index[i] for i in numeric["task_index"]]
                if "task_index" in numeric.column_names
                else []
            )
            if TIMESTAMP_NS in numeric.column_names:
                stamps = np.asarray(numeric[TIMESTAMP_NS]).reshape(-1).astype(np.int64)
            else:
                stamps = np.round(np.asarray(numeric["timestamp"], dtype=np.float64) * 1e9).astype(np.int64)
            info = episode_info[ep] if ep < len(episode_info) else {}
            attrs = {"task": tasks[0] if tasks else "", "source_episode": ep}
            attrs.update({k: v for k, v in info.items() if k not in STORE_MANAGED})
            episode = writer.begin_episode(attrs, capacity=len(rows))
            for j, row in enumerate(rows):
                item = ds[row] if cameras else None
                step: dict[str, Any] = {
                    "timestamp_ns": stamps[j],
                    "tick": j,
                    "lateness_ns": 0,
                    "observation.state.t_ns": stamps[j],
                    "action.t_ns": stamps[j],
                    "action.clamped": 0,
                    "action.rejected": False,
                }
                for key in VECTOR_KEYS:
                    if key in feats:
                        step[key] = np.asarray(numeric[key][j], dtype=np.float64)
                for cam in cameras:
                    step[IMAGE_PREFIX + cam] = _to_uint8_hwc(item[IMAGE_PREFIX + cam])
                    step[f"{IMAGE_PREFIX}{cam}.t_ns"] = stamps[j]
                    step[f"{IMAGE_PREFIX}{cam}.index"] = j
                if spec.leader:
                    step["leader.t_ns"] = stamps[j]
                for key in restored:  # our own arrays, as exported (capture times, counters, leader)
                    a = arrays[key]
                    value = np.asarray(numeric[extra_name(key)][j]).astype(a.dtype)
                    step[key] = value.reshape(a.shape)
                episode.append(step)
            episode.commit({"success": info.get("success")})
            frames += len(rows)
    return frames, restored


# -- verify ------------------------------------------------------------------------------------------------------
def verify(dataset: Path, root: Path) -> dict[str, Any]:
    """Load an export with LeRobotDataset and compare it with the store it came from."""
    store = EpisodeStore(dataset)
    ds = _open_lerobot(root, None)
    if ds.meta.total_episodes != len(store.episodes):
        raise BridgeError(
            f"{root} has {ds.meta.total_episodes} episodes, {dataset} has {len(store.episodes)}"
        )
    vector_max_abs = {k: 0.0 for k in VECTOR_KEYS if k in store.key_specs}
    worst_pixel, sq_err, pixels, frames, tasks_equal = 0, 0.0, 0, 0, True
    for k_ep, ep in enumerate(store.episodes):
        rows = _episode_rows(ds, k_ep)
        if len(rows) != store.length(ep):
            raise BridgeError(f"episode {ep}: {len(rows)} frames in LeRobot, {store.length(ep)} in the store")
        numeric = ds.hf_dataset.select(list(rows)).with_format("numpy")
        for key in vector_max_abs:
            theirs = np.asarray(numeric[key], dtype=np.float32)
            ours = store.get(ep, key).astype(np.float32)
            vector_max_abs[key] = max(vector_max_abs[key], float(np.max(np.abs(theirs - ours))))
        for j, row in enumerate(rows):
            item = ds[row]
            tasks_equal &= item["task"] == (store.info(ep).get("task") or "unspecified task")
            for cam in store.spec.cameras:
                theirs = _to_uint8_hwc(item[IMAGE_PREFIX + cam]).astype(np.int32)
                ours = store.get(ep, IMAGE_PREFIX + cam, j).astype(np.int32)
                diff = theirs - ours
                worst_pixel = max(worst_pixel, int(np.abs(diff).max()))
                sq_err += float((diff.astype(np.float64) ** 2).sum())
                pixels += diff.size
            frames += 1
    mse = sq_err / max(pixels, 1)
    return {
        "episodes": len(store.episodes),
        "frames": frames,
        "fps": ds.fps,
        "robot_type": ds.meta.robot_type,
        "vector_max_abs_diff": vector_max_abs,
        "tasks_equal": bool(tasks_equal),
        "image_max_abs_diff": worst_pixel,
        "image_psnr_db": float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse)),
    }


def _report(obj: dict[str, Any]) -> None:
    """The bridge's answer to `app.interop.lerobot_env`: one JSON object, the last line on stdout."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    p = argparse.ArgumentParser(prog="python -m recording.lerobot_bridge")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--dataset", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--repo-id", required=True)
    e.add_argument("--images", action="store_true", help="PNG images instead of AV1 videos")
    i = sub.add_parser("import")
    i.add_argument("--src", type=Path, required=True)
    i.add_argument("--out", type=Path, required=True)
    i.add_argument("--repo-id", default=None)
    i.add_argument("--drop-features", nargs="+", default=[])
    v = sub.add_parser("verify")
    v.add_argument("--dataset", type=Path, required=True)
    v.add_argument("--lerobot", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        if args.cmd == "export":
            report = export(args.dataset, args.out, args.repo_id, video=not args.images)
        elif args.cmd == "import":
            report = import_(args.src, args.out, args.repo_id, tuple(args.drop_features))
        else:
            report = verify(args.dataset, args.lerobot)
    except (BridgeError, StoreError) as err:
        _report({"error": str(err)})
        return 1
    except Exception as err:  # noqa: BLE001 - lerobot/SDK failures: report them as one sentence
        log.exception("the LeRobot bridge failed")
        _report({"error": f"{args.cmd} failed inside lerobot: {type(err).__name__}: {err}"})
        return 1
    _report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
