"""`xr0 bench server`: does one robot keep its chunk latency while other clients misbehave?

A policy server on loopback serves a policy that takes `--infer-ms` per chunk (a sleep: the model's time,
GIL released, as torch's kernels do). A good client asks for chunks back to back, first alone, then beside
`--attackers` clients of each kind: fuzzers (malformed messages, answered with errors off the inference
thread), oversized frames (three 4096×4096 images per request: refused before decoding), idle
connections, and greedy clients (valid requests back to back: one in flight each, so they take turns with
the good client — load, not an attack: with N of them each client gets 1/(N+1) of the model). Each hostile
client is its own process. For each: the good client's p50/p99/max latency and its p99 against the
unloaded p99 (the target: ≤ 2× beside fuzzers, oversized frames and idle connections).
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from typing import TYPE_CHECKING

import msgpack
import numpy as np

from app.errors import UserError
from app.runtime.episodes import percentiles
from app.runtime.scripted import HoldPolicy
from xr0.boundary import Chunk, PolicyObservation

if TYPE_CHECKING:
    from app.compose.config import AppConfig

log = logging.getLogger(__name__)


class SlowHold(HoldPolicy):
    """Holds, after `infer_ms` of (sleeping) model time; reads one 320×240 camera."""

    def __init__(self, infer_ms: float) -> None:
        from dataclasses import replace

        super().__init__()
        # Its frame sizes, as a checkpoint's contract gives them: the server bounds each frame by them.
        cameras = [{"name": "cam_high", "height": 240, "width": 320}]
        self.spec = replace(self.spec, cameras=("cam_high",), contract={"cameras": cameras})
        self.infer_s = infer_ms / 1e3

    def infer(self, observation: PolicyObservation, prefix: np.ndarray) -> Chunk:
        time.sleep(self.infer_s)
        return super().infer(observation, prefix)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each phase")
    p.add_argument("--attackers", type=int, default=3, help="clients of each hostile kind")
    p.add_argument("--infer-ms", type=float, default=20.0, help="the served policy's time per chunk")


def _observation() -> PolicyObservation:
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    return PolicyObservation({"cam_high": image}, np.zeros(14), "transfer the cube", 1)


def _payloads(attack: str) -> list[bytes]:
    """What one hostile client of `attack` sends, built once (the attacker's own encoding is not measured)."""
    from app.serving.wire import encode_image, encode_request, pack

    valid = msgpack.unpackb(encode_request(1, _observation(), np.zeros((0, 14)), 90), raw=False)
    if attack == "fuzz":
        rng = random.Random(0)
        out = [rng.randbytes(200), b"", b"text"]
        for bad in (None, "x", 1e308, [], {}):  # each makes the request invalid
            out.append(pack(dict(valid, id=bad)))
            out.append(pack(dict(valid, prefix=bad)))
            out.append(pack(dict(valid, observation=dict(valid["observation"], state=bad))))
        return out
    if attack == "oversized":
        big = encode_image(np.zeros((4096, 4096, 3), np.uint8), 90)
        images = {"cam_high": big, "cam_left_wrist": big, "cam_right_wrist": big}
        return [pack(dict(valid, observation=dict(valid["observation"], images=images)))]
    return [pack(valid)]  # greedy: valid requests back to back


def _attack(url: str, attack: str, stop: object) -> None:
    """One hostile client, in its own process (it must not share the server's interpreter lock)."""
    from websockets.sync.client import connect

    payloads = _payloads(attack) if attack != "idle" else []
    k = 0
    while not stop.is_set():
        try:
            with connect(url, proxy=None, compression=None, max_size=None) as ws:
                ws.recv(timeout=10)
                while not stop.is_set():
                    if not payloads:
                        stop.wait(0.5)
                        continue
                    ws.send(payloads[k % len(payloads)])
                    k += 1
                    ws.recv(timeout=30)
        except Exception:  # noqa: BLE001 - disconnected by the server (by design for some): connect again
            stop.wait(0.05)


def _phase(url: str, seconds: float, attack: str, attackers: int) -> dict:
    import multiprocessing

    from app.serving.client import RemotePolicy

    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    procs = [ctx.Process(target=_attack, args=(url, attack, stop), daemon=True) for _ in range(attackers)]
    for proc in procs:
        proc.start()
    if procs:
        time.sleep(3.0)  # the attackers are started and connected
    obs = _observation()
    good = RemotePolicy(url, timeout_s=30.0)
    latencies: list[float] = []
    t_end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            good.infer(obs, np.zeros((0, 14)))
            latencies.append((time.perf_counter() - t0) * 1e3)
    finally:
        good.close()
        stop.set()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return {"chunks": len(latencies), "latency_ms": percentiles(latencies, digits=2)}


def bench(args: argparse.Namespace, config: AppConfig) -> dict:
    from app.bench import machine
    from app.serving.server import PolicyServer

    if args.attackers < 1 or args.seconds <= 0 or args.infer_ms < 0:
        raise UserError("--attackers must be ≥ 1, --seconds > 0 and --infer-ms ≥ 0")
    server = PolicyServer(SlowHold(args.infer_ms), "127.0.0.1", 0, max_connections=4 * args.attackers + 4)
    server.start()
    result: dict = {"bench": "server", "infer_ms": args.infer_ms, "attackers": args.attackers}
    try:
        base = _phase(server.url, args.seconds, "", 0)
        result["unloaded"] = base
        for attack in ("fuzz", "oversized", "idle", "greedy"):
            log.info("good client beside %d %s client(s) for %.0f s …", args.attackers, attack, args.seconds)
            r = _phase(server.url, args.seconds, attack, args.attackers)
            r["p99_vs_unloaded"] = round(r["latency_ms"]["p99"] / base["latency_ms"]["p99"], 2)
            r["rejected_so_far"], r["served_so_far"] = server.rejected, server.served
            result[attack] = r
    finally:
        server.stop()
    result["machine"] = machine()
    return result
