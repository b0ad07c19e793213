"""The ``wsl-bench`` command line.

Sub-commands: ``list``, ``run``, ``train``, ``report``, ``sweep``, ``data synth``, ``data prepare``, ``bench``,
``verify``.
Exit codes: 0 success, 1 a run finished with failed images or a command failed, 2 bad usage
(unknown method, dataset or preset name, malformed or out-of-range option, an option a method does
not take, a missing or malformed dataset). Usage errors print one line, ``wsl-bench: error: ...``
naming the flag or file; ``-v`` adds the traceback. Unexpected exceptions keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsl_bench._version import __version__
from wsl_bench.limits import MAX_IMAGE_PIXELS, describe_bound

EXIT_USAGE = 2


class UsageError(Exception):
    """A user mistake in the command line: reported without a traceback, exit code 2."""


def _size_suffix(args: argparse.Namespace) -> str:
    """``-HxW`` in default folder names when ``--image-size`` replaces the preset's size."""
    return f"-{args.image_size[0]}x{args.image_size[1]}" if args.image_size else ""


DEFAULT_METHODS: dict[str, tuple[str, ...]] = {
    "cpu": ("cam", "captum_gradcam", "centre_prior", "eigencam", "fsl", "glam", "gmic", "gradcam", "gradcam++",
            "hirescam", "intensity", "layercam", "random", "supervised", "xgradcam"),
    "gpu": ("cam", "captum_gradcam", "centre_prior", "eigencam", "fsl", "fullgrad", "glam", "gmic", "gradcam",
            "gradcam++", "guided_gradcam", "hirescam", "input_x_gradient", "integrated_gradients", "intensity",
            "layercam", "random", "saliency", "supervised", "xgradcam"),
    "every": ("ablationcam", "cam", "captum_gradcam", "centre_prior", "eigencam", "fsl", "fullgrad", "glam", "gmic",
              "gradcam", "gradcam++", "guided_gradcam", "hirescam", "input_x_gradient", "integrated_gradients",
              "intensity", "layercam", "occlusion", "random", "saliency", "scorecam", "supervised", "xgradcam"),
}
"""The default ``--methods`` of each preset (``every``: tiny and full), for ``run --help``: written out
here because computing it (``wsl_bench.pipeline.default_methods``) imports every method and torch,
seconds that ``--help`` must not cost; ``tests/test_cli_front.py`` checks it against the registry."""


def _default_methods_help() -> str:
    """The default method list of ``run --methods``'s help, from :data:`DEFAULT_METHODS`."""
    cpu, gpu, every = DEFAULT_METHODS["cpu"], DEFAULT_METHODS["gpu"], DEFAULT_METHODS["every"]
    return (f"default: every built-in method that needs no user-supplied weights, less those the preset leaves out "
            f"for time; at the cpu preset {', '.join(cpu)}; the tiny and full presets add "
            f"{', '.join(m for m in every if m not in cpu)}; gpu adds {', '.join(m for m in gpu if m not in cpu)}")


def _warn_landscape(args: argparse.Namespace) -> None:
    """Warn about an ``HxW`` size wider than tall: mammograms are portrait, so ``480x736`` is most
    likely ``736x480`` swapped (it still runs as given)."""
    for attr, flag in (("image_size", "--image-size"), ("size", "--size")):
        size = getattr(args, attr, None)
        if size and size[1] > size[0]:
            h, w = size
            print(f"wsl-bench: warning: {flag} {h}x{w} is wider than tall (sizes are HxW, height first, and "
                  f"mammograms are portrait): did you mean {w}x{h}? Running at {h}x{w} as given.", file=sys.stderr)


def parse_image_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 2944x1920, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    if h * w > MAX_IMAGE_PIXELS:  # refused before anything is allocated (20000x20000 took 6 GB before the plan)
        raise argparse.ArgumentTypeError(
            f"size {h}x{w} is {h * w / 1e6:.0f} Mpx, above "
            f"{describe_bound('MAX_IMAGE_PIXELS', MAX_IMAGE_PIXELS, 'pixels')} (mammography detectors are at most "
            "about 29 Mpx)")
    return h, w


def _int_at_least(minimum: int, kind: str) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (``kind`` names it in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"{kind.replace('-', '_')}_int"  # argparse names the type in some messages
    return parse


positive_int = _int_at_least(1, "positive")
"""A count flag's value: an integer of at least 1."""
non_negative_int = _int_at_least(0, "non-negative")
"""A seed: an integer of at least 0."""


def parse_seeds(text: str) -> tuple[int, ...]:
    """``--seeds``: comma-separated non-negative integers, none repeated (``0,1,2``)."""
    seeds = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            seed = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"seeds must look like 0,1,2, got {text!r}") from None
        if seed < 0:
            raise argparse.ArgumentTypeError(f"seeds must be at least 0, got {seed}")
        if seed in seeds:
            raise argparse.ArgumentTypeError(f"seed {seed} is named twice in {text!r}")
        seeds.append(seed)
    if not seeds:
        raise argparse.ArgumentTypeError(f"seeds must look like 0,1,2, got {text!r}")
    return tuple(seeds)


