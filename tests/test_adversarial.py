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
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsl_bench.datasets.folder import write_synthetic
from wsl_bench.evaluation.records import read_records

CHEAP = "intensity,centre_prior,random"
TIMING_COLUMNS = {"time_median_s", "time_p90_s", "end_to_end_median_s", "peak_memory_mb"}
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
@pytest.mark.slow
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


# ---------------------------------------------------------------------------- bad inputs
def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(root: Path, rows: list[dict[str, str]]) -> None:
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _edit_test_row(root: Path, **cells: str) -> str:
    """Set ``cells`` on the first test row; returns its (original) id."""
    rows = _rows(root)
    row = next(r for r in rows if r["split"] == "test")
    original = row["id"]
    row.update(cells)
    _write_rows(root, rows)
    return original


def _absolute_id(root: Path, outside: Path) -> tuple[str, str]:
    _edit_test_row(root, id=str(outside / "evil"))
    return "ok", ""


def _image_outside_root(root: Path, outside: Path) -> tuple[str, str]:
    (outside / "x.png").write_bytes((root / "images" / os.listdir(root / "images")[0]).read_bytes())
    _edit_test_row(root, image="../outside/x.png")
    return "error", "labels.csv"


def _huge_cell(root: Path, outside: Path) -> tuple[str, str]:
    _edit_test_row(root, view="A" * 200_000)
    return "error", "labels.csv"


def _malformed_lesion_areas(root: Path, outside: Path) -> tuple[str, str]:
    return "failed", _edit_test_row(root, lesion_areas='{"malignant": "not a list"}')


def _deeply_nested_cell(root: Path, outside: Path) -> tuple[str, str]:
    return "failed", _edit_test_row(root, lesion_areas="[" * 100_000)


def _truncated_image(root: Path, outside: Path) -> tuple[str, str]:
    image_id = _edit_test_row(root)
    path = root / "images" / f"{image_id}.png"
    path.write_bytes(path.read_bytes()[:200])
    return "failed", image_id


BAD_INPUTS = [_absolute_id, _image_outside_root, _huge_cell, _malformed_lesion_areas, _deeply_nested_cell,
              _truncated_image]


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory):
    """A small folder dataset in the real format (16-bit PNGs, masks, labels.csv)."""
    root = tmp_path_factory.mktemp("clean") / "data"
    write_synthetic(root, 12, (64, 48), seed=0, progress=False, split_counts={"train": 4, "val": 4, "test": 4})
    return root


@pytest.mark.slow
@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_fails_its_record_or_names_the_file_and_writes_nothing_outside(clean_folder, tmp_path, make_bad):
    root, outside = tmp_path / "data", tmp_path / "outside"
    shutil.copytree(clean_folder, root)
    outside.mkdir()
    expected, detail = make_bad(root, outside)
    out = tmp_path / "runs" / "run"
    keep_out = [out, tmp_path / "cache", tmp_path / "mpl"]
    before = _snapshot(tmp_path, keep_out)

    done = _cli(["run", "--dataset", "folder", "--data-root", str(root), "--methods", "intensity", "--preset", "tiny",
                 "--out", str(out), "--no-progress"], tmp_path)

    assert _snapshot(tmp_path, keep_out) == before, "a file outside the run folder and the cache changed"
    assert list(outside.iterdir()) == ([outside / "x.png"] if make_bad is _image_outside_root else [])
    assert "Traceback" not in done.stderr
    if expected == "error":
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("wsl-bench: error:")]
        assert len(errors) == 1 and detail in errors[0], done.stderr
        assert not (out / "records.jsonl").exists()
        return
    # a run with failed images finishes its work and report, and says so with exit status 1
    assert done.returncode == (1 if expected == "failed" else 0), done.stderr
    assert (out / "report" / "results.csv").exists()
    records = read_records(out / "records.jsonl")
    if expected == "failed":
        bad = [r for r in records if r["image_id"] == detail]
        assert bad and all(r["status"] == "failed" for r in bad)
        assert all(("labels.csv" in r["error"] or ".png" in r["error"]) for r in bad), bad[0]["error"]
        assert all(r["status"] == "ok" for r in records if r["image_id"] != detail)
    else:
        assert {r["status"] for r in records} == {"ok"}


MEASURED_CLI = """
import resource, sys
from wsl_bench.cli import main
status = main(sys.argv[1:])
print(f"maxrss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(status)
"""


def test_a_pickle_bomb_exam_list_is_refused_without_allocating(tmp_path):
    """36 bytes asking for a 6 GiB bytearray in place of NYU's exam list: one error line naming the
    file, and the process never grows anywhere near the size the pickle asks for."""
    sys.path.insert(0, str(Path(__file__).parent))
    from fixtures_real import make_nyu
    from test_safe_pickle import _bytearray_bomb

    root = tmp_path / "nyu"
    make_nyu(root)
    (root / "data.pkl").write_bytes(_bytearray_bomb())
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", MEASURED_CLI, "run", "--dataset", "nyu", "--data-root", str(root),
                           "--methods", "intensity", "--preset", "tiny", "--out", str(out), "--no-progress"],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("wsl-bench: error:")]
    assert done.returncode == 2 and len(errors) == 1 and "data.pkl" in errors[0], done.stderr
    maxrss_mb = int(done.stderr.rsplit("maxrss_kb=", 1)[1].split()[0]) / 1024
    assert maxrss_mb < 2048, f"the run grew to {maxrss_mb:.0f} MB"
    assert not out.exists() or not (out / "records.jsonl").exists()
