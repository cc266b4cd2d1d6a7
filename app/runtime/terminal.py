"""The operator's terminal for every loop (record, rollout, teleop): single-key controls, a live status
line and cues. Each command has its own key map; the reading, the status line and the cues are shared.

Keys are read from stdin in cbreak mode (no Enter needed, no echo; Ctrl-C still interrupts), which
works in any terminal, including over SSH — no X server, no pynput. When stdin is not a terminal
(tests, CI, a pipe) there are no keys and the session runs on its own. The status line is redrawn in
place on stderr, only when stderr is a terminal.

Recording's keys (rollout's and teleop's are listed in app/cli/commands/rollout.py and app/cli/commands/teleop.py):

    →  n   next: end the episode now and keep it          ←  r   re-record: discard it, record it again
    d      discard it and go on                            s / f  mark success / failure
    p  ␣   pause before the next episode (again: resume)   Esc q  quit (the episode is kept or
                                                                  discarded per recording.on_interrupt)
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import sys
import threading
from collections.abc import Callable
from typing import IO

# Command names the record loop understands.
NEXT, RERECORD, DISCARD, SUCCESS, FAILURE, PAUSE, QUIT = (
    "next",
    "rerecord",
    "discard",
    "success",
    "failure",
    "pause",
    "quit",
)
ESCAPES = {
    b"\x1b[C": NEXT,  # right arrow
    b"\x1bOC": NEXT,  # right arrow, application cursor mode
    b"\x1b[D": RERECORD,  # left arrow
    b"\x1bOD": RERECORD,
}
KEYS = {
    b"n": NEXT,
    b"r": RERECORD,
    b"d": DISCARD,
    b"s": SUCCESS,
    b"f": FAILURE,
    b"p": PAUSE,
    b" ": PAUSE,
    b"q": QUIT,
    b"\x1b": QUIT,  # Esc on its own
}
HELP = "keys: →/n next · ←/r re-record · d discard · s/f success/failure · p pause · Esc/q quit"


def parse_keys(
    data: bytes, keys: dict[bytes, str] | None = None, escapes: dict[bytes, str] | None = None
) -> list[str]:
    """Commands in a burst of terminal input (escape sequences first, then single keys; others ignored).
    `keys`/`escapes`: the command's key map (default: recording's)."""
    keys = KEYS if keys is None else keys
    escapes = ESCAPES if escapes is None else escapes
    out = []
    i = 0
    while i < len(data):
        for seq, command in escapes.items():
            if data.startswith(seq, i):
                out.append(command)
                i += len(seq)
                break
        else:
            if data[i : i + 1] == b"\x1b" and data[i + 1 : i + 2] in (b"[", b"O"):
                i += 3  # an escape sequence we do not use (up/down arrows, …): skip it whole
                continue
            command = keys.get(data[i : i + 1].lower())
            if command is not None:
                out.append(command)
            i += 1
    return out


class Keyboard:
    """Commands from the terminal's keys, on a background thread; a no-op when stdin is not a TTY.

    `keys`/`escapes`: the command's key map (default: recording's). `on_command`: called on the reader
    thread with each command as it is typed (for commands that must act at once, like an e-stop);
    without it, commands wait in a queue for `poll`."""

    def __init__(
        self,
        stream: IO | None = None,
        keys: dict[bytes, str] | None = None,
        escapes: dict[bytes, str] | None = None,
        on_command: Callable[[str], None] | None = None,
    ) -> None:
        self.stream = sys.stdin if stream is None else stream
        self.keys, self.escapes, self.on_command = keys, escapes, on_command
        self.commands: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.active = False
        self._saved = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Keyboard:
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return self
        if not os.isatty(fd):
            return self
        import termios
        import tty

        self._fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)  # keys arrive one by one, unechoed; Ctrl-C still raises SIGINT
        self.active = True
        self._thread = threading.Thread(target=self._run, name="terminal-keys", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._saved is not None:
            import termios

            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None
        self.active = False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self._fd, 64)
                if data == b"\x1b":  # Esc alone, or the start of an arrow key split across reads?
                    more, _, _ = select.select([self._fd], [], [], 0.05)
                    if more:
                        data += os.read(self._fd, 64)
            except OSError:
                return
            if not data:
                return  # end of input (the terminal went away)
            for command in parse_keys(data, self.keys, self.escapes):
                if self.on_command is not None:
                    self.on_command(command)
                else:
                    self.commands.put(command)

    def poll(self) -> list[str]:
        """Commands typed since the last poll (never blocks)."""
        out = []
        while True:
            try:
                out.append(self.commands.get_nowait())
            except queue.Empty:
                return out


class Console:
    """Where the operator's messages go: cue lines on stdout, the live status line on stderr (TTY only)."""

    def __init__(self, out: IO | None = None, err: IO | None = None) -> None:
        self.out = sys.stdout if out is None else out
        self.err = sys.stderr if err is None else err
        self.live = _isatty(self.err)
        self._width = 0

    def cue(self, text: str, bell: bool = False) -> None:
        """A line the operator must notice (episode start/end); rings the terminal bell on a TTY."""
        self.clear_status()
        ring = "\a" if bell and _isatty(self.out) else ""
        print(f"{ring}{text}", file=self.out, flush=True)

    def status(self, text: str) -> None:
        if not self.live:
            return
        pad = max(0, self._width - len(text))
        self.err.write("\r" + text + " " * pad)
        self.err.flush()
        self._width = len(text)

    def clear_status(self) -> None:
        if self.live and self._width:
            self.err.write("\r" + " " * self._width + "\r")
            self.err.flush()
            self._width = 0


def _isatty(stream: IO) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
