"""jaximus: distributed low-communication training (the DiLoCo family) in JAX."""


class UserError(Exception):
    """A mistake in the command line, config or files: train.py prints it as one line and exits 2."""


def first_line(e: BaseException, limit: int = 160) -> str:
    """An exception from a library as a clause of one error line: its first line, or its type."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]
