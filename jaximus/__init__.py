"""jaximus: distributed low-communication training (the DiLoCo family) in JAX."""


class UserError(Exception):
    """A mistake in the command line, config or files: train.py prints it as one line and exits 2."""
