"""Heating-annealing (forward-backward) sampling, Str2Str's zero-shot conformation sampler
(Lu et al., ICLR 2024), for any SDE of the library.

From one input x0: heat, x_T ~ q(x_T | x0) with the SDE's exact forward marginal at
T = ``t_delta``; anneal, integrate the reverse SDE (or the probability-flow ODE) from t_delta
down to t_min. Small t_delta stays near the input's basin; t_delta = t_max forgets it. This
is the textbook reverse process. Str2Str's released sampler differs in two ways (read from its
code; shared/reference/other-seed-methods.md): (1) its n Euler steps walk a grid from t_delta
to t_min but each uses dt = 1/n, so the drift is integrated over total time ~1 instead of
t_delta - t_min; (2) its probability-flow ODE halves the whole drift, (f - g^2 s) / 2 instead
of f - g^2 s / 2. ``str2str_compat=True`` reproduces both, to compare with released outputs:
the ensembles it gives are tighter ("over-annealed") than the process's law.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ..paths.conversions import Predictor
from ..sde.base import SDE
from . import deterministic
from .grids import time_grid
from .stochastic import euler_maruyama

METHODS = ("sde", "ode")


def heat_anneal(key, score_fn: Callable, sde: SDE, x0, t_delta: float, steps: int, *, method: str = "sde",
                replicas: int | None = None, denoise: bool = False, str2str_compat: bool = False):
    """Replicas of x0 (one per row, or ``replicas`` copies of a single x0) heated to ``t_delta``
    and annealed back with ``steps`` Euler(-Maruyama) steps; returns the annealed samples.

    ``denoise``: return Tweedie's E[x_0 | x_tmin] = (x + sigma^2 score) / alpha at t_min instead
    of the sample at t_min (whose marginal noise, sigma(t_min), can exceed the data's own
    fine structure); Str2Str likewise outputs its network's denoised structure at the last step.
    ``str2str_compat``: the released sampler's steps instead of the textbook ones (see above)."""
    if method not in METHODS:
        raise ValueError(f"unknown annealing method {method!r}; expected one of {METHODS}")
    if not sde.t_min < t_delta <= sde.t_max:
        raise ValueError(f"t_delta must be in ({sde.t_min}, {sde.t_max}], got {t_delta}")
    if replicas is not None:
        x0 = jnp.broadcast_to(x0, (replicas, *jnp.shape(x0)))
    k_heat, k_anneal = jax.random.split(key)
    x_t, _ = sde.marginal_sample(k_heat, x0, jnp.full((x0.shape[0],), t_delta, x0.dtype))
    if str2str_compat:
        x = _released_sampler(k_anneal, score_fn, sde, x_t, t_delta, steps, method)
    elif method == "sde":
        x = euler_maruyama(k_anneal, score_fn, sde, x_t, steps, t_start=t_delta)
    else:
        # the probability-flow ODE is the path's velocity: the library's Euler on a grid from t_delta
        x = deterministic.euler(Predictor(score_fn, sde, "score"), x_t, steps, ts=time_grid(sde, steps, t_start=t_delta))
    if denoise:
        x = Predictor(score_fn, sde, "score").x0(x, jnp.full((x.shape[0],), sde.t_min, x.dtype))
    return x


def _released_sampler(key, score_fn, sde: SDE, x, t_delta, steps, method):
    """Str2Str's released reverse loop: ``steps`` points from t_delta down to t_min, each an Euler
    step of size 1/steps; the ODE's drift is (f - g^2 s) / 2."""
    dt = 1.0 / steps
    ts = jnp.linspace(t_delta, sde.t_min, steps, dtype=x.dtype)

    def body(x, inp):
        t, k = inp
        tb = jnp.full((x.shape[0],), t, x.dtype)
        f, s = sde.drift(x, tb), score_fn(x, tb)
        g = sde.diffusion(tb).reshape((-1,) + (1,) * (x.ndim - 1))
        if method == "ode":
            return x - 0.5 * (f - g**2 * s) * dt, None
        return x - (f - g**2 * s) * dt + g * jnp.sqrt(dt) * jax.random.normal(k, x.shape, x.dtype), None

    x, _ = jax.lax.scan(body, x, (ts, jax.random.split(key, steps)))
    return x