def default_run_folder(args: argparse.Namespace) -> Path:
    """``runs/<dataset>-<preset>[-HxW]-seed<seed>``, and ``-seeds<a>-<b>-...`` when ``--seeds`` names
    training seeds other than ``--seed`` alone (``--seeds 0`` with ``--seed 0`` is the one-seed run)."""
    name = f"runs/{args.dataset}-{args.preset}{_size_suffix(args)}-seed{args.seed}"
    seeds = getattr(args, "seeds", None)
    if seeds and tuple(seeds) != (args.seed,):
        name += "-seeds" + "-".join(str(s) for s in seeds)
    return Path(name)


def existing_path(text: str) -> str:
    """A dataset location that must exist (``--data-root``, ``--src``)."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text}")
    return text


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors read ``wsl-bench: error: ...`` in every sub-command (after
    the usage line), as the errors :func:`main` reports do; exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"wsl-bench: error: {message}\n")


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, booleans), else text."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option must look like key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value
    if not _finite(parsed):  # JSON reads NaN and Infinity; no option means them (NaN failed every record)
        raise argparse.ArgumentTypeError(f"--option {key.strip()}={value}: not a finite number")
    return key.strip(), parsed


def _finite(value: Any) -> bool:
    """Whether no number in ``value`` (a parsed JSON value) is NaN or infinite."""
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


DATASET_OPTION_HELP = ("constructor option of the dataset, part of the run's identity and of every checkpoint's "
                       "cache key (repeatable), e.g. conspicuity=obvious|clear|real|faint for the synthetic set "
                       "(default real: lesions as hard to see as on real mammograms; datasets/synthetic.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wsl-bench",
        description="Weakly-supervised localization benchmark for high-resolution mammograms.",
    )
    parser.add_argument("--version", action="version", version=f"wsl-bench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("list", help="registered methods and datasets")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("run", help="train what needs training, evaluate, write records and the report")
    p.add_argument("--methods", default=None,
                   help="comma-separated names or wildcards, e.g. 'glam,gmic' or 'gmic*'; wildcards match built-in "
                        "methods, 'plugin:*' (or 'plugin:PATTERN') installed plugin methods, a plugin's name that "
                        f"plugin ({_default_methods_help()})")
    p.add_argument("--with-plugins", action="store_true",
                   help="also run every installed plugin method that needs no user-supplied weights")
    p.add_argument("--dataset", default="synthetic", help="registered dataset (default: synthetic)")
    p.add_argument("--data-root", type=existing_path, default=None,
                   help="the dataset's files (not needed for synthetic)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--preset", default="cpu", help="run size: tiny, cpu (default) or full")
    p.add_argument("--image-size", type=parse_image_size, default=None, metavar="HxW",
                   help="replace the preset's image size (its split sizes and training budget stay)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=None,
                   help="run folder (default: runs/<dataset>-<preset>-seed<seed>, with -seeds0-1-2 appended for "
                        "--seeds 0,1,2; -HxW after the preset with --image-size)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="dataset seed: which synthetic images exist (every split trained, validated and evaluated "
                        "on); without --seeds also the one training seed (default 0)")
    p.add_argument("--seeds", type=parse_seeds, default=None, metavar="S,S,...",
                   help="training seeds, e.g. 0,1,2: every trainable method is trained and evaluated once per seed "
                        "(data order, initialisation, augmentation) on the same images (those of --seed); methods "
                        "with nothing to train are evaluated once; one report gives mean ± sd over the seeds. A run "
                        "folder may gain seeds: rerunning with more resumes it (default: --seed alone)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per predict call")
    p.add_argument("--loader-workers", type=non_negative_int, default=None, metavar="N",
                   help="processes reading images ahead of the model (default: the cores the model's threads leave, "
                        "at least 1 on two cores or more; on a GPU every core but one, at most 8; 0 reads in the "
                        "main process); changes no result")
    p.add_argument("--classifier", default=None,
                   help="classifier explained by post-hoc explainers (e.g. cam, gmic, glam)")
    p.add_argument("--weights", default=None, help="checkpoint for the (single) selected method")
    p.add_argument("--option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                   help="extra constructor option passed to every selected method (repeatable)")
    p.add_argument("--dataset-option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                   help=DATASET_OPTION_HELP)
    p.add_argument("--validation-split", default="val", metavar="SPLIT",
                   help="annotated split whose best Dice threshold is applied to the evaluated split (the headline "
                        "Dice; default val; 'none' leaves that column empty)")
    p.add_argument("--retry-failed", action="store_true", help="recompute records that failed or ran out of memory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run --out holds, whatever its settings: once the dataset has opened, its "
                        "manifest, records, maps and report are deleted (only in a folder that holds a wsl-bench run; "
                        "other files stay)")
    p.add_argument("--no-progress", action="store_true",
                   help="hide progress bars (the plan and the summary are still printed)")

    p = sub.add_parser("train", help="train one method from image-level labels (every stage of its recipe)",
                       description="Train one method from image-level labels only, every stage of its recipe in "
                                   "order (GLAM: global, local, joint). Under torchrun the global batch is split "
                                   "over the ranks (DistributedDataParallel; gloo on CPU, NCCL on CUDA).")
    p.add_argument("--method", required=True)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-root", type=existing_path, default=None)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--image-size", type=parse_image_size, default=None, metavar="HxW",
                   help="replace the preset's image size (its split sizes and training budget stay)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="override the preset's epochs (each stage trains its share of them)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="override the preset's (global) batch size")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    p.add_argument("--lr-schedule", default=None, choices=["constant", "cosine"],
                   help="override the preset's learning-rate schedule (cosine: warm-up, then decay to 0)")
    p.add_argument("--balance", default=None, choices=["none", "pos_weight", "sampler"],
                   help="class-imbalance handling (default none)")
    p.add_argument("--criterion", default=None, choices=["mean_auc", "loss", "mean_dice", "mean_pxap"],
                   help="validation quantity selecting best.pt (default mean_auc: image-level labels only)")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="STEPS",
                   help="also checkpoint every STEPS optimisation steps (default: at epoch ends only)")
    p.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    p.add_argument("--max-images", type=positive_int, default=None, metavar="N",
                   help="use only the first N images of the train and val splits (quick runs)")
    p.add_argument("--stage", default=None, help="train only this stage of the recipe (earlier ones must be done)")
    p.add_argument("--option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                   help="constructor option of the method, e.g. stage=sep, beta=1e-4 (repeatable)")
    p.add_argument("--dataset-option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                   help=DATASET_OPTION_HELP)
    p.add_argument("--out", default=None, help="training folder (default: runs/train-<method>-<preset>-seed<seed>)")
    p.add_argument("--resume", action="store_true",
                   help="continue every stage from its last checkpoint in --out (finished stages are kept)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("report", help="rebuild tables and figures from a run folder's records")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="where to write (default: RUN_DIR/report)")

    _add_sweep_parser(sub)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command")
    p = data.add_parser("synth", help="write the synthetic set to disk in the folder format")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=positive_int, default=100)
    p.add_argument("--size", type=parse_image_size, default=(736, 480), help="HxW, e.g. 2944x1920")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes generating images (same result for any number)")
    p = data.add_parser("prepare", help="preprocess a real dataset once into the folder format (nyu: a raw "
                                         "exam list into the NYU layout, cropped and centred)")
    p.add_argument("dataset")
    p.add_argument("--src", type=existing_path, required=True, help="the dataset as downloaded")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=parse_image_size, default=(2944, 1920),
                   help="HxW of the folder format's images (not used for a raw nyu exam list)")
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("describe", help="the scale geometry of GLAM, GMIC and CAM at each preset",
                       description="Map cells, patch and receptive field relative to the image and the median "
                                   "lesion, width multipliers and GFLOP per image of GLAM, GMIC and CAM as each "
                                   "preset builds them (measured on the built networks).")
    p.add_argument("--presets", default=None, help="comma-separated presets (default: all)")
    p.add_argument("--methods", default=None, help="comma-separated methods among glam, gmic, cam (default: all)")
    p.add_argument("--manifest", action="append", default=[], metavar="PRESET=PATH",
                   help="a run's manifest.json whose training times fill a 'training (min)' column for that "
                        "preset (repeatable; without one the table has no training column)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("verify", help="compare GLAM or GMIC with your own checkout of the published code (imports "
                                      "and runs that checkout's Python code)",
                       description="Import the published model from your checkout of nyukat/GLAM or nyukat/GMIC "
                                   "(never copied), give it and ours the same random weights, run both on the same "
                                   "random image (the published window-search defect corrected in memory) and print "
                                   "the largest difference per output and the patch locations. Exit 1 when an "
                                   "output differs by more than the tolerance or a patch location differs. "
                                   "Warning: this imports and runs the Python code of the checkout given to "
                                   "--published, with your permissions; verify only a checkout you trust.")
    p.add_argument("model", choices=["glam", "gmic"])
    p.add_argument("--published", required=True, type=existing_path, metavar="PATH",
                   help="your clone of https://github.com/nyukat/GLAM or https://github.com/nyukat/GMIC (its code is "
                        "imported and run)")
    p.add_argument("--size", type=parse_image_size, default=None, metavar="HxW",
                   help="input size (default: the published 2944x1920; both models keep the published strides)")
    p.add_argument("--crop", type=positive_int, default=None, metavar="PIXELS",
                   help="patch side for both models (default: the published 512 for GLAM, 256 for GMIC)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seeds the random weights and image")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest absolute difference allowed (1e-4)")
    p.add_argument("--engine", choices=["fast", "plain", "both"], default="both",
                   help="our inference path(s) to compare (default both)")

    p = sub.add_parser("bench", help="speed and memory of methods at batch 1")
    p.add_argument("--methods", default="glam,gmic")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=parse_image_size, default=(2944, 1920))
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--compare-plain", action="store_true",
                   help="also time each method's plain path (the published computation, unfused) in the same run")
    harness = p.add_argument_group(
        "harness mode", "run each method through the real harness (loading, predict, scoring, writing) on a "
                        "dataset's first images and report the median time of each stage")
    harness.add_argument("--harness", action="store_true", help="harness mode instead of the model alone")
    harness.add_argument("--dataset", default="folder", help="registered dataset (default: folder, 16-bit PNGs)")
    harness.add_argument("--data-root", type=existing_path, default=None,
                         help="the dataset's files, e.g. a folder written by 'wsl-bench data synth'")
    harness.add_argument("--split", default="test", choices=["train", "val", "test"])
    harness.add_argument("--images", type=positive_int, default=8, help="images per method (default 8)")
    harness.add_argument("--loader-workers", type=non_negative_int, default=None, metavar="N",
                         help="processes reading images ahead (default as for run)")
    harness.add_argument("--batch-size", type=positive_int, default=1)
    harness.add_argument("--out", default=None,
                         help="scratch run folder to keep (default: a temporary folder in the cache, removed)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


SWEEP_LEVELS = ("obvious", "clear", "real", "faint")
"""The synthetic set's named conspicuity levels, most conspicuous first, for ``sweep --help`` (written out so
that help does not import the generator; ``tests/test_sweep.py`` checks it against ``CONSPICUITY_LEVELS``)."""


def _add_sweep_parser(sub: Any) -> None:
    """``wsl-bench sweep``: the same methods at several conspicuity levels (wsl_bench.sweep)."""
    p = sub.add_parser("sweep", help="run methods at several conspicuity levels of the synthetic set; where they break",
                       description="Run the methods at each conspicuity level of the synthetic set, one ordinary run "
                                   "folder per level (OUT/<level>, resumable, its own report, checkpoints cached per "
                                   "level), then write OUT/sweep.md, sweep.csv and sweep.png: headline Dice and PxAP "
                                   "against measured conspicuity, and per class the first level at which each method "
                                   "no longer beats the floor.")
    p.add_argument("--methods", default=None,
                   help="comma-separated names or wildcards (default: glam, gmic, cam, gradcam++, intensity, "
                        "centre_prior, and fsl and supervised where registered)")
    p.add_argument("--levels", default=None,
                   help=f"comma-separated conspicuity levels, at least two (default: all, {', '.join(SWEEP_LEVELS)})")
    p.add_argument("--dataset", default="synthetic", help="must be synthetic (the sweep varies its conspicuity)")
    p.add_argument("--preset", default="cpu", help="run size: tiny, cpu (default) or full")
    p.add_argument("--image-size", type=parse_image_size, default=None, metavar="HxW",
                   help="replace the preset's image size (its split sizes and training budget stay)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per predict call")
    p.add_argument("--loader-workers", type=non_negative_int, default=None, metavar="N",
                   help="processes reading images ahead of the model (default as for run); changes no result")
    p.add_argument("--dataset-option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                   help="further synthetic-set option shared by every level (dense_placement, masking; repeatable)")
    p.add_argument("--retry-failed", action="store_true", help="recompute records that failed or ran out of memory")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (plans and summaries stay)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", default=None, help="sweep folder (default: runs/sweep-<preset>-seed<seed>)")
    where.add_argument("--report", default=None, metavar="OUT",
                       help="run nothing: rebuild OUT/sweep.md, sweep.csv and the figure from its level folders")


# -- commands ------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from wsl_bench.registry import DATASETS, METHODS, list_datasets, list_methods

    def entry(registry: Any, name: str) -> dict[str, Any]:
        item = {"name": name, "description": registry.describe(name)}
        if registry.is_plugin(name):  # named so a reader knows it is not part of the default benchmark
            source = registry.plugins()[name]
            item["plugin"] = {"package": source["package"], "version": source["version"]}
        return item

    listing = {
        "methods": [entry(METHODS, n) for n in list_methods()],
        "datasets": [entry(DATASETS, n) for n in list_datasets()],
    }
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for kind in ("methods", "datasets"):
        print(f"{kind}:")
        width = max((len(e["name"]) for e in listing[kind]), default=0)
        for item in listing[kind]:
            plugin = item.get("plugin")
            origin = f"  [plugin {plugin['package']} {plugin['version']}]" if plugin else ""
            print(f"  {item['name']:<{width}}  {item['description']}{origin}")
    return 0


def _run_config(args: argparse.Namespace):
    from wsl_bench.evaluation.harness import RunConfig
    from wsl_bench.pipeline import parse_methods
    from wsl_bench.presets import get_preset
    from wsl_bench.registry import DATASETS, load_builtins

    load_builtins()
    get_preset(args.preset)
    DATASETS.get(args.dataset)
    methods = parse_methods(args.methods, args.preset, with_plugins=args.with_plugins)
    options: dict[str, Any] = dict(args.option)
    if args.classifier:
        options["classifier"] = args.classifier
    if args.weights:
        if len(methods) != 1:
            raise UsageError("--weights needs exactly one method in --methods")
        options["weights"] = args.weights
    method_options = tuple((m, tuple(sorted(options.items()))) for m in methods) if options else ()
    return RunConfig(
        methods=tuple(methods),
        dataset=args.dataset,
        data_root=args.data_root,
        split=args.split,
        preset=args.preset,
        device=args.device,
        seed=args.seed,
        seeds=tuple(args.seeds or ()),
        batch_size=args.batch_size,
        loader_workers=args.loader_workers,
        method_options=method_options,
        image_size=args.image_size,
        validation_split=None if args.validation_split.lower() == "none" else args.validation_split,
        dataset_options=tuple(sorted(dict(args.dataset_option).items())),
    )


def cmd_run(args: argparse.Namespace) -> int:
    """``wsl-bench run``: the plan and the overall bar on stderr; the summary, where the records and
    the report are, and the report's first lines on stdout."""
    from wsl_bench.evaluation.run_folder import NotARunFolder
    from wsl_bench.pipeline import run, run_sharded, summarise_statuses
    from wsl_bench.run_progress import RunProgress, report_coverage, report_top_lines, summary_lines
    from wsl_bench.training.distributed import init_from_env, shutdown

    started = time.perf_counter()
    config = _run_config(args)
    out = Path(args.out) if args.out else default_run_folder(args)
    context = init_from_env(config.device)  # under torchrun: one shard of the images per rank
    if context.enabled and args.overwrite:
        shutdown(context)
        raise UsageError("--overwrite is not available under torchrun: run once without torchrun, or use a new --out")
    seeds = config.training_seeds()
    header = (f"wsl-bench run: {len(config.methods)} methods on {config.dataset}/{config.split} "
              f"(preset {config.preset}, device {config.device}"
              + (f", training seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else "") + f") -> {out}"
              + (f", {context.world_size} processes" if context.enabled else ""))
    if context.enabled:
        if context.is_main:
            print(header)  # no plan under torchrun: the header alone, on stdout as it always was
        try:
            summary = run_sharded(config, out, context, progress=not args.no_progress,
                                  retry_failed=args.retry_failed)
        finally:
            shutdown(context)
        if not context.is_main:
            return 1 if summary.failed else 0
    else:
        from tqdm.contrib.logging import logging_redirect_tqdm

        tracker = RunProgress(sys.stderr, bars=not args.no_progress, header=header)
        try:
            with logging_redirect_tqdm():  # warnings print above the bars instead of through them
                summary = run(config, out, progress=not args.no_progress, retry_failed=args.retry_failed,
                              overwrite=args.overwrite, tracker=tracker)
        except NotARunFolder as exc:
            raise UsageError(str(exc)) from None
        finally:
            tracker.close()
    evaluated = [name for name, counts in summary.statuses.items() if "skipped" not in counts]
    skipped = [name for name, counts in summary.statuses.items() if counts.get("skipped")]
    for line in summary_lines(summary.trained, summary.reused_checkpoints, evaluated, summary.computed,
                              summary.reused, summary.failed, skipped, time.perf_counter() - started):
        print(line)
    if summary.statuses:
        print(summarise_statuses(summary))
    for warning in _learning_warnings(out):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"records: {out / 'records.jsonl'}")
    print(f"report:  {out / 'report' / 'results.md'} (tables, figures, index.html in {out / 'report'})")
    coverage = report_coverage(out, config.methods)
    if coverage:
        print(coverage)
    for line in report_top_lines(out / "report"):
        print(line)
    if summary.failed:
        print(f"{summary.failed} image(s) failed; their errors are in the records", file=sys.stderr)
        return 1
    return 0


