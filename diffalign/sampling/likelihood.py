"""Exact log-likelihoods through the probability-flow ODE (Chen et al. 2018; Song et al. 2021).

Along dx/dt = v(x, t), d log p_t(x_t) / dt = -div v(x_t, t), so for data x0

    log p_0(x0) = log p_T(x_T) + integral_{t_min}^{T} div v(x_t, t) dt,

solved jointly for (x_t, integral) with an adaptive diffrax solver. The divergence is exact
(the trace of the Jacobian, D forward-mode passes) or Hutchinson's unbiased estimate
E_v[v^T J v] with Rademacher probes (one forward-mode pass per probe, Grathwohl et al. 2019).
"""

from __future__ import annotations

import math
from typing import Callable

import diffrax
import jax
import jax.numpy as jnp

from .adaptive import ode_solver, per_sample

DIVERGENCES = ("exact", "hutchinson")


def log_likelihood(
    velocity_fn: Callable,
    x,
    prior_logp: Callable,
    t_min: float,
    t_max: float,
    *,
    divergence: str = "exact",
    key=None,
    n_probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = "tsit5",
    max_steps: int = 4096,
    cond=None,
):
    """Per-sample log p(x) in nats, shape (B,).

    Args:
      velocity_fn: batched probability-flow field ``v(x (B, ...), t (B,))``.
      x: data points (B, ...), at t = t_min.
      prior_logp: log-density of the prior at t_max, batched ``(B, ...) -> (B,)``.
      divergence: "exact" or "hutchinson" (then ``key`` and ``n_probes`` are used).
      cond: optional per-sample conditioning (leading axis B), passed as ``velocity_fn(x, t, cond)``.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; expected one of {DIVERGENCES}")
    if divergence == "hutchinson" and key is None:
        raise ValueError("the Hutchinson divergence estimate needs a PRNG key")
    f = per_sample(velocity_fn)
    shape = x.shape[1:]

    def div_exact(t, y, c):
        flat = lambda z: f(t, z.reshape(shape), c).reshape(-1)  # noqa: E731
        jac = jax.jacfwd(flat)(y.reshape(-1))
        return f(t, y, c), jnp.trace(jac)

    def one(x0, probes, c):
        def aug(t, state, args):
            y, _ = state
            if divergence == "exact":
                v, div = div_exact(t, y, args)
            else:
                v, jvps = jax.vmap(lambda p: jax.jvp(lambda z: f(t, z, args), (y,), (p,)))(probes)
                v = v[0]
                div = jnp.mean(jnp.sum((jvps * probes).reshape(n_probes, -1), axis=-1))
            return v, div

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(aug),
            ode_solver(solver),
            t0=t_min,
            t1=t_max,
            dt0=(t_max - t_min) / 100.0,
            y0=(x0, jnp.zeros((), x0.dtype)),
            args=c,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            saveat=diffrax.SaveAt(t1=True),
            max_steps=max_steps,
        )
        return sol.ys[0][0], sol.ys[1][0]

    if divergence == "hutchinson":
        probes = jax.random.rademacher(key, (x.shape[0], n_probes) + shape, dtype=x.dtype)
    else:
        probes = jnp.zeros((x.shape[0], 1) + (1,) * len(shape), x.dtype)  # unused
    x_T, integral = jax.vmap(one)(x, probes, cond)
    return prior_logp(x_T) + integral


def bits_per_dim(logp, num_dims: int, *, scale: float = 1.0, num_levels: int | None = None):
    """Bits per dimension of discrete data from a continuous log-density of dequantised data.

    Data values k in {0, ..., K-1} are dequantised as y = (k + u) / K, u ~ U[0, 1)^D, and
    modelled as x = scale * y + shift. Then log P(k) >= E_u log p_x(x) + D log(scale) - D log(K)
    (Theis et al. 2016; Ho et al. 2019), and bits/dim = -log P(k) / (D ln 2). Without
    ``num_levels`` this is the continuous density's bits/dim of x.
    """
    if num_levels is not None:
        logp = logp + num_dims * (math.log(scale) - math.log(num_levels))
    return -logp / (num_dims * math.log(2.0))
