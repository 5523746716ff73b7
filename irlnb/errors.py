"""The one error type a person sees: every expected failure (a bad setting, a missing file, an
unreachable hub, a refused overwrite) raises a subclass of `IrlnbError` whose message is one line
that says what to fix. The command line prints that line and exits 2, never a traceback."""


class IrlnbError(Exception):
    """An expected failure; its message is one line a person can act on."""
