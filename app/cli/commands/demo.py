"""`xr0 demo` — the lab loop in one command on the simulator (the README's main job).

(a) record transfer-cube demonstrations with the scripted teleoperator into `datasets/demo.zarr`
    (grasp offsets of `robot.scripted.position_noise_m`, 5 mm by default here, for variety) — the top
    camera only, 9 s each, except with `--full` (three cameras, `datasets/demo-full.zarr`) — in as many
    processes as there are cores (two on two), the simulator's rendering being most of the time;
(b) fine-tune a `tiny` XR0 on them from scratch (all of it, async post-training) for a fixed number of
    steps — never a wall-clock budget, so a busy machine makes the demo slower, not worse; it states
    the expected time up front, measures its own speed after a few steps and says plainly when the
    machine is too slow for the budget;
(c) serve the checkpoint (`xr0 serve`, its own process) and evaluate it closed-loop over the wire on
    held-out seeds (`xr0 eval`: success per stage, videos), beside the scripted demonstrator and a random
    policy on the same seeds;
(d) report: the table, the loss and vision-dependence figures, every artefact, and what to try next.

`--quick` is a ~2-minute smoke version; `--full` trains on 50 demonstrations for 8000 steps (rung (c) of
the diagnostics ladder in docs/eval.md; its measured result is in docs/benchmarks.md). Every recipe trains
with what made the image rung look: absolute joint targets, state dropout, the episodes' starts drawn 5×
as often and the keyframe loss (docs/training.md). Every stage can be skipped or pointed at existing artefacts. A second run
reuses what the first one made (the store, a finished training run with the same recipe, the baselines).
CPU only, nothing downloaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from app.compose.config import AppConfig
from app.errors import UserError, prog
from app.runtime.threads import available_cpus
from drivers.sim.aloha import EVAL_SEED_START
from drivers.sim.scripted import ScriptedConfig

if TYPE_CHECKING:
    from app.cli.recording import RecordPlan
    from app.runtime.eval import EpisodeResult

log = logging.getLogger(__name__)
HELD_OUT_SEED = EVAL_SEED_START  # evaluations start here: never a seed the demonstrations were recorded on
# MP4s of the learned policy's first episodes: each renders the top camera at every tick (~2 s of a CPU per
# episode, where the policy alone renders only on its ~15 requests); `xr0 eval --videos N` makes more.
DEMO_VIDEOS = 4
# The share of a recipe's minutes its training may take: recording in two processes and the evaluation with
# its baselines take ~1 and ~0.7 minutes of the default's 10 (docs/benchmarks.md, "Thirteenth session").
TRAINING_SHARE = 0.8
SPEED_CHECK_STEPS = 100  # the demo's training speed is judged after this many steps (~15 s)


@dataclass(frozen=True)
class Recipe:
    episodes: int  # demonstrations recorded (the last `val_episodes` are held out of training)
    steps: int  # optimiser steps (batch 8)
    eval_episodes: int  # held-out seeds evaluated
    minutes: float  # what it should take on an idle 2-core machine, all stages
    max_pixels: int = 20480  # image budget per view (160×128 for 320×240 cameras: 20 tokens)
    val_episodes: int = 2
    eval_seconds: float = 15.0  # an evaluation episode not done by then is a failure
    cameras: tuple[str, ...] = ()  # recorded and trained on (empty: every camera of the config)
    dataset: str = "datasets/demo.zarr"  # the recipe's store (--dataset overrides)
    # DiT passes per VLM pass, and whether each gets its own reweighting generation (the official recipe:
    # 4, yes). 2 with one shared generation makes a step ~1.4× cheaper (docs/benchmarks.md, "Eleventh session")
    training_repeat: int = 4
    reweight_per_copy: bool = True
    # Length of a demonstration, s (None: robot.scripted.episode_seconds); the scripts end by 8.6 s
    episode_seconds: float | None = None
    # Image augmentation: random crop side and the probability of each colour op (None: config.yaml's)
    crop_scale: float | None = None
    colour_jitter: float | None = None


# Training options of every recipe: absolute joint targets, state dropout 0.3, the first 2 s of each
# episode drawn 4 extra times, the keyframe loss (docs/training.md).
LOOKING = [
    "--absolute-actions",
    "--state-dropout",
    "0.3",
    "--start-emphasis",
    "60",
    "4",
    "--keyframe-loss",
    "1.0",
]

# The named recipes (measured in docs/benchmarks.md; `--episodes/--steps/--eval-episodes` override).
# The default and quick recipes record and train on the top camera only (as ACT's simulated transfer-cube
# does): recording is ~2.5× faster, a training step ~1.3× faster, and the image rung looks ~2× sooner — reach
# spread 0.51 at 1000 steps against 0.07 with three views (docs/benchmarks.md, "Tenth session").
TOP = ("cam_high",)
# Two DiT copies per VLM pass with one shared reweighting generation: a step ~1.4× cheaper than the official
# four with a generation each; with the augmentation on, 16 % of 50 held-out seeds after 2800 steps and 36 %
# after 4000 (docs/benchmarks.md, "Eleventh session"). The recipe pins both (config.yaml's
# `train.training_repeat` does not apply to the demo); `--full` keeps the official recipe it was measured with.
LIGHT_DIT = {"training_repeat": 2, "reweight_per_copy": False}
# No image augmentation: the simulator's camera never moves and its light never changes, so a random crop
# only shifts the cube by up to half a patch (8 pixels) of the 160×128 view — noise the policy
# must learn around — and colour jitter changes what never changes at deployment. Without them the
# default recipe reached 22 % of 50 held-out seeds after 2800 steps (16 % twice with them), and the
# default's 3300 steps on 9-s demonstrations 38, 36 and 26 % in three runs (docs/benchmarks.md,
# "Thirteenth session"). A real rig's cameras move a little between sessions: `xr0 train` keeps the
# augmentation on by default, and so does `--full`.
FIXED_CAMERA = {"crop_scale": 1.0, "colour_jitter": 0.0}
QUICK = Recipe(
    2, 20, 2, 2, max_pixels=4096, val_episodes=0, eval_seconds=4, cameras=TOP, **LIGHT_DIT, **FIXED_CAMERA
)
RECIPES = {  # Recipe(episodes, steps, eval_episodes, minutes, …)
    "quick": QUICK,
    "default": Recipe(
        episodes=32,
        steps=3300,
        eval_episodes=10,
        minutes=10,
        cameras=TOP,
        episode_seconds=9.0,
        **LIGHT_DIT,
        **FIXED_CAMERA,
    ),
    "full": Recipe(60, 8000, 50, 65, val_episodes=10, dataset="datasets/demo-full.zarr"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a ~2-minute smoke version (tests, a first look)")
    size.add_argument(
        "--full",
        action="store_true",
        help="the recipe that solves the task (~65 min on 2 cores, 55 of them training)",
    )
    p.add_argument(
        "--episodes", type=int, default=None, help="demonstrations to record (default: the recipe's)"
    )
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--eval-episodes", type=int, default=None, help="held-out seeds to evaluate")
    p.add_argument("--jobs", type=int, default=None, help="evaluation processes (default: the CPU cores)")
    p.add_argument(
        "--dataset",
        default=None,
        help="the demo's store, reused if it has enough (default: datasets/demo.zarr; --full: datasets/demo-full.zarr)",
    )
    p.add_argument("--checkpoint", default=None, help="use this checkpoint instead of training one")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its artefacts")
    p.add_argument("--retrain", action="store_true", help="train again even if --out holds a finished run")
    for stage in ("record", "train", "eval"):
        p.add_argument(f"--skip-{stage}", action="store_true", help=f"skip the {stage} stage")


def demo_cameras(config: AppConfig, cameras: tuple[str, ...]) -> AppConfig:
    """The config with only the recipe's cameras (all of them when the recipe names none)."""
    if not cameras:
        return config
    missing = [c for c in cameras if c not in config.cameras]
    if missing:
        raise UserError(
            f"the demo records and trains on {', '.join(cameras)}, but the config's cameras are "
            f"{', '.join(config.cameras) or 'none'}: add {', '.join(missing)} under cameras"
        )
    return replace(config, cameras={c: config.cameras[c] for c in cameras})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def record_stage(config: AppConfig, path: Path, episodes: int, jobs: int = 1) -> dict:
    """Record up to `episodes` scripted demonstrations into `path`, in up to `jobs` processes (the
    simulator renders on the CPU: ~8 ms a frame, most of a recording's time)."""
    from recording.reader import EpisodeStore
    from recording.schema import StoreError

    for side in sorted(path.parent.glob(f"{path.stem}{SIDE_MARK}*.zarr")):  # left by an interrupted demo
        _adopt(path, side)
    have = 0
    if path.exists():
        try:
            store = EpisodeStore(path)
        except StoreError as e:
            raise UserError(f"{e}; remove it or pass another --dataset") from None
        held = sorted(k.removeprefix("observation.images.") for k in store.image_keys)
        if held != sorted(config.cameras):
            raise UserError(
                f"{path} holds the cameras {', '.join(held) or 'none'}; this demo records "
                f"{', '.join(config.cameras)}: remove it or pass another --dataset"
            )
        have = len(store.episodes)
    if have < episodes:
        path.parent.mkdir(parents=True, exist_ok=True)
        _record_split(config, path, episodes - have, jobs)
    else:
        print(f"reusing {path}: it already has {have} episode(s)")
    store = EpisodeStore(path)
    successes = sum(bool(store.info(e).get("success")) for e in store.episodes)
    return {
        "path": str(path),
        "episodes": len(store.episodes),
        "steps": int(store.lengths.sum()),
        "successes": successes,
    }


