"""The network side of the score-estimation reproduction: a wide two-layer ReLU network in the
NTK parametrisation, trained by full-batch gradient descent inside one jitted ``lax.scan``.

Plain GD (p <- p - lr grad), not the library's optimizer update: the paper's statement is about
exactly this iteration, whose function-space limit is kernel GD with eta = lr / n
(``score_estimation.KernelGD``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class TwoLayerNet:
    """f(z) = width^{-1/2} sum_r a_r relu(w_r . z) in the NTK parametrisation, no biases.

    w_r ~ N(0, I), a_r = +-1. ``symmetric=True`` draws width / 2 pairs (w, a) and (w, -a), so
    f_0 = 0 (up to float32 summation round-off, ~1e-7) while the tangent kernel is that of a width-``width`` network. Its NTK
    tends to :func:`analytic_ntk` as width -> infinity.
    """

    width: int
    in_dim: int = 3
    symmetric: bool = True

    def __post_init__(self):
        if self.width < 1 or self.in_dim < 1:
            raise ValueError(f"width and in_dim must be >= 1, got {self.width}, {self.in_dim}")
        if self.symmetric and self.width % 2:
            raise ValueError(f"a symmetric init needs an even width, got {self.width}")

    def init(self, key) -> dict:
        half = self.width // 2 if self.symmetric else self.width
        kw, ka = jax.random.split(key)
        w = jax.random.normal(kw, (half, self.in_dim))
        a = jax.random.rademacher(ka, (half,), dtype=jnp.float32)
        if self.symmetric:
            w, a = jnp.concatenate([w, w]), jnp.concatenate([a, -a])
        return {"w": w, "a": a}

    @staticmethod
    def apply(params, z):
        """(B, d) -> (B,)."""
        h = jax.nn.relu(z @ params["w"].T)
        return h @ params["a"] / jnp.sqrt(params["a"].shape[0]).astype(h.dtype)


def _mse(apply_fn, params, z, y):
    return jnp.mean((apply_fn(params, z) - y) ** 2)


def _train_scan(apply_fn, params, lr, deltas, z_train, y_train, z_test, f_test, z_val, y_val):
    grad = jax.grad(lambda p: 0.5 * _mse(apply_fn, p, z_train, y_train))

    def step(_, p):
        g = grad(p)
        return jax.tree.map(lambda a, b: a - lr * b, p, g)

    def segment(p, d):
        p = jax.lax.fori_loop(0, d, step, p)
        rec = (_mse(apply_fn, p, z_test, f_test), apply_fn(p, z_val),
               _mse(apply_fn, p, z_train, y_train))
        return p, rec

    return jax.lax.scan(segment, params, deltas)


_train_scan_jit = jax.jit(_train_scan, static_argnums=0)


def train_two_layer(apply_fn: Callable, params, z_train, y_train, *, lr: float,
                    record_steps: Sequence[int], z_test, f_test, z_val, y_val) -> dict:
    """Full-batch GD on mean (f(z_i) - y_i)^2 / 2 with step ``lr`` (one jitted ``lax.scan``).

    Records, after each step count in ``record_steps`` (increasing, >= 1): the test excess risk
    against f*, the predictions on the held-out inputs (``held_out_pred``, (R, n_val)) and their
    DSM loss against the labels x0 (``held_out_loss``), and the training loss. With lr = n / lam_max
    of the NTK Gram matrix this is, in function space, kernel GD with eta = 1 / lam_max.
    """
    steps = np.asarray(record_steps, np.int64)
    if steps.ndim != 1 or steps.size == 0 or steps[0] < 1 or np.any(np.diff(steps) <= 0):
        raise ValueError("record_steps must be a non-empty increasing sequence of integers >= 1")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    arrs = [jnp.asarray(a, jnp.float32) for a in (z_train, y_train, z_test, f_test, z_val, y_val)]
    for (z, y), name in zip([arrs[0:2], arrs[2:4], arrs[4:6]], ("train", "test", "held-out")):
        if z.ndim != 2 or y.shape != (z.shape[0],):
            raise ValueError(f"{name} inputs must be (n, d) with (n,) targets, got {z.shape}, {y.shape}")
    deltas = jnp.asarray(np.diff(np.concatenate([[0], steps])), jnp.int32)
    params, (test_excess, held_out_pred, train) = _train_scan_jit(
        apply_fn, params, jnp.float32(lr), deltas, *arrs)
    held_out_pred = np.asarray(held_out_pred, np.float64)
    return {
        "steps": steps,
        "test_excess": np.asarray(test_excess, np.float64),
        "held_out_loss": np.mean((held_out_pred - np.asarray(y_val, np.float64)) ** 2, axis=1),
        "held_out_pred": held_out_pred,
        "train_loss": np.asarray(train, np.float64),
        "params": params,
    }
