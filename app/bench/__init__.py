"""Benchmarks, one module each: `add_bench_arguments(parser)` and `bench(args, config) -> dict` (the JSON line
`xr0 bench NAME` prints last). The command's table is in app/cli/commands/bench.py."""

from __future__ import annotations

import os
import platform


def machine() -> dict:
    """Where a figure was measured, for the JSON every benchmark prints (with the load average when it
    was printed: figures from a busy machine are not comparable)."""
    return {
        "cpu": _cpu_model() or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str | None:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None
