"""A run folder's records and manifest, parsed once: what every table and figure of the report reads.

:class:`RunData` lives apart from :mod:`wsl_bench.report.tables` (which re-exports it) so that the
modules tables calls (figures, drawing, qualitative, equivalence) can name it without importing the module
that imports them: the report package has no import cycle, type-only imports counted.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsl_bench.evaluation.identity import current_records
from wsl_bench.evaluation.manifest import read_json
from wsl_bench.evaluation.records import read_records
from wsl_bench.evaluation.seeds import legacy_seeds, run_seeds

log = logging.getLogger(__name__)


class ReportError(ValueError):
    """A run folder that holds nothing to report (no valid record)."""


@dataclass
class RunData:
    """A run's records and manifest, parsed once.

    ``records`` are the evaluated split's (what every table and figure describes); ``val_records``
    the validation split's, which only choose each method's headline threshold. Records without a
    ``split`` field (written before records had one) belong to the evaluated split. ``seeds``: the
    run's training seeds that have records (:meth:`for_seed` keeps one seed's records and those of
    methods with nothing to train, which serve every seed).
    """

    run_dir: Path
    manifest: dict[str, Any]
    records: list[dict[str, Any]]
    methods: list[str]
    val_records: list[dict[str, Any]] = field(default_factory=list)
    split: str = "test"
    val_split: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])

    @classmethod
    def load(cls, run_dir: str | Path) -> RunData:
        run_dir = Path(run_dir)
        manifest_path = run_dir / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{run_dir} is not a run folder: {manifest_path} is missing")
        manifest = read_json(manifest_path)
        config = manifest.get("config", {})
        split = config.get("split") or "test"
        # records of a method's earlier identity (other options, weights, code, data) are stale
        read = read_records(sorted(run_dir.glob("records*.jsonl")), default_split=split,
                            default_seed=legacy_seeds(manifest))
        everything = current_records(read, manifest)
        if len(everything) < len(read):
            log.warning("%s: %d of %d records left out: made under another method identity than manifest.json "
                        "lists, by a method it does not list, or for an image not in the run's dataset", run_dir,
                        len(read) - len(everything), len(read))
        if not everything:
            if read:
                raise ReportError(f"{run_dir}: none of its {len(read)} records belongs to the run its manifest.json "
                                  "describes (other methods, method identities or images: a manifest from another "
                                  "run?)")
            raise ReportError(f"{run_dir}: no records to report (records*.jsonl is missing, empty or holds no valid "
                              "record)")
        everything.sort(key=lambda r: (r["method"], r["image_id"]))
        val_split = (manifest.get("validation") or {}).get("split") or config.get("validation_split")
        if val_split == split:
            val_split = None
        records = [r for r in everything if r["split"] == split]
        val_records = [r for r in everything if val_split is not None and r["split"] == val_split]
        seen = list(config.get("methods", []))
        methods = [m for m in seen if any(r["method"] == m for r in everything)]
        methods += sorted({r["method"] for r in everything} - set(methods))
        recorded = {r.get("seed") for r in everything}
        seeds = [s for s in run_seeds(manifest) if s in recorded] or run_seeds(manifest)[:1]
        return cls(run_dir, manifest, records, methods, val_records, split, val_split, seeds)

    def for_seed(self, seed: int) -> RunData:
        """This run as if it had trained at ``seed`` only: that seed's records and the shared ones."""
        def mine(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [r for r in records if r.get("seed") in (None, seed)]

        return RunData(self.run_dir, self.manifest, mine(self.records), self.methods, mine(self.val_records),
                       self.split, self.val_split, [seed])

    def method_seeds(self, method: str) -> list[int]:
        """The training seeds ``method`` has records of, in the run's order; empty for a method with
        nothing to train (its records serve every seed)."""
        have = {r.get("seed") for r in (*self.records, *self.val_records) if r["method"] == method}
        return [s for s in self.seeds if s in have]

    def ok(self, method: str) -> list[dict[str, Any]]:
        """The evaluated split's scored records of ``method``."""
        return [r for r in self.records if r["method"] == method and r["status"] == "ok"]

    def val_ok(self, method: str) -> list[dict[str, Any]]:
        """The validation split's scored records of ``method``."""
        return [r for r in self.val_records if r["method"] == method and r["status"] == "ok"]

    def validation_missing_reason(self, method: str, cls: str) -> str:
        """Why the validation split gives no threshold for ``method`` and ``cls``."""
        entry = self.manifest.get("validation")
        if entry is None and not self.val_records:
            return ("this run folder has no validation records (it was made before wsl-bench scored a "
                    "validation split; run it again in a new folder)")
        if entry and entry.get("reason"):
            return str(entry["reason"])
        where = f"dataset {self.manifest.get('config', {}).get('dataset')} split {self.val_split}"
        mine = [r for r in self.val_records if r["method"] == method]
        ok = [r for r in mine if r["status"] == "ok"]
        if not ok:
            if not mine:
                return f"no validation record of {method} ({where})"
            statuses = ", ".join(f"{n} {s}" for s, n in sorted(Counter(r["status"] for r in mine).items()))
            return f"{method} scored no validation image ({where}: {statuses})"
        annotated = sum(r["has_lesion"].get(cls) is not None for r in ok)
        return (f"no annotated validation image with a {cls} lesion ({where}: {len(ok)} images scored, "
                f"{annotated} annotated for {cls})")
