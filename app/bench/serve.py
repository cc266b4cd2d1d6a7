"""`xr0 bench serve`: several robots sharing one policy server — chunks per second and latency per client.

A policy server on loopback serves a random-weight XR0 (`--variant tiny` on the CPU; `full` on a GPU),
three views by default. Clients, each its own process with its own images and state, ask for chunks back
to back with a prefix (as a robot does; they send pre-encoded requests, so their own JPEG encoding does not
load the server's machine). Three phases of `--seconds` each: one client alone, `--clients` N clients with
batching (`server.max_batch`), and the same N clients answered one by one (max batch 1). Reported: chunks per
second in total, p50/p99 latency per client, the mean batch size, and the ratios against one client (the
targets: N = 4 gets ≥ 2.5× the chunks per second of one client at ≤ 1.5× its p99).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from app.errors import UserError
from app.runtime.episodes import percentiles

if TYPE_CHECKING:
    from app.compose.config import AppConfig
    from app.serving.server import PolicyServer

log = logging.getLogger(__name__)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=4, help="robots sharing the server in the batched phase")
    p.add_argument("--seconds", type=float, default=20.0, help="duration of each phase")
    p.add_argument("--variant", default="tiny", help="model variant with random weights: tiny | full")
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    p.add_argument("--views", type=int, default=3, choices=(1, 2, 3), help="camera views per request")
    p.add_argument("--width", type=int, default=320, help="image width in pixels")
    p.add_argument("--height", type=int, default=256, help="image height in pixels")
    p.add_argument("--prefix", type=int, default=4, help="prefix rows each request carries")
    p.add_argument("--max-batch", type=int, default=8, help="the server's max_batch in the batched phase")
    p.add_argument(
        "--window-ms", type=float, default=None, help="the server's batch_window_ms (default: config.yaml's)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads of the server (default: cores)")


def _client(url: str, payload: bytes, start: object, stop: object, out: object) -> None:
    """One robot, in its own process: the same request back to back; its latencies go to `out`."""
    from websockets.sync.client import connect

    latencies = []
    with connect(url, proxy=None, compression=None, max_size=None) as ws:
        ws.recv(timeout=30)  # hello
        start.wait()
        while not stop.is_set():
            t0 = time.perf_counter()
            ws.send(payload)
            ws.recv(timeout=60)
            latencies.append((time.perf_counter() - t0) * 1e3)
    out.put(latencies)


def _requests(n: int, args: argparse.Namespace, cameras: tuple[str, ...], quality: int) -> list[bytes]:
    from app.serving.wire import encode_request
    from xr0.boundary import PolicyObservation

    out = []
    for k in range(n):
        rng = np.random.default_rng(100 + k)
        images = {c: rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8) for c in cameras}
        state = rng.normal(0, 0.3, 14)
        state[[6, 13]] = 0.5
        obs = PolicyObservation(images, state, "transfer the cube", 1 + k)
        prefix = state + rng.normal(0, 0.01, (args.prefix, 14))
        out.append(encode_request(k, obs, prefix, quality))
    return out


def _phase(server: PolicyServer, payloads: list[bytes], seconds: float) -> dict:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    start, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(server.url, p, start, stop, out), daemon=True) for p in payloads
    ]
    for proc in procs:
        proc.start()
    while server.active < len(procs):  # every client connected and waiting
        time.sleep(0.05)
    served0, batches0 = server.served, server.batches
    start.set()
    time.sleep(seconds)
    stop.set()
    per_client = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    served, batches = server.served - served0, server.batches - batches0
    chunks = sum(len(lat) for lat in per_client)
    everyone = [x for lat in per_client for x in lat]
    return {
        "clients": len(procs),
        "chunks_per_s": round(chunks / seconds, 2),
        "latency_ms": percentiles(everyone, digits=1),
        "per_client": [{"chunks": len(lat), **percentiles(lat, digits=1)} for lat in per_client],
        "mean_batch": round(served / max(batches, 1), 2),
    }


def bench(args: argparse.Namespace, config: AppConfig) -> dict:
    import torch

    from app.bench import machine
    from app.bench.inference import CAMERAS, build_policy
    from app.serving.server import PolicyServer

    if args.clients < 1 or args.seconds <= 0 or args.max_batch < 1 or args.prefix < 0:
        raise UserError("--clients and --max-batch must be ≥ 1, --seconds > 0 and --prefix ≥ 0")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = build_policy(args.variant, None, device, "auto", 30)
    from dataclasses import replace

    cameras = CAMERAS[: args.views]
    policy = type(policy)(policy.model, policy.processor, replace(policy.config, cameras=cameras))
    if args.prefix > policy.spec.max_prefix:
        raise UserError(f"--prefix {args.prefix}: this model takes at most {policy.spec.max_prefix}")
    payloads = _requests(args.clients, args, cameras, config.policy.server.jpeg_quality)
    result: dict = {
        "bench": "serve",
        "variant": args.variant,
        "device": device,
        "views": args.views,
        "width": args.width,
        "height": args.height,
        "prefix": args.prefix,
        "torch_threads": torch.get_num_threads(),
        "batch_window_ms": config.policy.server.batch_window_ms if args.window_ms is None else args.window_ms,
    }
    phases = (("one_client", 1, args.max_batch), ("batched", args.clients, args.max_batch))
    phases += (("one_by_one", args.clients, 1),)
    for name, n, max_batch in phases:
        window = config.policy.server.batch_window_ms if args.window_ms is None else args.window_ms
        server = PolicyServer(
            policy, "127.0.0.1", 0, max_connections=n + 2, max_batch=max_batch, batch_window_ms=window
        )
        server.start()
        try:
            for payload in payloads[:n]:  # warm-up: every request once, untimed
                server._answer(payload, "warm-up")
            log.info("%s: %d client(s), max batch %d, %.0f s …", name, n, max_batch, args.seconds)
            result[name] = _phase(server, payloads[:n], args.seconds)
        finally:
            server.stop()
    one = result["one_client"]
    for name in ("batched", "one_by_one"):
        result[name]["throughput_vs_one"] = round(result[name]["chunks_per_s"] / one["chunks_per_s"], 2)
        result[name]["p99_vs_one"] = round(result[name]["latency_ms"]["p99"] / one["latency_ms"]["p99"], 2)
    result["machine"] = machine()
    return result