def _learning_warnings(out: Path) -> list[str]:
    """The run's trained methods that did not learn (the report shows the same sentences)."""
    from wsl_bench.evaluation.manifest import read_json
    from wsl_bench.report.tables import learning_warnings

    path = out / "manifest.json"
    return learning_warnings(read_json(path)) if path.exists() else []


def cmd_train(args: argparse.Namespace) -> int:
    from wsl_bench.data import DatasetError
    from wsl_bench.evaluation.harness import RunConfig
    from wsl_bench.pipeline import TrainingConfigError, train
    from wsl_bench.presets import get_preset
    from wsl_bench.registry import METHODS, load_builtins, split_method_name
    from wsl_bench.training.distributed import init_from_env, shutdown

    get_preset(args.preset)  # an unknown preset is a usage error before anything is built
    load_builtins()
    factory = METHODS.get(split_method_name(args.method)[0])
    # a post-hoc explainer trains the classifier method it explains
    if not (getattr(factory, "trainable", False) or getattr(factory, "default_classifier", None)):
        # not a mistake: the method is evaluated as constructed, so there is simply nothing to do here
        print(f"method {args.method!r} has nothing to train: `wsl-bench run --methods {args.method}` evaluates it "
              "as constructed")
        return 0
    config = RunConfig(methods=(args.method,), dataset=args.dataset, data_root=args.data_root, preset=args.preset,
                       device=args.device, seed=args.seed, image_size=args.image_size,
                       method_options=((args.method, tuple(sorted(dict(args.option).items()))),),
                       dataset_options=tuple(sorted(dict(args.dataset_option).items())))
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "balance": args.balance,
                 "lr_schedule": args.lr_schedule,
                 "best_criterion": args.criterion, "checkpoint_every_steps": args.checkpoint_every,
                 "amp": False if args.no_amp else None}
    out = Path(args.out or f"runs/train-{args.method}-{args.preset}{_size_suffix(args)}-seed{args.seed}")
    context = init_from_env(args.device)
    try:
        result = train(args.method, config, out, overrides, resume=args.resume, only_stage=args.stage,
                       max_images=args.max_images, progress=not args.no_progress, context=context)
    except TrainingConfigError as exc:
        raise UsageError(str(exc)) from None
    except DatasetError:
        raise  # a bad dataset is a usage error: main() prints it as one line
    except (ValueError, FloatingPointError) as exc:  # bad options or data, a checkpoint that does not fit, divergence
        print(f"wsl-bench train: error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown(context)
    if not context.is_main:
        return 0
    world = f" on {context.world_size} processes ({context.backend})" if context.enabled else ""
    print(f"trained {args.method}{world}, stages {', '.join(result.stages)}: final {result.final_checkpoint}, "
          f"best {result.best_checkpoint}")
    last = result.history[-1] if result.history else {}
    print("last epoch: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float)))
    if result.skipped_samples:
        print(f"{len(result.skipped_samples)} training image(s) could not be loaded and were skipped", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from wsl_bench.evaluation.run_folder import check_run_folder
    from wsl_bench.report.tables import build_report

    if args.out is None:  # RUN_DIR/report: never through a link planted in the run folder
        check_run_folder(Path(args.run_dir))
    out = build_report(args.run_dir, args.out)
    print(f"report written to {out}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        from wsl_bench.datasets.folder import write_synthetic

        out = write_synthetic(args.out, n=args.n, image_size=args.size, seed=args.seed, workers=args.workers)
        print(f"synthetic set written to {out}")
        return 0
    if args.data_command == "prepare":
        from wsl_bench.datasets.prepare import prepare_dataset
        from wsl_bench.registry import DATASETS, load_builtins

        load_builtins()
        DATASETS.get(args.dataset)
        if args.dataset == "nyu":
            from wsl_bench.datasets.nyu_prepare import exam_list_state, find_exam_list, read_exam_list

            if exam_list_state(read_exam_list(find_exam_list(args.src))) != "prepared":
                return _prepare_raw_nyu(args)
            print(f"{args.src}: the exam list has best_center already: preparing it into the folder format")
        out = prepare_dataset(args.dataset, args.src, args.out, image_size=args.size, workers=args.workers,
                              progress=not args.no_progress)
        print(f"prepared {args.dataset} into {out}")
        return 0
    raise UsageError("choose a data command: synth or prepare")


def _prepare_raw_nyu(args: argparse.Namespace) -> int:
    """``data prepare nyu`` on a raw exam list: the published cropping and optimal-centre steps."""
    from wsl_bench.datasets.nyu_prepare import prepare_nyu

    summary = prepare_nyu(args.src, args.out, workers=args.workers, progress=not args.no_progress)
    print(f"prepared nyu (cropped and centred as published) into {summary}; "
          f"{summary.images_per_second:.2f} images/s")
    print(f"exam list: {summary.exam_list} (and data.json); run: wsl-bench run --dataset nyu --data-root {summary.out}")
    if summary.failed:
        for key, reason in list(summary.failures.items())[:20]:
            print(f"failed: {key}: {reason}", file=sys.stderr)
        more = " (first 20 above)" if summary.failed > 20 else ""
        print(f"{summary.failed} image(s) failed and were left out{more}; reasons in {summary.manifest}",
              file=sys.stderr)
        return 1
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    import json

    from wsl_bench.presets import PRESETS, get_preset
    from wsl_bench.report import describe

    presets = tuple(args.presets.split(",")) if args.presets else tuple(PRESETS)
    for name in presets:
        get_preset(name)
    methods = tuple(args.methods.split(",")) if args.methods else describe.GEOMETRY_METHODS
    unknown = sorted(set(methods) - set(describe.GEOMETRY_METHODS))
    if unknown:
        raise UsageError(f"describe knows {', '.join(describe.GEOMETRY_METHODS)}; not {', '.join(unknown)}")
    manifests = {}
    for item in args.manifest:
        preset, sep, path = item.partition("=")
        if not sep:
            raise UsageError(f"--manifest takes PRESET=PATH, got {item!r}")
        manifests[preset] = path
    rows = describe.geometry_table(presets, methods, manifests)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        print(describe.to_markdown(rows), end="")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from wsl_bench.evaluation.bench import print_bench, run_bench
    from wsl_bench.pipeline import parse_methods

    if args.harness:
        from wsl_bench.evaluation.bench_harness import format_harness_bench
        from wsl_bench.pipeline import harness_bench

        results = harness_bench(parse_methods(args.methods), dataset=args.dataset, data_root=args.data_root,
                                split=args.split, images=args.images, size=args.size, precision=args.precision,
                                device=args.device, loader_workers=args.loader_workers, batch_size=args.batch_size,
                                out_dir=args.out)
        print(json.dumps(results, indent=2) if args.json else format_harness_bench(results))
        return 0
    specs: list = []
    for name in parse_methods(args.methods):
        if args.compare_plain:
            specs.append((name, {"fast": False}))
        specs.append(name)
    results = run_bench(specs, device=args.device, size=args.size, precision=args.precision, repeats=args.repeats)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_bench(results)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from wsl_bench.methods.verify import ENGINES, VerifyError, VerifyUsageError, verify

    engines = ENGINES if args.engine == "both" else (args.engine,)
    try:
        result = verify(args.model, args.published, size=args.size, crop=args.crop, seed=args.seed,
                        tolerance=args.tolerance, engines=engines)
    except VerifyUsageError as exc:
        raise UsageError(str(exc)) from None
    except VerifyError as exc:  # the checkout does not build or run as published: not faithful as given
        print(f"wsl-bench verify: error: {exc}", file=sys.stderr)
        return 1
    print(result.format())
    return 0 if result.ok else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    """``wsl-bench sweep``: each level's line, plan and bar on stderr; its summary and the report's path on stdout."""
    from wsl_bench.pipeline import parse_methods
    from wsl_bench.sweep import (
        SWEEP_METHODS,
        SweepError,
        SweepSpec,
        check_dataset,
        default_sweep_methods,
        parse_levels,
        run_sweep,
    )
    from wsl_bench.sweep import write_report as write_sweep_report

    try:
        if args.report:
            out = write_sweep_report(args.report)
            print(f"sweep report: {out / 'sweep.md'} (sweep.csv, sweep.png in {out})")
            return 0
        check_dataset(args.dataset, args.dataset_option)
        levels = parse_levels(args.levels)
    except SweepError as exc:
        raise UsageError(str(exc)) from None
    from wsl_bench.presets import get_preset

    get_preset(args.preset)
    methods = parse_methods(args.methods, args.preset) if args.methods else default_sweep_methods()
    spec = SweepSpec(methods=tuple(methods), levels=levels, preset=args.preset, seed=args.seed, device=args.device,
                     image_size=args.image_size, batch_size=args.batch_size, loader_workers=args.loader_workers,
                     dataset_options=tuple(sorted(dict(args.dataset_option).items())))
    out = Path(args.out or f"runs/sweep-{args.preset}{_size_suffix(args)}-seed{args.seed}")
    left_out = [] if args.methods else [m for m in SWEEP_METHODS if m not in methods]
    print(f"wsl-bench sweep: {len(methods)} methods ({', '.join(methods)}) at {len(levels)} conspicuity levels "
          f"({', '.join(levels)}) -> {out}" + (f"; {', '.join(left_out)} not registered here, left out" if left_out
                                              else ""), file=sys.stderr)
    result = run_sweep(spec, out, progress=not args.no_progress, retry_failed=args.retry_failed)
    print(f"sweep report: {result.report / 'sweep.md'} (sweep.csv, sweep.png in {result.report})")
    if result.failed:
        print(f"{result.failed} image(s) failed; their errors are in the level folders' records", file=sys.stderr)
        return 1
    return 0


COMMANDS = {"list": cmd_list, "run": cmd_run, "train": cmd_train, "report": cmd_report, "data": cmd_data,
            "describe": cmd_describe, "bench": cmd_bench, "verify": cmd_verify, "sweep": cmd_sweep}


def _refused_option(exc: TypeError, args: argparse.Namespace) -> str | None:
    """The one-line error when ``exc`` is a method constructor refusing an option the user gave
    (``--weights``, ``--classifier``, ``--option KEY=...``); ``None`` for any other TypeError, a bug
    that keeps its traceback."""
    match = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
    if match is None:
        return None
    flags = {key: f"--option {key}" for key, _ in getattr(args, "option", None) or ()}
    flags.update({key: f"--{key}" for key in ("classifier", "weights") if getattr(args, key, None)})
    key = match.group(1)
    if key not in flags:
        return None
    spec = getattr(args, "methods", None) or getattr(args, "method", None)
    which = f"method {spec!r}" if spec and not any(c in spec for c in ",*?[") else "a selected method"
    return f"{flags[key]}: {which} takes no option {key!r} ({exc})"


def _os_error_line(exc: OSError) -> str:
    """``PATH: the system's reason`` for an operating-system error (a disk full, read-only, ...)."""
    if exc.filename is None:
        return str(exc)
    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    return f"{where}: {exc.strerror or exc}"


def _error(exc: BaseException, args: argparse.Namespace, code: int, message: str | None = None) -> int:
    """Report an expected error as one ``wsl-bench: error:`` line (after its traceback with ``-v``)."""
    if args.verbose:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"wsl-bench: error: {message or exc}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and malformed flags end here, before torch is imported
    _warn_landscape(args)
    # these modules import torch (seconds): only a command that runs pays for them
    from wsl_bench.data import DatasetError
    from wsl_bench.devices import DeviceError, check_device
    from wsl_bench.evaluation.harness import RunConfigMismatch
    from wsl_bench.evaluation.manifest import DamagedFileError
    from wsl_bench.evaluation.run_folder import RunFolderError
    from wsl_bench.evaluation.run_lock import RunFolderLocked
    from wsl_bench.registry import UnknownNameError
    from wsl_bench.report.tables import ReportError
    from wsl_bench.weights import CheckpointError

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:  # plain `wsl-bench` runs the default benchmark
        args = parser.parse_args([*(["-v"] if args.verbose else []), "run"])
    command = args.command
    try:
        if getattr(args, "device", None) is not None:  # run, train, bench: a missing device fails here, not mid-run
            check_device(args.device)
        return COMMANDS[command](args)
    except (UnknownNameError, UsageError, RunConfigMismatch, DatasetError, RunFolderError, RunFolderLocked,
            CheckpointError, DamagedFileError, DeviceError) as exc:
        # bad names, flags, devices, dataset or weights files, an unusable or busy --out (each names the file):
        # the user's to fix
        return _error(exc, args, EXIT_USAGE)
    except TypeError as exc:
        message = _refused_option(exc, args)
        if message is None:
            raise
        return _error(exc, args, EXIT_USAGE, message)
    except (FileNotFoundError, ReportError) as exc:
        return _error(exc, args, 1)
    except OSError as exc:  # a read-only or full disk, a name too long, a folder where a file should be...
        return _error(exc, args, EXIT_USAGE, _os_error_line(exc))
    except KeyboardInterrupt:
        print("\ninterrupted; finished records are kept: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
