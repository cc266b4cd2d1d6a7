"""`xr0 dataset export-lerobot` and `xr0 dataset import-lerobot`: LeRobotDataset v3 through lerobot itself.

The work happens in `recording.lerobot_bridge`, inside the isolated LeRobot environment
(`app.interop.lerobot_env`); these functions check the paths, run it and print its report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app.compose.config import AppConfig
from app.errors import UserError


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="our Zarr store to export (datasets/NAME.zarr)")
    p.add_argument("--out", required=True, help="new folder for the LeRobot dataset")
    p.add_argument("--repo-id", required=True, help="the dataset's id, user/name (nothing is uploaded)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--video", dest="images", action="store_false", help="cameras as AV1 videos (default)")
    fmt.add_argument("--images", dest="images", action="store_true", help="cameras as PNG images")
    p.set_defaults(images=False)  # videos, LeRobot's usual format (two actions share `images`: say it once)


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True, help="a LeRobot dataset folder (or its local hub-cache snapshot)")
    p.add_argument("--out", required=True, help="the new Zarr store to write (datasets/NAME.zarr)")
    p.add_argument("--repo-id", default=None, help="the dataset's id, if you know it")
    p.add_argument(
        "--drop-features",
        nargs="+",
        default=[],
        metavar="NAME",
        help="leave out features an xr0 store cannot hold (e.g. next.reward) instead of refusing the import",
    )


def _resolve(config: AppConfig, path: str) -> Path:
    return Path(path).expanduser().resolve()


def export_lerobot(args: argparse.Namespace, config: AppConfig) -> int:
    from app.interop.hub import check_repo_id
    from app.interop.lerobot_env import run_bridge

    check_repo_id(args.repo_id)  # LeRobot and the Hub would take nothing else
    dataset, out = _resolve(config, args.dataset), _resolve(config, args.out)
    if not dataset.exists():
        raise UserError(f"--dataset {dataset} does not exist")
    if out.exists():
        raise UserError(f"--out {out} already exists; choose a new folder")
    cmd = ["export", "--dataset", str(dataset), "--out", str(out), "--repo-id", args.repo_id]
    report = run_bridge(cmd + (["--images"] if args.images else []))
    kind = "video" if report["video"] else "images"
    print(
        f"exported {report['episodes']} episode(s), {report['frames']} frames to {out} ({kind}); "
        f"{report['bytes'] / 1e6:.1f} MB (our store: {report['source_bytes'] / 1e6:.1f} MB)"
    )
    print(f"load it with: LeRobotDataset({args.repo_id!r}, root={str(out)!r})")
    return 0


def import_lerobot(args: argparse.Namespace, config: AppConfig) -> int:
    from app.interop.lerobot_env import run_bridge

    src, out = _resolve(config, args.src), _resolve(config, args.out)
    if not src.exists():
        raise UserError(f"--src {src} does not exist")
    if out.exists():
        raise UserError(f"--out {out} already exists; choose a new dataset path")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    cmd = ["import", "--src", str(src), "--out", str(out)]
    cmd += ["--repo-id", args.repo_id] if args.repo_id else []
    cmd += ["--drop-features", *args.drop_features] if args.drop_features else []
    report = run_bridge(cmd)
    print(f"imported {report['episodes']} episode(s), {report['frames']} frames into {out}")
    if report.get("restored") or report.get("episode_attributes"):
        print(
            f"  restored from an xr0 export: {', '.join(report['restored']) or 'no per-step arrays'}"
            + ("; episode attributes (success, seed, …)" if report.get("episode_attributes") else "")
        )
    if report.get("dropped"):
        print(f"  left out: {', '.join(report['dropped'])}")
    return 0
