"""Pieces shared by the per-example losses: batch access, times, label dropout, reductions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

REDUCTIONS = ("mean", "sum", "half_sum")


def reduce_per_example(sq: jax.Array, how: str) -> jax.Array:
    """Reduce an elementwise loss of shape (B, ...) to shape (B,)."""
    flat = sq.reshape(sq.shape[0], -1)
    if how == "mean":
        return flat.mean(axis=-1)
    if how == "sum":
        return flat.sum(axis=-1)
    if how == "half_sum":
        return 0.5 * flat.sum(axis=-1)
    raise ValueError(f"unknown reduction {how!r}; expected one of {REDUCTIONS}")


def batch_data(batch) -> tuple[jax.Array, jax.Array | None]:
    """(x, y) from a batch dict with key "x" and optional class labels "y"."""
    if not isinstance(batch, dict) or "x" not in batch:
        raise TypeError(
            "a batch must be a dict with the data under 'x' (and optionally labels under 'y', "
            f"a source batch under 'x_source'); got {type(batch).__name__}"
        )
    x = batch["x"]
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"batch['x'] must hold floating-point data, got dtype {jnp.result_type(x)}; "
                        "convert it (e.g. x.astype(jnp.float32)) before training")
    return x, batch.get("y")


def uniform_times(key, n: int, t_min: float, t_max: float, dtype=jnp.float32, stratified=False):
    """Per-example times in [t_min, t_max); ``stratified`` spreads them one per bin (lower variance)."""
    if stratified:
        u = (jnp.arange(n, dtype=dtype) + jax.random.uniform(key, (n,), dtype)) / n
        u = jax.random.permutation(jax.random.fold_in(key, 1), u)
    else:
        u = jax.random.uniform(key, (n,), dtype)
    return t_min + (t_max - t_min) * u


def stratified_times(key, k: int, lo: float = 0.02, hi: float = 0.98):
    """K times, one uniform draw in each of K equal strata of [lo, hi] (shared by a batch)."""
    if k < 1 or not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"need k >= 1 and 0 <= lo < hi <= 1, got k={k}, lo={lo}, hi={hi}")
    return lo + (hi - lo) * (jnp.arange(k) + jax.random.uniform(key, (k,))) / k


def drop_labels(key, y, p: float, null_label: int | None):
    """Classifier-free guidance training: replace each label by ``null_label`` with probability p."""
    if y is None or p <= 0.0:
        return y
    if null_label is None:
        raise ValueError("label dropout needs num_classes (the null label is index num_classes)")
    drop = jax.random.bernoulli(key, p, y.shape)
    return jnp.where(drop, null_label, y)


def num_dims(x) -> int:
    return math.prod(x.shape[1:])
