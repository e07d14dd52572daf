"""Fixed-step deterministic samplers as ``lax.scan`` loops, for any affine path.

All take a ``Predictor`` (a network with its path and parametrization) and integrate from
x at grid[0] (noise side) to grid[-1] (data side):

* ``euler`` / ``heun``: the probability-flow ODE dx/dt = v(x, t) with explicit Euler
  (NFE = steps) or Heun's second-order method (NFE = 2 steps).
* ``ddim``: Song, Meng & Ermon, ICLR 2021: x_s = alpha_s x0_hat + sigma_s eps_hat (eta = 0)
  or its stochastic version (eta > 0). NFE = steps. On the linear path it is exact Euler.
* ``dpm_solver_pp_2m``: Lu et al. 2022 (DPM-Solver++, Algorithm 2, multistep second order in
  lambda = log(alpha / sigma) with data prediction). NFE = steps.
* ``edm_heun``: Karras et al., NeurIPS 2022, Algorithm 1 (deterministic Heun in
  sigma~ = sigma / alpha and y = x / alpha, where dy / dsigma~ = eps_hat), on the EDM grid.
  NFE = 2 steps.

The update formulas are written with ratios of alpha and sigma so that a path with
alpha(1) = 0 (rectified flow) needs no special case.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..paths.conversions import Predictor
from .grids import time_grid


def _t(t, x):
    return jnp.full((x.shape[0],), t, dtype=x.dtype)


def euler(pred: Predictor, x, steps: int, *, grid: str = "uniform", ts=None, trajectory: bool = False):
    """Explicit Euler on the probability-flow ODE; ``trajectory`` returns all steps+1 states."""
    ts = time_grid(pred.path, steps, grid) if ts is None else ts

    def body(x, tt):
        t, t_next = tt
        x_next = x + (t_next - t) * pred.velocity(x, _t(t, x))
        return x_next, x_next if trajectory else None

    x_end, xs = jax.lax.scan(body, x, (ts[:-1], ts[1:]))
    return jnp.concatenate([x[None], xs]) if trajectory else x_end


def heun(pred: Predictor, x, steps: int, *, grid: str = "uniform", ts=None):
    ts = time_grid(pred.path, steps, grid) if ts is None else ts

    def body(x, tt):
        t, t_next = tt
        h = t_next - t
        v0 = pred.velocity(x, _t(t, x))
        x1 = x + h * v0
        v1 = pred.velocity(x1, _t(t_next, x))
        return x + 0.5 * h * (v0 + v1), None

    return jax.lax.scan(body, x, (ts[:-1], ts[1:]))[0]


def ddim(pred: Predictor, x, steps: int, *, eta: float = 0.0, key=None, grid: str = "uniform", ts=None):
    if eta > 0 and key is None:
        raise ValueError("stochastic DDIM (eta > 0) needs a PRNG key")
    path = pred.path
    ts = time_grid(path, steps, grid) if ts is None else ts
    keys = jax.random.split(key if key is not None else jax.random.key(0), steps)

    def body(x, inp):
        t, s, k = inp
        a_t, s_t = path.coeffs(t)
        a_s, s_s = path.coeffs(s)
        x0 = pred.x0(x, _t(t, x))
        eps = (x - a_t * x0) / s_t
        if eta > 0:
            ratio = (a_t * s_s) / (a_s * s_t)  # exp(-h), h = lambda_s - lambda_t
            c = eta * s_s * jnp.sqrt(jnp.maximum(1.0 - ratio**2, 0.0))
            noise = jax.random.normal(k, x.shape, x.dtype)
            return a_s * x0 + jnp.sqrt(jnp.maximum(s_s**2 - c**2, 0.0)) * eps + c * noise, None
        return a_s * x0 + s_s * eps, None

    return jax.lax.scan(body, x, (ts[:-1], ts[1:], keys))[0]


def dpm_solver_pp_2m(pred: Predictor, x, steps: int, *, grid: str = "log_snr", ts=None):
    path = pred.path
    ts = time_grid(path, steps, grid) if ts is None else ts
    lam = path.log_snr(ts)
    h = lam[1:] - lam[:-1]  # > 0, may be +inf for the first step when alpha(t_start) = 0
    h_prev = jnp.concatenate([jnp.full((1,), jnp.nan, h.dtype), h[:-1]])
    first = jnp.arange(steps) == 0

    def body(carry, inp):
        x, x0_prev = carry
        t, s, hi, hp, is_first = inp
        a_t, s_t = path.coeffs(t)
        a_s, s_s = path.coeffs(s)
        x0 = pred.x0(x, _t(t, x))
        inv_2r = jnp.where(is_first, 0.0, 0.5 * hp ** -1 * hi)  # 1 / (2 r), r = h_prev / h
        inv_2r = jnp.where(jnp.isfinite(inv_2r), inv_2r, 0.0)
        d = (1.0 + inv_2r) * x0 - inv_2r * x0_prev
        exp_neg_h = (a_t * s_s) / (s_t * a_s)
        return ((s_s / s_t) * x + a_s * (1.0 - exp_neg_h) * d, x0), None

    (x, _), _ = jax.lax.scan(body, (x, jnp.zeros_like(x)), (ts[:-1], ts[1:], h, h_prev, first))
    return x


def edm_heun(pred: Predictor, x, steps: int, *, rho: float = 7.0, ts=None):
    """EDM's deterministic Heun sampler; starts at sigma~ = min(sigma~(t_max), 80).

    If that is below the path's t_max, the starting noise is rescaled to the lower level
    (x <- x sigma(t_0) / sigma(t_max)), as EDM draws x ~ N(0, sigma_max^2): this assumes a
    Gaussian prior whose data component is negligible there.
    """
    path = pred.path
    if ts is None:
        ts = time_grid(path, steps, "edm", rho=rho, keep_start=False)
        x = x * path.coeffs(ts[0])[1] / path.coeffs(path.t_max)[1]

    def eps_hat(y, t):
        a, _ = path.coeffs(t)
        return pred.eps(a * y, _t(t, y))

    def body(y, tt):
        t, s = tt
        st, ss = jnp.exp(-path.log_snr(t)), jnp.exp(-path.log_snr(s))  # sigma~ = sigma / alpha
        d0 = eps_hat(y, t)
        y1 = y + (ss - st) * d0
        d1 = eps_hat(y1, s)
        return y + 0.5 * (ss - st) * (d0 + d1), None

    a0, _ = path.coeffs(ts[0])
    y, _ = jax.lax.scan(body, x / a0, (ts[:-1], ts[1:]))
    return y * path.coeffs(ts[-1])[0]
