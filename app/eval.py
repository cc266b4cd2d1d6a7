"""`xr0 eval`: the closed-loop evaluation a lab runs after every fine-tune.

    xr0 eval --policy CHECKPOINT|ws://HOST:PORT|scripted|random|replay:STORE.zarr --episodes 50
             [--seed-start 10000] [--jobs N] [--mode async|sync] [--out runs/eval/NAME] [--videos 10]

Each episode is one seed of the simulator, run in lockstep with its simulated clock, through the same
deploy path as `xr0 rollout` (the runner's schedule and action prefix, the safety layer, the wire for
`ws://` sources), until the task is done or `--episode-seconds` pass. Episodes are spread over `--jobs`
processes. Seeds are held out: they start at 10000 and never overlap the seeds a checkpoint was trained
on (the checkpoint's contract lists them); `eval` refuses an overlap unless told `--allow-train-seeds`.

The report (`eval.json`, a one-line JSON summary last on stdout, `eval.png`, and MP4s of the top camera
for the first `--videos` episodes) gives per episode and in total: success (gym-aloha's rule: stage 4 at
any tick) with a 95 % Wilson interval, the stage reached (touch, lift, hand-over, transfer: gym-aloha's
transfer-cube reward from the simulator's contacts), time to success, tasks per minute of control time,
chunk rejections and policy errors, safety clamps, and inference latency. A policy that raises or answers
garbage is an outcome of its episode, not a crash of the evaluation; a policy that stops answering
altogether (a server that went away) fails the remaining episodes with that reason; Ctrl-C writes the
report of the episodes done so far.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import queue
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from app.config import AppConfig
from app.errors import CliError
from drivers.errors import DeviceError
from drivers.sim.aloha import StageTracker

log = logging.getLogger(__name__)

# gym-aloha's transfer-cube stages (reward 1..4) and insertion stages, by the stage's number.
STAGES = {
    "transfer_cube": ("touch", "lift", "hand-over", "transfer"),
    "insertion": ("grasp both", "lift both", "peg in socket", "insert"),
}
VIDEO_CAMERA = "cam_high"


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    stage: int  # highest stage reached (0..4)
    stage_ticks: list[int | None]  # first tick each stage 1..4 was reached
    ticks: int  # control ticks the episode ran
    time_to_success_s: float | None
    reason: str  # success | timeout | policy error: … | not run: …
    chunks: dict[str, int] = field(default_factory=dict)  # requested, used, rejected, errors
    clamps: int = 0  # safety clamps (joint limit + per-tick delta)
    latency_ms: list[float] = field(default_factory=list)
    video: str | None = None


# -- one episode ----------------------------------------------------------------------------------------------
class _Watched:
    """The policy, remembering its last exception (the runner counts errors; the report says which)."""

    def __init__(self, policy) -> None:
        self.policy = policy
        self.spec = policy.spec
        self.last_error: str | None = None

    def infer(self, observation, prefix):
        try:
            return self.policy.infer(observation, prefix)
        except Exception as e:
            self.last_error = f"{type(e).__name__}: {e}"
            raise

    def __getattr__(self, name):  # on_step, close, … of the wrapped policy
        return getattr(self.policy, name)


def run_episode(rig, policy: _Watched, config: AppConfig, seed: int, video: Path | None) -> EpisodeResult:
    """One seed in lockstep: reset, run the policy until stage 4 or the time limit, judge every tick."""
    from app.events import EpisodeEvent, Publisher
    from app.runner import PolicyRunner
    from drivers.clock import Rate

    fps = config.control.fps
    max_ticks = max(1, round(config.policy.episode_seconds * fps))
    publisher = Publisher()
    if hasattr(policy.policy, "on_step"):  # the scripted policy follows the task's progress
        publisher.subscribers.append(policy.policy)
    runner = PolicyRunner(
        rig.robot, rig.clock, policy, config.policy, fps, publisher, privileged=sim_privileged(rig.sim, fps)
    )
    runner.restart(0)
    rig.sim.reset(seed)
    if rig.teleop is not None:
        rig.teleop.reset()
    rig.robot.rebase()
    publisher.episode(EpisodeEvent(0, "start", rig.clock.now_ns(), seed=seed))
    safety = rig.robot.safety
    clamps0 = _clamps(safety)
    policy.last_error = None
    stages = StageTracker(rig.sim)
    frames = _VideoWriter(video, fps, config) if video is not None else None
    ticks = 0
    try:
        with runner:
            rate = Rate(rig.clock, fps)
            while ticks < max_ticks:
                tick = rate.wait()
                runner.step(tick)
                ticks += 1
                stages.update()
                if frames is not None:
                    frames.add(rig.sim)
                if stages.success:  # gym-aloha's rule: the episode ends at the first stage-4 tick
                    break
    finally:
        if frames is not None:
            frames.close()
    success, stage_ticks = stages.success, stages.stage_ticks
    publisher.episode(EpisodeEvent(0, "end", rig.clock.now_ns(), success=success, seed=seed))
    st, counters = runner.stats, runner.scheduler.counters
    used = counters.on_time + counters.late
    if success:
        reason = "success"
    elif st.inference_errors and used == 0:
        reason = f"policy error: {policy.last_error or 'no answer'}"
    else:
        reason = "timeout"
    return EpisodeResult(
        seed=seed,
        success=success,
        stage=stages.max_stage,
        stage_ticks=list(stage_ticks),
        ticks=ticks,
        time_to_success_s=round((stages.success_tick + 1) / fps, 3) if success else None,
        reason=reason,
        chunks={
            "requested": counters.requests,
            "used": used,
            "rejected": st.rejected_chunks,
            "errors": st.inference_errors,
            "prefix_mismatches": st.prefix_mismatches,
            "starvations": st.starvations,
        },
        clamps=_clamps(safety) - clamps0,
        latency_ms=[round(float(x), 3) for x in st.inference_ms],
        video=str(video) if video is not None else None,
    )


def sim_privileged(sim, fps: float):
    """The simulator-only inputs (xr0.boundary.PRIVILEGED) for diagnostic policies: the episode's seed,
    the tick the physics is at, and where the (first) object started."""

    def values() -> dict[str, np.ndarray]:
        return {
            "seed": np.array([float(sim.seed)]),
            "episode_tick": np.array([float(round(sim.time_s * fps))]),
            "object_start": sim.object_start(),
        }

    return values


def _clamps(safety) -> int:
    if safety is None:
        return 0
    c = safety.counters
    return int(c.clamped_limit + c.clamped_delta)


class _VideoWriter:
    """The top camera of one episode as an H.264 MP4 (PyAV), frame by frame."""

    def __init__(self, path: Path, fps: float, config: AppConfig) -> None:
        import av

        cam = config.cameras.get(VIDEO_CAMERA)
        self.width, self.height = (cam.width, cam.height) if cam is not None else (320, 240)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream("libx264", rate=round(fps))
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"preset": "veryfast", "crf": "23"}
        self._av = av

    def add(self, sim) -> None:
        image = sim.render(VIDEO_CAMERA, self.width, self.height)
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


# -- workers ----------------------------------------------------------------------------------------------------
def _not_run(seed: int, reason: str) -> EpisodeResult:
    return EpisodeResult(seed, False, 0, [None] * 4, 0, None, f"not run: {reason}")


class SetupError(Exception):
    """The evaluation cannot run at all (the policy does not match the rig, cannot be opened, …)."""


def evaluate_seeds(
    config: AppConfig, source: str, seeds: list[int], out: Path, videos: set[int], emit
) -> None:
    """Open the rig and the policy once, then run `seeds` one after the other; `emit(result)` each.
    A policy that cannot run on this rig raises SetupError; an episode that fails is its outcome. After an
    episode in which a remote policy never answered, the remaining seeds fail with that reason."""
    from app.compose import build_rig
    from app.policies import open_policy

    try:
        rig = build_rig(config, rendered_cameras(config, source, bool(videos)))
    except (CliError, DeviceError, ValueError, OSError) as e:
        raise SetupError(str(e)) from e
    policy = None
    try:
        try:
            policy = _Watched(open_policy(source, config, rig))
        except (CliError, DeviceError, ValueError, OSError) as e:
            raise SetupError(str(e)) from e
        config = _deployable_mode(config, policy.spec)
        dead: str | None = None
        with rig.robot:
            for seed in seeds:
                if dead is not None:
                    emit(replace(_not_run(seed, ""), reason=dead))
                    continue
                video = out / "videos" / f"seed-{seed}.mp4" if seed in videos else None
                try:
                    result = run_episode(rig, policy, config, seed, video)
                except CliError as e:  # the runner refused the policy: nothing will run
                    raise SetupError(str(e)) from e
                except Exception as e:  # the world or the robot failed: this episode's outcome
                    log.exception("episode with seed %d failed", seed)
                    result = replace(_not_run(seed, ""), reason=f"error: {type(e).__name__}: {e}")
                if result.reason.startswith("policy error") and _remote(source):
                    dead = result.reason
                emit(result)
    finally:
        if policy is not None and hasattr(policy.policy, "close"):
            policy.policy.close()
        rig.close()


def rendered_cameras(config: AppConfig, source: str, video: bool) -> list[str] | None:
    """The cameras worth rendering (rendering is most of a simulated tick on a CPU): what a checkpoint's
    contract reads, none for the built-in policies, plus the top camera for videos; None (all configured
    cameras) for a remote policy, whose needs are known only once it answers."""
    from app.policies import BUILT_IN, REPLAY
    from xr0.contract import ContractError, DeployContract

    if source in BUILT_IN or source.startswith(REPLAY):
        wanted: list[str] = []
    else:
        path = Path(source).expanduser()
        try:
            contract = DeployContract.load(path) if path.is_dir() else None
        except ContractError:
            contract = None
        if contract is None:
            return None
        wanted = [c for c in contract.camera_names if c in config.cameras]
    if video and VIDEO_CAMERA in config.cameras and VIDEO_CAMERA not in wanted:
        wanted.append(VIDEO_CAMERA)
    return wanted


def _deployable_mode(config: AppConfig, spec) -> AppConfig:
    """A policy trained without a prefix runs asynchronously the way it can: without one (async-naive)."""
    if config.policy.mode == "async" and spec.max_prefix == 0:
        log.info("the policy takes no action prefix: async-naive execution")
        return replace(config, policy=replace(config.policy, mode="async-naive"))
    return config


def _remote(source: str) -> bool:
    return source.startswith(("ws://", "wss://"))


def _pull(tasks) -> Iterator[int]:
    """Seeds from the shared task queue until it is empty: faster workers take more episodes."""
    while True:
        try:
            seed = tasks.get(timeout=60.0)
        except queue.Empty:
            return
        if seed is None:  # one end marker per worker, after every seed
            return
        yield seed


def _worker(config: AppConfig, source: str, tasks, out: str, videos: set[int], results) -> None:
    """A `--jobs` process: one torch thread (the processes share the cores), seeds from a task queue,
    results over a queue."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    try:
        evaluate_seeds(config, source, _pull(tasks), Path(out), videos, results.put)
    except KeyboardInterrupt:
        pass
    except SetupError as e:
        results.put(e)
    except Exception as e:  # noqa: BLE001 - reported to the parent as one sentence
        results.put(SetupError(f"{type(e).__name__}: {e}"))


