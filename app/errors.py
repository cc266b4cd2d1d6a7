"""The one error type every room of app/ raises for a problem the operator can fix: `xr0` prints it as one
sentence and exits 1. It lives below every room so the runtime can raise it without knowing the CLI."""

import os


class UserError(Exception):
    """A problem the operator can fix; printed as one sentence, exit status 1."""


def prog() -> str:
    """How the user runs the app, for the commands hints print: `./xr0w` through the wrapper (which sets
    XR0_PROG), else `xr0`."""
    return os.environ.get("XR0_PROG") or "xr0"
