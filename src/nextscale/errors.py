"""User-facing errors. The CLI prints these as one line (no traceback) and exits non-zero."""


class NextScaleError(Exception):
    """Bad input from a user: a missing file, a wrong value, a checkpoint that does not fit.

    The message must name the thing and say how to fix it.
    """


class CheckpointError(NextScaleError):
    """A file is not a usable checkpoint (wrong format, missing/unexpected keys, shape mismatch)."""


class NonFiniteError(NextScaleError):
    """Training met a NaN/inf loss, gradient or weight and stopped before writing it anywhere."""


class InputError(NextScaleError, ValueError):
    """A bad value given to a library function (still a ``ValueError`` for callers that catch one)."""
