"""Meshes, shardings and multi-process helpers."""

from .mesh import (
    batch_sharding as batch_sharding,
    check_divisible as check_divisible,
    is_main_process as is_main_process,
    make_mesh as make_mesh,
    replicated as replicated,
    shard_batch as shard_batch,
    state_shardings as state_shardings,
)
