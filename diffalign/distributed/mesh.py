"""Device meshes and shardings for data-parallel (and model-annotated) training.

``jax.jit`` with ``NamedSharding`` in/out shardings is what used to be called pjit. The mesh
has axes ("data", "model") with ``Auto`` axis types; batches are split over "data" and
parameters are replicated unless a layer annotates them. The same code runs on one CPU,
on simulated CPU devices (``jax_num_cpu_devices``) and on accelerators.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def make_mesh(data: int | None = None, model: int = 1, devices=None) -> Mesh:
    """A ("data", "model") mesh; ``data`` defaults to all devices divided by ``model``."""
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    if model < 1 or n % model:
        raise ValueError(f"model axis size {model} must divide the device count {n}")
    data = n // model if data is None else data
    if data * model != n:
        raise ValueError(f"mesh {data}x{model} does not match the {n} available devices")
    return jax.make_mesh((data, model), ("data", "model"), axis_types=(AxisType.Auto,) * 2, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Split array axis ``axis`` (the batch) over the mesh's "data" axis."""
    return NamedSharding(mesh, P(*([None] * axis), "data"))


def check_divisible(batch_size: int, mesh: Mesh) -> None:
    n = mesh.shape["data"]
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} is not divisible by the {n} devices of the 'data' axis")


def shard_batch(batch, mesh: Mesh, axis: int = 0):
    """Place every array of ``batch`` with its axis ``axis`` split over "data"."""
    sh = batch_sharding(mesh, axis)
    return jax.tree.map(lambda x: jax.device_put(x, sh), batch)


def state_shardings(state, mesh: Mesh):
    """Shardings for a train state: replicated (per-layer annotations come with model sharding)."""
    return jax.tree.map(lambda _: replicated(mesh), state)


def is_main_process() -> bool:
    return jax.process_index() == 0
