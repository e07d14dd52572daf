"""Distances between sample sets: exact W2 and the energy distance."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _check_sets(name: str, x, y) -> None:
    """Two non-empty sets of points of one dimension (rows are points, each flattened)."""
    sx, sy = np.shape(x), np.shape(y)
    if len(sx) < 1 or len(sy) < 1 or sx[0] == 0 or sy[0] == 0 or math.prod(sx[1:]) != math.prod(sy[1:]):
        raise ValueError(f"{name} needs two non-empty sets of points of one dimension (rows are points), "
                         f"got arrays of shapes {sx} and {sy}")


def wasserstein2(x, y, *, max_iter: int = 100_000_000) -> float:
    """Exact 2-Wasserstein distance between two empirical measures with uniform weights.

    W2 = sqrt(min over couplings of E ||x - y||^2). Solved with POT's network simplex
    (``ot.emd2``) when installed; otherwise, for equal sizes, with scipy's
    ``linear_sum_assignment`` (uniform weights and equal sizes make the optimal plan a
    permutation, so both are exact; POT is several times faster at 10k points).
    """
    _check_sets("wasserstein2", x, y)
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    cost = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    np.maximum(cost, 0.0, out=cost)
    try:
        import ot
    except ImportError:
        ot = None
    if ot is not None:
        a = np.full(len(x), 1.0 / len(x))
        b = np.full(len(y), 1.0 / len(y))
        return float(np.sqrt(ot.emd2(a, b, cost, numItermax=max_iter)))
    if len(x) != len(y):
        raise ImportError("W2 between sets of different sizes needs POT: pip install 'diffalign[experiments]'")
    from scipy.optimize import linear_sum_assignment

    r, c = linear_sum_assignment(cost)
    return float(np.sqrt(cost[r, c].mean()))


def _mean_pairwise_distance(a, b, chunk: int):
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    pad = (-a.shape[0]) % chunk
    a_p = jnp.pad(a, ((0, pad), (0, 0)))
    mask = jnp.pad(jnp.ones(a.shape[0]), (0, pad)).reshape(-1, chunk)

    def row(args):
        block, m = args
        d = jnp.sqrt(jnp.maximum(jnp.sum((block[:, None, :] - b[None, :, :]) ** 2, -1), 0.0))
        return jnp.sum(d.sum(-1) * m)

    sums = jax.lax.map(row, (a_p.reshape(-1, chunk, a.shape[1]), mask))
    return jnp.sum(sums) / (a.shape[0] * b.shape[0])


def energy_distance(x, y, *, chunk: int = 512) -> float:
    """Energy distance sqrt(2 E|X - Y| - E|X - X'| - E|Y - Y'|) (Szekely & Rizzo), V-statistic.

    Zero exactly when the two empirical measures coincide; computed in chunks on device.
    """
    _check_sets("energy_distance", x, y)
    x = np.asarray(x).reshape(len(x), -1)
    y = np.asarray(y).reshape(len(y), -1)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    f = jax.jit(_mean_pairwise_distance, static_argnums=2)
    d2 = 2 * f(x, y, chunk) - f(x, x, chunk) - f(y, y, chunk)
    return float(jnp.sqrt(jnp.maximum(d2, 0.0)))


def frechet_distance(x, y) -> float:
    """Frechet distance between Gaussians fitted to two sample sets (rows are points):
    ||mu_x - mu_y||^2 + tr(C_x + C_y - 2 (C_x C_y)^(1/2)), the FID / FCD formula (Heusel et al. 2017)."""
    import scipy.linalg

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"frechet_distance needs two (n >= 2, d) arrays of one d, got {x.shape} and {y.shape}")
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(np.atleast_2d(cx) @ np.atleast_2d(cy))
    root = root.real if np.iscomplexobj(root) else root
    return float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(np.atleast_2d(cx) + np.atleast_2d(cy) - 2 * root))
