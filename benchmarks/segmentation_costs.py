"""Training and predict time per image of the supervised reference points' U-Net, beside CAM's, on this CPU
(the cost figures of methods/segmentation.md).

    python benchmarks/segmentation_costs.py                       # cpu preset size, 2 threads
    python benchmarks/segmentation_costs.py --threads 1 --methods fsl,cam --repeats 7

A training step is what the trainer runs at the ``cpu`` preset: a batch of 16, Adam, bfloat16 autocast
with the network in channels-last layout where the CPU computes bfloat16 natively (``cpu_amp``), else
float32; ``predict`` runs on one image, float32. Each figure is the minimum and the median over
``--repeats`` timed rounds after one warm-up round: on a machine shared with other processes the minimum
is the closest to the method's own cost. Running CAM in the same process gives a ratio that holds where
the absolute figures do not.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import wsl_bench
from wsl_bench.presets import get_preset
from wsl_bench.training.trainer import TrainConfig, uses_amp


def _timed(step, repeats: int) -> list[float]:
    step()  # warm-up: oneDNN picks its kernels on the first call
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def measure(name: str, size: tuple[int, int], batch: int, repeats: int, options: dict) -> dict:
    """``{"train_ms", "predict_ms"}`` (min, median) per image of method ``name`` at ``size``."""
    method = wsl_bench.create_method(name, image_size=size, **options)
    network = method.network()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 1, *size, generator=generator)
    labels = (torch.rand(batch, 2, generator=generator) > 0.5).float()
    masks = torch.zeros(batch, 2, *size)
    masks[:, :, size[0] // 3: size[0] // 3 + 20, size[1] // 3: size[1] // 3 + 20] = labels[:, :, None, None]
    extra = {"masks": masks} if method.mask_split is not None else {}
    amp = uses_amp(TrainConfig(cpu_amp=True), torch.device("cpu"), torch.float32)
    if amp:
        network.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)

    def train_step() -> None:
        network.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = method.training_loss(images, labels, **extra)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train = [t / batch for t in _timed(train_step, repeats)]
    network.to(memory_format=torch.contiguous_format).eval()
    predict = _timed(lambda: method.predict(images[:1]), repeats)
    return {"method": name, "amp": amp, "params": method.num_parameters(),
            "train_ms": (1000 * min(train), 1000 * statistics.median(train)),
            "predict_ms": (1000 * min(predict), 1000 * statistics.median(predict))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="fsl,cam")
    parser.add_argument("--preset", default="cpu", help="image size and networks of this preset (default: cpu)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    print("| method | params | bfloat16 | training ms / image (min, median) | predict ms / image (min, median) |")
    print("|---|---|---|---|---|")
    for name in args.methods.split(","):
        result = measure(name, preset.image_size, preset.batch_size, args.repeats, preset.method_options.get(name, {}))
        print(f"| {name} | {result['params'] / 1e6:.2f} M | {'yes' if result['amp'] else 'no'} | "
              f"{result['train_ms'][0]:.1f}, {result['train_ms'][1]:.1f} | "
              f"{result['predict_ms'][0]:.1f}, {result['predict_ms'][1]:.1f} |", flush=True)
    print(f"\n{preset.image_size[0]}×{preset.image_size[1]}, batch {preset.batch_size}, {args.threads} threads, "
          f"torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
