"""Built-in datasets. Importing this package registers every one of them in ``DATASETS``."""

from wsl_bench.datasets import (  # noqa: F401
    cbis_ddsm,
    folder,
    inbreast,
    nyu,
    synthetic,
    vindr,
)
