"""What ``wsl-bench run`` tells its user while it works: the plan, one overall bar, the summary.

The pipeline (:func:`wsl_bench.pipeline.run`) announces work items (train a method, score a
method on a split) with an estimated cost in seconds (:mod:`wsl_bench.estimates`), says which one
is under way, and marks them done; this module turns that into

* the **plan**, printed before any work: what will be trained (with the estimate and its source),
  what is reused from the checkpoint cache, what will be scored;
* one **overall bar** across training and evaluation (tqdm, on stderr), counting estimated seconds,
  so its rate, and the time left it shows, correct themselves as estimates prove long or short; its
  description names the stage and method under way. The per-epoch and per-method bars of the layers
  below still show beneath it;
* the **summary** lines the command prints at the end (:func:`summary_lines`).

``bars=False`` (``--no-progress``) hides the bar and keeps the plan. A tracker made with
``stream=None`` says nothing (the library default).

The plan is printed when the first piece of work starts, not when it is made: a run that stops
before working (a method refusing an option the user gave, a missing weights file) then says so in
its one error line, as every usage error of the command line does, without a plan above it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from wsl_bench.estimates import Estimate, format_duration

SOURCES = {"measured here": "earlier trainings on this machine",
           "reference": "reference trainings of the preset on a 2-core CPU"}
"""How the plan names the sources of :class:`~wsl_bench.estimates.Estimate`."""


@dataclass
class PlannedTraining:
    """One training the run expects to do: the method trained, its cache key, the run methods that
    need it (the method itself, explainers of its classifier), its estimate, and the trained methods
    whose training starts from its network (``global_init``: CAM's trained ResNet-22 starts GLAM's
    and GMIC's global networks)."""

    method: str
    key: str
    needed_by: list[str]
    estimate: Estimate
    starts: list[str] = field(default_factory=list)

    def shared(self) -> str:
        """What else the training serves, in words (empty when only its own method uses it)."""
        parts = []
        users = [n for n in self.needed_by if n != self.method]
        if users:
            parts.append(f"explained by {', '.join(users)}")
        if self.starts:
            verb = "starts its" if len(self.starts) == 1 else "start their"
            parts.append(f"{' and '.join(self.starts)} then {verb} global network from it")
        return f"; {'; '.join(parts)}" if parts else ""


@dataclass
class RunPlan:
    """What a run expects to do, decided before it starts (the run corrects it as it learns more).

    Attributes:
        train: trainings whose checkpoints are not in the cache, in the order they will run.
        reused: trained methods whose checkpoints the cache holds.
        evaluate: run method → images it still has to score (all splits; images already recorded in
            the run folder under the method's current identity are not counted).
        up_to_date: run methods whose every image is already recorded.
        splits: what each method is scored on, in words (``"6 test + 8 val images"``).
        evaluation_seconds: the estimated seconds of all scoring.
    """

    train: list[PlannedTraining] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    evaluate: dict[str, int] = field(default_factory=dict)
    up_to_date: list[str] = field(default_factory=list)
    splits: str = ""
    evaluation_seconds: float = 0.0

    def lines(self) -> list[str]:
        """The plan as printed, one item a line."""
        out = []
        if self.train:
            total = sum(t.estimate.seconds for t in self.train)
            sources = [SOURCES.get(source, source) for source in sorted({t.estimate.source for t in self.train})]
            out.append(f"plan: train {len(self.train)} method(s) first, about {format_duration(total)} in all "
                       f"(an estimate from {' and '.join(sources)}; the bar's time left corrects it as the run goes):")
            width = max(len(t.method) for t in self.train)
            for t in self.train:
                out.append(f"  train {t.method:<{width}}  ~{format_duration(t.estimate.seconds)}"
                           f" ({t.estimate.source}){t.shared()}")
        else:
            out.append("plan: nothing to train")
        if self.reused:
            out.append(f"  reused from the checkpoint cache: {', '.join(self.reused)}")
        if self.evaluate:
            images = sum(self.evaluate.values())
            out.append(f"  then score {len(self.evaluate)} method(s) on {self.splits} each ({images} images in all, "
                       f"about {format_duration(self.evaluation_seconds)}): {', '.join(self.evaluate)}")
        if self.up_to_date:
            out.append(f"  already complete in the run folder: {', '.join(self.up_to_date)}")
        return out


class RunProgress:
    """The plan, the overall bar and the stage under way of one run (see the module docstring).

    Args:
        stream: where the plan and the bar go (stderr for the command line); ``None``: silent.
        bars: show the overall bar (``--no-progress`` hides it, the plan stays).
        header: a line printed above the plan (what the run is, where it writes).
    """

    def __init__(self, stream: TextIO | None = None, bars: bool = True, header: str | None = None) -> None:
        self.stream = stream
        self.bars = bars and stream is not None
        self._pending: list[str] | None = [header] if header else []
        self._expected: dict[Hashable, float] = {}
        self._counted: dict[Hashable, float] = {}
        self._bar: tqdm | None = None
        self._lock = threading.RLock()  # the record writer's thread ticks the bar too

    def show_plan(self, plan: RunPlan) -> None:
        """Keep the plan, to be printed (with the overall bar started) when the first work starts."""
        if self._pending is not None:
            self._pending += plan.lines()

    def _start(self) -> None:
        """Print the header and the plan, and start the bar, once."""
        if self._pending is None:
            return
        lines, self._pending = self._pending, None
        if self.stream is None:
            return
        for line in lines:
            print(line, file=self.stream, flush=True)
        if self.bars:
            self._bar = tqdm(total=max(sum(self._expected.values()), 1e-9), desc="run", file=self.stream,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed, ~{remaining} left",
                             dynamic_ncols=True, smoothing=0)  # time left from the average rate since the start

    def expect(self, item: Hashable, seconds: float) -> None:
        """Announce (or re-estimate) a work item: it adds ``seconds`` to the bar's total."""
        with self._lock:
            self._expected[item] = max(seconds, self._counted.get(item, 0.0))
            if self._bar is not None:
                self._bar.total = max(sum(self._expected.values()), 1e-9)
                self._bar.refresh()

    def stage(self, text: str) -> None:
        """Name what is under way (the bar's description); the first stage prints the plan."""
        with self._lock:
            self._start()
            if self._bar is not None:
                self._bar.set_description_str(text)

    def tick(self, item: Hashable, seconds: float) -> None:
        """Part of ``item`` is done (never beyond what it was expected to cost)."""
        with self._lock:
            self._start()
            room = self._expected.get(item, 0.0) - self._counted.get(item, 0.0)
            step = min(seconds, max(room, 0.0))
            self._counted[item] = self._counted.get(item, 0.0) + step
            if self._bar is not None and step > 0:
                self._bar.update(step)

    def done(self, item: Hashable) -> None:
        """``item`` is finished: the rest of its expected cost counts as done."""
        self.tick(item, float("inf"))

    def finish(self) -> None:
        """The run is done: print the plan if no work needed it, and close the bar."""
        with self._lock:
            self._start()
        self.close()

    def close(self) -> None:
        """Close the bar; a plan not printed yet stays unprinted (the run stopped before working)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class TickingWriter:
    """A records writer that calls ``on_record`` after each record it writes (every image scored,
    failed or not, gets exactly one record, so the overall bar can move image by image)."""

    def __init__(self, records: Any, on_record: Callable[[], None]) -> None:
        self.records = records
        self.on_record = on_record

    def write(self, record: dict[str, Any]) -> None:
        self.records.write(record)
        self.on_record()


def summary_lines(trained: Sequence[str], reused: Sequence[str], evaluated: Sequence[str], computed: int,
                  kept: int, failed: int, skipped: Sequence[str], seconds: float) -> list[str]:
    """The run's closing summary: what was trained, reused, evaluated and what failed."""
    def names(items: Sequence[str]) -> str:
        return f"{len(items)} ({', '.join(items)})" if items else "0"

    lines = [f"done in {format_duration(seconds)}: trained {names(trained)}; checkpoints reused {names(reused)}; "
             f"evaluated {names(evaluated)}: {computed} image(s) scored, {kept} kept from earlier runs; "
             f"failed {failed} image(s)" + (f"; skipped {names(skipped)}" if skipped else "")]
    return lines


def report_coverage(run_dir: Path, methods: Sequence[str]) -> str | None:
    """The sentence saying that the report, rebuilt from the whole folder, covers methods this run
    did not name (a subset run into a folder of earlier runs); ``None`` when it covers just these."""
    try:
        folder = list(json.loads((run_dir / "manifest.json").read_text())["config"]["methods"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    earlier = [m for m in folder if m not in methods]
    if not earlier:
        return None
    return (f"report rebuilt for all {len(folder)} methods of the folder, not only this run's {len(methods)}: "
            f"also {', '.join(earlier)} (from earlier runs)")


def report_top_lines(report_dir: Path, rows: int = 6) -> list[str]:
    """The report's lead, from its ``results.md``: the tables of the section holding the first table
    (the ranked summary, one table per class, each under its ``###`` heading), each with its header
    and first ``rows`` rows; an older report without sections gives its first table."""
    path = report_dir / "results.md"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    first = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if first is None:
        return []
    section = next((i for i in range(first, -1, -1) if lines[i].startswith("## ")), None)
    if section is None:  # no sections: the first table alone
        start, end = first, next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    else:
        start = section
        end = next((i for i in range(section + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    out = [f"from {path}:" if section is None else f"from {path}, {lines[section][3:].strip()}:"]
    shown = 0
    for line in lines[start:end]:
        if line.startswith("### "):
            out.append(f"  {line[4:].strip()}")
            shown = 0
        elif line.startswith("|"):
            if shown < rows + 2:  # header, separator, rows
                out.append(f"  {line}")
            elif shown == rows + 2:
                out.append("  ...")
            shown += 1
    return out
