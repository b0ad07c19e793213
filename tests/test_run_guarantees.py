"""What a resumed or concurrent run promises (README "What a run guarantees"): records are reused
only while their method's identity is unchanged, skipped records are retried, whatever a method
returns is validated, figure maps are recomputed when lost, file names never come from image ids,
and one run at a time holds a run folder."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ToyDataset

from wsl_bench.evaluation.figure_maps import figure_map_paths, stored_figure_images
from wsl_bench.evaluation.harness import RunConfig
from wsl_bench.evaluation.records import read_records
from wsl_bench.evaluation.run_lock import RunFolderLock, RunFolderLocked
from wsl_bench.pipeline import run
from wsl_bench.registry import DATASETS, METHODS
from wsl_bench.saliency import SaliencyMethod, SaliencyOutput

N_TEST, N_VAL = 6, 8


def _config(methods, options=None, **kw):
    method_options = tuple((m, tuple(sorted(o.items()))) for m, o in (options or {}).items())
    return RunConfig(methods=tuple(methods), dataset="toy", preset="tiny", method_options=method_options, **kw)


def _records(out: Path, method: str) -> list[dict]:
    return [r for r in read_records(out / "records.jsonl") if r["method"] == method]


def _lines(out: Path, method: str) -> int:
    return sum(1 for line in (out / "records.jsonl").read_text().splitlines() if f'"method":"{method}"' in line)


# ----------------------------------------------------------------------------------- identity
def test_changed_option_recomputes_that_method_only(toy_dataset, tmp_path):
    out = tmp_path / "run"
    run(_config(["centre_prior", "intensity"], {"centre_prior": {"sigma_fraction": 0.05}}), out, progress=False,
        write_report=False)
    narrow = {r["image_id"]: r["hist"] for r in _records(out, "centre_prior") if r["split"] == "test"}
    intensity_before = _records(out, "intensity")

    summary = run(_config(["centre_prior", "intensity"], {"centre_prior": {"sigma_fraction": 0.9}}), out,
                  progress=False, write_report=False)

    assert summary.statuses["centre_prior"]["ok"] == N_TEST + N_VAL  # recomputed, not reused
    assert "intensity" not in summary.statuses  # unchanged: its records are kept as they were
    assert _records(out, "intensity") == intensity_before
    wide = {r["image_id"]: r["hist"] for r in _records(out, "centre_prior") if r["split"] == "test"}
    assert wide.keys() == narrow.keys() and wide != narrow
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["methods"]["centre_prior"]["identity_data"]["options"]["sigma_fraction"] == 0.9
    assert {r["identity"] for r in _records(out, "centre_prior")} == {manifest["methods"]["centre_prior"]["identity"]}
    # the stale records are gone from the file, not only hidden
    assert _lines(out, "centre_prior") == N_TEST + N_VAL


PLUGIN = '''
import hashlib
from pathlib import Path

import torch

from wsl_bench.saliency import SaliencyMethod, SaliencyOutput


class FilePlugin(SaliencyMethod):
    """Maps from a weights file: a constant map whose level is the file's first byte / 255."""

    name = "file_plugin"
    map_range = "probability"

    def __init__(self, weights=None, **kwargs):
        super().__init__(**kwargs)
        if weights is None or not Path(weights).is_file():
            raise FileNotFoundError(f"weights file {weights} not found")
        self.weights = Path(weights)
        self.level = self.weights.read_bytes()[0] / 255
        self.version = {version}

    def checksums(self):
        return {"weights": hashlib.sha256(self.weights.read_bytes()).hexdigest()}

    @property
    def weights_loaded(self):
        return True

    def predict(self, images):
        n, _, h, w = images.shape
        maps = torch.zeros(n, 2, h // 4, w // 4)
        maps[:, :, : h // 8] = self.level
        return SaliencyOutput(maps=maps, scores=torch.full((n, 2), 0.5), map_range="probability")
'''


@pytest.fixture()
def file_plugin(tmp_path):
    """A plugin method in its own module file (so its code can change) that needs a weights file."""

    def load(version: int):
        path = tmp_path / "plugin_pkg" / "file_plugin_mod.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(PLUGIN.replace("{version}", str(version)))
        spec = importlib.util.spec_from_file_location("file_plugin_mod", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["file_plugin_mod"] = module
        spec.loader.exec_module(module)
        METHODS.unregister("file_plugin")
        METHODS.register("file_plugin", module.FilePlugin)
        return module

    yield load
    METHODS.unregister("file_plugin")
    sys.modules.pop("file_plugin_mod", None)


def test_changed_weights_file_or_code_recomputes(toy_dataset, file_plugin, tmp_path):
    out, weights = tmp_path / "run", tmp_path / "w.bin"
    weights.write_bytes(bytes([60]))
    file_plugin(1)
    config = _config(["file_plugin"], {"file_plugin": {"weights": str(weights)}})
    run(config, out, progress=False, write_report=False)
    assert run(config, out, progress=False, write_report=False).computed == 0  # nothing changed: reused

    weights.write_bytes(bytes([250]))  # same path, other content
    assert run(config, out, progress=False, write_report=False).computed == N_TEST + N_VAL
    first = json.loads((out / "manifest.json").read_text())["methods"]["file_plugin"]["identity_data"]

    file_plugin(2)  # the plugin's code changed
    assert run(config, out, progress=False, write_report=False).computed == N_TEST + N_VAL
    second = json.loads((out / "manifest.json").read_text())["methods"]["file_plugin"]["identity_data"]
    assert first["code"] != second["code"] and first["weights"] == second["weights"]


def test_skipped_records_are_retried_once_the_cause_is_gone(toy_dataset, file_plugin, tmp_path):
    out, weights = tmp_path / "run", tmp_path / "w.bin"
    file_plugin(1)
    wrong = _config(["file_plugin"], {"file_plugin": {"weights": str(tmp_path / "typo.bin")}})
    run(wrong, out, progress=False, write_report=False)
    assert {r["status"] for r in _records(out, "file_plugin")} == {"skipped"}
    run(wrong, out, progress=False, write_report=False, retry_failed=True)  # still missing: still skipped
    assert {r["status"] for r in _records(out, "file_plugin")} == {"skipped"}

    weights.write_bytes(bytes([60]))
    right = _config(["file_plugin"], {"file_plugin": {"weights": str(weights)}})
    summary = run(right, out, progress=False, write_report=False)
    assert summary.statuses["file_plugin"]["ok"] == N_TEST + N_VAL
    assert {r["status"] for r in _records(out, "file_plugin")} == {"ok"}


# ---------------------------------------------------------------------- validated method output
class BadOutput(SaliencyMethod):
    """Returns what ``mode`` says: a 0×0 map, a score of 5, or an allocation failure (CPU torch's text)."""

    name = "bad_output"
    map_range = "probability"

    def __init__(self, mode: str = "empty", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def predict(self, images):
        n = images.shape[0]
        if self.mode == "alloc":
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: "
                               "you tried to allocate 99999999999 bytes.")
        if self.mode == "empty":
            return SaliencyOutput(maps=torch.zeros(n, 2, 0, 0), scores=torch.full((n, 2), 0.5))
        return SaliencyOutput(maps=torch.full((n, 2, 4, 4), 0.5), scores=torch.full((n, 2), 5.0))


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "status", "message"), [
    ("empty", "failed", "at least one pixel"),
    ("score", "failed", "scores must lie in [0, 1]"),
    ("alloc", "oom", "out of memory"),
])
def test_bad_method_output_becomes_a_record_not_a_crash(toy_dataset, tmp_path, mode, status, message):
    METHODS.register("bad_output", BadOutput)
    try:
        out = tmp_path / "run"
        summary = run(_config(["bad_output", "intensity"], {"bad_output": {"mode": mode}}), out, progress=False)
    finally:
        METHODS.unregister("bad_output")
    records = _records(out, "bad_output")
    assert len(records) == N_TEST + N_VAL and {r["status"] for r in records} == {status}
    assert all(message in r["error"] for r in records)
    assert summary.statuses["intensity"]["ok"] == N_TEST + N_VAL  # the run went on
    assert (out / "report" / "results.csv").exists()


# ------------------------------------------------------------------------------- figure maps
def test_lost_figure_maps_are_recomputed(toy_dataset, tmp_path):
    out = tmp_path / "run"
    config = _config(["intensity"])
    run(config, out, progress=False, write_report=False)
    ids = list(stored_figure_images(out))
    assert len(ids) >= 2
    truncated, _ = figure_map_paths(out, "intensity", ids[0])
    truncated.write_bytes(b"")  # a kill between create and write
    missing_image = figure_map_paths(out, "intensity", ids[1])[1]
    missing_image.unlink()

    summary = run(config, out, progress=False, write_report=False)

    assert summary.computed == 2  # only those two images
    for image_id in ids[:2]:
        for path in figure_map_paths(out, "intensity", image_id):
            with np.load(path) as data:
                assert str(data["image_id"]) == image_id


class EvilIds(ToyDataset):
    """Ids that are paths: absolute, with separators and parent references."""

    target: str = ""

    def ids(self):
        # positions 1-3 hold lesions (ToyDataset's index bits), so they are figure images
        return [f"ok-{self.split}-0", f"{self.target}-{self.split}", f"../../escape-{self.split}",
                f"a/b-{self.split}", f"ok-{self.split}-4", f"ok-{self.split}-5"]

    def load(self, sample_id):
        index = self.ids().index(sample_id)
        sample = super().load(f"toy-{self.split}-{index:03d}")
        sample.meta["id"] = sample_id
        return sample


def test_image_ids_never_become_paths(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    EvilIds.target = str(outside / "evil")
    DATASETS.register("evil", EvilIds)
    try:
        out = tmp_path / "deep" / "er" / "run"
        config = RunConfig(methods=("intensity",), dataset="evil", preset="tiny", figure_images=6)
        before = {p for p in tmp_path.rglob("*")}
        summary = run(config, out, progress=False, write_report=False)
    finally:
        DATASETS.unregister("evil")
    assert summary.failed == 0
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(out in p.parents or p == out or p in out.parents for p in created)
    assert list(outside.iterdir()) == []
    stored = stored_figure_images(out)
    assert {EvilIds.target + "-test", "../../escape-test", "a/b-test"} <= set(stored)
    for path in stored.values():
        assert path.parent == out / "maps" / "_images" and path.name == (
            hashlib.sha256(str(np.load(path)["image_id"]).encode()).hexdigest()[:24] + ".npz")


# ------------------------------------------------------------------------------------- lock
HOLDER = """
import sys, time
from wsl_bench.evaluation.run_lock import RunFolderLock
lock = RunFolderLock(sys.argv[1]); lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_one_run_per_folder_and_a_dead_holder_is_taken_over(toy_dataset, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderLocked, match=rf"pid {holder.pid} on "):
            run(_config(["intensity"]), out, progress=False, write_report=False)
        assert not (out / "records.jsonl").exists()  # refused before writing anything
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # the holder died without releasing: its lock is taken over
    summary = run(_config(["intensity"]), out, progress=False, write_report=False)
    assert summary.computed == N_TEST + N_VAL
    with RunFolderLock(out):  # released at the end of the run
        pass


def test_a_released_lock_can_be_taken_again_but_a_held_one_cannot(tmp_path):
    first = RunFolderLock(tmp_path)
    first.acquire()
    second = RunFolderLock(tmp_path)
    with pytest.raises(RunFolderLocked, match=str(os.getpid())):
        second.acquire()
    first.release()
    second.acquire()  # no wait, no error once the holder has released it
    assert (tmp_path / ".lock").read_text().startswith('{"pid": ' + str(os.getpid()))
    second.release()


@pytest.mark.slow
def test_a_resumed_run_removes_the_temporary_files_a_kill_left(toy_dataset, tmp_path):
    out = tmp_path / "run"
    run(_config(["intensity"]), out, progress=False)
    left = [out / "report" / ".index.html.k3j2.tmp", out / "maps" / "intensity" / ".abc.npz.x1.tmp",
            out / ".records.jsonl.rewrite.tmp"]
    for path in left:
        path.write_bytes(b"half")
    mine = out / "notes.tmp"  # not one of the suite's hidden temporaries: kept
    mine.write_text("a user's file")

    run(_config(["intensity"]), out, progress=False)

    assert not any(path.exists() for path in left)
    assert mine.read_text() == "a user's file"
