"""Small inputs that used to hang a run or grow it by gigabytes (issue 24, items 2 and 3).

Each hostile file goes through the real command in a subprocess whose address space is capped at
what it has mapped once its heavy modules are imported plus 1 GiB (``RLIMIT_AS``, as
``test_safe_pickle`` does): an allocation the bounds miss fails there instead of eating the
machine, and the test then finds no clean refusal. Every refusal is one ``wsl-bench: error:`` line
(or one failed record) naming the file and the bound of :mod:`wsl_bench.limits` it hit.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import pickle
import pickletools
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest

from wsl_bench.datasets.folder import write_synthetic
from wsl_bench.evaluation.records import read_records

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc, mkfifo and RLIMIT_AS")

CAPPED_CLI = r"""
import resource, sys
import torch  # noqa: F401  the heavy imports first: the cap measures the command, not the imports
import wsl_bench.cli, wsl_bench.pipeline, wsl_bench.report.tables  # noqa: F401
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    status = wsl_bench.cli.main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(f"grew_kb={grew}", file=sys.stderr)
sys.exit(status)
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["WSL_BENCH_CACHE"] = str(tmp_path / "cache")
    env["MPLCONFIGDIR"] = str(tmp_path / "mpl")
    env["MALLOC_ARENA_MAX"] = "2"  # threads' malloc arenas reserve address space they never use
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    return env


def capped(args: list[str], tmp_path: Path, timeout: float = 300) -> tuple[int, str, float]:
    """``(exit status, stderr, MB the process grew by)`` of ``wsl-bench ARGS`` under the cap."""
    done = subprocess.run([sys.executable, "-c", CAPPED_CLI, *args], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=timeout)
    grew = done.stderr.rsplit("grew_kb=", 1)
    assert len(grew) == 2, done.stderr[-3000:]
    return done.returncode, done.stderr, int(grew[1].split()[0]) / 1024


