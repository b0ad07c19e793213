"""Atomic writes: a failure mid-write (an exception, a full disk) leaves the old file and no temporary."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from wsl_bench import atomic_io  # noqa: E402
from wsl_bench.atomic_io import (  # noqa: E402
    atomic_write,
    save_figure_atomic,
    savez_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from wsl_bench.weights import atomic_torch_save, load_checkpoint_file  # noqa: E402

OLD = b"the previous, complete content\n"


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (temporaries included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def old_file(tmp_path):
    path = tmp_path / "out" / "results.md"
    path.parent.mkdir()
    path.write_bytes(OLD)
    return path


def fail_on(monkeypatch, name: str, target: Path, exc: BaseException) -> None:
    """Make ``os.<name>`` raise ``exc`` for writes to ``target`` only (other callers are untouched)."""
    real = getattr(os, name)

    def failing(*args, **kwargs):
        if name == "replace" and Path(args[1]) == target:
            raise exc
        if name == "fsync" and Path(os.readlink(f"/proc/self/fd/{args[0]}")).name.startswith(f".{target.name}."):
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(atomic_io.os, name, failing)


def test_atomic_write_replaces_the_file_and_creates_its_folder(tmp_path):
    path = tmp_path / "a" / "b" / "index.html"
    with atomic_write(path, "w") as handle:
        handle.write("<html>é</html>")
    assert path.read_text(encoding="utf-8") == "<html>é</html>"
    write_bytes_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    write_text_atomic(path, "x\n")
    write_json_atomic(path.with_suffix(".json"), {"b": 1, "a": [1, 2]})
    assert json.loads(path.with_suffix(".json").read_text()) == {"a": [1, 2], "b": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["index.html", "index.json"]


def test_new_files_get_ordinary_permissions_and_replaced_files_keep_theirs(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    fresh = tmp_path / "fresh.csv"
    write_text_atomic(fresh, "a\n")
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    kept = tmp_path / "kept.csv"
    kept.write_text("old")
    kept.chmod(0o640)
    write_text_atomic(kept, "new")
    assert kept.stat().st_mode & 0o777 == 0o640


def test_an_exception_inside_the_block_keeps_the_old_file_and_removes_the_temporary(old_file):
    with pytest.raises(RuntimeError, match="writer broke"), atomic_write(old_file) as handle:
        handle.write(b"half a new fi")
        raise RuntimeError("writer broke")
    assert folder_state(old_file.parent) == {"results.md": OLD}


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_full_disk_keeps_the_old_file_and_removes_the_temporary(step, old_file, monkeypatch):
    fail_on(monkeypatch, step, old_file, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(old_file, "new content " * 1000)
    assert folder_state(old_file.parent) == {"results.md": OLD}


def test_a_file_never_appears_before_its_content_is_complete(tmp_path):
    path = tmp_path / "figure.png"
    with atomic_write(path) as handle:
        handle.write(b"partial")
        assert not path.exists()  # readers see nothing (or the old file) until the block ends
    assert path.read_bytes() == b"partial"


def test_save_figure_atomic_takes_the_format_from_the_suffix(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure_atomic(fig, tmp_path / "f.png", dpi=50)
    save_figure_atomic(fig, tmp_path / "f.pdf")
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "f.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png"]


def test_a_figure_that_fails_mid_write_keeps_the_old_png(tmp_path):
    path = tmp_path / "dice_boxplot.png"
    path.write_bytes(OLD)
    fig, _ = plt.subplots()

    def broken_savefig(handle, **kwargs):
        handle.write(b"\x89PNG half")
        raise MemoryError("renderer ran out of memory")

    fig.savefig = broken_savefig
    with pytest.raises(MemoryError):
        save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
    assert folder_state(tmp_path) == {"dice_boxplot.png": OLD}


@pytest.mark.parametrize("compressed", [True, False])
def test_savez_atomic_round_trips_and_keeps_the_old_file_on_failure(compressed, tmp_path, monkeypatch):
    path = tmp_path / "maps" / "img-1.npz"
    maps = np.random.default_rng(0).random((2, 8, 5)).astype(np.float16)
    savez_atomic(path, compressed=compressed, maps=maps)
    with np.load(path) as archive:
        assert np.array_equal(archive["maps"], maps)
    before = path.read_bytes()
    fail_on(monkeypatch, "replace", path, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError):
        savez_atomic(path, compressed=compressed, maps=maps + 1)
    assert folder_state(path.parent) == {"img-1.npz": before}


def test_a_checkpoint_that_fails_mid_write_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "best.pt"
    atomic_torch_save({"weight": torch.ones(3)}, path)
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be pickled: torch.save fails part-way
        atomic_torch_save({"weight": torch.zeros(3), "hook": lambda: None}, path)
    assert torch.equal(load_checkpoint_file(path)["weight"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_manifest_write_json_atomic_is_the_atomic_writer(old_file, monkeypatch):
    from wsl_bench.evaluation.manifest import write_json_atomic as manifest_write

    manifest = old_file.with_name("manifest.json")
    manifest.write_bytes(OLD)
    fail_on(monkeypatch, "fsync", manifest, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError):
        manifest_write(manifest, {"config": {}})
    assert folder_state(manifest.parent) == {"manifest.json": OLD, "results.md": OLD}


# -- the report ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from wsl_bench.cli import main

    out = tmp_path_factory.mktemp("atomic_run") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WSL_BENCH_CACHE", str(tmp_path_factory.mktemp("atomic_cache")))
        assert main(["run", "--methods", "intensity,random", "--preset", "tiny", "--out", str(out),
                     "--no-progress"]) == 0
    return out


@pytest.mark.slow
def test_every_report_file_is_written_through_the_atomic_path(run_dir, tmp_path, monkeypatch):
    from wsl_bench.report.tables import build_report

    replaced = []
    real_replace = os.replace

    def recording_replace(src, dst, *args, **kwargs):
        replaced.append(Path(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic_io.os, "replace", recording_replace)
    out = build_report(run_dir, tmp_path / "report")
    written = {p for p in out.rglob("*") if p.is_file()}
    assert {"index.html", "results.md", "results.csv", "results.tex", "details.csv", "qualitative.png",
            "dice_boxplot.pdf", "cost_vs_dice.png"} <= {p.name for p in written}
    assert written <= set(replaced), sorted(p.name for p in written - set(replaced))


@pytest.mark.slow
def test_a_report_rebuild_that_hits_a_full_disk_leaves_the_previous_report(run_dir, tmp_path, monkeypatch):
    from wsl_bench.report.tables import build_report

    out = build_report(run_dir, tmp_path / "report")
    before = folder_state(out)
    fail_on(monkeypatch, "fsync", out / "index.html", OSError(errno.ENOSPC, "No space left on device"))
    fail_on(monkeypatch, "replace", out / "qualitative.png", OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError, match="No space left"):
        build_report(run_dir, out)
    after = folder_state(out)
    assert after.keys() == before.keys()  # no temporary left behind, nothing truncated
    assert after["index.html"] == before["index.html"] and after["qualitative.png"] == before["qualitative.png"]
    assert all(after[name] for name in after)
