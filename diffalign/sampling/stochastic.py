"""Reverse-SDE samplers as ``lax.scan`` loops (Song et al. 2021, Algorithms 1-3 and score_sde).

* ``euler_maruyama``: x <- x - f_rev dt + g sqrt(dt) z, the last step without noise.
* ``predictor_corrector``: at each time, ``n_corrector`` Langevin corrector steps with the
  signal-to-noise step size eps = 2 alpha_i (snr ||z|| / ||score||)^2 (norms averaged over
  the batch, as in score_sde and GDSS), then one Euler-Maruyama predictor step.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ..sde.base import SDE
from .grids import time_grid
from .predictors import euler_maruyama_predictor, langevin_step


def _times(t, x):
    return jnp.full((x.shape[0],), t, dtype=x.dtype)


def _em_step(score_fn, sde, x, t, dt, key):
    tb = _times(t, x)
    noise = jax.random.normal(key, x.shape, x.dtype)
    return euler_maruyama_predictor(sde, x, score_fn(x, tb), tb, noise, h=dt)


def langevin_corrector(score_fn, sde: SDE, x, t, dt, key, *, snr: float, n_steps: int):
    """``n_steps`` Langevin MCMC steps at time t (``predictors.langevin_step``, alpha from
    ``sde.langevin_alpha(t, dt)``); returns (x, x_mean)."""
    tb = _times(t, x)
    alpha = sde.langevin_alpha(t, dt)
    x_mean = x
    for k in jax.random.split(key, n_steps):
        x, x_mean = langevin_step(x, score_fn(x, tb), jax.random.normal(k, x.shape, x.dtype), alpha, snr)
    return x, x_mean


def euler_maruyama(key, score_fn: Callable, sde: SDE, x_T, steps: int, *, grid: str = "uniform",
                   t_start: float | None = None):
    """Sample the reverse SDE from x_T at t_start (default t_max) down to t_min with ``steps``
    EM steps (NFE = steps)."""
    ts = time_grid(sde, steps, grid, t_start=t_start)

    def body(carry, inp):
        x, _ = carry
        t, t_next, k = inp
        return _em_step(score_fn, sde, x, t, t - t_next, k), None

    keys = jax.random.split(key, steps)
    (_, x_mean), _ = jax.lax.scan(body, (x_T, x_T), (ts[:-1], ts[1:], keys))
    return x_mean


def predictor_corrector(
    key,
    score_fn: Callable,
    sde: SDE,
    x_T,
    steps: int,
    *,
    snr: float = 0.16,
    n_corrector: int = 1,
    grid: str = "uniform",
):
    """Predictor-corrector sampling (NFE = steps * (1 + n_corrector))."""
    if n_corrector < 0:
        raise ValueError(f"n_corrector must be >= 0, got {n_corrector}")
    ts = time_grid(sde, steps, grid)

    def body(carry, inp):
        x, _ = carry
        t, t_next, k = inp
        k_c, k_p = jax.random.split(k)
        dt = t - t_next
        if n_corrector:
            x, _ = langevin_corrector(score_fn, sde, x, t, dt, k_c, snr=snr, n_steps=n_corrector)
        return _em_step(score_fn, sde, x, t, dt, k_p), None

    keys = jax.random.split(key, steps)
    (_, x_mean), _ = jax.lax.scan(body, (x_T, x_T), (ts[:-1], ts[1:], keys))
    return x_mean
