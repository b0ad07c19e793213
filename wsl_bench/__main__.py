"""``python -m wsl_bench`` (and ``torchrun ... -m wsl_bench``) runs the command line."""

import sys

from wsl_bench.cli import main

sys.exit(main())
