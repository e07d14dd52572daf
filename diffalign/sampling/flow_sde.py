"""Flow-GRPO's marginal-preserving SDE for rectified flows (Liu et al. 2025), as a sampler.

On the linear path x_t = (1 - t) x0 + t x1 with velocity v, the SDE

    dx = [v + sigma_t^2 / (2 t) (x + (1 - t) v)] (-dt) + sigma_t dW,   sigma_t = a sqrt(t / (1 - t)),

has the flow's marginals for any a; Flow-GRPO samples it with Euler-Maruyama (every step but the
last, which is the deterministic Euler step) and trains on the Gaussian log-probabilities of the
stored transitions (``align.rl.flow_grpo_rows``). As a ``sampling.sample`` method: ``"flow_grpo"``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

GRPO_NOISE = 0.7  # Flow-GRPO's a in sigma_t = a sqrt(t / (1 - t))


def flow_sde_sigma(t, t_cap, a: float = GRPO_NOISE):
    """Flow-GRPO's noise level a sqrt(t / (1 - t)), with t = 1 in the denominator replaced by
    ``t_cap`` (the grid's largest time below 1), as its code does."""
    return a * jnp.sqrt(t / (1.0 - jnp.minimum(t, t_cap)))


def flow_sde_step_moments(v, x, t, t_next, t_cap, a: float = GRPO_NOISE):
    """Mean and std of Flow-GRPO's step from t to t_next < t (dt = t - t_next):

        mean = x (1 - sigma^2 dt / (2 t)) - dt (1 + sigma^2 (1 - t) / (2 t)) v,   std = sigma sqrt(dt).

    ``t``, ``t_next`` broadcast against x's leading axis; the step to t_next = 0 is left to the
    caller (it is taken deterministically)."""
    t = jnp.reshape(t, (-1,) + (1,) * (x.ndim - 1))
    t_next = jnp.reshape(t_next, t.shape)
    dt = t - t_next
    s = flow_sde_sigma(t, t_cap, a)
    mean = x * (1.0 - s**2 * dt / (2.0 * t)) - dt * (1.0 + s**2 * (1.0 - t) / (2.0 * t)) * v
    return mean, s * jnp.sqrt(dt)


def flow_grpo_sde(key, velocity: Callable, x1, ts, a: float = GRPO_NOISE, *, noisy_last: bool = False,
                  log_probs: bool = False):
    """Integrate ``velocity(x, t)`` from x1 at ts[0] = 1 down the grid ``ts`` (ending at 0) with
    Flow-GRPO's SDE; returns (samples, the trajectory of len(ts) states). Step i draws its noise
    from ``fold_in(key, i)``. The step to t = 0 is the deterministic Euler step unless
    ``noisy_last`` (the released code samples every step). With ``log_probs`` it also returns
    each step's Gaussian log-density of the state it drew, (steps, B), averaged over the
    non-batch dimensions as the code does (a deterministic last step scores 0)."""

    def body(x, inp):
        (t, t_next), i = inp
        tb = jnp.full((x.shape[0],), t, x.dtype)
        v = velocity(x, tb)
        mean, std = flow_sde_step_moments(v, x, tb, jnp.full_like(tb, t_next), ts[1], a)
        z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        stochastic = (t_next > 0) | noisy_last
        x = jnp.where(stochastic, mean + std * z, x - (t - t_next) * v)
        lp = -0.5 * z**2 - jnp.log(std) - 0.5 * jnp.log(2.0 * jnp.pi)
        lp = jnp.where(stochastic, jnp.mean(lp.reshape(x.shape[0], -1), axis=-1), 0.0)
        return x, (x, lp)

    x, (xs, lps) = jax.lax.scan(body, x1, ((ts[:-1], ts[1:]), jnp.arange(ts.shape[0] - 1)))
    traj = jnp.concatenate([x1[None], xs])
    return (x, traj, lps) if log_probs else (x, traj)
