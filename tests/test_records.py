"""Records survive kills: partial last lines are dropped, the last record per key wins."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsl_bench.records import RecordWriter, decode_counts, encode_counts, read_records


def test_counts_round_trip():
    counts = np.random.default_rng(0).integers(0, 5_000_000, 1000)
    counts[::3] = 0
    assert np.array_equal(decode_counts(encode_counts(counts)), counts)
    with pytest.raises(ValueError):
        encode_counts(np.array([-1]))


def test_partial_last_line_is_dropped_on_reopen(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as writer:
        writer.write({"image_id": "a", "method": "m", "status": "ok"})
        writer.write({"image_id": "b", "method": "m", "status": "ok"})
    with open(path, "a") as handle:  # what a kill in the middle of a write leaves
        handle.write('{"image_id": "c", "method": "m", "sta')
    assert {r["image_id"] for r in read_records(path)} == {"a", "b"}
    with RecordWriter(path) as writer:
        writer.write({"image_id": "c", "method": "m", "status": "failed", "error": "x"})
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)


def test_last_record_per_key_wins_and_nan_becomes_null(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as writer:
        writer.write({"image_id": "a", "method": "m", "status": "failed", "error": "boom"})
        writer.write({"image_id": "a", "method": "m", "status": "ok", "time_s": float("nan")})
    (record,) = read_records(path)
    assert record["status"] == "ok" and record["time_s"] is None


def test_unknown_status_is_refused(tmp_path):
    with RecordWriter(tmp_path / "r.jsonl") as writer, pytest.raises(ValueError, match="status"):
        writer.write({"image_id": "a", "method": "m", "status": "great"})
