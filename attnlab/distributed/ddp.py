"""Data-parallel plumbing: process group from ``torchrun``, batch sharding, rank-0 helpers.

``torchrun --nproc-per-node N -m attnlab train ...`` starts ``N`` copies of the command
with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in
their environment. :func:`init_from_env` turns that into a process group (gloo on CPU,
nccl on CUDA); ``python -m attnlab`` calls it first thing, and
:class:`attnlab.train.loop.Trainer` calls it again (it is idempotent), so a training
function run from a script under ``torchrun`` works too.

Data parallelism keeps every ``batches(epoch, seed)`` *global*: all ranks build the
same batch, and each trains on its slice (:func:`shard_batch`), so ``N`` processes take
exactly the optimizer steps one process would, on the same data, and the logged loss
is the same number (see ``Trainer``'s weighting of each rank's loss).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any, Mapping

import torch
import torch.distributed as dist

__all__ = [
    "TORCHRUN_VARS",
    "DataParallelModel",
    "barrier",
    "batch_rows",
    "broadcast_object",
    "default_backend",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "shard_batch",
    "shard_bounds",
    "wrap_model",
]

#: What ``torchrun`` (or any ``env://`` launcher) sets in each worker's environment.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def default_backend() -> str:
    """``"nccl"`` when CUDA is available, else ``"gloo"`` (CPU)."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def is_distributed() -> bool:
    """True inside an initialized process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of ranks (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True unless this is a non-zero rank of an initialized process group."""
    return get_rank() == 0


def init_from_env(backend: str | None = None, *, timeout_s: float = 1800.0) -> bool:
    """Initialize the default process group from ``torchrun``'s environment variables.

    Does nothing (and returns False) outside a launcher or when ``WORLD_SIZE`` is 1;
    returns True when a group of several ranks is (now or already) initialized. On CUDA
    each process takes the device ``LOCAL_RANK``.

    Args:
        backend: ``"gloo"``, ``"nccl"`` ...; default :func:`default_backend`.
        timeout_s: how long a collective waits for the slowest rank (rank 0 validating
            while the others wait at a barrier counts).
    """
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    env = os.environ
    if any(name not in env for name in TORCHRUN_VARS):
        return False
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env["RANK"])
    except ValueError:
        raise ValueError(
            f"RANK and WORLD_SIZE must be integers (set by torchrun), got RANK={env['RANK']!r}, "
            f"WORLD_SIZE={env['WORLD_SIZE']!r}"
        ) from None
    if world <= 1:
        return False
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(env.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def barrier() -> None:
    """``dist.barrier()`` when distributed, else nothing."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; small objects only)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# --------------------------------------------------------------------------- sharding


def shard_bounds(rows: int, rank: int, world: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s rows out of ``rows``: contiguous slices, the
    first ``rows % world`` ranks one row longer (``torch.tensor_split``'s rule)."""
    if rows < world:
        raise ValueError(
            f"a global batch of {rows} rows cannot be split across {world} ranks (each needs at least one); "
            "use larger batches or fewer processes"
        )
    base, extra = divmod(rows, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _tensors(batch: Any, path: str):
    """(path, tensor) for every tensor with a batch dimension in ``batch``."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() >= 1:
            yield path, batch
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        for f in dataclasses.fields(batch):
            yield from _tensors(getattr(batch, f.name), f"{path}.{f.name}")
    elif isinstance(batch, Mapping):
        for key, value in batch.items():
            yield from _tensors(value, f"{path}[{key!r}]")
    elif isinstance(batch, (tuple, list)):
        for i, value in enumerate(batch):
            yield from _tensors(value, f"{path}[{i}]")


def batch_rows(batch: Any) -> int:
    """The batch size: dim 0 of every tensor (of at least one dimension) in ``batch``.

    ``batch`` may be a tensor or nest tuples, lists, dicts and dataclasses; 0-dim tensors
    and other values are ignored. Raises ValueError when there is no such tensor or their
    dim 0 differ (that batch cannot be sharded by rows).
    """
    found = list(_tensors(batch, "batch"))
    if not found:
        raise ValueError("cannot shard the batch across ranks: it holds no tensor with a batch dimension (dim 0)")
    path0, t0 = found[0]
    for path, t in found[1:]:
        if t.shape[0] != t0.shape[0]:
            raise ValueError(
                f"cannot shard the batch across ranks: {path} has {t.shape[0]} rows (dim 0) but {path0} has "
                f"{t0.shape[0]}; every tensor of a batch must have the batch size as dim 0"
            )
    return int(t0.shape[0])


def _slice(batch: Any, start: int, stop: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[start:stop] if batch.dim() >= 1 else batch
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {f.name: _slice(getattr(batch, f.name), start, stop) for f in dataclasses.fields(batch) if f.init}
        return dataclasses.replace(batch, **changes)
    if isinstance(batch, Mapping):
        items = {k: _slice(v, start, stop) for k, v in batch.items()}
        return items if type(batch) is dict else type(batch)(items)
    if isinstance(batch, tuple):
        items = [_slice(v, start, stop) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else tuple(items)
    if isinstance(batch, list):
        return [_slice(v, start, stop) for v in batch]
    return batch


def shard_batch(batch: Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s rows of a global batch: every tensor sliced along dim 0.

    Recurses through tuples (named tuples keep their type), lists, dicts and dataclasses;
    other values (ints, strings, 0-dim tensors) are passed to every rank unchanged.
    Slices are contiguous (:func:`shard_bounds`), so concatenating the shards in rank
    order gives the batch back. ``world == 1`` returns ``batch`` itself.

    Raises:
        ValueError: the batch has fewer rows than ranks, or tensors disagree on dim 0.
    """
    if world == 1:
        return batch
    start, stop = shard_bounds(batch_rows(batch), rank, world)
    return _slice(batch, start, stop)


# --------------------------------------------------------------------------- the model


class DataParallelModel(torch.nn.parallel.DistributedDataParallel):
    """``DistributedDataParallel`` that counts its forward calls and lets attribute
    reads (``model.config``, ``model.encode``) through to the wrapped module.

    Gradients are averaged across ranks only for what ran through ``forward``: the
    trainer checks :attr:`forward_calls` so that a ``loss_fn`` that bypasses it (calls
    ``model.encode(...)`` only) fails loudly instead of training each rank apart.
    """

    forward_calls = 0

    def forward(self, *args, **kwargs):
        self.forward_calls += 1
        return super().forward(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("module")
            if inner is None or name == "module":
                raise
            return getattr(inner, name)


def wrap_model(model: torch.nn.Module) -> DataParallelModel:
    """``model`` in :class:`DataParallelModel` (a collective: every rank must call it;
    rank 0's parameters and buffers are broadcast to the others). On CUDA the model must
    already be on this rank's device."""
    device_ids = None
    params = list(model.parameters())
    if params and params[0].is_cuda:
        device_ids = [params[0].device.index]
    # find_unused_parameters: a model whose forward leaves some parameters out (a branch
    # taken per batch) would otherwise stop with an error at the next step.
    return DataParallelModel(model, device_ids=device_ids, find_unused_parameters=True)
