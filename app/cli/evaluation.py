"""Closed-loop evaluation across worker processes: each composes its own rig and policy, pulls seeds from a shared queue and runs them (used by `xr0 eval` and `xr0 demo`)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from app.compose.config import AppConfig
from app.errors import UserError
from app.runtime.eval import VIDEO_CAMERA, EpisodeResult, Watched, run_episode
from drivers.errors import DeviceError

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    from xr0.boundary import PolicySpec

log = logging.getLogger(__name__)


# -- workers ----------------------------------------------------------------------------------------------------
def _not_run(seed: int, reason: str) -> EpisodeResult:
    return EpisodeResult(seed, False, 0, [None] * 4, 0, None, f"not run: {reason}")


class SetupError(Exception):
    """The evaluation cannot run at all (the policy does not match the rig, cannot be opened, …)."""


def evaluate_seeds(
    config: AppConfig,
    source: str,
    seeds: list[int],
    out: Path,
    videos: set[int],
    emit: Callable[[EpisodeResult], None],
) -> None:
    """Open the rig and the policy once, then run `seeds` one after the other; `emit(result)` each.
    A policy that cannot run on this rig raises SetupError; an episode that fails is its outcome. After an
    episode in which a remote policy never answered, the remaining seeds fail with that reason."""
    from app.compose.policies import open_policy
    from app.compose.rig import build_rig

    try:
        rig = build_rig(config, rendered_cameras(config, source, bool(videos)))
    except (UserError, DeviceError, ValueError, OSError) as e:
        raise SetupError(str(e)) from e
    if config.control.sim_timing == "lockstep":  # render a camera only on the ticks its image is read
        for cam in rig.robot.cameras.values():
            if hasattr(cam, "deferred"):
                cam.deferred = True
    policy = None
    try:
        try:
            policy = Watched(open_policy(source, config, rig))
        except (UserError, DeviceError, ValueError, OSError) as e:
            raise SetupError(str(e)) from e
        config = _deployable_mode(config, policy.spec)
        cam = config.cameras.get(VIDEO_CAMERA)
        video_size = (cam.width, cam.height) if cam is not None else (320, 240)
        dead: str | None = None
        with rig.robot:
            for seed in seeds:
                if dead is not None:
                    emit(replace(_not_run(seed, ""), reason=dead))
                    continue
                video = out / "videos" / f"seed-{seed}.mp4" if seed in videos else None
                try:
                    result = run_episode(
                        rig, policy, config.policy, config.control.fps, seed, video, video_size
                    )
                except UserError as e:  # the runner refused the policy: nothing will run
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
    from app.compose.policies import BUILT_IN, REPLAY
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


def _deployable_mode(config: AppConfig, spec: PolicySpec) -> AppConfig:
    """A policy trained without a prefix runs asynchronously the way it can: without one (async-naive)."""
    if config.policy.mode == "async" and spec.max_prefix == 0:
        log.info("the policy takes no action prefix: async-naive execution")
        return replace(config, policy=replace(config.policy, mode="async-naive"))
    return config


def _remote(source: str) -> bool:
    return source.startswith(("ws://", "wss://"))


def _pull(tasks: Queue[int | None]) -> Iterator[int]:
    """Seeds from the shared task queue until it is empty: faster workers take more episodes."""
    while True:
        try:
            seed = tasks.get(timeout=60.0)
        except queue.Empty:
            return
        if seed is None:  # one end marker per worker, after every seed
            return
        yield seed


def _worker(
    config: AppConfig,
    source: str,
    tasks: Queue[int | None],
    out: str,
    videos: set[int],
    results: Queue[EpisodeResult | SetupError],
) -> None:
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
    config: AppConfig,
    source: str,
    seeds: list[int],
    out: Path,
    jobs: int,
    videos: int,
    progress: Callable[[EpisodeResult, int, int], None] | None = None,
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
