"""Running under ``torchrun``: process group set-up, synchronised BatchNorm, small collectives.

``torchrun --nproc_per_node=N -m wsl_bench train|run ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment;
:func:`init_from_env` reads them (``env://``) and joins the process group: NCCL for CUDA, gloo for
CPU. Without those variables (a plain ``wsl-bench`` call) it returns the single-process context and
every helper here is a no-op, so the trainer and the harness run one code path.

BatchNorm and data parallelism. Each rank sees only its part of the global batch, so plain
BatchNorm would normalise with per-rank statistics and the result would depend on the number of
ranks. :func:`synchronise_batchnorm` makes the statistics those of the global batch: on CUDA with
PyTorch's own :class:`torch.nn.SyncBatchNorm`; on CPU, where ``SyncBatchNorm`` refuses to run, with
:class:`CpuSyncBatchNorm`, which all-reduces the per-channel sums through the differentiable
``torch.distributed.nn.functional.all_reduce``. Either way one optimisation step on a global batch
gives the same weights whatever the number of ranks (``tests/test_distributed.py``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

TIMEOUT_ENV = "WSL_BENCH_DIST_TIMEOUT_MIN"
"""Environment variable: minutes a collective (e.g. rank 0 waiting for the slowest shard) may take."""
DEFAULT_TIMEOUT_MIN = 120


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) job.

    Attributes:
        rank: global rank, 0 … world_size − 1.
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        backend: ``"gloo"``, ``"nccl"`` or ``None`` when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether collectives are needed (more than one process)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and reports."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (no gradient) and return it."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def collective_device(self, device: torch.device) -> torch.device:
        """The device small tensors for collectives must live on (NCCL needs CUDA tensors)."""
        return device if self.backend == "nccl" else torch.device("cpu")


SINGLE_PROCESS = DistContext()


def init_from_env(device: str | torch.device = "cpu") -> DistContext:
    """Join the process group torchrun describes in the environment, or stay single-process.

    Args:
        device: ``"cpu"`` (gloo) or ``"cuda"`` (NCCL; this rank's GPU becomes the current device,
            so ``"cuda"`` names it everywhere else in the process).

    Raises:
        ValueError: CUDA was asked for but this rank has no GPU of its own.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE_PROCESS
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.device(device).type == "cuda"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible; "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        minutes = int(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
        dist.init_process_group(backend, init_method="env://", timeout=timedelta(minutes=minutes))
    log.info("rank %d of %d (local %d) joined the %s process group", rank, world_size, local_rank, backend)
    return DistContext(rank, world_size, local_rank, backend)


def shutdown(context: DistContext) -> None:
    """Leave the process group (safe to call in a single process)."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks (any device).

    Same parameters, buffers and state-dict keys as :class:`torch.nn.BatchNorm2d`; in eval mode, or
    outside a multi-process group, it *is* BatchNorm2d. In training mode it computes the mean and the
    biased variance over every rank's ``N×C×H×W`` input in two passes (sum, then sum of squared
    deviations, each one all-reduce), normalises with them and updates the running statistics
    exactly as BatchNorm2d does for the concatenated batch (unbiased variance, ``momentum``).
    Gradients flow through the all-reduces, so the backward pass is that of the global batch too.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(x)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        count = torch.tensor([xf.numel() / xf.shape[1]], dtype=torch.float32, device=xf.device)
        total = all_reduce(torch.cat([xf.sum(dim=(0, 2, 3)), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = xf - mean.view(1, -1, 1, 1)
        var = all_reduce(centred.pow(2).sum(dim=(0, 2, 3))) / n
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out.to(x.dtype)


def _convert_to_cpu_sync(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below ``module`` by a :class:`CpuSyncBatchNorm` sharing its tensors."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CpuSyncBatchNorm):
        sync = CpuSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias
        if module.track_running_stats:
            sync.running_mean, sync.running_var = module.running_mean, module.running_var
            sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        converted = _convert_to_cpu_sync(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def synchronise_batchnorm(network: nn.Module, device: torch.device, context: DistContext) -> nn.Module:
    """Make every BatchNorm of ``network`` use global-batch statistics in training (in place).

    Parameters and buffers are kept (same objects), so optimisers built earlier and state-dict keys
    stay valid. Does nothing in a single process.

    Returns:
        ``network`` (the same object; its BatchNorm children are replaced).
    """
    if not context.enabled:
        return network
    if device.type == "cuda":
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    else:
        converted = _convert_to_cpu_sync(network)
    if converted is not network:  # only when the network itself is a BatchNorm layer
        raise TypeError("synchronise_batchnorm needs a network that contains BatchNorm layers, not one")
    return network