# DIR/demo.side1.zarr: a store a second recording process fills, whose episodes then move into DIR/demo.zarr
SIDE_MARK = ".side"
EPISODES_PER_PROCESS = 4  # fewer than this per extra process is not worth its start-up (~3 s)


def _record_split(config: AppConfig, path: Path, count: int, jobs: int) -> None:
    """Record `count` demonstrations on consecutive seeds: the first share here, the others in side
    processes into side stores, whose episodes are then moved into `path` in seed order — the same store
    a single process would have written, in about 1/jobs of the time."""
    import multiprocessing

    from app.cli.recording import RecordPlan, first_seed, record
    from app.compose.store import default_task

    task, seconds = default_task(config), config.robot.scripted.episode_seconds
    seed, warnings = first_seed(path, None, config.robot.sim.seed, count)
    for line in warnings:
        print(line)
    n = max(1, min(jobs, count // EPISODES_PER_PROCESS))
    shares = [count // n + (k < count % n) for k in range(n)]
    starts = [seed + sum(shares[:k]) for k in range(n)]
    sides = [path.with_name(f"{path.stem}{SIDE_MARK}{k}.zarr") for k in range(1, n)]
    where = f" in {n} processes" if n > 1 else ""
    print(f"recording {count} scripted demonstration(s) into {path}{where} …", flush=True)
    # a fresh interpreter for each side process: MuJoCo's GL context does not survive a fork
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for side, share, start in zip(sides, shares[1:], starts[1:], strict=True):
        plan = RecordPlan(side, task, share, seconds, 0.0, seed=start)
        log_path = side.with_suffix(".log")
        procs.append(ctx.Process(target=_record_side, args=(config, plan, log_path), name=side.stem))
        procs[-1].start()
        print(f"  seeds {start}…{start + share - 1} in another process (its log: {log_path})")
    try:
        record(config, RecordPlan(path, task, shares[0], seconds, 0.0, seed=seed))
    finally:
        for proc in procs:
            proc.join()
        for side in sides:
            if side.exists():
                _adopt(path, side)
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        raise UserError(
            f"the side recording process {', '.join(failed)} failed; its log is beside {path}. "
            "What it recorded was kept: run the demo again to record the rest"
        )


def _record_side(config: AppConfig, plan: RecordPlan, log_path: Path) -> None:
    """A side recording process: the session's lines go to its log, not the terminal."""
    from app.cli.recording import record
    from app.runtime import terminal as keys

    with open(log_path, "w") as out, open(os.devnull, "w") as err:
        try:
            record(config, plan, console=keys.Console(out, err))
        except KeyboardInterrupt:  # Ctrl-C reached the whole process group: the main process reports it
            sys.exit(130)
    log_path.unlink(missing_ok=True)


def _adopt(path: Path, side: Path) -> None:
    """Move the committed episodes of a side store into the demo's store (nothing recorded is lost)."""
    from recording.schema import StoreError
    from recording.writer import StoreWriter

    try:
        # the main process recorded nothing (interrupted at once): the side store becomes the store
        if not path.exists():
            side.rename(path)
            return
        with StoreWriter(path) as writer:
            writer.adopt(side)
    except StoreError as e:
        raise UserError(f"{e}; the episodes are still in {side}") from None
    if side.exists():
        print(f"  {side} still holds partial episodes: `{prog()} dataset repair --dataset {side}` keeps them")


def train_stage(args: argparse.Namespace, path: Path, out: Path, recipe: Recipe, budget_s: float) -> dict:
    """`xr0 train` in its own process, for a fixed number of steps; its speed is checked after a few."""
    argv = ["train", "--robot", "sim", "--dataset", str(path), "--variant", "tiny", "--mode", "full"]
    argv += [
        "--async-train",
        "--steps",
        str(recipe.steps),
        "--warmup-steps",
        str(min(200, recipe.steps // 10)),
    ]
    argv += ["--batch-size", "8", "--lr", "1e-3", "--ema", "0.999" if recipe.steps >= 1000 else "0"]
    argv += ["--max-pixels", str(recipe.max_pixels), "--val-episodes", str(recipe.val_episodes)]
    argv += LOOKING  # what made the image rung look (docs/benchmarks.md, "the keyframe loss")
    argv += ["--training-repeat", str(recipe.training_repeat)]
    argv += ["--reweight-per-copy" if recipe.reweight_per_copy else "--no-reweight-per-copy"]
    if recipe.crop_scale is not None:
        argv += ["--crop-scale", str(recipe.crop_scale)]
    if recipe.colour_jitter is not None:
        argv += ["--colour-jitter", str(recipe.colour_jitter)]
    if recipe.cameras:
        argv += ["--cameras", *recipe.cameras]
    argv += ["--eval-every", str(max(recipe.steps, 1)), "--save-every", "0", "--out", str(out)]
    if args.config:
        argv += ["--config", args.config]
    if _reusable(out, argv):
        print(f"reusing the finished training run in {out} (--retrain to train again)")
        return {"run": str(out), "checkpoint": str(out / "last"), "summary": _summary(out), "reused": True}
    if out.exists():
        aside = out.with_name(f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        print(f"{out} holds an earlier training run: moved to {aside}")
        shutil.move(str(out), aside)
    print(f"training a tiny XR0 from scratch for {recipe.steps} steps into {out} …", flush=True)
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli.main", *argv], env=env)
    _watch_speed(proc, out / "metrics.jsonl", recipe.steps, budget_s)
    if proc.wait() != 0:
        raise UserError(f"the training stage failed (xr0 train exited {proc.returncode}); see above")
    (out / "demo_argv.json").write_text(json.dumps(argv))
    return {"run": str(out), "checkpoint": str(out / "last"), "summary": _summary(out)}


def _summary(out: Path) -> dict:
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _reusable(out: Path, argv: list[str]) -> bool:
    """A finished run of the same recipe on the same data (the demo ran before)."""
    try:
        same = json.loads((out / "demo_argv.json").read_text()) == argv
    except (OSError, ValueError):
        return False
    return same and _summary(out).get("stop") == "steps" and (out / "last").exists()


def _watch_speed(proc: subprocess.Popen, metrics: Path, steps: int, budget_s: float) -> None:
    """After ~100 steps, say how long training will take, and plainly if that is over the budget."""
    t0 = time.monotonic()
    while proc.poll() is None:
        time.sleep(2.0)
        try:
            records = [json.loads(line) for line in metrics.read_text().splitlines() if '"loss"' in line]
        except (OSError, ValueError):
            continue
        if records and records[-1]["step"] >= min(SPEED_CHECK_STEPS, steps):
            # steps per second (batch 8) over the records after the first ten steps (imports, first batches)
            recent = [r["samples_per_s"] for r in records[1:]] or [records[-1]["samples_per_s"]]
            rate = sum(recent) / len(recent) / 8.0
            left = (steps - records[-1]["step"]) / max(rate, 1e-9)
            load = os.getloadavg()[0]
            print(
                f"\n  measured {rate:.1f} steps/s: training ends in about {left / 60:.1f} min (load average {load:.1f})"
            )
            if time.monotonic() - t0 + left > budget_s:
                print(
                    f"  this machine is too slow for the demo's {budget_s / 60:.0f}-minute training budget "
                    f"(busy? load average {load:.1f} on {os.cpu_count()} cores): it will take longer, and the "
                    "result will be the same — the demo trains for steps, not minutes",
                    flush=True,
                )
            return


def _serve(
    args: argparse.Namespace, config: AppConfig, checkpoint: Path, jobs: int
) -> tuple[subprocess.Popen, int]:
    """`xr0 serve` in its own process, its threads decided beside the `jobs` evaluation processes."""
    from app.runtime.threads import child_env

    port = _free_port()
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    env.update(child_env(config.runtime.torch_threads, helpers=jobs))
    cmd = [sys.executable, "-m", "app.cli.main", "serve", "--policy", str(checkpoint), "--port", str(port)]
    if args.config:
        cmd += ["--config", args.config]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:
        if server.poll() is not None:
            raise UserError(f"xr0 serve --policy {checkpoint} exited: {server.stderr.read().strip()[-500:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return server, port
        if time.monotonic() > deadline:
            server.kill()
            raise UserError("xr0 serve did not start listening within 120 s")
        time.sleep(0.3)


def eval_stage(
    args: argparse.Namespace, config: AppConfig, checkpoint: Path, out: Path, recipe: Recipe, jobs: int
) -> dict:
    """The learned policy over the wire, then the baselines (cached: they are deterministic)."""
    from app.cli.evaluation import run_eval
    from app.runtime.eval import summarize, write_report
    from app.viz.plots import eval_png

    seeds = list(range(HELD_OUT_SEED, HELD_OUT_SEED + recipe.eval_episodes))
    config = replace(
        config,
        policy=replace(config.policy, episode_seconds=recipe.eval_seconds),
        control=replace(config.control, sim_timing="lockstep"),
    )
    task = config.robot.sim.task
    rows = {}
    server, port = _serve(args, config, checkpoint, jobs)
    try:
        print(
            f"evaluating the checkpoint over the wire on seeds {seeds[0]}…{seeds[-1]} ({jobs} processes) …",
            flush=True,
        )
        results, _ = run_eval(config, f"ws://127.0.0.1:{port}", seeds, out / "eval", jobs, DEMO_VIDEOS, _dot)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    print()
    totals = summarize(results, config.control.fps, task)
    header = {
        "policy": str(checkpoint),
        "seeds": [seeds[0], seeds[-1]],
        "episode_seconds": recipe.eval_seconds,
    }
    write_report(out / "eval", header, results, totals)
    eval_png(out / "eval" / "eval.png", f"xr0 demo: {checkpoint}", results, totals, task)
    rows["learned (tiny XR0)"] = totals
    cache = out / "baselines.json"
    key = json.dumps({"seeds": seeds, "seconds": recipe.eval_seconds, "task": task})
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    if cached.get("key") != key:
        cached = {"key": key}
        for name in ("scripted", "random"):
            print(f"evaluating the {name} baseline on the same seeds …", flush=True)
            res, _ = run_eval(config, name, seeds, out / "baselines" / name, jobs, 0, _dot)
            print()
            cached[name] = summarize(res, config.control.fps, task)
        cache.write_text(json.dumps(cached, indent=1))
    rows["scripted demonstrator"] = cached["scripted"]
    rows["random policy"] = cached["random"]
    return {"rows": rows, "report": str(out / "eval" / "eval.json"), "videos": str(out / "eval" / "videos")}


def _dot(result: EpisodeResult, done: int, total: int) -> None:
    print("✓" if result.success else "·", end="" if done < total else f" {done}/{total}\n", flush=True)


def run(args: argparse.Namespace, config: AppConfig) -> int:
    if config.robot.type != "sim":
        raise UserError("xr0 demo runs on the simulator only (robot.type sim, or --robot sim)")
    name = "quick" if args.quick else ("full" if args.full else "default")
    recipe = RECIPES[name]
    recipe = replace(
        recipe,
        episodes=args.episodes or recipe.episodes,
        steps=args.steps or recipe.steps,
        eval_episodes=args.eval_episodes or recipe.eval_episodes,
    )
    if recipe.episodes <= recipe.val_episodes:
        raise UserError(f"--episodes must be more than the {recipe.val_episodes} held out for validation")
    scripted = config.robot.scripted
    if scripted.position_noise_m == 0.0:  # varied demonstrations: the same grasp every time teaches less
        scripted = replace(scripted, position_noise_m=0.005)
    if recipe.episode_seconds is not None and scripted.episode_seconds == ScriptedConfig.episode_seconds:
        scripted = replace(scripted, episode_seconds=recipe.episode_seconds)
    config = replace(config, robot=replace(config.robot, scripted=scripted))
    jobs = args.jobs or available_cpus()
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    dataset = Path(args.dataset or recipe.dataset).expanduser().resolve()
    config = demo_cameras(config, recipe.cameras)
    report: dict = {"recipe": name, "settings": recipe.__dict__, "artefacts": {}}
    t0 = time.perf_counter()
    print(
        f"xr0 demo ({name}): {recipe.episodes} demonstrations, {recipe.steps} training steps, "
        f"{recipe.eval_episodes} held-out evaluation episodes — about {recipe.minutes:g} min on an idle "
        f"2-core machine (this one: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )

    _stage(f"(a) record {recipe.episodes} demonstrations")
    if args.skip_record:
        print("skipped")
    else:
        report["record"] = r = record_stage(config, dataset, recipe.episodes, jobs)
        print(
            f"  {r['episodes']} episodes, {r['steps']} steps, scripted success {r['successes']}/{r['episodes']}"
        )
        report["artefacts"]["dataset"] = r["path"]

    _stage("(b) fine-tune a tiny XR0 from scratch (async post-training)")
    checkpoint = Path(args.checkpoint).expanduser().resolve() if args.checkpoint else out / "train" / "last"
    if args.skip_train or args.checkpoint:
        print(f"skipped; using {checkpoint}")
    else:
        if args.retrain:
            (out / "train" / "demo_argv.json").unlink(missing_ok=True)
        budget_s = max(60.0, recipe.minutes * 60 * TRAINING_SHARE)
        report["train"] = tr = train_stage(args, dataset, out / "train", recipe, budget_s)
        _print_training(tr["summary"])
        report["artefacts"]["checkpoint"] = str(checkpoint)

    _stage("(c) serve it and evaluate it closed-loop on held-out seeds")
    if args.skip_eval:
        print("skipped")
    else:
        if not checkpoint.exists():
            raise UserError(f"no checkpoint at {checkpoint}: run the training stage or pass --checkpoint")
        report["eval"] = ev = eval_stage(args, config, checkpoint, out, recipe, jobs)
        report["artefacts"]["eval_report"] = ev["report"]
        report["artefacts"]["eval_plot"] = str(Path(ev["report"]).with_name("eval.png"))
        report["artefacts"]["videos"] = ev["videos"]

    report["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    report["artefacts"]["report"] = str(out / "report.json")
    print_report(report)
    return 0


def _print_training(s: dict) -> None:
    loss = s.get("loss", {})
    if loss:
        print(
            f"  {s.get('steps', '?')} steps at {s.get('samples_per_s', 0):.1f} samples/s; loss "
            f"{loss.get('first', float('nan')):.3f} → {loss.get('last', float('nan')):.3f}"
        )
    for split, r in (s.get("eval") or {}).items():
        v = r.get("vision", {})
        seeing = (
            f"; vision: swap ×{v['swap_ratio']:.2f}, reach spread {v['reach_spread_ratio']:.2f}" if v else ""
        )
        print(
            f"  open-loop error ({split}): joints {r['joint_mae_rad']:.4f} rad, gripper {r['gripper_mae']:.3f}{seeing}"
        )


def print_report(report: dict) -> None:
    _stage("(d) report")
    if "record" in report:
        r = report["record"]
        print(f"recorded: {r['episodes']} episodes ({r['steps']} steps) in {r['path']}")
    if "train" in report:
        s = report["train"]["summary"]
        print(
            f"trained: {s.get('steps', '?')} steps, stopped by {s.get('stop', '?')}, {s.get('wall_s', 0):.0f} s"
        )
    if "eval" in report:
        rows = report["eval"]["rows"]
        first = next(iter(rows.values()))
        stages = list(first["stage_rates"])
        print(
            f"closed-loop on {first['episodes']} held-out seeds (success = gym-aloha's stage 4 at any tick):"
        )
        print(f"  {'policy':<24}{'success':>9}  {'95 % interval':<14}" + "".join(f"{n:>11}" for n in stages))
        for name, t in rows.items():
            lo, hi = t["wilson95"]
            rate = "—" if t["success_rate"] is None else f"{t['success_rate']:.0%}"
            cells = "".join(f"{(t['stage_rates'][n] or 0):>11.0%}" for n in stages)
            print(f"  {name:<24}{rate:>9}  {f'{lo:.0%}–{hi:.0%}':<14}{cells}")
        lat = first.get("latency_ms") or {}
        if lat:
            print(f"  inference over the wire: p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms")
    print(f"finished in {report['wall_s']:.0f} s. Artefacts:")
    for name, path in report["artefacts"].items():
        print(f"  {name:<14} {path}")
    print("next:")
    ckpt = report["artefacts"].get("checkpoint")
    if ckpt:
        print(
            f"  {prog()} eval --policy {ckpt} --episodes 50        # more held-out seeds, a tighter interval"
        )
        print(
            f"  {prog()} rollout --policy {ckpt} --duration 2m --rerun runs/demo/rollout.rrd   # watch it in Rerun"
        )
    print(
        f"  {prog()} demo --full                                  # 50 demonstrations, 8000 steps (~65 min)"
    )
    print("  docs/eval.md: the diagnostics ladder when a policy fails closed-loop")
