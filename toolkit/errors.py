"""Errors a user can act on: the CLI prints them as one line, without a traceback."""


class ToolkitError(Exception):
    """A problem with input, configuration or a run directory, stated in one line."""


class BadInputError(ToolkitError):
    """A pair file (or one of its rows) that cannot be used as it is."""
