"""Images read ahead by loader workers, records written by a background thread: same results, same
guarantees (order, one failure per bad image, at most one record lost to a kill)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from wsl_bench.evaluation.harness import RunConfig, SampleCache
from wsl_bench.evaluation.loading import default_workers, load_batches
from wsl_bench.evaluation.records import RecordWriter, read_records
from wsl_bench.evaluation.writer import BackgroundWriter
from wsl_bench.pipeline import run
from wsl_bench.saliency import CLASSES

TIMING_FIELDS = {"time_s", "stage_s", "peak_memory_mb"}


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_keep_the_order_asked_and_a_bad_image_fails_alone(toy_dataset, workers):
    toy_dataset.corrupt = {"toy-test-002"}
    dataset = toy_dataset(split="test")
    ids = dataset.ids()[::-1]  # an order that is not the dataset's
    cache = SampleCache(dataset)
    batches = list(load_batches(cache, ids, batch_size=4, workers=workers))
    assert [len(b) for b in batches] == [4, 2]
    items = [item for batch in batches for item in batch]
    assert [item.sample_id for item in items] == ids
    for item in items:
        if item.sample_id == "toy-test-002":
            assert item.sample is None and "truncated or corrupt PNG" in str(item.error)
            continue
        expected = dataset.get(item.sample_id)
        np.testing.assert_array_equal(item.sample.image, expected.image)
        for cls in CLASSES:
            np.testing.assert_array_equal(item.sample.masks[cls], expected.masks[cls])
            # found by the worker, handed over with the sample
            np.testing.assert_array_equal(item.sample._lesion_pixels[cls], np.flatnonzero(expected.masks[cls]))
        assert item.sample.labels == expected.labels and item.sample.meta == expected.meta


def test_images_loaded_once_are_served_from_the_cache(toy_dataset, monkeypatch):
    dataset = toy_dataset(split="test")
    cache = SampleCache(dataset)
    list(load_batches(cache, dataset.ids(), batch_size=2, workers=0))
    monkeypatch.setattr(dataset, "load", lambda sample_id: pytest.fail(f"{sample_id} was read again"))
    again = [item for batch in load_batches(cache, dataset.ids(), batch_size=3, workers=2) for item in batch]
    assert [item.sample_id for item in again] == dataset.ids()


def test_default_workers_leave_the_model_its_threads(monkeypatch):
    import torch

    def machine(cores: int, threads: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)

    machine(8, 6)
    assert default_workers("cpu") == 2
    machine(8, 8)
    assert default_workers("cpu") == 1  # one reads ahead while the model is not using every core
    machine(1, 1)
    assert default_workers("cpu") == 0
    machine(16, 16)
    assert default_workers("cuda") == 8  # the GPU computes: the CPU's cores read images
    machine(2, 2)
    assert default_workers("cuda") == 1


def _without_timings(records):
    return sorted(({k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records),
                  key=lambda r: (r["split"], r["image_id"], r["method"]))


def test_loader_workers_change_no_record(toy_dataset, tmp_path):
    toy_dataset.corrupt = {"toy-test-001"}
    config = RunConfig(methods=("intensity", "random"), dataset="toy", preset="tiny", batch_size=2)
    by_workers = {}
    for workers in (0, 2):
        out = tmp_path / f"workers{workers}"
        run(RunConfig(**{**config.__dict__, "loader_workers": workers}), out, progress=False, write_report=False)
        by_workers[workers] = read_records(out / "records.jsonl")
        ok = [r for r in by_workers[workers] if r["status"] == "ok"]
        assert ok and all(set(r["stage_s"]) == {"load", "score", "write"} for r in ok)
        assert all(min(r["stage_s"].values()) >= 0 for r in ok)
    assert _without_timings(by_workers[0]) == _without_timings(by_workers[2])
    failed = [r for r in by_workers[2] if r["status"] == "failed"]
    assert {r["image_id"] for r in failed} == {"toy-test-001"} and "loading:" in failed[0]["error"]
    # the worker count is how images are read, not what the run computes: the same folder resumes
    summary = run(RunConfig(**{**config.__dict__, "loader_workers": 1}), tmp_path / "workers0", progress=False,
                  write_report=False)
    assert summary.computed == 0


def _written_ids(path: Path) -> list[str]:
    return [json.loads(line)["image_id"] for line in path.read_text().splitlines()]


class _SlowRecords(RecordWriter):
    """Holds each write until the test lets it go."""

    def __init__(self, path):
        super().__init__(path)
        self.release = threading.Event()
        self.started = threading.Event()

    def write(self, record):
        self.started.set()
        assert self.release.wait(10)
        super().write(record)


def test_the_writer_holds_at_most_one_job_and_reports_its_wait(tmp_path):
    records = _SlowRecords(tmp_path / "records.jsonl")
    writer = BackgroundWriter(records)
    writer.write({"status": "ok", "image_id": "a"})
    assert records.started.wait(10)
    handed = threading.Event()

    def second():
        writer.write({"status": "ok", "image_id": "b"})
        handed.set()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.2)
    assert not handed.is_set(), "the second record waits until the first is durable"
    records.release.set()
    thread.join(10)
    assert handed.is_set() and writer.waited_s >= 0.15
    writer.close()
    records.close()
    assert _written_ids(tmp_path / "records.jsonl") == ["a", "b"]


def test_a_failed_write_is_raised_in_the_main_thread(tmp_path):
    records = RecordWriter(tmp_path / "records.jsonl")
    writer = BackgroundWriter(records)
    writer.write({"status": "not-a-status", "image_id": "a"})
    with pytest.raises(ValueError, match="record status must be one of"):
        writer.flush()
    writer.write({"status": "ok", "image_id": "b"})  # the writer goes on after the failure was raised
    writer.close()
    records.close()
    assert _written_ids(tmp_path / "records.jsonl") == ["b"]


KILLED_WRITER = textwrap.dedent('''
    import sys, time
    from wsl_bench.evaluation.records import RecordWriter
    from wsl_bench.evaluation.writer import BackgroundWriter

    class SlowDisk(RecordWriter):
        def write(self, record):
            time.sleep(0.05)
            super().write(record)

    writer = BackgroundWriter(SlowDisk(sys.argv[1]))
    for i in range(1000):
        writer.write({"status": "ok", "image_id": f"img-{i:04d}", "pad": "x" * 5000})
        print(i, flush=True)  # handed over: the records before it are durable
''')


@pytest.mark.slow
def test_a_kill_loses_at_most_the_record_being_written(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    path = tmp_path / "records.jsonl"
    process = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ})
    handed = -1
    for line in process.stdout:
        handed = int(line)
        if handed >= 12:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    # every record handed over before the last hand-over is durable; at most the one in flight is lost
    reopened = RecordWriter(path)  # drops a partial last line, as a resumed run does
    reopened.close()
    ids = _written_ids(path)
    assert ids == [f"img-{i:04d}" for i in range(len(ids))]
    assert len(ids) >= handed  # records 0 … handed-1 at least


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_images_reach_the_gpu_through_pinned_memory_and_score_alike(toy_dataset, tmp_path):
    import torch

    from wsl_bench.evaluation.harness import _to_device

    dataset = toy_dataset(split="test")
    samples = [dataset.get(i) for i in dataset.ids()[:3]]
    images = _to_device(samples, torch.device("cuda"))
    assert images.is_cuda and torch.equal(images.cpu(), torch.from_numpy(np.stack([s.image for s in samples])))
    records = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        run(RunConfig(methods=("intensity",), dataset="toy", preset="tiny", device=device, batch_size=2), out,
            progress=False, write_report=False)
        records[device] = _without_timings(read_records(out / "records.jsonl"))
    assert records["cpu"] == records["cuda"]  # maps at the image size: no device resize to differ
