"""``--device``: a device this machine cannot run is one error line naming it and what is available,
exit 2, before any work starts (issue 26). CPU-only: CUDA is hidden from PyTorch where a GPU exists."""

from __future__ import annotations

import pytest
import torch
from test_cli import assert_one_error_line, cli_exit_code

from wsl_bench.devices import DeviceError, available_devices, check_device


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as one without a GPU, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch):
    """This machine as one with exactly one CUDA device (only the check asks; nothing runs on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--methods", "intensity", "--preset", "tiny", "--no-progress"],
        ["train", "--method", "cam", "--preset", "tiny", "--epochs", "1", "--no-progress"],
        ["bench", "--methods", "intensity", "--size", "32x16", "--repeats", "1"],
        ["bench", "--harness", "--methods", "intensity", "--dataset", "toy", "--images", "1"],
    ],
)
def test_cuda_without_a_gpu_is_one_line_exit_2_before_any_work(argv, no_cuda, tmp_path, capsys):
    out = tmp_path / "out"
    where = ["--out", str(out)] if argv[0] != "bench" or "--harness" in argv else []
    assert cli_exit_code([*argv, "--device", "cuda", *where]) == 2
    captured = capsys.readouterr()
    line = assert_one_error_line(captured.err, "--device cuda", "available here: cpu")
    assert "CUDA" in line and captured.err.count("\n") == 1  # nothing else printed: no plan, no bar
    assert not out.exists()  # no work started: no run folder, no manifest


def test_a_device_index_beyond_the_gpus_names_the_ones_there(one_gpu):
    with pytest.raises(DeviceError, match=r"--device cuda:2: this machine has 1 CUDA device\(s\), cuda:0 to cuda:0; "
                                          r"available here: cpu, cuda, cuda:0"):
        check_device("cuda:2")
    assert check_device("cuda:0") == "cuda:0" and check_device("cuda") == "cuda"


@pytest.mark.parametrize("name, reason", [("gpu", "not a device name (a CUDA GPU is 'cuda' or 'cuda:N')"),
                                          ("xla", "not usable by wsl-bench on this machine"),
                                          ("cuda", "CUDA")])
def test_unusable_names_say_why_and_list_the_available_devices(name, reason, no_cuda):
    with pytest.raises(DeviceError) as info:
        check_device(name)
    message = str(info.value)
    assert message.startswith(f"--device {name}: ") and reason in message
    assert message.endswith("available here: cpu") and "\n" not in message


def test_the_cpu_is_always_available(no_cuda):
    assert available_devices()[0] == "cpu" and check_device("cpu") == "cpu" and check_device("cpu:0") == "cpu:0"
