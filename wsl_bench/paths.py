"""Where wsl-bench keeps what it may reuse between runs: trained checkpoints, file hashes.

``$WSL_BENCH_CACHE`` when set, else ``$XDG_CACHE_HOME/wsl_bench``, else ``~/.cache/wsl_bench``.
Nothing else outside a run folder is ever written.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder (see the module docstring); not created here."""
    if os.environ.get("WSL_BENCH_CACHE"):
        return Path(os.environ["WSL_BENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wsl_bench"
