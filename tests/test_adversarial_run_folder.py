"""What a run does to the folders it is given (issue 24, items 1, 6, 7 and 9): nothing of the user's
is ever deleted or overwritten, nothing is written outside the run folder through a planted link,
two trainings never share a folder or a cache key at once, and every refusal is one line naming the
path, exit 2, without a traceback.

The commands run in-process through :func:`wsl_bench.cli.main` on the test-only ``toy`` dataset
(``conftest.py``), at the ``tiny`` preset with cheap methods.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from wsl_bench.cli import main
from wsl_bench.evaluation.records import read_records

RUN = ["--methods", "intensity", "--dataset", "toy", "--preset", "tiny", "--no-progress"]


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def one_error_line(capsys) -> str:
    """The command's single ``wsl-bench: error:`` line (and no traceback)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("wsl-bench: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` → its bytes (``None`` for a folder), symbolic links not followed."""
    return {str(p.relative_to(folder)): (None if p.is_dir() and not p.is_symlink() else
                                         os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One finished run of the module, made once (with ``toy`` registered and a cache of its own)."""
    from conftest import finished_toy_run

    return finished_toy_run(tmp_path_factory, RUN)


@pytest.fixture
def finished_run(toy_dataset, reference_run, tmp_path):
    """A copy of the module's finished run, for one test to damage."""
    out = tmp_path / "run"
    shutil.copytree(reference_run, out, symlinks=True)
    return out


# ------------------------------------------------------------------------------- 1: user files destroyed
def test_a_users_hidden_tmp_files_survive_a_refused_run(tmp_path, capsys):
    """``echo x > U/.draft.tmp; wsl-bench run --dataset folder --data-root EMPTY --out U`` deleted
    the file. A folder of the user's is now refused before anything, even the lock, is written."""
    user = tmp_path / "U"
    (user / "notes").mkdir(parents=True)
    (user / ".draft.tmp").write_text("x")
    (user / "notes" / ".deep.abcdefgh.tmp").write_text("y")  # even named like the suite's own
    empty = tmp_path / "EMPTY"
    empty.mkdir()
    before = listing(user)
    assert exit_code(["run", "--dataset", "folder", "--data-root", str(empty), "--methods", "intensity",
                      "--preset", "tiny", "--out", str(user), "--no-progress"]) == 2
    assert str(user) in one_error_line(capsys)
    assert listing(user) == before  # no .lock either


@pytest.mark.slow
def test_only_the_runs_own_temporary_files_are_removed_from_a_run_folder(finished_run, capsys):
    out = finished_run
    mine = [out / ".draft.tmp", out / ".notes.tmp", out / "report" / ".draft.tmp", out / "maps" / ".keep.tmp"]
    (out / "scratch").mkdir()
    mine.append(out / "scratch" / ".results.csv.abcdefgh.tmp")  # a folder the run does not write
    for path in mine:
        path.write_text("the user's")
    leftovers = [out / ".manifest.json.k2j4x9a_.tmp", out / ".records.jsonl.rewrite.tmp",
                 out / "report" / ".index.html.q1w2e3r4.tmp"]
    for path in leftovers:
        path.write_text("half-written by a killed run")
    assert exit_code(["run", *RUN, "--out", str(out)]) == 0
    assert all(p.read_text() == "the user's" for p in mine)
    assert not any(p.exists() for p in leftovers)


@pytest.mark.parametrize("files", [["report/index.html", "report/results.csv"], ["thesis.tex"], ["records.jsonl"]])
def test_a_folder_with_files_and_no_manifest_is_refused_untouched(toy_dataset, tmp_path, capsys, files):
    out = tmp_path / "mine"
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(f"my own {name}")
    before = listing(out)
    for extra in ([], ["--overwrite"]):
        assert exit_code(["run", *RUN, "--out", str(out), *extra]) == 2
        line = one_error_line(capsys)
        assert str(out) in line and "--overwrite" in line and "--out" in line
        assert listing(out) == before  # nothing written, nothing deleted, no lock file


# ------------------------------------------------------------------------------- 6: symlinks in a run folder
def test_a_report_folder_linked_elsewhere_is_never_written_through(finished_run, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    report = finished_run / "report"
    for path in report.iterdir():
        path.unlink()
    report.rmdir()
    report.symlink_to(elsewhere, target_is_directory=True)
    for argv in (["run", *RUN, "--out", str(finished_run)], ["run", *RUN, "--out", str(finished_run), "--overwrite"],
                 ["report", str(finished_run)]):
        assert exit_code(argv) == 2
        assert "report" in one_error_line(capsys)
    assert listing(elsewhere) == {"keep.txt": b"mine"}


@pytest.mark.parametrize("run_file", ["records.jsonl", ".lock"])
def test_a_run_file_linked_to_a_users_file_never_writes_through_the_link(finished_run, tmp_path, capsys, run_file):
    """records.jsonl was appended to, and .lock truncated, through a link to a file of the user's."""
    users = tmp_path / "precious.txt"
    users.write_text("do not append or truncate")
    linked = finished_run / run_file
    linked.unlink()
    linked.symlink_to(users)
    assert exit_code(["run", *RUN, "--out", str(finished_run)]) == 2
    assert run_file in one_error_line(capsys)
    assert users.read_text() == "do not append or truncate"


@pytest.mark.slow
def test_a_linked_out_folder_itself_is_followed(toy_dataset, tmp_path):
    """The user chose ``--out``: a link there is theirs, and the run goes where it points."""
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    assert exit_code(["run", *RUN, "--out", str(link)]) == 0
    assert (target / "report" / "results.csv").is_file()


# ------------------------------------------------------------------------------- 9: one line each
@pytest.mark.parametrize("make", ["file", "dangling", "too-long", "lock-dir", "records-dir", "truncated-manifest",
                                  "read-only"])
def test_unusable_out_folders_are_one_line_naming_the_path(finished_run, tmp_path, capsys, make):
    out = finished_run
    if make == "file":
        out = tmp_path / "a-file"
        out.write_text("x")
    elif make == "dangling":
        out = tmp_path / "dangling"
        out.symlink_to(tmp_path / "nowhere")
    elif make == "too-long":
        out = tmp_path / ("x" * 300)
    elif make == "lock-dir":
        (out / ".lock").unlink()
        (out / ".lock").mkdir()
    elif make == "records-dir":
        (out / "records.jsonl").unlink()
        (out / "records.jsonl").mkdir()
    elif make == "truncated-manifest":
        text = (out / "manifest.json").read_text()
        (out / "manifest.json").write_text(text[: len(text) // 2])
    elif make == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (out / "records.jsonl").unlink()
        out.chmod(0o555)
    try:
        assert exit_code(["run", *RUN, "--out", str(out)]) == 2
    finally:
        if make == "read-only":
            out.chmod(0o755)
    line = one_error_line(capsys)
    assert str(out)[:100] in line, line


def test_the_lock_refusal_is_one_line(finished_run, capsys):
    from wsl_bench.evaluation.run_lock import RunFolderLock

    with RunFolderLock(finished_run):
        assert exit_code(["run", *RUN, "--out", str(finished_run)]) == 2
    line = one_error_line(capsys)
    assert "in use by another wsl-bench run" in line and str(os.getpid()) in line


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS"])
def test_a_full_or_read_only_disk_is_one_line(finished_run, monkeypatch, capsys, code):
    """The operating system's refusal to write (simulated: a test running as root may write anywhere)."""
    import errno

    from wsl_bench import atomic_io

    number = getattr(errno, code)

    def refuse(*args, **kwargs):
        raise OSError(number, os.strerror(number), str(finished_run / "manifest.json"))

    monkeypatch.setattr(atomic_io.tempfile, "mkstemp", refuse)
    assert exit_code(["run", *RUN, "--out", str(finished_run)]) == 2
    line = one_error_line(capsys)
    assert "manifest.json" in line and os.strerror(number) in line


def test_data_synth_into_a_foreign_folder_is_one_line(tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / "labels.csv").write_text("id,split\n")
    assert exit_code(["data", "synth", "--out", str(out), "--n", "4", "--size", "64x48"]) == 2
    assert "labels.csv" in one_error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["labels.csv"]
    (out / "labels.csv").unlink()
    (out / "synthetic.json").write_text('{"generator": "synthetic", "seed": 3')  # truncated
    assert exit_code(["data", "synth", "--out", str(out), "--n", "4", "--size", "64x48"]) == 2
    assert "synthetic.json" in one_error_line(capsys)


def test_an_unreadable_weights_file_is_one_line(toy_dataset, tmp_path, capsys):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not a checkpoint at all")
    assert exit_code(["run", "--methods", "glam", "--dataset", "toy", "--preset", "tiny", "--no-progress",
                      "--weights", str(weights), "--out", str(tmp_path / "run")]) == 2
    assert str(weights) in one_error_line(capsys)


@pytest.mark.slow
def test_a_damaged_cached_checkpoint_is_set_aside_and_retrained(toy_dataset, tmp_path, isolated_cache, caplog):
    cam = ["run", "--methods", "cam", "--dataset", "toy", "--preset", "tiny", "--no-progress", "--image-size", "64x48"]
    assert exit_code([*cam, "--out", str(tmp_path / "first")]) == 0
    (folder,) = [p.parent for p in isolated_cache.glob("checkpoints/cam/*/final.pt")]
    chosen = folder / "best.pt" if (folder / "best.pt").exists() else folder / "final.pt"
    chosen.write_bytes(chosen.read_bytes()[:1000])  # a disk error, a killed copy...
    assert exit_code([*cam, "--out", str(tmp_path / "second")]) == 0
    aside = [p for p in folder.parent.iterdir() if p.name.startswith(folder.name + ".damaged-")]
    assert len(aside) == 1 and (aside[0] / chosen.name).stat().st_size == 1000
    assert any(str(aside[0]) in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert (folder / "final.pt").stat().st_size > 1000  # trained again
    records = read_records(tmp_path / "second" / "records.jsonl")
    assert records and {r["status"] for r in records} == {"ok"}


# ------------------------------------------------------------------------------- 7: locks for training
def test_train_out_takes_the_run_folder_lock(toy_dataset, tmp_path, capsys):
    from wsl_bench.evaluation.run_lock import RunFolderLock

    out = tmp_path / "train"
    with RunFolderLock(out):
        assert exit_code(["train", "--method", "cam", "--dataset", "toy", "--preset", "tiny", "--epochs", "1",
                          "--no-progress", "--out", str(out)]) == 2
    assert "in use by another" in one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing trained into the held folder


@pytest.mark.slow
def test_two_processes_needing_one_checkpoint_train_it_once(toy_dataset, tmp_path, monkeypatch):
    """A second run needing the same cache key waits for the first one's training, then loads it."""
    import wsl_bench.pipeline as pipeline
    from wsl_bench.evaluation.harness import RunConfig

    trainings = []
    real = pipeline.train_stages

    def slow_train(*args, **kwargs):
        trainings.append(threading.get_ident())
        time.sleep(1.0)  # long enough for the other thread to arrive while this one trains
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_stages", slow_train)
    config = RunConfig(methods=("cam",), dataset="toy", preset="tiny")
    trainees = [pipeline.create_run_method("cam", config).trainee for _ in range(2)]
    facts: list[dict] = []
    errors: list[BaseException] = []

    def worker(trainee) -> None:
        try:
            facts.append(pipeline.ensure_trained(trainee, config, progress=False))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(trainee,)) for trainee in trainees]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    assert len(trainings) == 1
    assert len(facts) == 2 and facts[0]["sha256"] == facts[1]["sha256"]


@pytest.mark.slow
def test_a_train_folder_holds_one_trainings_files(toy_dataset, tmp_path):
    out = tmp_path / "train"
    assert exit_code(["train", "--method", "cam", "--dataset", "toy", "--preset", "tiny", "--epochs", "1",
                      "--no-progress", "--out", str(out)]) == 0
    assert (out / "final.pt").is_file() and json.loads((out / "key.json").read_text())["key"]
