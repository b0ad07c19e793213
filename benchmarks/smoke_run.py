"""The smoke run README promises, timed: `wsl-bench run --methods glam,gmic,cam --preset tiny` on a
fresh checkpoint cache, against its targets (issue 26): at most 60 s on 2 cores, and each training
within a factor 1.5 of the plan's estimate. Not part of the test suite (a timing, on a machine whose
load the tests do not control).

Run from the repository root, on a machine as quiet as you can get it::

    python benchmarks/smoke_run.py            # prints the figures; exit 1 when a target is missed
    python benchmarks/smoke_run.py --keep DIR # keep the run folder and cache in DIR

It prints the CPU, the load average before and after, the wall time of the command (as
``/usr/bin/time`` would measure it: the whole process, imports included), and per trained method
the plan's estimate, the measured training time (``timing.json``) and their ratio; the measured
figures are what ``wsl_bench.estimates.REFERENCE_TRAININGS["tiny"]`` holds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("glam", "gmic", "cam")
WALL_TARGET_S = 60.0
ESTIMATE_FACTOR = 1.5


def cpu_name() -> str:
    """The CPU model and core count, as /proc/cpuinfo and the OS give them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def planned_estimates(cache: Path) -> dict[str, float]:
    """What the run's plan will say each training takes (the plan on the empty cache)."""
    os.environ["WSL_BENCH_CACHE"] = str(cache)
    from wsl_bench.evaluation.harness import RunConfig
    from wsl_bench.pipeline import plan_run

    config = RunConfig(methods=METHODS, preset="tiny")
    pending = {name: {seed: 16 for seed in config.training_seeds()} for name in METHODS}  # 8 test + 8 val images
    plan = plan_run(config, pending, "8 test + 8 val images")
    return {t.method: t.estimate.seconds for t in plan.train}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="folder for the run and its cache (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        cache, out = root / "cache", root / "run"
        estimates = planned_estimates(cache)
        command = [sys.executable, "-m", "wsl_bench", "run", "--methods", ",".join(METHODS), "--preset", "tiny",
                   "--out", str(out), "--no-progress"]
        load_before = os.getloadavg()
        started = time.perf_counter()
        done = subprocess.run(command, env={**os.environ, "WSL_BENCH_CACHE": str(cache)}, capture_output=True,
                              text=True, check=False)
        wall = time.perf_counter() - started
        load_after = os.getloadavg()
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
            return 1
        measured = {path.parent.parent.name: json.loads(path.read_text())["training_seconds"]
                    for path in (cache / "checkpoints").glob("*/*/timing.json")}
    print(f"{' '.join(command[1:])}\n{cpu_name()}; load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f} (1 min)")
    ok = wall <= WALL_TARGET_S
    print(f"wall {wall:.1f} s (target at most {WALL_TARGET_S:.0f} s){'' if ok else '  MISSED'}")
    for method in METHODS:
        ratio = measured[method] / estimates[method]
        within = 1 / ESTIMATE_FACTOR <= ratio <= ESTIMATE_FACTOR
        ok &= within
        print(f"train {method:<5} planned {estimates[method]:6.1f} s, took {measured[method]:6.1f} s, "
              f"ratio {ratio:.2f}{'' if within else '  MISSED (target within 1.5x)'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
