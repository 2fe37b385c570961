"""Data-parallel training with torch.distributed (DDP), started by torchrun.

    torchrun --nproc_per_node=8 -m ciard_fast train --preset cifar10-resnet18 ...

One process per device. Each rank trains on a disjoint shard of every epoch's shared permutation
(the device-resident loader's `rank`/`world_size`); gradients of the student — and of the robust
teacher while ITT trains it — are averaged by DDP; the method's state (L⁰, τ, w, λ) is computed
from globally reduced losses (`Method.reduce_mean`), so every rank holds identical state;
validation is sharded and its counts summed; rank 0 alone writes checkpoints and logs.
NCCL on GPUs, gloo on CPUs.
"""
import inspect
import os

import torch
import torch.distributed as dist
from torch import nn


# Newer torch renamed DDP's broadcast_buffers to forward_sync_buffers (the old name warns).
_NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


class DistributedModule(nn.Module):
    """A module that goes through DDP only when a gradient for its parameters is being built.

    Attacks (PGD with parameter gradients switched off, see `ciard_fast.attacks.pgd`) and frozen
    forwards (under `torch.no_grad`) call the plain module: DDP would otherwise prepare a gradient
    reduction that never comes and broadcast BN buffers at every attack step. The training
    forwards (gradients on) go through DDP, which averages the gradients across ranks.
    `state_dict`/`load_state_dict` are the plain module's, so checkpoints carry no wrapper prefix.
    """

    def __init__(self, module, device, **ddp_kwargs):
        super().__init__()
        device_ids = [device.index] if device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(module, device_ids=device_ids, **ddp_kwargs)

    @property
    def module(self):
        return self.ddp.module

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.module.parameters()):
            return self.ddp(*args, **kwargs)
        return self.module(*args, **kwargs)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict=True):
        return self.module.load_state_dict(state_dict, strict=strict)


def unwrap(module):
    return module.module if isinstance(module, DistributedModule) else module


class DistContext:
    """Rank/world size and the collectives the engine and the methods need.

    With world_size 1 (no torchrun) every operation is the identity, so the single-process
    engine pays nothing for it.
    """

    def __init__(self, rank=0, world_size=1, local_rank=0):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1

    def all_reduce_mean(self, tensor):
        """The mean over ranks of a tensor (async on the device: no host sync)."""
        if not self.enabled:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor / self.world_size

    def all_reduce_max(self, tensor):
        """The elementwise maximum over ranks of a tensor (async on the device: no host sync)."""
        if not self.enabled:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def all_reduce_sum(self, tensor):
        if not self.enabled:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def wrap(self, module, device, sync_batchnorm=False):
        """DDP-wrap a module that trains (identity in a single process)."""
        if not self.enabled:
            return module
        if sync_batchnorm:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        # No buffer broadcast at each forward: BN running statistics stay per rank (or are
        # synchronised by SyncBatchNorm); broadcasting them would cost a collective per call.
        return DistributedModule(module, device, **_NO_FORWARD_BUFFER_SYNC)

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def max_int(self, value, device):
        """The largest of the ranks' integers `value` (one small all-reduce and a host read), for
        a decision every rank must take at the same step, such as stopping on a signal that only
        some ranks have received yet."""
        if not self.enabled:
            return value
        tensor = torch.tensor([int(value)], dtype=torch.int64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def broadcast_object(self, obj):
        """Rank 0's Python object on every rank (e.g. the run folder rank 0 claimed)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


_CONTEXT = None


def get_context(device_name="auto"):
    """The process's DistContext: initialised from torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT) once, or a single-process context when those are absent."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        _CONTEXT = DistContext()
        return _CONTEXT
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and device_name not in ("cpu",)
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    _CONTEXT = DistContext(rank, world_size, local_rank)
    return _CONTEXT


def reset_context():
    """Forget the cached context (tests that start and stop process groups)."""
    global _CONTEXT
    _CONTEXT = None
