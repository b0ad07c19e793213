"""Write the scale-geometry tables into the method cards and reports/README.md.

The tables are ``wsl-bench describe`` output (``wsl_bench.report.describe``), measured on the networks each
preset builds; the training-time column comes from the committed reference runs' manifests. Run
from the repository root after changing a preset, a network or a reference run:

    python reports/geometry.py          # rewrites the marked blocks in place
    python reports/geometry.py --check  # exit 1 when a block is out of date (nothing written)

Each table sits between ``<!-- geometry-table -->`` and ``<!-- /geometry-table -->`` markers.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from wsl_bench.report import describe

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = {
    "cpu": ROOT / "reports" / "default" / "manifest.json",
    "gpu": ROOT / "reports" / "gpu-full" / "manifest.json",
}
"""Reference runs whose training times fill the last column (a missing one leaves it empty)."""
TARGETS = {
    ROOT / "methods" / "glam.md": ("glam",),
    ROOT / "methods" / "gmic.md": ("gmic",),
    ROOT / "methods" / "cam.md": ("cam",),
    ROOT / "reports" / "README.md": describe.GEOMETRY_METHODS,
}
BLOCK = re.compile(r"(<!-- geometry-table -->\n)(.*?)(<!-- /geometry-table -->)", re.S)


def render(rows: list[describe.GeometryRow], methods: tuple[str, ...]) -> str:
    fraction = describe.median_lesion_diameter_fraction()
    note = (
        f"\n`wsl-bench describe` (written by `python reports/geometry.py`); median lesion diameter "
        f"{fraction:.4f} of the image height (equivalent circle, synthetic validation lesions); `full` is the "
        "published configuration; training minutes from the committed reference run of the preset.\n"
    )
    return describe.to_markdown([r for r in rows if r.method in methods]) + note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report blocks that are out of date")
    args = parser.parse_args(argv)
    rows = describe.geometry_table(manifests={k: v for k, v in MANIFESTS.items() if v.exists()})
    stale = []
    for path, methods in TARGETS.items():
        text = path.read_text(encoding="utf-8")
        if not BLOCK.search(text):
            raise SystemExit(f"{path}: no <!-- geometry-table --> block")
        updated = BLOCK.sub(lambda m: m.group(1) + render(rows, methods) + m.group(3), text)  # noqa: B023
        if updated != text:
            stale.append(path)
            if not args.check:
                path.write_text(updated, encoding="utf-8")
    for path in stale:
        print(f"{'out of date' if args.check else 'updated'}: {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
