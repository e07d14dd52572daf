"""Device meshes and shardings: data parallel, with parameters sharded where a layer asks.

``jax.jit`` with ``NamedSharding`` in/out shardings is what used to be called pjit. The mesh
has axes ("data", "model") with ``Auto`` axis types. Batches are split over "data";
parameters are replicated unless a layer annotates them (``nnx.with_partitioning``, e.g.
``MLP(..., shard_model=True)``), and every parameter-shaped part of a train state (EMA,
optimizer moments, aux) follows the parameters' annotation. The same code runs on one CPU,
on simulated CPU devices (``jax_num_cpu_devices``), on accelerators and across processes
(``jax.distributed``; see ``multihost``).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def make_mesh(data: int | None = None, model: int = 1, devices=None) -> Mesh:
    """A ("data", "model") mesh; ``data`` defaults to all devices divided by ``model``."""
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    if not isinstance(model, int) or model < 1 or n % model:
        raise ValueError(f"model axis size {model} must be a positive divisor of the device count {n}")
    data = n // model if data is None else data
    if data * model != n:
        raise ValueError(f"mesh {data}x{model} does not match the {n} available devices")
    return jax.make_mesh((data, model), ("data", "model"), axis_types=(AxisType.Auto,) * 2, devices=devices)


def parse_mesh(spec: str, devices=None) -> Mesh | None:
    """A mesh from "DATAxMODEL" ("4x2", "8x1"), "auto" (all devices on "data" when several
    processes run, else no mesh: plain single-device jit) or "none"."""
    spec = spec.strip().lower()
    if spec == "none":
        return None
    if spec == "auto":
        return make_mesh(devices=devices) if jax.process_count() > 1 else None
    try:
        data, model = (int(s) for s in spec.split("x"))
    except ValueError:
        raise ValueError(f"mesh must look like DATAxMODEL (e.g. 4x2), 'auto' or 'none', got {spec!r}") from None
    n = len(jax.devices() if devices is None else devices)
    if data < 1 or model < 1 or data * model != n:
        raise ValueError(f"mesh {spec} needs {max(data, 0) * max(model, 0)} devices, but {n} are available")
    return make_mesh(data, model, devices)


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
    """Place every array of ``batch`` (the same on every process) with axis ``axis`` split over "data"."""
    return put(batch, jax.tree.map(lambda _: batch_sharding(mesh, axis), batch))


@contextlib.contextmanager
def model_init(mesh: Mesh | None):
    """Create a model inside ``with model_init(mesh):`` so that annotated layers are
    initialised already sharded (flax needs the mesh in context for annotated variables)."""
    if mesh is None:
        yield
        return
    with jax.set_mesh(mesh):
        try:
            yield
        except ValueError as e:
            if "evenly divide" not in str(e):
                raise
            raise ValueError(
                f"a layer's annotated dimension does not split over the mesh {dict(mesh.shape)}: it must divide "
                f"evenly (change the layer width or the mesh). JAX says: {str(e).splitlines()[0]}"
            ) from None


def param_specs(params):
    """A PartitionSpec per parameter leaf: the layer's annotation, or P() (replicated). A dict
    of parameter trees (GDSS's {"x", "a"} networks, a distillation's groups) is read per entry."""
    from flax import nnx

    if isinstance(params, nnx.State):
        specs = nnx.get_partition_spec(params)
        leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
        return jax.tree.unflatten(jax.tree.structure(params), [s if isinstance(s, P) else P() for s in leaves])
    if isinstance(params, dict):
        return {k: param_specs(v) for k, v in params.items()}
    return jax.tree.map(lambda _: P(), params)


def _fit(spec: P, ndim: int) -> P:
    """A leaf with more axes than its annotation is a stack of copies (Phased DMD's experts):
    the annotation applies to its trailing axes (an empty one, replicated, stays as it is)."""
    return P(*([None] * (ndim - len(spec))), *spec) if 0 < len(spec) < ndim else spec


def _check_spec(spec: P, shape, mesh: Mesh, where: str) -> None:
    for dim, axes in zip(shape, spec):
        for name in (axes,) if isinstance(axes, str) else (axes or ()):
            if name not in mesh.shape:
                raise ValueError(f"{where} is annotated with mesh axis {name!r}, but the mesh has axes {tuple(mesh.shape)}")
            if dim % mesh.shape[name]:
                raise ValueError(
                    f"{where} has a dimension of size {dim} split over mesh axis {name!r} of size "
                    f"{mesh.shape[name]}: it must divide evenly (change the layer width or the mesh)"
                )


def state_shardings(state, mesh: Mesh):
    """Shardings for a train state: every subtree shaped like ``state.params``, or like one of
    its groups when ``params`` is a dict of groups (the params, their EMA, optimizer moments,
    aux copies), follows the parameters' annotations; the rest (step, key, counters, transform
    state) is replicated."""
    params = getattr(state, "params", None)
    if params is None:
        return jax.tree.map(lambda _: replicated(mesh), state)
    specs = param_specs(params)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    for (path, x), s in zip(jax.tree_util.tree_flatten_with_path(params)[0], spec_leaves):
        _check_spec(_fit(s, x.ndim), x.shape, mesh, f"parameter {jax.tree_util.keystr(path)}")
    known = {jax.tree.structure(params): specs}
    if isinstance(params, dict):
        for k, v in params.items():
            known.setdefault(jax.tree.structure(v), specs[k])

    def is_param_like(t):
        return t is not None and not isinstance(t, (jax.Array, np.ndarray)) and jax.tree.structure(t) in known

    def place(t):
        if not is_param_like(t):
            return jax.tree.map(lambda _: replicated(mesh), t)
        spec = jax.tree.leaves(known[jax.tree.structure(t)], is_leaf=lambda x: isinstance(x, P))
        leaves = jax.tree.leaves(t)
        return jax.tree.unflatten(jax.tree.structure(t),
                                  [NamedSharding(mesh, _fit(s, x.ndim)) for x, s in zip(leaves, spec)])

    return jax.tree.map(place, state, is_leaf=is_param_like)


def put(tree, shardings):
    """Place ``tree`` with ``shardings``; works in multi-process runs, where ``jax.device_put``
    cannot target other processes' devices. Host or process-local leaves must hold the same
    values on every process (each process keeps only its own shards); global arrays are
    resharded by a compiled identity."""

    def one(x, sh):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x if x.sharding == sh else jax.jit(lambda a: a, out_shardings=sh)(x)
        if jax.process_count() == 1:
            return jax.device_put(x, sh)
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(x))
            raw = jax.make_array_from_callback(data.shape, sh, lambda i: data[i])
            return jax.random.wrap_key_data(raw, impl=jax.random.key_impl(x))
        data = np.asarray(x)
        return jax.make_array_from_callback(data.shape, sh, lambda i: data[i])

    return jax.tree.map(one, tree, shardings)


def to_host(tree):
    """Every array of ``tree`` as a process-local value: a NumPy array (typed PRNG keys stay
    keys), gathered from other processes' devices where needed. For evaluating and saving
    results after multi-process training, on each process."""

    def one(x):
        if not isinstance(x, jax.Array):
            return x
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(to_host(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def is_main_process() -> bool:
    return jax.process_index() == 0
