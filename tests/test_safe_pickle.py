"""The restricted unpickler: plain data loads, anything importing a global is refused before it runs."""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsl_bench.datasets._safe_pickle import UnsafePickleError, load, loads


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


# ----------------------------------------------------------------------------- size limits
def _bytearray_bomb(size: int = 6 * 2**30) -> bytes:
    """``bytearray(size)`` in pickle opcodes: GLOBAL builtins.bytearray, LONG1 size, TUPLE1, REDUCE."""
    n = size.to_bytes((size.bit_length() + 8) // 8, "little")
    return (
        pickle.PROTO + b"\x02"
        + pickle.GLOBAL + b"builtins\nbytearray\n" + pickle.BINPUT + b"\x00"
        + pickle.LONG1 + bytes([len(n)]) + n
        + pickle.TUPLE1 + pickle.BINPUT + b"\x01" + pickle.REDUCE + pickle.STOP
    )


def test_the_bomb_is_a_well_formed_36_byte_pickle():
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(_bytearray_bomb())]
    assert ops == [("PROTO", 2), ("GLOBAL", "builtins bytearray"), ("BINPUT", 0), ("LONG1", 6 * 2**30),
                   ("TUPLE1", None), ("BINPUT", 1), ("REDUCE", None), ("STOP", None)]
    assert len(_bytearray_bomb()) == 36


_BOUNDED_CHILD = r"""
import resource, sys, time
from wsl_bench.datasets._safe_pickle import UnsafePickleError, loads
data = bytes.fromhex(sys.argv[1])
# cap the address space at what is mapped now + 1 GiB: an allocation the limits miss fails here
# (MemoryError) instead of eating the machine, and the message check below then fails
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    loads(data, source="bomb.pkl")
except UnsafePickleError as exc:
    print("REFUSED", exc)
else:
    print("LOADED")
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print("SECONDS", time.perf_counter() - start)
print("GREW", grew)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        # 36 bytes asking for a 6 GiB bytearray
        (_bytearray_bomb(), r"bytearray\(int\) refused"),
        # LONG_BINPUT 2**31 - 1: the C unpickler sizes its memo table by the index (16 GiB of pointers)
        (pickle.PROTO + b"\x02" + pickle.EMPTY_LIST + pickle.LONG_BINPUT + b"\xff\xff\xff\x7f" + pickle.STOP,
         r"memo index 2147483647 .* out of range"),
        # BINBYTES8 declaring 6 GiB: the C unpickler allocates the declared length before reading
        (pickle.PROTO + b"\x04" + pickle.BINBYTES8 + (6 * 2**30).to_bytes(8, "little") + b"ab" + pickle.STOP,
         r"expected 6442450944 bytes"),
        (pickle.PROTO + b"\x05" + pickle.BYTEARRAY8 + (6 * 2**30).to_bytes(8, "little") + b"ab" + pickle.STOP,
         r"expected 6442450944 bytes"),
    ],
    ids=["bytearray-6GiB", "memo-index-2**31", "binbytes8-6GiB", "bytearray8-6GiB"],
)
@pytest.mark.slow
def test_tiny_pickle_asking_for_gigabytes_is_refused_without_allocating(payload, message):
    assert len(payload) < 40
    out = subprocess.run(
        [sys.executable, "-c", _BOUNDED_CHILD, payload.hex()], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert re.search(message, lines.get("REFUSED", "")), out.stdout
    assert lines["REFUSED"].startswith("bomb.pkl: ")
    assert float(lines["SECONDS"]) < 1.0
    assert int(lines["GREW"]) < 2**28  # far below the gigabytes asked for


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_bytearray_sets_and_shared_lists_still_load(protocol):
    shared = ["x"]
    value = {"raw": bytearray(b"\x00\xffab"), "empty": bytearray(), "s": {1, 2}, "f": frozenset(), "a": shared,
             "b": [shared, shared]}
    out = loads(pickle.dumps(value, protocol=protocol))
    assert out == value and type(out["raw"]) is bytearray


@pytest.mark.parametrize("call", [b"set", b"frozenset"])
def test_set_from_a_number_is_refused(call):
    data = (pickle.PROTO + b"\x02" + pickle.GLOBAL + b"builtins\n" + call + b"\n"
            + pickle.BININT + (10**9).to_bytes(4, "little") + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    with pytest.raises(UnsafePickleError, match=rf"x.pkl: .*{call.decode()}\(int\) refused"):
        loads(data, source="x.pkl")


def test_file_above_the_size_limit_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(list(range(1000))))
    read = []
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self) or b"")
    with pytest.raises(UnsafePickleError, match=rf"{path}: .* bytes, above the limit of 100 bytes"):
        load(path, max_bytes=100)
    assert not read
    assert load(path) == list(range(1000))
    with pytest.raises(UnsafePickleError, match="above the limit"):
        loads(b"x" * 101, max_bytes=100)


def test_object_count_and_nesting_are_bounded():
    many = pickle.dumps([[] for _ in range(1000)], protocol=2)
    with pytest.raises(UnsafePickleError, match="x.pkl: more than 500 opcodes"):
        loads(many, source="x.pkl", max_objects=500)
    # 100 000 nested lists built by opcodes (no recursion when pickling): EMPTY_LIST ... APPEND
    n = 100_000
    deep = pickle.PROTO + b"\x02" + pickle.EMPTY_LIST * n + pickle.APPEND * (n - 1) + pickle.STOP
    with pytest.raises(UnsafePickleError, match="x.pkl: containers nested deeper than 64"):
        loads(deep, source="x.pkl")
    assert loads(pickle.dumps([[[["ok"]]]])) == [[[["ok"]]]]


def test_a_list_containing_itself_is_refused():
    cycle = []
    cycle.append(cycle)
    with pytest.raises(UnsafePickleError, match=r"nested deeper .* \(or a cycle\)"):
        loads(pickle.dumps(cycle))
