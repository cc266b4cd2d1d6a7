"""`xr0 eval` — closed-loop evaluation on held-out simulator seeds (app/runtime/eval.py; docs/eval.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from app.cli.evaluation import SetupError, run_eval
from app.compose.config import AppConfig
from app.errors import UserError
from app.runtime.eval import EpisodeResult, summarize, write_report
from app.runtime.threads import available_cpus
from drivers.sim.aloha import EVAL_SEED_START


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        required=True,
        help="CHECKPOINT | ws://HOST:PORT | scripted | random | hold | replay:STORE.zarr",
    )
    p.add_argument("--episodes", type=int, default=50, help="episodes, one seed each (default 50)")
    p.add_argument(
        "--seed-start",
        type=int,
        default=None,
        help=f"first seed (default {EVAL_SEED_START}; replay: the store's first recorded seed)",
    )
    p.add_argument(
        "--jobs", type=int, default=None, help="processes running episodes (default: the CPU cores)"
    )
    p.add_argument("--mode", choices=("async", "sync"), default="async", help="execution (default async)")
    p.add_argument(
        "--episode-seconds",
        type=float,
        default=None,
        help="a failure after this much control time (default policy.episode_seconds)",
    )
    p.add_argument(
        "--task", default=None, help="instruction (default: the checkpoint's, else policy.instruction)"
    )
    p.add_argument("--videos", type=int, default=10, help="MP4s of the top camera for the first N episodes")
    p.add_argument("--out", default=None, help="report folder (default runs/eval/DATE-TIME)")
    p.add_argument(
        "--allow-train-seeds",
        action="store_true",
        help="evaluate even on seeds the checkpoint was trained on (flagged in the report)",
    )


def run(args: argparse.Namespace, config: AppConfig) -> int:
    if config.robot.type != "sim":
        raise UserError("xr0 eval runs in the simulator: use --robot sim (or robot.type: sim)")
    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    jobs = args.jobs or min(available_cpus(), args.episodes)
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    policy = replace(config.policy, mode=args.mode)
    if args.episode_seconds is not None:
        if args.episode_seconds <= 0:
            raise UserError(f"--episode-seconds must be > 0, got {args.episode_seconds}")
        policy = replace(policy, episode_seconds=args.episode_seconds)
    if args.task:
        policy = replace(policy, instruction=args.task)
    config = replace(config, policy=policy, control=replace(config.control, sim_timing="lockstep"))
    seeds, overlap = choose_seeds(args, config)
    out = Path(args.out) if args.out else Path("runs") / "eval" / time.strftime("%Y%m%d-%H%M%S")
    header = {
        "policy": args.policy,
        "mode": args.mode,
        "task": config.robot.sim.task,
        "instruction": config.policy.instruction,
        "episode_seconds": config.policy.episode_seconds,
        "seeds": [seeds[0], seeds[-1]],
        "train_seed_overlap": overlap,
        "jobs": jobs,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(
        f"evaluating {args.policy} on {len(seeds)} episodes (seeds {seeds[0]}…{seeds[-1]}), "
        f"{args.mode} mode, {jobs} process(es) → {out}",
        flush=True,
    )
    bar = _Progress(len(seeds))
    t0 = time.perf_counter()
    try:
        results, ended = run_eval(config, args.policy, seeds, out, jobs, args.videos, bar.update)
    except SetupError as e:
        raise UserError(str(e)) from None
    finally:
        bar.close()
    fps = config.control.fps
    totals = summarize(results, fps, config.robot.sim.task)
    totals["wall_s"] = round(time.perf_counter() - t0, 1)
    header["ended"] = ended
    path = write_report(out, header, results, totals)
    from app.viz.plots import eval_png

    png = eval_png(out / "eval.png", f"xr0 eval: {args.policy}", results, totals, config.robot.sim.task)
    _print(totals, path, png, out)
    print(json.dumps({"policy": args.policy, "ended": ended, **totals, "report": str(path)}))
    return 130 if ended == "interrupted" else 0


def choose_seeds(args: argparse.Namespace, config: AppConfig) -> tuple[list[int], list[int]]:
    """The evaluation's seeds, and those of them a checkpoint was trained on (refused unless allowed).
    A replay evaluates on the seeds its store recorded, by definition."""
    from app.compose.policies import REPLAY

    if args.policy.startswith(REPLAY):
        from recording.reader import recorded_seeds

        store = Path(args.policy.removeprefix(REPLAY)).expanduser()
        try:
            recorded = sorted(recorded_seeds(store if store.exists() else config.resolve(store)))
        except (OSError, ValueError) as e:
            raise UserError(f"--policy {args.policy}: {e}") from e
        if args.seed_start is not None:
            recorded = [s for s in recorded if s >= args.seed_start]
        if not recorded:
            raise UserError(f"--policy {args.policy}: the store has no recorded seeds to replay")
        return recorded[: args.episodes], []
    start = EVAL_SEED_START if args.seed_start is None else args.seed_start
    seeds = list(range(start, start + args.episodes))
    trained = _trained_seeds(args.policy, config)
    overlap = sorted(set(seeds) & trained)
    if overlap and not args.allow_train_seeds:
        raise UserError(
            f"seeds {overlap[0]}…{overlap[-1]} ({len(overlap)} of them) were used to train {args.policy}: "
            f"start above them (--seed-start {max(trained) + 1}) or pass --allow-train-seeds"
        )
    if overlap:
        print(f"warning: {len(overlap)} of the seeds were used in training (--allow-train-seeds)", flush=True)
    return seeds, overlap


def _trained_seeds(source: str, config: AppConfig) -> set[int]:
    """The training seeds a checkpoint's contract lists; a checkpoint without a contract is checked against
    the stores its training.json names, where they still exist."""
    from xr0.contract import ContractError, DeployContract

    path = Path(source).expanduser()
    if not path.is_dir():
        return set()
    try:
        contract = DeployContract.load(path)
    except ContractError as e:
        raise UserError(f"--policy {source}: {e}") from e
    if contract is not None:
        return set(contract.seeds)
    info = path / "training.json"
    seeds: set[int] = set()
    if info.is_file():
        from recording.reader import recorded_seeds

        for d in json.loads(info.read_text()).get("datasets", []):
            try:
                seeds |= recorded_seeds(d["path"])
            except (OSError, ValueError, KeyError):
                print(f"warning: cannot read the training store {d.get('path')} to check seed overlap")
    return seeds


def _print(t: dict, path: Path, png: Path, out: Path) -> None:
    rate = "—" if t["success_rate"] is None else f"{t['success_rate']:.0%}"
    lo, hi = t["wilson95"]
    print(f"success: {t['successes']}/{t['ran']} = {rate} (95 % Wilson interval {lo:.0%}–{hi:.0%})")
    print(
        "stages reached: " + ", ".join(f"{k} {v:.0%}" for k, v in t["stage_rates"].items() if v is not None)
    )
    if t["time_to_success_s"]:
        print(
            f"time to success (median): {t['time_to_success_s']['median']:.2f} s; tasks/min {t['tasks_per_min']:.2f}"
        )
    c = t["chunks"]
    print(
        f"chunks: {c['requested']} requested, {c['used']} used, {c['rejected']} rejected, {c['errors']} errors; clamps {t['clamps']}"
    )
    if t["latency_ms"]:
        print(f"inference latency p50 {t['latency_ms']['p50']:.1f} ms, p99 {t['latency_ms']['p99']:.1f} ms")
    print(f"outcomes: {t['reasons']}; {t['wall_s']:.0f} s wall")
    print(
        f"report: {path}; plot: {png}" + (f"; videos: {out / 'videos'}" if (out / "videos").exists() else "")
    )


class _Progress:
    """A progress bar on a terminal; one line per finished episode otherwise (CI, pipes)."""

    def __init__(self, total: int) -> None:
        self.tty = sys.stderr.isatty()
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="episode", dynamic_ncols=True)
        self.successes = 0

    def update(self, result: EpisodeResult, done: int, total: int) -> None:
        self.successes += result.success
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"success {self.successes}/{done}")
        else:
            print(f"  [{done}/{total}] seed {result.seed}: {result.reason}, stage {result.stage}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
