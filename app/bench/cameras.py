"""`xr0 bench cameras`: how long a frame takes from the device to the observation, and what it costs.

Three virtual RealSense cameras (the real pyrealsense2 SDK with `software_device`) at the configured
size and rate: a feeder thread injects frames on a 30 Hz grid and notes when; one consumer per camera
waits in `next()` and notes when each frame became available. Latency = available − injected (the SDK's
syncer, our capture worker's copy and hand-over). CPU per frame = the process's CPU time minus the
feeder's and consumers' own, divided by the frames delivered.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from app.bench import machine
from app.compose.config import AppConfig
from drivers.camera import CameraConfig
from drivers.clock import NS_PER_S, Rate, WallClock
from drivers.errors import DeviceError


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=10.0, help="how long to stream")
    p.add_argument("--cameras", type=int, default=3, help="number of virtual cameras")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=int, default=30)


def bench(args: argparse.Namespace, config: AppConfig) -> dict:
    from drivers.realsense import RealSenseCamera
    from drivers.realsense_virtual import VirtualRealSense

    clock = WallClock()
    w, h, fps = args.width, args.height, args.fps
    devices = [
        VirtualRealSense(serial=f"{i + 1:012d}", width=w, height=h, fps=fps, depth=False)
        for i in range(args.cameras)
    ]
    cfg = CameraConfig(type="realsense", width=w, height=h, fps=fps)
    cams = [RealSenseCamera(f"cam{i}", cfg, clock, device=d.device) for i, d in enumerate(devices)]
    injected: dict[int, int] = {}
    latencies: list[list[int]] = [[] for _ in cams]
    cpu = {"feeder": 0.0, "consumers": 0.0}
    lock = threading.Lock()
    stop = threading.Event()
    frames_total = round(args.seconds * fps)

    def feed() -> None:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(4)]
        rate = Rate(clock, fps)
        for k in range(1, frames_total + 1):
            rate.wait()
            injected[k] = clock.now_ns()
            for d in devices:
                d.push(images[k % 4], k, k * 1000.0 / fps)
        with lock:
            cpu["feeder"] += time.thread_time()

    def consume(i: int) -> None:
        while not stop.is_set():
            try:
                frame = cams[i].next(500)
            except DeviceError:
                continue
            latencies[i].append(clock.now_ns() - injected[frame.index])
        with lock:
            cpu["consumers"] += time.thread_time()

    for c in cams:
        c.connect()
    try:
        threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(cams))]
        for t in threads:
            t.start()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        feeder = threading.Thread(target=feed)
        feeder.start()
        feeder.join()
        time.sleep(0.3)  # let the last frames through
        stop.set()
        for t in threads:
            t.join()
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        for c in cams:
            c.disconnect()
    lat_ms = np.concatenate([np.array(x, dtype=np.float64) for x in latencies]) / 1e6
    delivered = int(lat_ms.size)
    worker_cpu_s = max(0.0, cpu_s - cpu["feeder"] - cpu["consumers"])
    return {
        "bench": "cameras",
        "cameras": len(cams),
        "mode": f"{w}x{h}@{fps}",
        "seconds": round(wall_s, 1),
        "frames_injected": frames_total * len(cams),
        "frames_delivered": delivered,
        "dropped": sum(c.dropped for c in cams),
        "latency_ms": {
            "p50": round(float(np.percentile(lat_ms, 50)), 3),
            "p99": round(float(np.percentile(lat_ms, 99)), 3),
            "max": round(float(lat_ms.max()), 3),
        },
        "cpu_ms_per_frame": round(worker_cpu_s / max(delivered, 1) * 1e3, 3),
        "cpu_ms_per_frame_incl_injection": round(cpu_s / max(delivered, 1) * 1e3, 3),
        "cpu_cores_used": round(cpu_s / wall_s, 3),
        "period_ms": round(NS_PER_S / fps / 1e6, 2),
        "machine": machine(),
    }
