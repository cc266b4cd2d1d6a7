"""`xr0 record` and `xr0 teleop` as an operator meets them: a real process, keys typed into a
pseudo-terminal (as over SSH), Ctrl-C delivered to the process group — and the store or summary afterwards."""

import contextlib
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.runtime.terminal import NEXT, QUIT, RERECORD, parse_keys
from recording.integrity import validate
from recording.reader import EpisodeStore

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
cameras:
  cam_high: {type: sim, width: 48, height: 32}
recording: {fsync: false}
"""


def test_keys_and_escape_sequences_are_parsed():
    assert parse_keys(b"\x1b[C") == [NEXT] and parse_keys(b"\x1bOD") == [RERECORD]
    assert parse_keys(b"\x1b") == [QUIT] and parse_keys(b"nRq") == [NEXT, RERECORD, QUIT]
    assert parse_keys(b"\x1b[A x") == ["pause"]  # up arrow ignored whole, space pauses, x ignored


class Terminal:
    """An `xr0` command on a pseudo-terminal: what it prints is collected; `type` sends keys."""

    started: list["Terminal"] = []  # killed after each test, passed or failed (the autouse fixture below)

    def __init__(self, argv: list[str]) -> None:
        Terminal.started.append(self)
        self.master, slave = pty.openpty()
        env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONPATH": str(ROOT), "TERM": "xterm"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", *argv],
            cwd=ROOT,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            # Ctrl-C must reach it even from a shell that started this run in the background (SIGINT ignored)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        os.close(slave)
        self.output = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            self.output += data

    def kill(self) -> None:
        """The whole process group, whatever state it is in (a failed test must leave nothing running)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def wait_for(self, pattern: str, after: int = 0, timeout: float = 90) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern.encode(), self.output[after:])
            if m:
                return after + m.end()
            assert self.proc.poll() is None, f"exited early:\n{self.output.decode(errors='replace')[-3000:]}"
            time.sleep(0.02)
        raise AssertionError(
            f"no {pattern!r} within {timeout} s:\n{self.output.decode(errors='replace')[-3000:]}"
        )

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def finish(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self._reader.join(2)
            os.close(self.master)


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    yield
    while Terminal.started:
        Terminal.started.pop().kill()


@pytest.fixture
def config(tmp_path) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(CONFIG)
    return p


def test_keys_over_a_terminal_end_rerecord_and_quit(tmp_path, config):
    store = tmp_path / "keys.zarr"
    term = Terminal(["record", "--config", str(config), "--robot", "sim", "--dataset", str(store),
                     "--episodes", "5", "--episode-seconds", "60"])  # fmt: skip
    at = term.wait_for("keys: ")
    at = term.wait_for(r"episode 0 \(1/5\) recording, seed 0", at)
    at = term.wait_for(r"queue \d+/\d+, on disk −\d+\.\d s", at)  # the live status line, with the writer lag
    term.type(b"\x1b[C")  # right arrow: keep episode 0 as it is and go on
    at = term.wait_for(r"episode 0 kept \(success|failure", at)
    at = term.wait_for(r"episode 1 \(2/5\) recording, seed 1", at)
    term.type(b"r")  # re-record: episode 1 is discarded and recorded again from the same seed
    at = term.wait_for(r"episode 1 discarded \(rerecord\)", at)
    at = term.wait_for(r"episode 1 \(2/5\) recording, seed 1", at)
    term.type(b"f")  # marked failure by the operator
    term.type(b"p")  # pause before the next episode ...
    at = term.wait_for(r"PAUSE after this episode", at)
    term.type(b"n")  # ... which ends now
    at = term.wait_for(r"episode 1 kept \(failure, next, \d+ steps\)", at)
    at = term.wait_for(r"paused", at)
    time.sleep(0.3)
    assert b"episode 2 (3/5) recording" not in term.output[at:]
    term.type(b" ")  # space: go on
    at = term.wait_for(r"episode 2 \(3/5\) recording, seed 2", at)
    term.type(b"d")  # discard, go on with the next seed
    at = term.wait_for(r"episode 2 discarded \(discard\)", at)
    at = term.wait_for(r"episode 2 \(3/5\) recording, seed 3", at)
    term.type(b"\x1b")  # Esc: quit; the open episode is kept (on_interrupt: commit), marked interrupted
    assert term.finish() == 0, term.output.decode(errors="replace")[-2000:]
    out = term.output.decode(errors="replace")
    assert "\r" in out and "dropped 0" in out
    assert "… episode 0 saving" in out  # "kept" comes only after the writer committed it
    # the summary attributes each attempt to its own seed and verdict (index 2 was used twice)
    summary = out.split("record: ", 1)[1]
    assert re.search(r"episode 1 seed 1: discarded \(rerecord\)", summary)
    assert re.search(r"episode 2 seed 2: discarded \(discard\)", summary)
    assert re.search(r"episode 2 seed 3: kept, \d+ steps", summary)

    s = EpisodeStore(store)
    assert s.episodes == [0, 1, 2] and validate(store).ok
    first, second, third = s.info(0), s.info(1), s.info(2)
    assert first["outcome"] == "next" and 0 < first["length"] < 1800 and first["seed"] == 0
    assert second["outcome"] == "next" and second["seed"] == 1  # the re-recorded one, same seed
    assert second["success"] is False and second["success_source"] == "operator"
    assert third["outcome"] == "quit" and third["interrupted"] is True and third["seed"] == 3


def test_ctrl_c_ends_the_open_episode_cleanly(tmp_path, config):
    store = tmp_path / "sigint.zarr"
    argv = ["record", "--config", str(config), "--robot", "sim", "--dataset", str(store), "--episodes", "3"]
    term = Terminal(argv)
    at = term.wait_for(r"episode 1 \(2/3\) recording")
    term.wait_for(r"queue \d+/\d+", at)
    os.killpg(term.proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: the whole foreground group
    assert term.finish() == 130
    s = EpisodeStore(store)
    assert s.episodes == [0, 1] and s.partial == [] and validate(store, deep=True).ok
    assert s.info(0)["length"] == 300 and s.info(0)["interrupted"] is False
    assert 0 < s.info(1)["length"] < 300 and s.info(1)["interrupted"] is True


def test_the_writer_line_tells_back_pressure_from_falling_behind():
    from app.cli.commands.record import writer_line

    assert "nothing lost" in writer_line(True, 90, 90, 0)  # the simulator waits for the writer
    assert writer_line(False, 3, 90, 0) == "writer: kept up (queue peak 3/90)"
    assert "warning" in writer_line(False, 80, 90, 0)
    assert "OVERFLOWED 2 time(s)" in writer_line(False, 90, 90, 2)


def test_teleop_keys_pause_and_quit_with_a_status_line_and_a_summary(config):
    term = Terminal(
        ["teleop", "--config", str(config), "--robot", "sim", "--episodes", "3", "--episode-seconds", "60"]
    )
    at = term.wait_for("keys: p/SPACE pause")
    at = term.wait_for(r"episode 1/3 .* following the leaders", at)  # the live status line
    term.type(b"p")
    at = term.wait_for(r"PAUSED \(followers hold\)", at)
    term.type(b" ")  # space resumes
    at = term.wait_for(r"following the leaders", at)
    term.type(b"q")  # typed, not echoed, and acted on
    assert term.finish() == 0, term.output.decode(errors="replace")[-2000:]
    out = term.output.decode(errors="replace")
    assert "stopped by quit" in out and re.search(r"paused for \d+ ticks", out)
    assert "episode 0 seed 0:" in out and "episode 1" not in out.split("teleop on robot")[1]


def test_teleop_ctrl_c_still_prints_the_summary(config):
    term = Terminal(
        ["teleop", "--config", str(config), "--robot", "sim", "--episodes", "3", "--episode-seconds", "60"]
    )
    term.wait_for(r"episode 1/3")
    os.killpg(term.proc.pid, signal.SIGINT)
    assert term.finish() == 130
    out = term.output.decode(errors="replace")
    assert "stopped by interrupted" in out and "ticks in" in out
