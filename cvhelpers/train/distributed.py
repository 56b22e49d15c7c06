"""Data-parallel training on several processes (GPUs or CPU cores) with ``torchrun``.

One process per GPU; every process holds a full copy of the model and trains on its own slice
of each batch. After ``backward`` the gradients are averaged across processes (an all-reduce),
so every copy takes the same optimizer step and the copies stay identical. ``torchrun`` starts
the processes and tells each one who it is through environment variables (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).

The same script runs with ``python train.py`` (one process) and with
``torchrun --nproc_per_node=2 train.py`` (two)::

    from cvhelpers.train.distributed import init_distributed, make_distributed_loader, wrap_model
    from cvhelpers.train.engine import fit

    info = init_distributed()                       # reads torchrun's variables, if any
    model = wrap_model(SmallCNN(), info.device)     # DDP (+ SyncBatchNorm on GPUs) when distributed
    loader = make_distributed_loader(train_set, batch_size=64, shuffle=True, seed=0)
    fit(model, loader, val_loader, epochs=5, optimizer=..., checkpoint_path="runs/ddp/best.pt")
    cleanup_distributed()

``fit`` notices the DDP model and does the rest: ``DistributedSampler.set_epoch`` every epoch,
``no_sync`` while accumulating gradients, logging, evaluation and checkpoints on rank 0 only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = [
    "DistInfo", "init_distributed", "cleanup_distributed", "is_distributed", "get_rank",
    "get_world_size", "is_main_process", "barrier", "broadcast_object", "wrap_model",
    "unwrap_model", "is_ddp", "make_distributed_loader", "no_sync_if",
]


@dataclass(frozen=True)
class DistInfo:
    """Who this process is. ``rank`` counts processes over all machines, ``local_rank`` on this
    machine (it picks the GPU); ``world_size`` is the number of processes."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None: not distributed (a plain single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    """True inside an initialised process group (under torchrun, after :func:`init_distributed`)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (which logs, evaluates and writes checkpoints) and when not distributed."""
    return get_rank() == 0


def init_distributed(backend: str | None = None, device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` set up, or run as a single process without it.

    Args:
        backend: ``"nccl"`` (NVIDIA GPUs) or ``"gloo"`` (CPU; also works with GPUs, slower).
            ``None`` picks NCCL when CUDA is available and ``device`` is not ``"cpu"``.
        device: ``"auto"`` uses GPU number ``LOCAL_RANK`` when there is one, else the CPU.

    Returns:
        A :class:`DistInfo`. Without torchrun's ``WORLD_SIZE`` variable nothing is initialised
        and the result says rank 0 of 1.

    Raises:
        RuntimeError: on GPUs, more processes on this machine than it has GPUs (process
            ``LOCAL_RANK`` needs GPU number ``LOCAL_RANK``); start fewer or pass ``device="cpu"``.
    """
    use_cuda = torch.cuda.is_available() and device != "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"process LOCAL_RANK={local_rank} needs GPU {local_rank}, but this machine shows "
            f"{torch.cuda.device_count()}: start at most that many processes per machine "
            "(--nproc_per_node), or train on CPU processes with device='cpu'")
    if use_cuda:
        # Before the process group: NCCL binds each process to "the current" GPU.
        torch.cuda.set_device(local_rank)
    torch_device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if "WORLD_SIZE" not in os.environ:
        return DistInfo(0, 0, 1, torch_device, None)
    backend = backend or ("nccl" if use_cuda else "gloo")
    if not is_distributed():
        dist.init_process_group(backend=backend)  # reads MASTER_ADDR/PORT, RANK, WORLD_SIZE
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), torch_device, backend)


def cleanup_distributed() -> None:
    """Leave the process group (call once at the end of a torchrun script).

    Waits for every process first: a rank that tears gloo down while another still works (rank
    0 writing its results, say) can make that other rank abort on exit ("terminate called
    without an active exception"), which torchrun reports as a failed run.
    """
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (a no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Every process gets rank ``src``'s ``obj`` (any picklable object); a no-op when alone."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def is_ddp(model: nn.Module) -> bool:
    """True for a ``DistributedDataParallel`` model, also inside ``torch.compile``."""
    return isinstance(getattr(model, "_orig_mod", model), DistributedDataParallel)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside ``torch.compile``, ``DistributedDataParallel`` or ``DataParallel``.

    Its ``state_dict()`` keys carry no ``_orig_mod.`` or ``module.`` prefix, so a checkpoint of
    it loads into a plain model, and one written by a single process loads into a DDP run.
    """
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        else:
            return model


def wrap_model(model: nn.Module, device: torch.device | str, *, sync_batchnorm: bool = True,
               channels_last: bool = False, **ddp_kwargs: Any) -> nn.Module:
    """Move ``model`` to ``device`` and, in a process group, wrap it in ``DistributedDataParallel``.

    Args:
        device: this process's device (``DistInfo.device``).
        sync_batchnorm: on GPUs, turn every BatchNorm into ``SyncBatchNorm``, which computes
            batch statistics over the whole global batch instead of each process's slice. It
            matters when the per-GPU batch is small (detection, segmentation: a few images per
            GPU); it costs an extra all-reduce per BatchNorm layer. PyTorch supports it on CUDA
            only, so on the CPU the model's BatchNorms stay per-process.
        channels_last: store the weights channels-last first (DDP must see the final layout).
        **ddp_kwargs: passed to ``DistributedDataParallel`` (e.g. ``find_unused_parameters``).

    Returns:
        The DDP-wrapped model, or ``model`` itself (moved) when not distributed.
    """
    device = torch.device(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(device)
    if not is_distributed():
        return model
    if sync_batchnorm and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # DDP copies rank 0's weights to every process here, so all copies start identical.
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


def make_distributed_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                            drop_last: bool = False, num_replicas: int | None = None,
                            rank: int | None = None, **loader_kwargs: Any) -> DataLoader:
    """A ``DataLoader`` that gives this process its own ``1 / world_size`` share of ``dataset``.

    A ``DistributedSampler`` shuffles all indices with ``seed + epoch`` (the same permutation on
    every process), pads them to a multiple of the number of processes, and hands process ``r``
    every ``world_size``-th index starting at ``r``. So ``batch_size`` is per process: the
    global batch is ``batch_size * world_size``. ``fit`` calls ``sampler.set_epoch(epoch)``
    each epoch; without it every epoch would repeat the first epoch's order.

    Outside a process group (``num_replicas`` and ``rank`` default to 1 and 0) the loader is a
    seeded shuffle of the whole dataset whose batch ``k`` holds exactly the samples of global
    batch ``k`` of a distributed run with the same seed: the single-process reference for
    checking that DDP gives the same result.
    """
    sampler = DistributedSampler(
        dataset, num_replicas=num_replicas if num_replicas is not None else get_world_size(),
        rank=rank if rank is not None else get_rank(), shuffle=shuffle, seed=seed,
        drop_last=drop_last)
    # the generator only seeds worker processes here; the sampler does the shuffling
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      generator=generator, **loader_kwargs)


@contextlib.contextmanager
def no_sync_if(model: nn.Module, skip_sync: bool) -> Iterator[None]:
    """Inside, a DDP ``model``'s backward keeps its gradients local (no all-reduce).

    With gradient accumulation only the last batch of each group needs the (expensive)
    all-reduce: the earlier ones just add into ``.grad``. A no-op for non-DDP models or when
    ``skip_sync`` is False.
    """
    inner = getattr(model, "_orig_mod", model)
    if skip_sync and isinstance(inner, DistributedDataParallel):
        with inner.no_sync():
            yield
    else:
        yield
