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


class FieldName(str):
    """A setting's name inside a :class:`FieldError` message (a front end may spell it its own way)."""


class FieldError(InputError):
    """A bad value (or key) of a named setting of a config object.

    The message is made of ``parts``: text and :class:`FieldName` s. ``str()`` names the fields as
    Python spells them (``batch_size must be >= 1``); :meth:`render` lets a front end name them its
    own way: the CLI turns ``batch_size`` into ``--batch-size``.
    """

    def __init__(self, *parts):
        self.parts = tuple(parts)
        super().__init__("".join(self.parts))

    @property
    def fields(self):
        return tuple(p for p in self.parts if isinstance(p, FieldName))

    def render(self, name) -> str:
        """The message with every field name ``n`` replaced by ``name(n)``."""
        return "".join(name(p) if isinstance(p, FieldName) else p for p in self.parts)
