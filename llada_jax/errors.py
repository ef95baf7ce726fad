"""The one error family: every error the package raises on purpose is a `LladaError`."""


class LladaError(ValueError):
    """A problem the user can fix: the message says what was wrong, what was expected and how to fix it.

    The `llada` command prints it without a traceback and exits non-zero; any other exception is a bug and keeps its
    traceback. A ValueError, so that callers which caught the ValueErrors of earlier versions still catch it."""