def refusal(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("wsl-bench: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean") / "data"
    write_synthetic(root, 12, (64, 48), seed=0, progress=False, split_counts={"train": 4, "val": 4, "test": 4})
    return root


def _folder(clean_folder: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(clean_folder, root)
    return root


def _test_images(root: Path) -> list[str]:
    with open(root / "labels.csv", newline="") as handle:
        return [row["id"] for row in csv.DictReader(handle) if row["split"] == "test"]


FOLDER_RUN = ["run", "--dataset", "folder", "--methods", "intensity", "--preset", "tiny", "--no-progress"]


# ------------------------------------------------------------------------------- 2: hangs
@pytest.mark.slow
def test_a_fifo_or_a_link_to_dev_zero_named_as_an_image_fails_its_record(clean_folder, tmp_path):
    root = _folder(clean_folder, tmp_path)
    fifo_id, zero_id = _test_images(root)[:2]
    (root / "images" / f"{fifo_id}.png").unlink()
    os.mkfifo(root / "images" / f"{fifo_id}.png")
    (root / "images" / f"{zero_id}.png").unlink()
    (root / "images" / f"{zero_id}.png").symlink_to("/dev/zero")
    out = tmp_path / "run"
    status, stderr, _ = capped([*FOLDER_RUN, "--data-root", str(root), "--out", str(out)], tmp_path, timeout=240)
    assert status == 1, stderr[-3000:]
    records = {r["image_id"]: r for r in read_records(out / "records.jsonl")}
    for sample_id, kind in ((fifo_id, "FIFO"), (zero_id, "character device")):
        assert records[sample_id]["status"] == "failed"
        assert f"{sample_id}.png" in records[sample_id]["error"] and kind in records[sample_id]["error"]
    assert {r["status"] for i, r in records.items() if i not in (fifo_id, zero_id)} == {"ok"}


@pytest.mark.slow
def test_a_fifo_named_as_the_exam_list_is_refused(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from fixtures_real import make_nyu

    root = tmp_path / "nyu"
    make_nyu(root)
    (root / "data.pkl").unlink()
    os.mkfifo(root / "data.pkl")
    status, stderr, _ = capped(["run", "--dataset", "nyu", "--data-root", str(root), "--methods", "intensity",
                                "--preset", "tiny", "--out", str(tmp_path / "run"), "--no-progress"], tmp_path,
                               timeout=240)
    assert status == 2 and "data.pkl" in refusal(stderr) and "FIFO" in refusal(stderr)


# ------------------------------------------------------------------------------- 3: memory from small inputs
def _shared_reference_bomb(depth: int = 45) -> list[dict]:
    """An exam list whose view entry is ``x = [x, x]`` nested ``depth`` deep: 2**depth leaves in a few
    hundred bytes of pickle."""
    x: list = ["0_L-CC"]
    for _ in range(depth):
        x = [x, x]
    return [{"horizontal_flip": "NO", "L-CC": x, "R-CC": ["0_R-CC"], "L-MLO": ["0_L-MLO"], "R-MLO": ["0_R-MLO"],
             "cancer_label": {"left_benign": 0, "right_benign": 0, "left_malignant": 0, "right_malignant": 0}}]


@pytest.mark.parametrize("command", ["run", "prepare"])
@pytest.mark.slow
def test_an_exam_list_of_shared_references_is_refused_by_its_expanded_size(tmp_path, command):
    sys.path.insert(0, str(Path(__file__).parent))
    from fixtures_real import make_nyu

    root = tmp_path / "nyu"
    make_nyu(root)
    data = pickle.dumps(_shared_reference_bomb(), protocol=4)
    assert len(data) < 1000
    (root / "data.pkl").write_bytes(data)
    if command == "run":
        args = ["run", "--dataset", "nyu", "--data-root", str(root), "--methods", "intensity", "--preset", "tiny",
                "--out", str(tmp_path / "run"), "--no-progress"]
    else:
        args = ["data", "prepare", "nyu", "--src", str(root), "--out", str(tmp_path / "prepared"), "--no-progress"]
    status, stderr, grew = capped(args, tmp_path)
    line = refusal(stderr)
    assert status == 2 and "data.pkl" in line and "MAX_PICKLE_EXPANSION" in line
    assert grew < 1024


def _inflating_weights(path: Path, nbytes: int) -> None:
    """A ``torch.save`` file of one uint8 tensor whose storage entry is deflated: a few MB on disk,
    ``nbytes`` once ``torch.load`` inflates it (the pickle declares the size; the zip entry holds it)."""
    import torch

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(16, dtype=torch.uint8)}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w", compresslevel=1) as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):  # the storage's and the tensor's size: 16 → nbytes
                patched, last = bytearray(), 0
                for op, arg, position in pickletools.genops(data):
                    if op.name == "BININT1" and arg == 16:
                        patched += data[last:position] + b"J" + struct.pack("<i", nbytes)
                        last = position + 2
                data = bytes(patched + data[last:])
            if info.filename.endswith("data/0"):
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with out.open(entry, "w", force_zip64=True) as handle:
                    block = bytes(1 << 20)
                    for _ in range(nbytes >> 20):
                        handle.write(block)
            else:
                out.writestr(info.filename, data, compress_type=zipfile.ZIP_STORED)


@pytest.mark.slow
def test_a_weights_file_inflating_to_gigabytes_is_refused_from_its_zip_directory(clean_folder, tmp_path):
    weights = tmp_path / "glam.pt"
    _inflating_weights(weights, 1536 << 20)  # 1.5 GiB once loaded, past the cap
    assert weights.stat().st_size < 8 << 20
    status, stderr, grew = capped([*FOLDER_RUN[:3], "--data-root", str(_folder(clean_folder, tmp_path)), "--methods",
                                   "glam", "--preset", "tiny", "--weights", str(weights), "--out",
                                   str(tmp_path / "run"), "--no-progress"], tmp_path)
    line = refusal(stderr)
    assert status == 2 and str(weights) in line and "MAX_WEIGHTS_EXPANSION" in line
    assert grew < 1024


@pytest.mark.slow
def test_a_record_whose_histogram_inflates_to_gigabytes_is_skipped_naming_the_bound(clean_folder, tmp_path):
    root = _folder(clean_folder, tmp_path)
    out = tmp_path / "run"
    status, stderr, _ = capped([*FOLDER_RUN, "--data-root", str(root), "--out", str(out)], tmp_path)
    assert status == 0, stderr[-3000:]
    lines = (out / "records.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    inflater = zlib.compressobj(9)
    bomb = b"".join(inflater.compress(bytes(1 << 20)) for _ in range(1536)) + inflater.flush()  # 1.5 GiB of zeros
    cls = next(iter(record["hist"]))
    record["hist"][cls]["pos"] = base64.b64encode(bomb).decode("ascii")
    (out / "records.jsonl").write_text("\n".join([*lines, json.dumps(record)]) + "\n")
    status, stderr, grew = capped(["report", str(out)], tmp_path)
    assert status == 0, stderr[-3000:]
    assert "MAX_RECORD_HISTOGRAM_BINS" in stderr and "records.jsonl line" in stderr
    assert grew < 1024


def test_a_record_line_too_long_is_skipped_without_being_read_whole(tmp_path):
    from wsl_bench.limits import MAX_RECORD_LINE_BYTES

    path = tmp_path / "records.jsonl"
    good = {"image_id": "a", "method": "m", "status": "failed", "error": "x"}
    with open(path, "w") as handle:
        handle.write(json.dumps({**good, "image_id": "big", "error": "y" * (MAX_RECORD_LINE_BYTES + 10)}) + "\n")
        handle.write(json.dumps(good) + "\n")
    assert [r["image_id"] for r in read_records(path)] == ["a"]


@pytest.mark.parametrize("flag", [["run", "--image-size"], ["data", "synth", "--out", "x", "--size"]])
@pytest.mark.slow
def test_an_image_size_beyond_the_bound_is_refused_before_anything_is_allocated(tmp_path, flag):
    status, stderr, grew = capped([*flag, "20000x20000"], tmp_path, timeout=120)
    line = refusal(stderr)
    assert status == 2 and "20000x20000" in line and "MAX_IMAGE_PIXELS" in line
    assert grew < 1024


def _png_declaring(path: Path, height: int, width: int) -> None:
    """A valid 16-bit grayscale PNG of ``height×width`` zeros, written row by row (small on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    deflate = zlib.compressobj(9)
    row = bytes(1 + 2 * width)  # filter byte 0, then the row's pixels
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.mark.slow
def test_a_small_png_declaring_169_megapixels_fails_its_record_naming_the_bound(clean_folder, tmp_path):
    root = _folder(clean_folder, tmp_path)
    big = _test_images(root)[0]
    _png_declaring(root / "images" / f"{big}.png", 13_000, 13_000)
    assert (root / "images" / f"{big}.png").stat().st_size < 1 << 20
    out = tmp_path / "run"
    status, stderr, grew = capped([*FOLDER_RUN, "--data-root", str(root), "--out", str(out)], tmp_path)
    assert status == 1, stderr[-3000:]
    records = {r["image_id"]: r for r in read_records(out / "records.jsonl")}
    assert records[big]["status"] == "failed"
    assert f"{big}.png" in records[big]["error"] and "MAX_IMAGE_PIXELS" in records[big]["error"]
    assert grew < 1024


@pytest.mark.slow
def test_a_raw_nyu_png_declaring_169_megapixels_fails_its_image_in_prepare(tmp_path):
    from test_nyu_prepare import VIEWS, raw_exam, small_raw, write_raw_list

    from wsl_bench.datasets._imageio import write_png16

    src = tmp_path / "raw"
    for view in VIEWS:
        write_png16(src / "images" / f"0_{view}.png", small_raw(view, "NO"))
    _png_declaring(src / "images" / "0_L-CC.png", 13_000, 13_000)
    write_raw_list(src, [raw_exam(0, "NO")])
    status, stderr, grew = capped(["data", "prepare", "nyu", "--src", str(src), "--out", str(tmp_path / "out"),
                                   "--workers", "1", "--no-progress"], tmp_path)
    assert status == 1, stderr[-3000:]
    assert "0_L-CC.png" in stderr and "MAX_IMAGE_PIXELS" in stderr and "Traceback" not in stderr
    assert grew < 1024


@pytest.mark.slow
def test_an_index_of_100k_rows_is_refused_naming_the_bound(clean_folder, tmp_path):
    root = _folder(clean_folder, tmp_path)
    with open(root / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for k in range(100_000):
            writer.writerow({**rows[k % len(rows)], "id": f"row-{k}"})
    status, stderr, grew = capped([*FOLDER_RUN, "--data-root", str(root), "--out", str(tmp_path / "run")], tmp_path)
    line = refusal(stderr)
    assert status == 2 and "labels.csv" in line and "MAX_INDEX_ROWS" in line
    assert grew < 1024


def test_every_bound_is_documented_with_its_reason():
    """One module holds the bounds, each with a docstring giving the reason for its number."""
    import ast

    import wsl_bench.limits as limits

    tree = ast.parse(Path(limits.__file__).read_text())
    documented = {node.targets[0].id for node, doc in zip(tree.body, tree.body[1:], strict=False)
                  if isinstance(node, ast.Assign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                  and len(doc.value.value) > 60}
    bounds = {name for name in vars(limits) if name.isupper()}
    assert bounds and bounds == documented
    assert {"MAX_IMAGE_PIXELS", "MAX_INDEX_ROWS", "MAX_PICKLE_EXPANSION", "MAX_WEIGHTS_EXPANSION",
            "MAX_RECORD_LINE_BYTES", "MAX_RECORD_HISTOGRAM_BINS"} <= bounds
