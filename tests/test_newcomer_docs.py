"""What a newcomer reads before running anything (issue 26): mentions of the reference folder beside
the repository say what it is, and the skip reason of tests that need it names the route open to everyone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from model_helpers import skip_reason

from wsl_bench.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
EXPLAINED = ("docs/published_reference.md", "not distributed")
"""A mention of ``../shared`` must point to the page that says what it is, or say it itself."""


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    return [ROOT / name for name in listed.splitlines()
            if Path(name).suffix in {".py", ".md", ".toml", ".ini", ".txt", ""} and (ROOT / name).is_file()]


def test_every_mention_of_the_reference_folder_says_what_it_is_or_points_to_the_page_that_does():
    mentions = []
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        paragraphs = text.split("\n\n")  # the explanation may sit a line or two away from the mention
        for paragraph in paragraphs:
            if "../shared" in paragraph or "shared/reference" in paragraph:
                mentions.append(path.relative_to(ROOT))
                if path.relative_to(ROOT) != Path(EXPLAINED[0]):  # the page that says it, whole
                    assert any(e in paragraph for e in EXPLAINED), f"{path.relative_to(ROOT)}: {paragraph[:300]}"
    assert len(mentions) >= 6  # .ci/run, both method cards, the models' helpers and tests, the page itself
    assert Path(".ci/run") in mentions and Path("docs/published_reference.md") in mentions


def test_the_skip_reason_names_the_command_anyone_can_run_and_it_parses():
    for model in ("GLAM", "GMIC"):
        reason = skip_reason(model)
        assert "not distributed" in reason and "docs/published_reference.md" in reason
        command = reason.split("instead: ", 1)[1]
        assert command == f"wsl-bench verify {model.lower()} --published PATH"
        args = build_parser().parse_args([*command.split()[1:-1], str(ROOT)])  # PATH: any existing folder
        assert args.command == "verify" and args.model == model.lower()
    assert (ROOT / "docs" / "published_reference.md").is_file()


def how_long_rows() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## How long things take", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ")]
    assert rows[0] == ["what", "command", "time", "measured on"]
    return rows[1:]


def test_every_time_the_readme_gives_names_the_cpu_it_was_measured_on():
    rows = how_long_rows()
    # the times are measured on an idle machine before a release and written over these tokens
    unfilled = re.findall(r"<<[A-Z_]+>>", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert not unfilled, f"README.md: times still to measure and fill in: {', '.join(unfilled)}"
    commands = [command for _, command, _, _ in rows]
    for needed in ("`wsl-bench run --methods glam,gmic,cam --preset tiny`", "`wsl-bench run`",
                   '`python -m pytest -q -m "not slow"`', "`python -m pytest -q`"):
        assert needed in commands, needed
    for what, _, time, where in rows:
        times, machines = time.split("; "), where.split("; ")
        assert len(times) == len(machines), what  # one CPU kind per figure
        for figure, machine in zip(times, machines, strict=True):
            assert any(ch.isdigit() for ch in figure) and (" s" in figure or " min" in figure), (what, figure)
            assert machine.startswith("2-core ") and ("Xeon" in machine or "EPYC" in machine), (what, machine)
    assert {"default run again, into the same folder", "default run into a new folder, checkpoints cached"} <= {
        what for what, *_ in rows}  # both meanings of "cached", each with its own time


def test_the_quick_command_deselects_only_a_registered_marker_and_ci_runs_everything():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"slow: ' in pyproject  # the marker is registered (an unregistered one would only warn)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q\n" in ci and "not slow" not in ci
    install = (ROOT / "README.md").read_text(encoding="utf-8").split("## Install and run", 1)[1].split("\n## ", 1)[0]
    assert 'python -m pytest -q -m "not slow"' in install  # where a newcomer looks for how to run the tests


def test_every_test_module_keeps_a_test_in_the_quick_loop():
    """``-m "not slow"`` runs at least one test of every module: no module is marked slow as a whole,
    and each has a test function without the mark (its parameters may carry it one by one)."""
    import ast

    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        whole = [node for node in tree.body if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)]
        assert not any("slow" in ast.unparse(node.value) for node in whole), f"{path.name} is slow as a whole"
        quick = [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
                 and not any(ast.unparse(d) == "pytest.mark.slow" for d in node.decorator_list)]
        assert quick, f"{path.name}: every test is marked slow, so the quick loop never runs it"
