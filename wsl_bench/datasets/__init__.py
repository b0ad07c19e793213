"""Built-in datasets. Importing this package registers every one of them in ``DATASETS``."""

from . import synthetic  # noqa: F401
