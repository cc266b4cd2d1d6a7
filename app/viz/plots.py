"""The PNG plots: a rollout's summary figure and latency histograms (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.viz.logger import Throughput
from drivers.sim.aloha import STAGE_NAMES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def latency_histogram(ax: Axes, latencies_ms: list[float]) -> None:
    """Inference latencies on a matplotlib axis, with the p50 and p99 marked."""
    if latencies_ms:
        ax.hist(latencies_ms, bins=40, color="#d8843b")
        p50, p99 = np.percentile(latencies_ms, [50, 99])
        ax.axvline(p50, color="k", linestyle="--", label=f"p50 {p50:.0f} ms")
        ax.axvline(p99, color="r", linestyle="--", label=f"p99 {p99:.0f} ms")
        ax.legend()
    ax.set_xlabel("inference latency (ms)")


def summary_figure(
    duration_s: float,
    success_times_s: list[float],
    latencies_ms: list[float],
    facts: Mapping[str, str] | None = None,
) -> Figure:
    """The end-of-rollout figure: tasks per minute (axis from 0, zero minutes shown), the inference latency
    histogram, and the facts that say what the numbers are about (policy, episodes, success, delays,
    rejections, clamps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = Throughput()
    for s in sorted(success_times_s):
        t.add(s)
    buckets = t.per_minute(duration_s)
    fig, (ax1, ax2, ax3) = plt.subplots(
        1, 3, figsize=(15, 4), dpi=100, gridspec_kw={"width_ratios": [1.2, 1.0, 0.9]}
    )
    minutes = np.arange(1, len(buckets) + 1)
    ax1.bar(minutes, buckets, color="#3b7dd8")
    ax1.set_xticks(minutes if len(minutes) <= 30 else minutes[::5])
    ax1.set_ylim(0, max(1, max(buckets, default=0)) * 1.1)  # never a ±0.04 axis around zero successes
    ax1.yaxis.get_major_locator().set_params(integer=True)
    ax1.set_xlabel("minute of the rollout")
    ax1.set_ylabel("tasks completed")
    total = len(success_times_s)
    ax1.set_title(
        f"throughput: {total} tasks in {duration_s / 60:.1f} min ({total / max(duration_s / 60, 1e-9):.2f}/min)"
    )
    latency_histogram(ax2, latencies_ms)
    ax2.set_ylabel("chunks")
    ax2.set_title("inference latency")
    ax3.axis("off")
    lines = [f"{k}: {v}" for k, v in (facts or {}).items()]
    ax3.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9, wrap=True)
    ax3.set_title("rollout", loc="left")
    fig.tight_layout()
    return fig


def summary_png(
    path: Path,
    duration_s: float,
    success_times_s: list[float],
    latencies_ms: list[float],
    facts: Mapping[str, str] | None = None,
) -> Path:
    """`summary_figure` as a PNG (1500×400)."""
    import matplotlib.pyplot as plt

    fig = summary_figure(duration_s, success_times_s, latencies_ms, facts)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def eval_png(path: Path, title: str, results: list, totals: dict, task: str) -> Path:
    """Success per stage, each episode's outcome, and the latency histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = STAGE_NAMES.get(task, STAGE_NAMES["transfer_cube"])
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4), dpi=100)
    rates = [totals["stage_rates"][s] or 0.0 for s in names]
    a1.bar(names, rates, color="#3b7dd8")
    a1.set_ylim(0, 1)
    a1.set_ylabel("episodes reaching the stage")
    lo, hi = totals["wilson95"]
    rate = totals["success_rate"]
    a1.set_title(f"success {0 if rate is None else rate:.0%} (95 % CI {lo:.0%}–{hi:.0%}), n={totals['ran']}")
    seeds = [r.seed for r in results]
    colours = [
        "#2a9d4b" if r.success else ("#999999" if r.reason.startswith("not run") else "#d8843b")
        for r in results
    ]
    a2.scatter(range(len(results)), [r.stage for r in results], c=colours, s=18)
    a2.set_yticks(range(5), ["none", *names])
    a2.set_xlabel(f"episode (seeds {min(seeds)}…{max(seeds)})" if seeds else "episode")
    a2.set_title("stage reached per episode (green: success)")
    latency_histogram(a3, [x for r in results for x in r.latency_ms])
    a3.set_title(
        f"chunks rejected {totals['chunks']['rejected']}, errors {totals['chunks']['errors']}, clamps {totals['clamps']}"
    )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
