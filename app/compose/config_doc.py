"""docs/configuration.md from config.yaml: every key with its default and the comment beside it, per
section, with the commands that read the section. `python -m app.compose.config_doc > docs/configuration.md`;
a test keeps the page equal to what this prints, so the reference cannot drift from the file."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Top-level section → (commands that read it, where it is explained at length).
SECTIONS: dict[str, tuple[str, str]] = {
    "robot": (
        "every command that drives a robot: teleop, record, replay, rollout, eval, calibrate, demo, bench",
        "hardware.md",
    ),
    "cameras": ("teleop, record, rollout, eval (what is rendered or opened), cameras, doctor", "cameras.md"),
    "control": ("teleop, record, replay, rollout, eval, demo", "runner.md"),
    "recording": ("record, rollout --record, dataset, demo", "recording.md"),
    "policy": ("rollout, eval, serve, demo (the `server` part: serve and every ws:// client)", "runner.md"),
    "viz": ("teleop, record, rollout (`--rerun`), dataset view", "runner.md"),
    "runtime": (
        "every command that computes with torch: train, serve, rollout, eval, bench",
        "architecture.md",
    ),
    "train": ("train, demo, bench train", "training.md"),
}

HEADER = """# Configuration reference

Every command reads `config.yaml` at the project root (or `--config PATH`); `--robot sim|aloha|aloha-emulated`
overrides `robot.type`. A key you leave out takes the default below; an unknown key or a value of the wrong
type is refused with one sentence naming the key. Relative paths are relative to the config file.
Command-line options override the file for that run (`xr0 COMMAND --help` lists them with their defaults).

This page is generated from the comments in `config.yaml` (`python -m app.compose.config_doc > docs/configuration.md`),
and a test fails when the two differ.
"""

_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>.*)$")


def _split_comment(text: str) -> tuple[str, str]:
    """'value   # comment' → (value, comment), ignoring # inside quotes."""
    quote = None
    for i, ch in enumerate(text):
        if ch in "\"'":
            quote = None if quote == ch else (ch if quote is None else quote)
        elif ch == "#" and quote is None:
            return text[:i].strip(), text[i + 1 :].strip()
    return text.strip(), ""


def entries(lines: list[str]) -> list[tuple[str, str, str]]:
    """(dotted key, default, comment) for each key of config.yaml, in file order; comment lines that
    continue a key's comment (indented `#` lines right after it) are joined to it."""
    out: list[tuple[str, str, str]] = []
    stack: list[tuple[int, str]] = []
    above: list[str] = []  # a comment block right above a key (used when the key has no comment beside it)
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#") and out and line.startswith(" " * 20):
            key, default, comment = out[-1]
            out[-1] = (key, default, (comment + " " + stripped.lstrip("# ")).strip())
            continue
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        m = _KEY.match(line)
        if not m:  # a blank line ends a comment block
            above = []
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [m["key"]])
        value, comment = _split_comment(m["rest"])
        if not comment:
            comment = " ".join(above)
        above = []
        stack.append((indent, m["key"]))
        out.append((path, value, comment))
    return out


def render(config_text: str) -> str:
    rows = entries(config_text.splitlines())
    said: dict[str, str] = {}  # leaf name under robot.arms → the first arm's comment (the others repeat it)
    for i, (key, default, comment) in enumerate(rows):
        if key.startswith("robot.arms.") and key.count(".") == 3:
            leaf = key.rsplit(".", 1)[1]
            if comment:
                said.setdefault(leaf, comment)
            else:
                rows[i] = (key, default, said.get(leaf, ""))
    parts = [HEADER]
    for section, (readers, doc) in SECTIONS.items():
        own = next((c for k, _, c in rows if k == section), "")
        intro = f"{own[0].upper()}{own[1:]}{'' if own.endswith('.') else '.'} " if own else ""
        parts.append(f"\n## `{section}`\n\n{intro}Read by: {readers}. More: [{doc}]({doc}).\n")
        parts.append("| key | default | meaning |\n|---|---|---|")
        for key, default, comment in rows:
            if key != section and key.split(".")[0] == section:
                shown = f"`{default}`" if default else "(section)"
                parts.append(f"| `{key}` | {shown} | {comment.replace('|', '/')} |")
    return "\n".join(parts) + "\n"


def main() -> int:
    sys.stdout.write(render((ROOT / "config.yaml").read_text()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