def run_eval(
    config: AppConfig, source: str, seeds: list[int], out: Path, jobs: int, videos: int, progress=None
) -> tuple[list[EpisodeResult], str]:
    """Every seed's result (in seed order) and how the evaluation ended (complete | interrupted)."""
    video_seeds = set(seeds[:videos])
    results: dict[int, EpisodeResult] = {}

    def emit(r: EpisodeResult) -> None:
        results[r.seed] = r
        if progress is not None:
            progress(r, len(results), len(seeds))

    ended = "complete"
    if jobs <= 1:
        try:
            evaluate_seeds(config, source, seeds, out, video_seeds, emit)
        except KeyboardInterrupt:
            ended = "interrupted"
    else:
        ctx = mp.get_context("spawn")
        q, tasks = ctx.Queue(), ctx.Queue()
        for seed in [*seeds, *[None] * jobs]:
            tasks.put(seed)
        procs = [
            ctx.Process(target=_worker, args=(config, source, tasks, str(out), video_seeds, q))
            for _ in range(jobs)
        ]
        for p in procs:
            p.start()
        try:
            while len(results) < len(seeds):
                try:
                    item = q.get(timeout=1.0)
                except queue.Empty:
                    if not any(p.is_alive() for p in procs):
                        break  # a worker died without reporting (killed): its seeds are "not run"
                    continue
                if isinstance(item, SetupError):
                    ended = "setup"
                    raise item
                emit(item)
        except KeyboardInterrupt:
            ended = "interrupted"
        finally:
            for p in procs:
                p.join(timeout=5.0 if ended == "complete" else 0.5)
                if p.is_alive():
                    p.terminate()
                    p.join()
    why = "interrupted" if ended == "interrupted" else "its worker process died"
    return [results.get(s) or _not_run(s, why) for s in seeds], ended


