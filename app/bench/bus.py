"""`xr0 bench bus`: one control tick's bus work through the real dynamixel-sdk and the bus emulator.

A cycle is what a follower arm does every tick: one sync read of present current, velocity and position
from every motor of a 9-motor chain (7 joints + 2 shadows), then one sync write of the 7 goal positions.
It is timed end to end (median, p99, max) and set against the same cycle's *wire time*: its bytes at
the configured baud rate, 10 bits per byte — the floor a perfect adapter and perfect servos would reach.
The emulator runs in its own process by default (a real chain does not share our interpreter lock) and
holds every packet for its wire time (a pseudo-terminal would deliver it at once), so the ratio says how
much the SDK, the OS and Python add on top of the physics; the same cycle without pacing is reported as
`software_only_ms`. With `--chains N` it also times reading N such chains one after another and in
parallel (one thread per port, as `ReadGroup` does).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import numpy as np

from app.bench import machine
from app.compose.config import AppConfig
from drivers.dynamixel import protocol as p
from drivers.dynamixel.bus import BusError, DynamixelBus
from drivers.dynamixel.config import ArmConfig
from drivers.dynamixel.emulator import BusEmulator, serve_in_process
from drivers.dynamixel.tables import STATE_BLOCK

log = logging.getLogger(__name__)

# A ViperX 300 6DOF follower, if the config has none.
DEFAULT_CHAIN = ArmConfig(
    motor_ids=(1, 2, 4, 6, 7, 8, 9, 3, 5),
    motor_models=("xm540-w270",) * 5 + ("xm430-w350",) * 2 + ("xm540-w270",) * 2,
    shadows={3: 2, 5: 4},
)


@contextmanager
def emulated_port(arm: ArmConfig, baudrate: int, where: str, pacing: bool = True) -> Iterator[str]:
    motors = list(zip(arm.motor_ids, arm.motor_models, strict=True))
    if where == "thread":
        with BusEmulator(motors, baudrate=baudrate, shadows=arm.shadows, wire_pacing=pacing) as emulator:
            yield emulator.port
        return
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    args = (child, motors, baudrate, dict(arm.shadows), pacing)
    proc = ctx.Process(target=serve_in_process, args=args, daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the emulator process did not start within 30 s")
        yield parent.recv()
    finally:
        parent.send("stop")
        proc.join(timeout=5)


def _open(port: str, arm: ArmConfig, baudrate: int) -> DynamixelBus:
    bus = DynamixelBus(port, baudrate, "bench", arm.latency_timer_ms)
    bus.open()
    bus.check_motors(dict(zip(arm.motor_ids, arm.motor_models, strict=True)))
    for motor_id in arm.motor_ids:
        bus.write(motor_id, "return_delay_time", 0)  # what connecting an arm does
    return bus


def _cycle(bus: DynamixelBus, ids: tuple[int, ...], goals: dict[int, int]) -> bool:
    """One read + write; False if the read failed within 50 ms (counted: a loaded machine can starve the
    emulator process)."""
    try:
        bus.sync_read(ids, *STATE_BLOCK, time.monotonic_ns() + 50_000_000)
    except BusError as e:
        log.warning("%s", e)
        return False
    bus.sync_write("goal_position", goals)
    return True


def _stats_ms(times_s: list[float]) -> dict[str, float]:
    t = np.array(times_s) * 1e3
    return {
        "median": round(float(np.median(t)), 3),
        "p99": round(float(np.percentile(t, 99)), 3),
        "max": round(float(t.max()), 3),
    }


def bench_bus(
    config: AppConfig,
    cycles: int = 1000,
    baudrate: int | None = None,
    emulator: str = "process",
    chains: int = 4,
) -> dict:
    arm = config.robot.arms.get("left_follower") or DEFAULT_CHAIN
    baud = baudrate or arm.baudrate
    ids = tuple(arm.motor_ids)
    masters = ids[:7]
    tx, rx = p.wire_bytes_sync_read(len(ids), STATE_BLOCK[1])
    write = p.wire_bytes_sync_write(len(masters), 4)
    wire_ms = p.wire_time_s(tx + rx + write, baud) * 1e3
    result: dict = {
        "bench": "bus",
        "motors": len(ids),
        "baudrate": baud,
        "emulator": emulator,
        "cycles": cycles,
        "bytes": {"sync_read_instruction": tx, "sync_read_status": rx, "sync_write": write},
        "wire_ms": round(wire_ms, 3),
    }
    cycle, result["bus_stats"] = _time_cycles(arm, baud, emulator, True, cycles)
    result["cycle_ms"] = cycle
    result["ratio_to_wire"] = {
        "median": round(cycle["median"] / wire_ms, 2),
        "p99": round(cycle["p99"] / wire_ms, 2),
    }
    result["software_only_ms"], _ = _time_cycles(arm, baud, emulator, False, cycles)
    if chains > 1:
        result[f"chains_{chains}"] = _bench_chains(arm, baud, emulator, chains, max(100, cycles // 5))
    result["machine"] = machine()
    return result


def _time_cycles(arm: ArmConfig, baud: int, emulator: str, pacing: bool, cycles: int) -> tuple[dict, dict]:
    ids = tuple(arm.motor_ids)
    goals = dict.fromkeys(ids[:7], 2048)
    with emulated_port(arm, baud, emulator, pacing) as port:
        bus = _open(port, arm, baud)
        try:
            for _ in range(50):
                _cycle(bus, ids, goals)
            times, failed = [], 0
            for _ in range(cycles):
                t0 = time.perf_counter()
                failed += not _cycle(bus, ids, goals)
                times.append(time.perf_counter() - t0)
            return _stats_ms(times), {**bus.stats.as_dict(), "failed_cycles": failed}
        finally:
            bus.close()


def _bench_chains(arm: ArmConfig, baud: int, emulator: str, n: int, cycles: int) -> dict:
    """Reading n chains (wire-paced emulators), one after another vs one thread per port."""
    ids = tuple(arm.motor_ids)
    with ExitStack() as stack:
        ports = [stack.enter_context(emulated_port(arm, baud, emulator)) for _ in range(n)]
        buses = [_open(port, arm, baud) for port in ports]
        stack.callback(lambda: [b.close() for b in buses])
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=n))

        def read(bus: DynamixelBus) -> None:
            try:
                bus.sync_read(ids, *STATE_BLOCK, time.monotonic_ns() + 50_000_000)
            except BusError as e:
                log.warning("%s", e)

        sequential, parallel = [], []
        for _ in range(20):
            list(pool.map(read, buses))
        for _ in range(cycles):
            t0 = time.perf_counter()
            for bus in buses:
                read(bus)
            t1 = time.perf_counter()
            list(pool.map(read, buses))
            t2 = time.perf_counter()
            sequential.append(t1 - t0)
            parallel.append(t2 - t1)
    return {"sequential_ms": _stats_ms(sequential), "parallel_ms": _stats_ms(parallel), "cycles": cycles}


# -- command line: `xr0 bench bus` --------------------------------------------------------------------------
def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cycles", type=int, default=1000, help="timed read+write cycles")
    p.add_argument("--baudrate", type=int, default=None, help="default: robot.arms.left_follower.baudrate")
    p.add_argument(
        "--emulator",
        choices=("process", "thread"),
        default="process",
        help="where the emulator runs (default: own process)",
    )
    p.add_argument(
        "--chains", type=int, default=4, help="also time N chains sequential vs parallel (0: skip)"
    )


def bench(args: argparse.Namespace, config: AppConfig) -> dict:
    return bench_bus(
        config, cycles=args.cycles, baudrate=args.baudrate, emulator=args.emulator, chains=args.chains
    )
