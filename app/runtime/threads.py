"""How many threads each process computes with (DESIGN.md §10: threads are decided, not inherited).

torch's default is one OpenMP thread per CPU in every process. Two busy processes on one machine (a trainer
and its loader workers, a policy beside the control loop, someone else's job) then make OpenMP threads
wait for descheduled siblings at every parallel region: under load, training ran at 2.1–2.7 samples/s with
the default and at 27–30 with one thread. So every entry point decides here, once, and logs the decision:

1. `runtime.torch_threads: N` in config.yaml: N.
2. Else OMP_NUM_THREADS as the process was started with it (an operator's or a parent process's
   decision) — except under torchrun, which sets it to 1 for every rank unless it is set, so there the
   value says nothing about this workload and is ignored.
3. Else auto: the CPUs the process may run on (its affinity), less one for each single-threaded helper
   that runs beside each compute process (its loader workers, the control loop), divided among the
   compute processes on the machine (torchrun's local world size); at least 1.

Helper processes use 1 thread and set it themselves: data-loader workers (`xr0.data`), `xr0 eval --jobs`
workers. The recorder's writer process does no torch or BLAS work and is not configured. The chosen number
also goes into OMP_NUM_THREADS/MKL_NUM_THREADS, so torch imported later in the process (and any child that
does not decide for itself) starts with it. OMP_WAIT_POLICY is left alone: spinning was not measured to
matter once no process has more threads than its share of the cores.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# What the process was started with, read before this module (or torch) changes it.
_STARTED_WITH = os.environ.get("OMP_NUM_THREADS")


@dataclass(frozen=True)
class RuntimeConfig:
    # torch (OpenMP/MKL) threads of each computing process: auto (the rule in app/runtime/threads.py and
    # docs/architecture.md: the process's CPUs less its helpers, shared by the processes on the machine)
    # or a number; set 1 on a machine shared with other heavy work.
    torch_threads: int | Literal["auto"] = "auto"
    # The control loop's thread: auto (real-time SCHED_FIFO where permitted, else a raised nice value, else
    # as it is), realtime, nice or off (app/runtime/priority.py; the session summary says what it got).
    loop_priority: Literal["auto", "realtime", "nice", "off"] = "auto"

    def __post_init__(self) -> None:
        n = self.torch_threads
        if n != "auto" and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"torch_threads must be auto or a whole number ≥ 1, got {n!r}")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: taskset, cgroups cpusets), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _positive(text: str | None) -> int | None:
    try:
        n = int(text) if text is not None else 0
    except ValueError:
        return None
    return n if n >= 1 else None


def decide_threads(
    requested: int | str | None,
    *,
    cpus: int,
    processes: int = 1,
    helpers: int = 0,
    started_with: str | None = None,
    torchrun: bool = False,
) -> tuple[int, str]:
    """The rule, as arithmetic: (threads, why). `processes` compute processes share `cpus`; each has
    `helpers` single-threaded helpers beside it; `started_with` is OMP_NUM_THREADS at process start."""
    if isinstance(requested, int) and not isinstance(requested, bool):
        return requested, "runtime.torch_threads"
    inherited = None if torchrun else _positive(started_with)
    if inherited is not None:
        return inherited, f"OMP_NUM_THREADS={inherited} in the environment"
    processes = max(1, processes)
    n = max(1, (cpus - processes * helpers) // processes)
    why = f"auto: {cpus} CPUs"
    if helpers:
        why += f", {processes * helpers} for helpers"
    if processes > 1:
        why += f", {processes} processes"
    return n, why


def local_world_size() -> int | None:
    """Processes torchrun started on this machine (None when not under torchrun)."""
    return _positive(os.environ.get("LOCAL_WORLD_SIZE"))


def configure_threads(role: str, requested: int | str | None = "auto", *, helpers: int = 0) -> int:
    """Decide the torch thread count of this process (one `role`: train, serve, rollout, …) and apply it:
    torch.set_num_threads if torch is loaded, the inter-op pool where still allowed, and the env for a
    torch loaded later and for children."""
    world = local_world_size()
    n, why = decide_threads(
        requested,
        cpus=available_cpus(),
        processes=world or 1,
        helpers=helpers,
        started_with=_STARTED_WITH,
        torchrun=world is not None,
    )
    for name in THREAD_ENV:
        os.environ[name] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
        try:  # only before the first inter-op work; this code starts none, so 1 keeps it from adding threads
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
    log.info("%s: %d torch thread%s (%s)", role, n, "" if n == 1 else "s", why)
    return n


def child_env(requested: int | str | None = "auto", *, helpers: int = 0) -> dict[str, str]:
    """Environment entries that give a child process (e.g. `xr0 serve` started by the demo) its count."""
    n, _ = decide_threads(requested, cpus=available_cpus(), helpers=helpers, started_with=_STARTED_WITH)
    return dict.fromkeys(THREAD_ENV, str(n))


def configure_command(command: str, args: Any, config: Any) -> int | None:
    """The decision for `xr0 COMMAND` (called by app.cli.main.main once the config is loaded); None for the
    commands that compute nothing with torch. Helpers beside the compute: a trainer's loader workers; the
    control loop beside an in-process policy (rollout, eval)."""
    requested = config.runtime.torch_threads
    if command == "train":
        workers = getattr(args, "num_workers", None)
        if workers is None:
            data = config.train.data
            device = getattr(args, "device", None) or config.train.device
            workers = (
                data.workers(_train_device_type(device)) if data.num_workers == "auto" else data.num_workers
            )
        return configure_threads("xr0 train", requested, helpers=workers)
    if command in ("rollout", "eval"):
        return configure_threads(f"xr0 {command}", requested, helpers=1)
    if command in ("serve", "bench"):
        return configure_threads(f"xr0 {command}", requested)
    return None


def _train_device_type(device: str) -> str:
    """Where `xr0 train` with `train.device` computes, "cpu" or "cuda" (auto: a GPU when torch sees one)."""
    import torch

    from xr0.distributed import device_name

    try:
        return torch.device(device_name(device)).type
    except (RuntimeError, ValueError):  # not a device: the trainer says so in one sentence
        return "cpu"
