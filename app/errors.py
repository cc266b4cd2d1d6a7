"""Errors the CLI turns into one sentence for the operator."""


class CliError(Exception):
    """A problem the operator can fix; printed as one sentence, exit status 1."""


class NotBuilt(Exception):
    """The command exists but its capability is not part of this version yet; exit status 2."""
