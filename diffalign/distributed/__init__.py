"""Meshes, shardings and multi-process helpers."""

from .mesh import (
    batch_sharding as batch_sharding,
    check_divisible as check_divisible,
    is_main_process as is_main_process,
    make_mesh as make_mesh,
    model_init as model_init,
    param_specs as param_specs,
    parse_mesh as parse_mesh,
    put as put,
    replicated as replicated,
    shard_batch as shard_batch,
    state_shardings as state_shardings,
    to_host as to_host,
)
from .multihost import initialize_from_env as initialize_from_env, launch as launch
