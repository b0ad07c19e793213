"""The install instructions: one plain command, a CPU-only route marked with what was tested where,
and no reference to notes that do not exist (issue 16, items 8e and 9)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PLAIN_INSTALL = 'pip install -e ".[test]"'


def install_section() -> str:
    return README.split("## Install and run", 1)[1].split("\n## ", 1)[0]


def test_the_plain_install_stays_the_one_command_and_ci_uses_it():
    # issue 26: the reader first clones the repository and enters it (pip installs the folder it runs in)
    blocks = [b.strip() for b in re.findall(r"```bash\n(.*?)```", install_section(), re.S)]
    get, install = blocks[0].splitlines(), blocks[1]
    assert get[0].startswith("git clone ") and get[0].split("#")[0].split()[-1] == "wsl-bench"
    assert get[1] == "cd wsl-bench"
    assert install == f"{PLAIN_INSTALL} && wsl-bench run"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^pip install -e \"\.\[test\]\"$", ci, re.M), "CI must install as the README's one command"
    assert "download.pytorch.org" not in ci


def test_the_cpu_only_route_installs_torch_and_torchvision_together_and_says_what_was_tested():
    section = install_section()
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in section
    route = section.index("download.pytorch.org/whl/cpu")
    assert section.index(PLAIN_INSTALL, route) > route  # the suite is installed after the CPU wheels
    assert "What was tested where" in section and "not tested by CI" in section


def test_pyproject_refers_only_to_sections_that_exist():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "DEVELOPERS" not in pyproject
    headings = set(re.findall(r"^#+ (.+)$", README, re.M))
    for section in re.findall(r'see README\.md, "([^"]+)"', pyproject):
        assert section in headings, section
