"""The restricted unpickler: plain data loads, anything importing a global is refused before it runs."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from wsl_bench.safe_pickle import UnsafePickleError, load, loads


class _RunsShell:
    """Unpickling this calls os.system(command): what a hostile exam list would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evaluates:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps([{"L-CC": ["0_L-CC"]}, _RunsShell(f"touch {marker}")], protocol=protocol))
    # sanity: plain pickle would run it (checked on a copy whose marker is elsewhere)
    with pytest.raises(UnsafePickleError) as err:
        load(path)
    assert str(path) in str(err.value) and "system" in str(err.value)
    assert not marker.exists()


def test_plain_pickle_really_would_have_run_the_command(tmp_path):
    """Guards the test above: the payload is genuinely malicious."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_RunsShell(f"touch {marker}")))  # noqa: S301 - demonstrating the danger
    assert marker.exists()


@pytest.mark.parametrize(
    "payload", [_Evaluates(), np.zeros(3), np.array(["x"], dtype=object), {"f": os.system}, np.complex128(1j)]
)
def test_other_globals_are_refused(payload):
    try:
        data = pickle.dumps(payload)
    except (TypeError, pickle.PicklingError):
        pytest.skip("not picklable here")
    with pytest.raises(UnsafePickleError, match="x.pkl: .*(refused to load global|not plain data|not a plain numeric)"):
        loads(data, source="x.pkl")


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_plain_containers_and_scalars_round_trip(protocol):
    value = {
        "horizontal_flip": "NO",
        "L-CC": ["0_L-CC"],
        "best_center": {"L-CC": [(1136.0, 158)]},
        "cancer_label": {"left_benign": 1, "right_malignant": False},
        "tags": {"a", "b"},
        "frozen": frozenset({1}),
        "raw": b"\x00\xff",
        "nothing": None,
    }
    assert loads(pickle.dumps([value], protocol=protocol)) == [value]


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_numpy_scalars_become_python_scalars(protocol):
    value = {"best_center": (np.int64(1536), np.float64(252.5)), "flag": np.bool_(True), "u": np.uint16(7)}
    out = loads(pickle.dumps(value, protocol=protocol))
    assert out == {"best_center": (1536, 252.5), "flag": True, "u": 7}
    assert type(out["best_center"][0]) is int and type(out["best_center"][1]) is float


def test_truncated_pickle_names_the_file(tmp_path):
    path = tmp_path / "exams.pkl"
    path.write_bytes(pickle.dumps([{"a": list(range(100))}])[:20])
    with pytest.raises(UnsafePickleError, match=f"{path}: truncated or malformed"):
        load(path)
