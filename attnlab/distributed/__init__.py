"""Scale-out on ``torch.distributed``: data-parallel training and ring attention.

- :mod:`.ddp`: process-group setup from ``torchrun``'s environment, sharding of each
  global batch across ranks, rank-0 helpers (used by :class:`attnlab.train.loop.Trainer`).
- :mod:`.ring`: ring (context-parallel) attention with zig-zag causal load balancing.

See ``docs/distributed.md``.
"""

from .ddp import (
    barrier,
    batch_rows,
    broadcast_object,
    default_backend,
    get_rank,
    get_world_size,
    init_from_env,
    is_distributed,
    is_main_process,
    shard_batch,
)
from .ring import ring_attention, zigzag_positions, zigzag_shard, zigzag_unshard

__all__ = [
    "barrier",
    "batch_rows",
    "broadcast_object",
    "default_backend",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "ring_attention",
    "shard_batch",
    "zigzag_positions",
    "zigzag_shard",
    "zigzag_unshard",
]
