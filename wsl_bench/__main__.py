"""``python -m wsl_bench`` (and ``torchrun ... -m wsl_bench``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
