"""The exceptions allot raises.

They are plain Python classes (the extension module raises them): every one
is an :class:`AllotError`, and those that have a standard meaning are also
the standard exception (``Unavailable`` is a ``ConnectionError``,
``Timeout`` a ``TimeoutError``), so code that already catches those keeps
working.
"""

from typing import Any, Optional


class AllotError(Exception):
    """Base class of every error allot raises (bad arguments raise
    ``ValueError`` or ``TypeError`` instead).

    ``message`` is the text; errors about one task also carry what is known
    of it as attributes: ``task_id``, ``worker``, ``distributor``,
    ``attempts``, ``latency_us``.
    """

    message: str
    task_id: Optional[int]
    worker: str
    distributor: str
    attempts: int
    latency_us: int

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.task_id = None
        self.worker = ""
        self.distributor = ""
        self.attempts = 0
        self.latency_us = 0
        for key, value in fields.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message


class Unavailable(AllotError, ConnectionError):
    """No gateway or distributor answered (the client retried for its
    ``retry_for`` window first), or the connection to the distributor was
    lost and could not be made again. The message names every address
    tried and why each failed."""


class Timeout(AllotError, TimeoutError):
    """A task ran past its ``timeout`` (its deadline, counted from its
    arrival at the distributor), or a wait (``Job.wait(timeout=...)``)
    ended before what it waited for."""


class TaskFailed(AllotError):
    """The task ran and failed: its handler raised (``message`` is the
    exception's type and text), returned something other than bytes, or
    its command exited non-zero (``message`` is its stderr).

    Attributes: ``exit_code`` (the command's exit status, 1 for handlers)
    and ``output`` (what it wrote to stdout before failing, as bytes)."""

    exit_code: int
    output: bytes

    def __init__(self, message: str, **fields: Any) -> None:
        self.exit_code = 1
        self.output = b""
        super().__init__(message, **fields)


class NoMatch(AllotError):
    """No worker satisfies the task's constraints, and none would by
    waiting. ``explain`` holds the distributor's explanation (as
    ``Client.explain`` returns it: the verdict, each clause with the
    workers it eliminated, and the nearest misses), or ``None`` if it could
    not be had."""

    explain: Optional[dict]

    def __init__(self, message: str, **fields: Any) -> None:
        self.explain = None
        super().__init__(message, **fields)


class PkiError(AllotError):
    """The certificates could not be loaded: the message names the missing
    or bad file and, for a missing one, the ``allot cert`` command that
    makes it. ``path`` is the file (``None`` if no one file is at fault)."""

    path: Optional[str]

    def __init__(self, message: str, **fields: Any) -> None:
        self.path = None
        super().__init__(message, **fields)


__all__ = [
    "AllotError",
    "Unavailable",
    "Timeout",
    "TaskFailed",
    "NoMatch",
    "PkiError",
]
