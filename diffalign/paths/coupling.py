"""Couplings of data and source samples for flow matching (Tong et al., TMLR 2024).

* ``independent``: pairs as drawn (I-CFM).
* ``exact_ot``: minibatch optimal transport under squared Euclidean cost. With uniform
  weights and equal batch sizes the exact plan is a permutation (Birkhoff), so every sample
  is used exactly once (torchcfm instead samples pairs from the plan with replacement). It
  is solved on the host by POT's network simplex (scipy's ``linear_sum_assignment`` when POT
  is missing), through ``jax.pure_callback``; under ``jax.vmap`` all problems of the batch
  go to the host at once and are solved on a thread pool.
* ``sinkhorn``: entropic OT solved in JAX by ott-jax; for each data point a source partner
  is drawn from its row of the plan. Scales to large batches.
* ``paired``: the batch already holds coupled pairs (a coupled data pipeline, reflow,
  precomputed teacher pairs).

A coupling can run inside the loss (``flow_matching_loss(coupling=...)``) or in the data
pipeline (``coupled_batch_fn``); the second lets the training loop vectorise it over a
whole chunk of steps, which is how the OT-CFM experiments run.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

COUPLINGS = ("independent", "exact_ot", "sinkhorn", "paired")


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    """Host threads for exact OT plans: DIFFALIGN_HOST_THREADS, or one per core."""
    n = int(os.environ.get("DIFFALIGN_HOST_THREADS", os.cpu_count() or 1))
    return ThreadPoolExecutor(max_workers=max(n, 1), thread_name_prefix="diffalign-ot")


def _solve_permutation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    # elementwise, not a @ b.T: BLAS threads inside the worker threads oversubscribe the cores
    cost = np.square(a[:, None, :] - b[None, :, :]).sum(-1)
    try:
        import ot
    except ImportError:
        from scipy.optimize import linear_sum_assignment

        return linear_sum_assignment(cost)[1].astype(np.int32)
    w = np.full(len(a), 1.0 / len(a))
    plan = ot.emd(w, w, cost, numItermax=10_000_000)
    return plan.argmax(axis=1).astype(np.int32)


def _host_permutations(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    lead = x0.shape[:-2]
    a = np.asarray(x0).reshape((-1,) + x0.shape[-2:])
    b = np.asarray(x1).reshape((-1,) + x1.shape[-2:])
    if len(a) == 1:
        perms = [_solve_permutation(a[0], b[0])]
    else:
        perms = list(_pool().map(_solve_permutation, a, b))
    return np.stack(perms).reshape(lead + (x0.shape[-2],))


def exact_ot_permutation(x0: jax.Array, x1: jax.Array) -> jax.Array:
    """Permutation p minimising sum_i ||x0[i] - x1[p[i]]||^2 (the exact minibatch OT plan)."""
    if x0.shape[0] != x1.shape[0]:
        raise ValueError(
            f"exact OT coupling needs equal batch sizes, got {x0.shape[0]} data and {x1.shape[0]} source"
        )
    a = x0.reshape(x0.shape[0], -1)
    b = x1.reshape(x1.shape[0], -1)
    out = jax.ShapeDtypeStruct((x0.shape[0],), jnp.int32)
    return jax.pure_callback(_host_permutations, out, a, b, vmap_method="broadcast_all")


def sinkhorn_partners(key: jax.Array, x0: jax.Array, x1: jax.Array, epsilon: float) -> jax.Array:
    """For each x0[i], an index j drawn from row i of the entropic OT plan between the batches.

    ``epsilon`` is relative to the mean cost, so it does not depend on the data's scale.
    """
    try:
        from ott.geometry import pointcloud
        from ott.solvers import linear
    except ImportError as e:  # pragma: no cover - only without the extra
        raise ImportError("the 'sinkhorn' coupling needs ott-jax: pip install 'diffalign[experiments]'") from e
    a = x0.reshape(x0.shape[0], -1)
    b = x1.reshape(x1.shape[0], -1)
    geom = pointcloud.PointCloud(a, b, relative_epsilon="mean", epsilon=epsilon)
    plan = linear.solve(geom).matrix
    return jax.random.categorical(key, jnp.log(jnp.maximum(plan, 1e-30)), axis=-1)


def couple(key, x0, x1, method: str = "independent", *, epsilon: float = 0.05):
    """Return the source batch reordered so that (x0[i], result[i]) are coupled pairs."""
    if method not in COUPLINGS:
        raise ValueError(f"unknown coupling {method!r}; expected one of {COUPLINGS}")
    if method in ("independent", "paired"):
        return x1
    x0s, x1s = jax.lax.stop_gradient(x0), jax.lax.stop_gradient(x1)
    if method == "exact_ot":
        return x1[exact_ot_permutation(x0s, x1s)]
    return x1[sinkhorn_partners(key, x0s, x1s, epsilon)]


def coupled_batch_fn(batch_fn, method: str, seed: int, *, epsilon: float = 0.05):
    """Wrap ``batch_fn(step)`` so its batches carry a coupled source under "x_source".

    Standard normal noise is drawn when the batch has no "x_source". Train on the result
    with ``flow_matching_loss(coupling="paired")``.
    """
    base = jax.random.key(seed)

    def fn(step):
        batch = dict(batch_fn(step))
        key = jax.random.fold_in(base, step)
        k_src, k_cpl = jax.random.split(key)
        x0 = batch["x"]
        x1 = batch.get("x_source")
        if x1 is None:
            x1 = jax.random.normal(k_src, x0.shape, x0.dtype)
        batch["x_source"] = couple(k_cpl, x0, x1, method, epsilon=epsilon)
        return batch

    return fn
