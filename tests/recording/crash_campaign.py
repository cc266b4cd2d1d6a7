"""The crash campaign: many random SIGKILLs of a real recording on a loaded machine, with the test's checks.

    python -m tests.recording.crash_campaign --kills 50 --load 2 [--out report.json]

Each round runs `xr0 record`'s own `record()` on the simulator in real time (tests/recording/crash_child.py),
kills it at a random moment — mostly the whole process group (recorder and writer at once, like a power
cut), every fourth round only the recording process — and then checks: the store opens; every committed
episode is bit-identical to what was sent (the child's own journal); every episode the operator was told
"kept" is committed; `repair` recovers the partial episode up to at most ~1 s before the kill. `--load N`
keeps N processes spinning a core each for the whole campaign (a training job, a browser). Prints one JSON
line: rounds, committed episodes checked, committed lost or changed, "kept" lost, in-progress loss
(median, max, in seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recording.integrity import repair, validate
from recording.reader import EpisodeStore
from tests.recording.test_crash import checksums, kill_while_recording

KEPT = re.compile(r"episode (\d+) kept")


def one_round(work: Path, seed: int) -> dict:
    whole_group = seed % 4 != 2
    path, journal = kill_while_recording(work, seed, whole_group)
    told_kept = {int(m.group(1)) for m in KEPT.finditer((work / "child.log").read_text(errors="replace"))}
    store = EpisodeStore(path)
    spec = store.spec
    changed = [ep for ep in store.episodes if checksums(store, spec, ep) != journal.get(ep)]
    kept_lost = sorted(told_kept - set(store.episodes))
    report = validate(path)
    partial = report.partial[0].index if report.partial else None
    fixed = repair(path)
    loss_s = None
    if partial is not None:
        sent = len(journal.get(partial, []))
        loss_s = max(0, sent - fixed.recovered.get(partial, 0)) / spec.fps
    return {
        "seed": seed,
        "whole_group": whole_group,
        "committed": len(store.episodes),
        "changed": changed,
        "kept_lost": kept_lost,
        "problems": report.problems + fixed.problems,
        "partial": partial,
        "in_progress_loss_s": loss_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--load", type=int, default=2, help="busy background processes")
    p.add_argument("--out", default=None, help="also write the per-round report here (JSON)")
    args = p.parse_args(argv)
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(args.load)
    ]
    rounds = []
    t0 = time.monotonic()
    try:
        for seed in range(args.kills):
            with tempfile.TemporaryDirectory(prefix="xr0-crash-") as tmp:
                rounds.append(one_round(Path(tmp), seed))
            r = rounds[-1]
            print(
                f"round {seed + 1}/{args.kills}: {r['committed']} committed, partial {r['partial']}, "
                f"loss {r['in_progress_loss_s']} s, changed {r['changed']}, kept lost {r['kept_lost']}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        for s in spinners:
            os.killpg(s.pid, signal.SIGKILL)
    losses = [r["in_progress_loss_s"] for r in rounds if r["in_progress_loss_s"] is not None]
    summary = {
        "rounds": len(rounds),
        "load": args.load,
        "committed_checked": sum(r["committed"] for r in rounds),
        "committed_lost_or_changed": sum(len(r["changed"]) for r in rounds),
        "kept_lost": sum(len(r["kept_lost"]) for r in rounds),
        "problems": sum(len(r["problems"]) for r in rounds),
        "in_progress_loss_s": {
            "rounds_with_partial": len(losses),
            "median": round(float(np.median(losses)), 3) if losses else None,
            "max": round(max(losses), 3) if losses else None,
        },
        "minutes": round((time.monotonic() - t0) / 60, 1),
        "load_average": os.getloadavg(),
    }
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
