"""`RecordingConfig`: how episodes are recorded and stored (the `recording:` section of config.yaml).

Kept free of zarr so that loading the app's config stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IMAGE_CODECS = ("jpeg", "png")


@dataclass(frozen=True)
class RecordingConfig:
    # Where a dataset given by bare name (`--dataset NAME`) is written, relative to this config file.
    root: str = "datasets"
    # Image compression: jpeg (lossy, small; the default) or png (lossless, several times larger, slower).
    image_codec: Literal["jpeg", "png"] = "jpeg"
    # JPEG quality 1..100 (90 keeps ~45 dB PSNR on the simulator's frames; lower only to save disk).
    jpeg_quality: int = 90
    # The archive tier, written by `xr0 dataset compact` after recording (never while recording): each
    # camera as video segments of `archive_segment_steps` frames, each starting with a keyframe.
    # Codec av1 (small; SVT-AV1 encoder) or h264 (faster to encode, larger), its constant-quality level
    # (CRF: lower is better and larger) and speed preset (av1: 0..10, higher is faster; h264: ultrafast..
    # veryslow). The default (av1, crf 24, preset 10) follows the rule in docs/benchmarks.md: the fewest
    # bytes that keep LeRobot's PSNR or better on every camera of camera-like frames, at the fastest AV1
    # preset that is safe (0.3× LeRobot's bytes; compaction 0.8× real time on 2 cores). The other side,
    # faster than real time at ~2× LeRobot's bytes, is h264 crf 18 preset ultrafast (`compact --fast`).
    # Simulator frames want preset 8 for the same quality: set it here.
    archive_codec: Literal["av1", "h264"] = "av1"
    archive_crf: int = 24
    archive_preset: str = "10"
    archive_segment_steps: int = 30
    # After `xr0 record` (or a recorded rollout) ends, compact its store in the background: a detached
    # `xr0 dataset compact` on one CPU at nice +10 (log: STORE/.xr0-compact.log). A recording into the
    # same store stops it (recording comes first; it resumes after the next session).
    compact_after: bool = False
    # Length of one episode in seconds, and the unrecorded pause after it for resetting the scene
    # (hardware only: the simulator resets itself).
    episode_seconds: float = 10.0
    reset_seconds: float = 2.0
    # Pending steps are written to disk at least this often, s: the most data a crash can take (≤ 1 s).
    flush_seconds: float = 0.5
    # Steps per image shard file (one JPEG per chunk inside it, so random reads stay one frame each).
    image_shard_steps: int = 30
    # Steps the writer's queue may hold (seconds at control.fps); a full queue is an alarm that stops
    # the episode, never a silent drop.
    queue_seconds: float = 3.0
    # The episode being recorded when you quit, press Ctrl-C or the loop fails: commit (kept, marked
    # interrupted) or discard.
    on_interrupt: Literal["commit", "discard"] = "commit"
    # `xr0 record` refuses to start unless the free disk space is this many times the planned episodes'
    # estimated size.
    disk_margin: float = 1.5
    # An episode whose loop rate fell below this fraction of control.fps is flagged (rate_ok: false).
    min_rate_fraction: float = 0.9
    # fsync an episode's files when it is committed, so committed episodes also survive a power cut.
    fsync: bool = True

    def __post_init__(self) -> None:
        if self.image_codec not in IMAGE_CODECS:
            raise ValueError(
                f"image_codec must be one of {', '.join(IMAGE_CODECS)}, got {self.image_codec!r}"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1..100, got {self.jpeg_quality}")
        if self.archive_codec not in ("av1", "h264"):
            raise ValueError(f"archive_codec must be av1 or h264, got {self.archive_codec!r}")
        top = 63 if self.archive_codec == "av1" else 51
        if not 0 <= self.archive_crf <= top:
            raise ValueError(f"archive_crf must be 0..{top} for {self.archive_codec}, got {self.archive_crf}")
        if self.archive_codec == "av1" and not (
            self.archive_preset.isdigit() and int(self.archive_preset) <= 10
        ):
            raise ValueError(
                f"archive_preset must be 0..10 for av1 (faster presets are SVT-AV1's tooling modes), got "
                f"{self.archive_preset!r}"
            )
        if not 1 <= self.archive_segment_steps <= 300:
            raise ValueError(f"archive_segment_steps must be 1..300, got {self.archive_segment_steps}")
        if not self.episode_seconds > 0:
            raise ValueError(f"episode_seconds must be > 0, got {self.episode_seconds}")
        if not self.reset_seconds >= 0:
            raise ValueError(f"reset_seconds must be >= 0, got {self.reset_seconds}")
        if not 0 < self.flush_seconds <= 1.0:
            raise ValueError(
                f"flush_seconds must be in (0, 1] s (at most 1 s of data at risk), got {self.flush_seconds}"
            )
        if not 1 <= self.image_shard_steps <= 1000:
            raise ValueError(f"image_shard_steps must be 1..1000, got {self.image_shard_steps}")
        if not 0.5 <= self.queue_seconds <= 60:
            raise ValueError(f"queue_seconds must be in [0.5, 60] s, got {self.queue_seconds}")
        if self.on_interrupt not in ("commit", "discard"):
            raise ValueError(f"on_interrupt must be commit or discard, got {self.on_interrupt!r}")
        if not self.disk_margin >= 1.0:
            raise ValueError(f"disk_margin must be >= 1, got {self.disk_margin}")
        if not 0 < self.min_rate_fraction <= 1:
            raise ValueError(f"min_rate_fraction must be in (0, 1], got {self.min_rate_fraction}")
