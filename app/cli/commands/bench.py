"""`xr0 bench NAME`: measurements that print a one-line JSON summary last (numbers, not hopes).

`BENCHES` is the table of benchmarks: name -> (help, module in app/bench/ implementing it). A benchmark
module has `add_bench_arguments(parser)` and `bench(args, config) -> dict`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging

from app.compose.config import AppConfig

log = logging.getLogger(__name__)


# -- command line: `xr0 bench NAME` -------------------------------------------------------------------------
BENCHES: dict[str, tuple[str, str]] = {
    "sim": (
        "simulator loop rate with 0/1/3 cameras; scripted teleoperator success",
        "app.bench.sim",
    ),
    "bus": ("Dynamixel sync read+write cycle through the bus emulator", "app.bench.bus"),
    "cameras": ("frame arrival to observation latency, CPU per frame", "app.bench.cameras"),
    "loop": ("30 Hz loop lateness with inference and recording", "app.bench.loop"),
    "recorder": ("sustained recording throughput and loop impact", "app.bench.recorder"),
    "loader": ("training samples per second from a store", "app.bench.loader"),
    "train": ("training step time and memory", "app.bench.train"),
    "inference": ("XR0 chunk latency, VLM prefill vs DiT steps", "app.bench.inference"),
    "async": ("async vs sync vs async-naive in the simulator", "app.bench.async_modes"),
    "server": ("a good client's chunk latency beside hostile and greedy clients", "app.bench.server"),
    "serve": ("several robots sharing one policy server: chunks/s and latency per client", "app.bench.serve"),
    "soak": ("a long async rollout over the wire, recorded and logged: drift per minute", "app.bench.soak"),
    "codecs": (
        "bytes per minute, PSNR/SSIM, encode speed and random access per image/video codec",
        "app.bench.codecs",
    ),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from app.cli.parsing import add_common

    sub = p.add_subparsers(dest="bench", metavar="{" + ",".join(BENCHES) + "}", required=True)
    for name, (help_text, module_name) in BENCHES.items():
        b = sub.add_parser(name, help=help_text, description=help_text)
        add_common(b, nested=True)
        if module_name is not None:
            importlib.import_module(module_name).add_bench_arguments(b)


def run(args: argparse.Namespace, config: AppConfig) -> int:
    _, module_name = BENCHES[args.bench]
    result = importlib.import_module(module_name).bench(args, config)
    print(json.dumps(result))
    return 0
