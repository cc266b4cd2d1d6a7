"""The argument parser every command shares: the common options, the help format (defaults shown), --version."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from app.compose.config import ROBOT_TYPES


def add_common(p: argparse.ArgumentParser, nested: bool = False) -> None:
    """The options every command takes. `nested`: for sub-sub-commands, whose defaults must not
    overwrite what was given before the sub-command's name (argparse copies sub-parser defaults over)."""
    unset = argparse.SUPPRESS if nested else None
    p.add_argument("--config", default=unset, help="config file (default: config.yaml in the project)")
    p.add_argument(
        "--robot", choices=ROBOT_TYPES, default=unset, help="override robot.type (sim: no hardware)"
    )
    p.add_argument("-v", "--verbose", action="store_true", default=unset or False, help="debug logging")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, where it has a real one (not None, False or a
    suppressed value) and the help does not already say it; descriptions and epilogs keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or action.option_strings == []
            or isinstance(action, argparse._HelpAction | argparse._VersionAction)
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
        return f"{text} (default: {shown})"


class Parser(argparse.ArgumentParser):
    """argparse with our help format, for every command and sub-command (sub-parsers are this class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


class VersionAction(argparse.Action):
    """--version, computed only when asked (it runs git)."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str = argparse.SUPPRESS,
        default: Any = argparse.SUPPRESS,
        help: str | None = None,
    ) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from app.cli.version import version_text

        print(version_text())
        parser.exit()
