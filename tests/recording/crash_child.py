"""The process the crash tests kill: `xr0 record`'s own `record()` on the simulator in real time, plus a
journal of what was sent — one line per step with the checksum of the step as the store must hold it.

usage: python -m tests.recording.crash_child STORE JOURNAL CONFIG
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


class Journal:
    """A subscriber that writes each step's checksum (after the recorder took the step) and flushes."""

    def __init__(self, path: Path, spec) -> None:
        self.file = path.open("a", buffering=1)
        self.spec = spec
        self.episode = None

    def on_episode(self, e) -> None:
        self.episode = e.episode if e.kind == "start" else None

    def on_step(self, e) -> None:
        from app.runtime.recorder import step_from_event
        from tests.recording.synthetic import stored_checksum

        if self.episode is not None:
            sha = stored_checksum(self.spec, step_from_event(e, self.spec))
            self.file.write(json.dumps({"ep": self.episode, "sha": sha}) + "\n")

    def close(self) -> None:
        self.file.close()


def main(store: str, journal: str, config_file: str) -> None:
    from app.cli.recording import RecordPlan, record
    from app.compose.config import load_config
    from drivers.joints import JOINT_NAMES
    from recording.schema import StoreSpec

    config = load_config(config_file)
    spec = StoreSpec(
        fps=config.control.fps,
        joint_names=JOINT_NAMES,
        cameras={n: (c.height, c.width, 3) for n, c in config.cameras.items()},
        robot_type="sim",
        image_codec=config.recording.image_codec,
    )
    plan = RecordPlan(Path(store), "crash test", episodes=1000, seconds=1.5, reset_seconds=0.0)
    record(config, plan, extra_subscribers=(Journal(Path(journal), spec),))


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    main(*sys.argv[1:4])
