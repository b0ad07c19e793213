"""The real CLI against kills and bad inputs (README "What a run guarantees").

Every case runs ``python -m wsl_bench`` in a subprocess at the ``tiny`` preset, with the checkpoint
cache inside the test's folder, and checks what a user would: nothing outside the run folder and
the cache changes, every bad input ends as a failed record or one clear error line naming the
file, and a run killed with SIGKILL at random moments and then resumed reports the same metrics
as a run never interrupted.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

CHEAP = "intensity,centre_prior,random"
TIMING_COLUMNS = {"time_median_s", "time_p90_s", "peak_memory_mb"}
"""Columns that measure this machine, not the maps: left out when two runs are compared."""


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["WSL_BENCH_CACHE"] = str(tmp_path / "cache")
    env["MPLCONFIGDIR"] = str(tmp_path / "mpl")
    return env


def _cli(args: list[str], tmp_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsl_bench", *args], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=timeout)


def _metric_rows(results_csv: Path) -> list[dict[str, str]]:
    with open(results_csv, newline="") as handle:
        rows = [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(handle)]
    return sorted(rows, key=lambda r: (r["method"], r.get("class", "")))


def _snapshot(root: Path, skip: list[Path]) -> dict[str, tuple[int, int]]:
    """path → (size, mtime_ns) of every file under ``root`` outside the ``skip`` folders."""
    found = {}
    for path in root.rglob("*"):
        if any(path == s or s in path.parents for s in skip) or not path.is_file():
            continue
        stat = path.stat()
        found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


# ------------------------------------------------------------------------------- SIGKILL
def test_sigkill_at_random_moments_then_resume_gives_the_same_metrics(tmp_path):
    reference = tmp_path / "reference"
    started = time.perf_counter()
    done = _cli(["run", "--methods", CHEAP, "--preset", "tiny", "--out", str(reference), "--no-progress"], tmp_path)
    duration = time.perf_counter() - started
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "wsl_bench", "run", "--methods", CHEAP, "--preset", "tiny", "--out", str(killed),
               "--no-progress"]
    moments = []
    for seed in (0, 1, 2):
        delay = random.Random(seed).uniform(0.15, 0.95) * duration
        process = subprocess.Popen(command, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        moments.append((round(delay, 2), process.returncode))
    resumed = _cli(command[3:], tmp_path)
    assert resumed.returncode == 0, (moments, resumed.stderr)

    assert _metric_rows(killed / "report" / "results.csv") == _metric_rows(reference / "report" / "results.csv")
    empty = [p for p in killed.rglob("*") if p.is_file() and p.stat().st_size == 0 and p.name != ".lock"]
    assert not empty, f"0-byte files after kills at {moments}: {empty}"
    assert not list(killed.rglob("*.tmp")), "temporary files left behind"
    assert (killed / "done").exists()