# -- the report -------------------------------------------------------------------------------------------------
def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(results: list[EpisodeResult], fps: float, task: str) -> dict:
    ran = [r for r in results if not r.reason.startswith("not run")]
    n, k = len(ran), sum(r.success for r in ran)
    lo, hi = wilson(k, n)
    latency = [x for r in ran for x in r.latency_ms]
    control_min = sum(r.ticks for r in ran) / fps / 60.0
    times = [r.time_to_success_s for r in ran if r.success]
    names = STAGES.get(task, STAGES["transfer_cube"])
    return {
        "episodes": len(results),
        "ran": n,
        "successes": k,
        "success_rate": round(k / n, 4) if n else None,
        "wilson95": [round(lo, 4), round(hi, 4)],
        "stage_rates": {
            names[s]: round(sum(r.stage > s for r in ran) / n, 4) if n else None for s in range(4)
        },
        "time_to_success_s": {"median": round(float(np.median(times)), 3)} if times else {},
        "tasks_per_min": round(k / control_min, 3) if control_min else 0.0,
        "chunks": {
            key: sum(r.chunks.get(key, 0) for r in ran)
            for key in ("requested", "used", "rejected", "errors", "prefix_mismatches", "starvations")
        },
        "clamps": sum(r.clamps for r in ran),
        "latency_ms": _percentiles(latency),
        "reasons": _count(r.reason.split(":")[0] for r in results),
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": round(float(p50), 2), "p99": round(float(p99), 2), "max": round(float(max(values)), 2)}


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def write_report(out: Path, header: dict, results: list[EpisodeResult], totals: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps({**header, "totals": totals, "episodes": [asdict(r) for r in results]}, indent=1)
    )
    os.replace(tmp, path)
    return path


def eval_png(path: Path, title: str, results: list[EpisodeResult], totals: dict, task: str) -> Path:
    """Success per stage, each episode's outcome, and the latency histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from app.viz import latency_histogram

    names = STAGES.get(task, STAGES["transfer_cube"])
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4), dpi=100)
    rates = [totals["stage_rates"][s] or 0.0 for s in names]
    a1.bar(names, rates, color="#3b7dd8")
    a1.set_ylim(0, 1)
    a1.set_ylabel("episodes reaching the stage")
    lo, hi = totals["wilson95"]
    rate = totals["success_rate"]
    a1.set_title(f"success {0 if rate is None else rate:.0%} (95 % CI {lo:.0%}–{hi:.0%}), n={totals['ran']}")
    seeds = [r.seed for r in results]
    colours = [
        "#2a9d4b" if r.success else ("#999999" if r.reason.startswith("not run") else "#d8843b")
        for r in results
    ]
    a2.scatter(range(len(results)), [r.stage for r in results], c=colours, s=18)
    a2.set_yticks(range(5), ["none", *names])
    a2.set_xlabel(f"episode (seeds {min(seeds)}…{max(seeds)})" if seeds else "episode")
    a2.set_title("stage reached per episode (green: success)")
    latency_histogram(a3, [x for r in results for x in r.latency_ms])
    a3.set_title(
        f"chunks rejected {totals['chunks']['rejected']}, errors {totals['chunks']['errors']}, clamps {totals['clamps']}"
    )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
