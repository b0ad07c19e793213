"""Records survive kills: partial last lines are dropped, the last record per key wins."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsl_bench.evaluation.records import RecordWriter, decode_counts, encode_counts, read_records
from wsl_bench.saliency import CLASSES


def make_record(image_id: str, method: str, status: str, error: str | None = None, **fields) -> dict:
    """A record with the fields the harness gives every record (``wsl_bench.evaluation.harness.make_record``)."""
    per_class = {key: {c: None for c in CLASSES} for key in ("dice", "dice_pixels", "has_lesion", "score", "label")}
    return {"split": "test", "image_id": image_id, "method": method, "status": status, "error": error,
            **per_class, "time_s": None, "peak_memory_mb": None, "gflops": None, **fields}


def ok_record(image_id: str, **fields) -> dict:
    """A scored record with every field the report reads."""
    return make_record(image_id, "m", "ok", **fields)


def test_counts_round_trip():
    counts = np.random.default_rng(0).integers(0, 5_000_000, 1000)
    counts[::3] = 0
    assert np.array_equal(decode_counts(encode_counts(counts)), counts)
    with pytest.raises(ValueError):
        encode_counts(np.array([-1]))


def test_partial_last_line_is_dropped_on_reopen(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as writer:
        writer.write(ok_record("a"))
        writer.write(ok_record("b"))
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
        writer.write(ok_record("a", time_s=float("nan")))
    (record,) = read_records(path)
    assert record["status"] == "ok" and record["time_s"] is None


def test_unknown_status_is_refused(tmp_path):
    with RecordWriter(tmp_path / "r.jsonl") as writer, pytest.raises(ValueError, match="status"):
        writer.write({"image_id": "a", "method": "m", "status": "great"})


BAD_LINES = [
    (b"[1, 2]", "a JSON list, not a record object"),
    (b'"x"', "a JSON str"),
    (b"3", "a JSON int"),
    (b"null", "a JSON NoneType"),
    (b'{"method": "m", "status": "ok"}', "no 'image_id'"),
    (b'{"image_id": 7, "method": "m", "status": "ok"}', "'image_id' is 7"),
    (b'{"image_id": "z", "method": ["m"], "status": "ok"}', "'method' is ['m']"),
    (b'{"image_id": "z", "method": "m", "status": "great"}', "status 'great'"),
    (b'{"image_id": "z", "method": "m", "status": "ok"}', "an ok record without 'dice'"),
    (b'{"image_id": "z", "method": "m", "status": "failed", "split": 3}', "split 3"),
    (b'{"image_id": "z", "method": "m", "status": "ok", "dice": [0.5], "has_lesion": {}, "score": {}, "label": {}}',
     "'dice' is list"),
    (b'{"image_id": "z", "method": "m", "status": "failed", "time_s": "slow"}', "'time_s' is 'slow'"),
    (b'{"image_id": "z", "method": "m", "status": "failed", "hist": 5}', "'hist' is int"),
    (b'{"image_id": "\xff\xfe", "method": "m", "status": "ok"}', "not valid UTF-8"),
    (b"\xc3\x28 garbage", "not valid UTF-8"),
    (b"[[[[[[", "not a complete record"),
]


@pytest.mark.parametrize("bad, reason", BAD_LINES, ids=[r for _, r in BAD_LINES])
def test_a_line_that_is_not_a_valid_record_is_reported_and_skipped(bad, reason, tmp_path, caplog):
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as writer:
        writer.write(ok_record("a"))
    with open(path, "ab") as handle:  # a bad line between two good ones: only it is lost
        handle.write(bad + b"\n")
    with RecordWriter(path) as writer:
        writer.write(make_record("b", "m", "failed", "boom"))
    with caplog.at_level("WARNING", logger="wsl_bench.evaluation.records"):
        records = read_records(path)
    assert sorted(r["image_id"] for r in records) == ["a", "b"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"{path} line 2:" in warnings[0] and reason in warnings[0], warnings


def test_every_bad_line_of_a_file_is_reported_by_number(tmp_path, caplog):
    path = tmp_path / "records.jsonl"
    lines = [json.dumps(ok_record("a")).encode(), *(bad for bad, _ in BAD_LINES), json.dumps(ok_record("b")).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level("WARNING", logger="wsl_bench.evaluation.records"):
        records = read_records(path)
    assert sorted(r["image_id"] for r in records) == ["a", "b"]
    reported = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [m.split(":")[0] for m in reported] == [f"{path} line {n}" for n in range(2, 2 + len(BAD_LINES))]
