"""The command line's front: help and usage errors answer without importing torch, ``run --help``
lists the default methods, a landscape size is warned about (issue 16, items 7, 8b, 8d)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from wsl_bench.cli import DEFAULT_METHODS, build_parser, main

# Runs ``main(argv)`` in a fresh interpreter and reports, at exit, whether torch was imported.
PROBE = textwrap.dedent("""
    import atexit, sys
    atexit.register(lambda: print("torch imported:", "torch" in sys.modules, file=sys.stderr))
    from wsl_bench.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["run", "--help"], 0),
    (["run", "--batch-size", "0"], 2),
    (["bench", "--precision", "fp8"], 2),
    (["no-such-command"], 2),
])
def test_help_and_usage_errors_do_not_import_torch(argv, code):
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert "torch imported: False" in done.stderr, done.stderr


def test_the_module_entry_point_prints_help():
    done = subprocess.run([sys.executable, "-m", "wsl_bench.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "usage: wsl-bench" in done.stdout


def test_the_package_front_doors_still_work_when_asked_for():
    import wsl_bench

    assert "glam" in wsl_bench.list_methods("gl*") and wsl_bench.SaliencyOutput.__name__ == "SaliencyOutput"
    with pytest.raises(AttributeError):
        wsl_bench.no_such_name  # noqa: B018


def run_help_text() -> str:
    parser = build_parser()
    run = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["run"]
    return " ".join(run.format_help().split())


def test_run_help_shows_the_default_method_list_and_it_matches_the_registry():
    from wsl_bench.pipeline import default_methods

    for preset, key in (("cpu", "cpu"), ("gpu", "gpu"), ("tiny", "every"), ("full", "every")):
        assert list(DEFAULT_METHODS[key]) == default_methods(preset), preset
    text = run_help_text()
    assert "at the cpu preset " + ", ".join(DEFAULT_METHODS["cpu"]) in text
    assert "scorecam" in text and "integrated_gradients" in text  # what other presets add


@pytest.mark.parametrize("argv, flag, swapped", [
    (["data", "synth", "--n", "2", "--size", "48x64"], "--size 48x64", "64x48"),
    pytest.param(["run", "--methods", "intensity", "--dataset", "toy", "--preset", "tiny", "--image-size", "80x128",
                  "--no-progress"], "--image-size 80x128", "128x80", marks=pytest.mark.slow),  # a whole run: 5 s
])
def test_a_landscape_size_is_warned_about_and_a_portrait_one_is_not(argv, flag, swapped, toy_dataset, tmp_path,
                                                                    capsys):
    assert main([*argv, "--out", str(tmp_path / "landscape")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {flag} is wider than tall" in err and f"did you mean {swapped}?" in err
    portrait = [swapped if a == flag.split()[1] else a for a in argv]
    assert main([*portrait, "--out", str(tmp_path / "portrait")]) == 0
    assert "wider than tall" not in capsys.readouterr().err
