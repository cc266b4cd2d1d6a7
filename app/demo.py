"""`xr0 demo` — the lab loop in one command on the simulator (the README's main job).

(a) record transfer-cube episodes with the scripted teleoperator into `datasets/demo.zarr`;
(b) fine-tune a `tiny` XR0 on them with async post-training, for a bounded time;
(c) serve the checkpoint (`xr0 serve` in its own process) and roll it out asynchronously in the simulator,
    in lockstep, on held-out seeds, logging to `runs/demo/rollout.rrd`;
(d) report: what was recorded, the loss curve, tasks per minute, success rate, latency, every artefact,
    and the next commands to try — next to the scripted teleoperator's and a random policy's success.

Every stage can be skipped or pointed at existing artefacts (`--dataset`, `--checkpoint`, `--skip-…`).
CPU only, nothing downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from app.config import AppConfig
from app.errors import CliError
from app.viz import has_display
from drivers.sim.aloha import EVAL_SEED_START

log = logging.getLogger(__name__)
HELD_OUT_SEED = EVAL_SEED_START  # rollouts start here: never a seed the demonstrations were recorded on


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help="a ~2-minute version (for tests and a first look)")
    p.add_argument(
        "--episodes", type=int, default=None, help="demonstrations to record (default 10; quick 2)"
    )
    p.add_argument("--train-minutes", type=float, default=None, help="training time (default 5; quick 0.5)")
    p.add_argument(
        "--rollout-minutes", type=float, default=None, help="control time of the rollout (default 2)"
    )
    p.add_argument(
        "--dataset", default="datasets/demo.zarr", help="the demo's store (reused if it has enough)"
    )
    p.add_argument("--checkpoint", default=None, help="use this checkpoint instead of training one")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its artefacts")
    for stage in ("record", "train", "rollout"):
        p.add_argument(f"--skip-{stage}", action="store_true", help=f"skip the {stage} stage")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def record_stage(config: AppConfig, path: Path, episodes: int) -> dict:
    from app.record import RecordPlan, default_task, record
    from recording.reader import EpisodeStore
    from recording.schema import StoreError

    have = 0
    if path.exists():
        try:
            have = len(EpisodeStore(path).episodes)
        except StoreError as e:
            raise CliError(f"{e}; remove it or pass another --dataset") from None
    if have < episodes:
        path.parent.mkdir(parents=True, exist_ok=True)
        plan = RecordPlan(
            path, default_task(config), episodes - have, config.robot.scripted.episode_seconds, 0.0
        )
        print(f"recording {episodes - have} scripted demonstration(s) into {path} …", flush=True)
        record(config, plan)
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


def train_stage(args, path: Path, out: Path, minutes: float, quick: bool) -> dict:
    from app.cli import main as xr0

    argv = ["train", "--robot", "sim", "--dataset", str(path), "--variant", "tiny", "--async-train"]
    argv += ["--out", str(out), "--max-minutes", str(minutes), "--steps", "1500", "--warmup-steps", "100"]
    argv += ["--batch-size", "8", "--lr", "1e-3", "--max-pixels", "4096", "--val-episodes", "1"]
    if args.config:
        argv += ["--config", args.config]
    print(f"training a tiny XR0 for up to {minutes:g} min into {out} …", flush=True)
    code = xr0(argv)
    if code != 0:
        raise CliError(f"the training stage failed (xr0 train exited {code}); see above")
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    return {"run": str(out), "checkpoint": str(out / "last"), "summary": summary}


def rollout_stage(args, config: AppConfig, checkpoint: Path, out: Path, minutes: float) -> dict:
    """Serve the checkpoint in its own process and roll it out over the wire, in lockstep, held-out seeds."""
    from app.rollout import run_rollout
    from app.threads import child_env

    port = _free_port()
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    env.update(child_env(config.runtime.torch_threads, helpers=1))  # the rollout loop runs beside it
    cmd = [sys.executable, "-m", "app.cli", "serve", "--policy", str(checkpoint), "--port", str(port)]
    if args.config:
        cmd += ["--config", args.config]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise CliError(
                    f"xr0 serve --policy {checkpoint} exited: {server.stderr.read().strip()[-500:]}"
                )
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise CliError("xr0 serve did not start listening within 120 s")
            time.sleep(0.3)
        held_out = replace(
            config, robot=replace(config.robot, sim=replace(config.robot.sim, seed=HELD_OUT_SEED))
        )
        rrd = out / "rollout.rrd"
        print(
            f"rolling out for {minutes:g} min of control time (async, lockstep, seeds from {HELD_OUT_SEED}) …",
            flush=True,
        )
        report, _ = run_rollout(held_out, f"ws://127.0.0.1:{port}", minutes * 60.0, str(rrd))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return {"report": report, "rrd": str(rrd)}


def run(args, config: AppConfig) -> int:
    from dataclasses import asdict

    if config.robot.type != "sim":
        raise CliError("xr0 demo runs on the simulator only (robot.type sim, or --robot sim)")
    quick = args.quick
    episodes = args.episodes or (2 if quick else 10)
    train_minutes = args.train_minutes if args.train_minutes is not None else (0.5 if quick else 5.0)
    rollout_minutes = args.rollout_minutes if args.rollout_minutes is not None else (0.5 if quick else 2.0)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dataset = Path(args.dataset).resolve()
    report: dict = {"quick": quick, "artefacts": {}}
    t0 = time.perf_counter()

    _stage(f"(a) record {episodes} demonstrations")
    if args.skip_record:
        print("skipped")
    else:
        report["record"] = record_stage(config, dataset, episodes)
        r = report["record"]
        print(
            f"  {r['episodes']} episodes, {r['steps']} steps, scripted success {r['successes']}/{r['episodes']}"
        )
        report["artefacts"]["dataset"] = r["path"]

    _stage("(b) fine-tune a tiny XR0 (async post-training)")
    checkpoint = Path(args.checkpoint).resolve() if args.checkpoint else out / "train" / "last"
    if args.skip_train or args.checkpoint:
        print(f"skipped; using {checkpoint}")
    else:
        report["train"] = train_stage(args, dataset, out / "train", train_minutes, quick)
        s = report["train"]["summary"]
        loss = s.get("loss", {})
        if loss:
            print(
                f"  loss {loss.get('first', float('nan')):.3f} → {loss.get('last', float('nan')):.3f} "
                f"(min {loss.get('min', float('nan')):.3f}) over {s.get('steps', '?')} steps"
            )
        report["artefacts"]["checkpoint"] = str(checkpoint)

    _stage("(c) serve it and roll it out asynchronously")
    if args.skip_rollout:
        print("skipped")
    else:
        if not checkpoint.exists():
            raise CliError(f"no checkpoint at {checkpoint}: run the training stage or pass --checkpoint")
        ro = rollout_stage(args, config, checkpoint, out, rollout_minutes)
        r = ro["report"]
        report["rollout"] = {k: v for k, v in asdict(r).items() if k != "latency_samples_ms"}
        report["artefacts"]["rollout_rrd"] = ro["rrd"]
        from app.viz import summary_png

        png = summary_png(
            out / "rollout.png", r.control_s, r.success_times_s(config.control.fps), r.latency_samples_ms
        )
        report["artefacts"]["rollout_plot"] = str(png)

    report["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    report["artefacts"]["report"] = str(out / "report.json")
    print_report(report)
    return 0


def print_report(report: dict) -> None:
    _stage("(d) report")
    if "record" in report:
        r = report["record"]
        print(f"recorded: {r['episodes']} episodes ({r['steps']} steps) in {r['path']}")
    if "train" in report:
        s = report["train"]["summary"]
        loss = s.get("loss", {})
        curve = (
            f"loss {loss['first']:.3f} → {loss['last']:.3f} (min {loss['min']:.3f}, last/first {loss['last_over_first']:.2f})"
            if loss
            else "no loss logged"
        )
        print(f"training: {s.get('steps', '?')} steps, stopped by {s.get('stop', '?')}; {curve}")
        evals = s.get("eval") or {}
        if evals:
            print(f"  open-loop action error on held-out episodes: {evals}")
    if "rollout" in report:
        r = report["rollout"]
        rate = "—" if r["success_rate"] is None else f"{r['success_rate']:.0%}"
        lat = r.get("inference_ms") or {}
        print(
            f"rollout: {r['tasks']} tasks in {r['control_s'] / 60:.1f} min = {r['tasks_per_min']:.2f} tasks/min; "
            f"success {rate} on held-out seeds; inference p50 {lat.get('p50', float('nan')):.0f} ms, "
            f"p99 {lat.get('p99', float('nan')):.0f} ms (over the wire)"
        )
        print(
            "  for comparison (docs/benchmarks.md): the scripted teleoperator succeeds on 100 % of seeds; "
            "a random policy on 0 %"
        )
        if r["success_rate"] == 0:
            print(
                "  The tiny CPU-trained policy does not solve transfer-cube in this budget — expected: see "
                "docs/benchmarks.md for what it takes."
            )
    print(f"finished in {report['wall_s']:.0f} s. Artefacts:")
    for name, path in report["artefacts"].items():
        print(f"  {name:<14} {path}")
    rrd = report["artefacts"].get("rollout_rrd")
    print("next:")
    if rrd:
        viewer = (
            "(a viewer opens it here)"
            if has_display()
            else "(copy it to a machine with a display, or use --rerun web)"
        )
        print(f"  .venv/bin/rerun {rrd}   {viewer}")
    print(
        "  ./xr0w rollout --policy scripted --duration 5m --rerun runs/scripted.rrd   # the demonstrator, async"
    )
    print("  ./xr0w dataset view datasets/demo.zarr --rerun runs/demo/episode0.rrd      # a recorded episode")
    print(
        "  ./xr0w bench async                                                          # async vs sync, measured"
    )
