"""Errors the CLI turns into one sentence for the operator."""


class CliError(Exception):
    """A problem the operator can fix; printed as one sentence, exit status 1."""


def prog() -> str:
    """How the user runs the app, for the commands hints print: `./xr0w` through the wrapper (which sets
    XR0_PROG), else `xr0`."""
    import os

    return os.environ.get("XR0_PROG") or "xr0"
