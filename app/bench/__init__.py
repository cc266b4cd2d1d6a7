"""Benchmarks, one module each: `add_bench_arguments(parser)` and `bench(args, config) -> dict` (the JSON line
`xr0 bench NAME` prints last). The command's table is in app/cli/commands/bench.py."""

from __future__ import annotations

import os
import platform


def machine() -> dict:
    """Where a figure was measured, for the JSON every benchmark prints."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
