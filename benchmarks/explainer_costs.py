"""Time and peak memory per image of every post-hoc explainer (the cost tables of the method cards).

Usage::

    python benchmarks/explainer_costs.py --size 2944x1920 --out explainer_costs.json
    python benchmarks/explainer_costs.py --size 2944x1920 --methods gradcam,scorecam --device cuda

Each explainer runs in its own process (so one explainer's allocator state cannot inflate the next
one's resident-memory peak), on one conformance image, with the ``cam`` classifier (untrained
weights: cost does not depend on them). It is measured with ``wsl_bench.evaluation.profiling.measure`` after a
warm-up: the full explanation for the fast explainers; for those made of hundreds of forward
passes (``SLOW``) one classifier forward pass at full size plus a full explanation of a small image
(their cost is dominated by the measured passes themselves, and a second full run would double the
time). The system load average is recorded before and after each measurement. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

EXPLAINERS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam", "ablationcam",
              "fullgrad", "integrated_gradients", "occlusion", "captum_gradcam", "guided_gradcam", "saliency",
              "input_x_gradient"]
SLOW = {"scorecam", "ablationcam", "integrated_gradients", "occlusion"}


def load_average() -> float:
    return os.getloadavg()[0]


def internal_chunks(method, profile, budget: int) -> dict[str, int]:
    """The internal chunk sizes the memory budget gives at this size (for the card)."""
    from wsl_bench.methods.explainers import fit_chunk

    name = type(method).__name__
    channels = profile.layer_shape[0]
    if name == "ScoreCamExplainer":
        return {"masked_inputs_per_pass": fit_chunk(budget, method.bytes_per_masked_input(profile), channels, "")}
    if name == "AblationCamExplainer":
        return {"ablated_copies_per_pass": fit_chunk(budget, method.bytes_per_ablated_copy(profile), channels, "")}
    if name == "IntegratedGradientsExplainer":
        return {"steps_per_pass": method.internal_batch_size(budget, profile, 1)}
    if name == "OcclusionExplainer":
        (wh, ww), (sh, sw) = method.geometry(profile.input_shape[1:])
        windows = ((profile.input_shape[1] - wh) // sh + 1) * ((profile.input_shape[2] - ww) // sw + 1)
        per_eval = fit_chunk(budget, method.bytes_per_perturbation(profile), windows, "",
                             fixed_bytes=2 * profile.input_bytes)
        return {"windows": windows, "window": [wh, ww], "stride": [sh, sw], "windows_per_pass": per_eval}
    return {}


def measure_one(name: str, size: tuple[int, int], device: str) -> dict:
    """Build, warm up and measure one explainer in this process."""
    import torch

    import wsl_bench
    from wsl_bench.evaluation.profiling import measure
    from wsl_bench.testing import conformance_images

    device_t = torch.device(device)
    images = conformance_images(1, size).to(device_t)
    method = wsl_bench.create_method(name, classifier="cam", device=device, seed=0, image_size=size)
    if name in SLOW:
        with torch.no_grad():
            method.model(images)
        small = (256, 160)
        wsl_bench.create_method(name, classifier="cam", device=device, image_size=small).predict(
            conformance_images(1, small).to(device_t)
        )
    else:
        method.predict(images)
    profile = method.forward_profile(images.shape)
    budget = method.memory_budget_bytes()
    before = load_average()
    with measure(device_t) as cost:
        output = method.predict(images)
    after = load_average()
    return {
        "method": name,
        "size": list(size),
        "device": device,
        "threads": torch.get_num_threads(),
        "seconds": cost.seconds,
        "peak_memory_mb": cost.process_peak_mb,  # the process's peak, as the method cards' tables give it
        "own_memory_mb": cost.peak_memory_mb,  # the call's own: the rise over the resident set before it
        "map_shape": list(output.maps.shape[-2:]),
        "budget_mb": budget / 2**20,
        "forward_allocations_mb": profile.forward_bytes / 2**20,
        "chunks": internal_chunks(method, profile, budget),
        "load_before": before,
        "load_after": after,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2944x1920", help="HxW")
    parser.add_argument("--methods", default=",".join(EXPLAINERS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="explainer_costs.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: measure this one
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.one:
        print(json.dumps(measure_one(args.one, size, args.device)))
        return 0
    results = []
    out = Path(args.out)
    for name in args.methods.split(","):
        start = time.perf_counter()
        child = subprocess.run(
            [sys.executable, __file__, "--one", name, "--size", args.size, "--device", args.device],
            capture_output=True, text=True,
        )
        if child.returncode != 0:
            result = {"method": name, "error": child.stderr.strip().splitlines()[-1:]}
        else:
            result = json.loads(child.stdout.strip().splitlines()[-1])
        result["process_seconds"] = time.perf_counter() - start
        results.append(result)
        print(json.dumps(result), flush=True)
        out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
