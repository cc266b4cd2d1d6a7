"""Errors the CLI turns into one sentence for the operator."""


class CliError(Exception):
    """A problem the operator can fix; printed as one sentence, exit status 1."""
