"""`xr0 bench server`: does one robot keep its chunk latency while other clients misbehave?

A policy server on loopback serves a policy that takes `--infer-ms` per chunk (a sleep: the model's time,
GIL released, as torch's kernels do). A good client asks for chunks back to back, first alone, then beside
`--attackers` clients of each kind: fuzzers (malformed messages, answered with errors off the inference
thread), oversized frames (three 4096×4096 images per request: refused before decoding), greedy clients
(valid requests back to back: one in flight each, so they take turns with the good client), and idle
connections. For each: the good client's p50/p99/max latency and its p99 against the unloaded p99 (the
target: ≤ 2× under fuzzing and oversized frames).
"""

from __future__ import annotations

import argparse
import logging
import random
import threading
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
    """Holds, after `infer_ms` of (sleeping) model time; reads one 64×48 camera."""

    def __init__(self, infer_ms: float) -> None:
        from dataclasses import replace

        super().__init__()
        self.spec = replace(self.spec, cameras=("cam_high",))
        self.infer_s = infer_ms / 1e3

    def infer(self, observation: PolicyObservation, prefix: np.ndarray) -> Chunk:
        time.sleep(self.infer_s)
        return super().infer(observation, prefix)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each phase")
    p.add_argument("--attackers", type=int, default=3, help="clients of each hostile kind")
    p.add_argument("--infer-ms", type=float, default=20.0, help="the served policy's time per chunk")


def _observation() -> PolicyObservation:
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return PolicyObservation({"cam_high": image}, np.zeros(14), "transfer the cube", 1)


def _phase(server: object, seconds: float, attack: str, attackers: int) -> dict:
    from websockets.sync.client import connect

    from app.serving.client import RemotePolicy
    from app.serving.wire import encode_image, encode_request, pack

    obs = _observation()
    valid = msgpack.unpackb(encode_request(1, obs, np.zeros((0, 14)), 90), raw=False)
    stop = threading.Event()
    sent = [0]

    def hostile(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with connect(server.url, proxy=None, compression=None, max_size=None) as ws:
                ws.recv(timeout=10)
                while not stop.is_set():
                    if attack == "idle":
                        stop.wait(0.5)
                        continue
                    if attack == "fuzz":
                        msg = dict(
                            valid, id=rng.choice([None, -1, "x", 2**70]), prefix=rng.choice([{}, [], 7])
                        )
                        payload = rng.choice([pack(msg), rng.randbytes(200)])
                    elif attack == "oversized":
                        big = encode_image(np.zeros((4096, 4096, 3), np.uint8), 90)
                        payload = pack(
                            dict(valid, observation=dict(valid["observation"], images={"cam_high": big}))
                        )
                    else:  # greedy: valid requests back to back
                        payload = pack(valid)
                    ws.send(payload)
                    ws.recv(timeout=30)
                    sent[0] += 1
        except Exception as e:  # noqa: BLE001 - an attacker the server disconnects simply stops
            log.debug("%s attacker stopped: %s", attack, e)

    threads = [
        threading.Thread(target=hostile, args=(i,), daemon=True) for i in range(attackers if attack else 0)
    ]
    for t in threads:
        t.start()
    time.sleep(0.5 if attack else 0.0)
    good = RemotePolicy(server.url, timeout_s=30.0)
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
        for t in threads:
            t.join(timeout=30)
    return {
        "chunks": len(latencies),
        "latency_ms": percentiles(latencies, digits=2),
        "hostile_messages": sent[0],
    }


def bench(args: argparse.Namespace, config: AppConfig) -> dict:
    from app.bench import machine
    from app.serving.server import PolicyServer

    if args.attackers < 1 or args.seconds <= 0 or args.infer_ms < 0:
        raise UserError("--attackers must be ≥ 1, --seconds > 0 and --infer-ms ≥ 0")
    server = PolicyServer(SlowHold(args.infer_ms), "127.0.0.1", 0, max_connections=4 * args.attackers + 4)
    server.start()
    result: dict = {"bench": "server", "infer_ms": args.infer_ms, "attackers": args.attackers}
    try:
        base = _phase(server, args.seconds, "", 0)
        result["unloaded"] = base
        for attack in ("fuzz", "oversized", "idle", "greedy"):
            log.info("good client beside %d %s client(s) for %.0f s …", args.attackers, attack, args.seconds)
            r = _phase(server, args.seconds, attack, args.attackers)
            r["p99_vs_unloaded"] = round(r["latency_ms"]["p99"] / base["latency_ms"]["p99"], 2)
            result[attack] = r
    finally:
        server.stop()
    result["machine"] = machine()
    return result
