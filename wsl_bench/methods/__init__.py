"""Built-in methods. Importing this package registers every one of them in ``METHODS``."""

from . import baselines  # noqa: F401
