"""Reverse-time samplers of a system of SDEs on graphs (X, A): GDSS's PC and S4, as ``lax.scan`` loops.

Jo, Lee & Hwang, ICML 2022. Graphs are dense and padded: X (B, N, F), A (B, N, N) symmetric
with a zero diagonal, node flags (B, N); every noise and output is masked by the flags.
Details kept exactly as in GDSS's ``solver.py`` (they move MMDs at the 1e-3 level):

* the grid is t_i = linspace(1, sample_eps, N) but every step uses h = 1/N, and the discrete
  schedules (``SDE.discretize``, ``discrete_langevin_alpha``) are indexed by i = floor(t (N-1));
* the Langevin step uses batch means of per-graph norms, its noise scaled by ``scale_eps``;
* PC corrects X and A from the same (old) X, then predicts both from the same X;
* S4 evaluates each score once per step, corrects with it, then predicts by a Strang splitting:
  half a linear step (``SDE.transition``), a full score step with the stale score, half a linear
  step;
* the prior is N(0, prior_std^2) per SDE (sigma_max for VE), masked; the final mean is returned.

Predictors and correctors come from the registries of ``sampling.predictors``, so a registered
kernel is usable here by name. Network evaluations per step: PC 4 (2 without a corrector), S4 2.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ..paths.base import bcast
from .predictors import CORRECTORS, PREDICTORS, get_corrector, get_predictor

SOLVERS = ("pc", "s4")
__all__ = ["CORRECTORS", "PREDICTORS", "SOLVERS", "evaluations_per_step", "graph_log_prob", "graph_prior",
           "graph_step_moments", "mask_adj", "mask_x", "sample_graph_trajectories", "sample_graphs", "sym_noise",
           "x_noise"]


def mask_x(x, flags):
    """Zero the features of padding nodes: x (B, N, F), flags (B, N)."""
    return x * flags[..., None]


def mask_adj(a, flags):
    """Mask (B, ..., N, N) adjacencies (any channel axes between batch and nodes) by the flags."""
    f = flags.reshape(flags.shape[:1] + (1,) * (a.ndim - 3) + flags.shape[1:])
    return a * f[..., :, None] * f[..., None, :]


def x_noise(key, shape, flags, dtype=jnp.float32):
    """Standard normal node features, masked by the flags."""
    return mask_x(jax.random.normal(key, shape, dtype), flags)


def sym_noise(key, shape, flags, dtype=jnp.float32):
    """Symmetric standard normal noise with a zero diagonal, masked by the flags."""
    z = jnp.triu(jax.random.normal(key, shape, dtype), 1)
    return mask_adj(z + jnp.swapaxes(z, -1, -2), flags)


def graph_prior(key_x, key_a, sde_x, sde_a, flags, num_features: int):
    """(X, A) from the priors: X ~ N(0, prior_std_x^2) masked, A symmetric noise times prior_std_a
    (sigma_max for VE, 1 for VP and sub-VP)."""
    b, n = flags.shape
    return (sde_x.prior_std * x_noise(key_x, (b, n, num_features), flags),
            sde_a.prior_std * sym_noise(key_a, (b, n, n), flags))


def sample_graphs(
    key,
    gsde,
    score_x: Callable,
    score_a: Callable,
    flags,
    num_features: int,
    *,
    solver: str = "pc",
    predictor: str = "euler",
    corrector: str = "langevin",
    snr: float = 0.1,
    scale_eps: float = 1.0,
):
    """Sample (X, A) for given node flags (B, N); returns the final means.

    ``gsde`` has ``sde_x``, ``sde_a``, ``num_scales`` (N) and ``sample_eps`` (as
    ``graphs.system.GraphSDE``). ``score_x(x, adj, flags, t)`` and ``score_a(...)`` are the
    system's scores at per-graph times t (B,). ``predictor`` and ``corrector`` are registered
    names (``register_predictor``, ``register_corrector``); S4 uses only the corrector.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown graph solver {solver!r}; expected one of {SOLVERS}")
    predict = get_predictor(predictor)
    correct = get_corrector(corrector)
    use_corrector = corrector != "none"
    b = flags.shape[0]
    n = gsde.num_scales
    sx, sa = gsde.sde_x, gsde.sde_a
    k0, k1, kloop = jax.random.split(key, 3)
    x, adj = graph_prior(k0, k1, sx, sa, flags, num_features)
    ts = jnp.linspace(1.0, gsde.sample_eps, n)
    h = 1.0 / n
    corr = {"n": n, "snr": snr, "scale_eps": scale_eps}

    def pc_step(carry, inp):
        x, adj, _, _ = carry
        t_scalar, key = inp
        t = jnp.full((b,), t_scalar)
        kcx, kca, kpx, kpa = jax.random.split(key, 4)
        if use_corrector:
            x_old = x
            x, _ = correct(sx, x, score_x(x_old, adj, flags, t), t, x_noise(kcx, x.shape, flags), **corr)
            adj, _ = correct(sa, adj, score_a(x_old, adj, flags, t), t, sym_noise(kca, adj.shape, flags), **corr)
        x_new, x_mean = predict(sx, x, score_x(x, adj, flags, t), t, x_noise(kpx, x.shape, flags), h=h, n=n)
        adj_new, adj_mean = predict(sa, adj, score_a(x, adj, flags, t), t, sym_noise(kpa, adj.shape, flags),
                                    h=h, n=n)
        return (x_new, adj_new, x_mean, adj_mean), None

    def s4_step(carry, inp):
        x, adj, _, _ = carry
        t_scalar, key = inp
        t = jnp.full((b,), t_scalar)
        k = jax.random.split(key, 6)
        s_x = score_x(x, adj, flags, t)
        s_a = score_a(x, adj, flags, t)
        drift_x = -bcast(sx.diffusion(t) ** 2, s_x) * s_x
        drift_a = -bcast(sa.diffusion(t) ** 2, s_a) * s_a
        if use_corrector:
            x, _ = correct(sx, x, s_x, t, x_noise(k[0], x.shape, flags), **corr)
            adj, _ = correct(sa, adj, s_a, t, sym_noise(k[1], adj.shape, flags), **corr)
        half = jnp.full((b,), -h / 2)
        mu, std = sx.transition(x, t, half)
        x = mu + bcast(std, x) * x_noise(k[2], x.shape, flags)
        mu, std = sa.transition(adj, t, half)
        adj = mu + bcast(std, adj) * sym_noise(k[3], adj.shape, flags)
        x = x - drift_x * h
        adj = adj - drift_a * h
        mu_x, std = sx.transition(x, t + half, half)
        x = mu_x + bcast(std, x) * x_noise(k[4], x.shape, flags)
        mu_a, std = sa.transition(adj, t + half, half)
        adj = mu_a + bcast(std, adj) * sym_noise(k[5], adj.shape, flags)
        return (x, adj, mu_x, mu_a), None

    step = pc_step if solver == "pc" else s4_step
    (_, _, x_mean, adj_mean), _ = jax.lax.scan(step, (x, adj, x, adj), (ts, jax.random.split(kloop, n)))
    return mask_x(x_mean, flags), mask_adj(adj_mean, flags)


def evaluations_per_step(solver: str, corrector: str) -> int:
    """Network evaluations (of both networks) per step: S4 2, PC 4, PC without a corrector 2."""
    if solver == "s4":
        return 2
    return 2 if corrector == "none" else 4


def graph_step_moments(gsde, predictor: str, score_x, score_a, x, adj, flags, t):
    """Mean and std of one predictor step of (X, A) at per-graph times t (B,), as Gaussians:
    the step is x_new = mean + std * z for masked z (symmetric for A), so std is read off the
    predictor as its output at z = 1 minus its mean. For Flow-GRPO-style policy gradients on the
    graph sampler (``graphs.align``); no corrector is part of the policy."""
    predict = get_predictor(predictor)
    n, h = gsde.num_scales, 1.0 / gsde.num_scales
    sx, sa = score_x(x, adj, flags, t), score_a(x, adj, flags, t)
    ones_x, ones_a = jnp.ones_like(x), jnp.ones_like(adj)
    shifted_x, mean_x = predict(gsde.sde_x, x, sx, t, ones_x, h=h, n=n)
    shifted_a, mean_a = predict(gsde.sde_a, adj, sa, t, ones_a, h=h, n=n)
    return mean_x, shifted_x - mean_x, mean_a, shifted_a - mean_a


def graph_log_prob(x_next, mean_x, std_x, a_next, mean_a, std_a, flags):
    """log N of a graph step, averaged over its free entries (as Flow-GRPO averages over latent
    dimensions): the features of real nodes and the upper triangle of A between real nodes. (B,)"""
    fx = jnp.broadcast_to(flags[..., None], x_next.shape)
    upper = jnp.triu(jnp.ones(a_next.shape[-2:], a_next.dtype), 1)
    fa = flags[..., :, None] * flags[..., None, :] * upper
    log_norm = 0.5 * jnp.log(2.0 * jnp.pi)

    def part(v, mean, std, m):
        std = jnp.where(m > 0, std, 1.0)
        lp = -0.5 * ((v - mean) / std) ** 2 - jnp.log(std) - log_norm
        return jnp.sum((lp * m).reshape(v.shape[0], -1), -1), jnp.sum(m.reshape(v.shape[0], -1), -1)

    sx, cx = part(x_next, mean_x, std_x, fx)
    sa, ca = part(a_next, mean_a, std_a, fa)
    return (sx + sa) / jnp.maximum(cx + ca, 1.0)


def sample_graph_trajectories(key, gsde, score_x, score_a, flags, num_features: int, *, predictor: str = "reverse"):
    """The predictor-only sampler as a Gaussian policy: (X, A) final means (as ``sample_graphs``
    returns), the trajectories X (B, N_steps + 1, N, F) and A (B, N_steps + 1, N, N) of the
    states drawn, and each step's log-probability (B, N_steps) under ``graph_log_prob``."""
    sx, sa = gsde.sde_x, gsde.sde_a
    b, n = flags.shape[0], gsde.num_scales
    k0, k1, kloop = jax.random.split(key, 3)
    x, adj = graph_prior(k0, k1, sx, sa, flags, num_features)
    ts = jnp.linspace(1.0, gsde.sample_eps, n)

    def step(carry, inp):
        x, adj = carry
        t_scalar, key = inp
        t = jnp.full((b,), t_scalar)
        kx, ka = jax.random.split(key)
        mean_x, std_x, mean_a, std_a = graph_step_moments(gsde, predictor, score_x, score_a, x, adj, flags, t)
        x_new = mean_x + std_x * x_noise(kx, x.shape, flags)
        a_new = mean_a + std_a * sym_noise(ka, adj.shape, flags)
        lp = graph_log_prob(x_new, mean_x, std_x, a_new, mean_a, std_a, flags)
        return (x_new, a_new), (x_new, a_new, mask_x(mean_x, flags), mask_adj(mean_a, flags), lp)

    _, (xs, adjs, mx, ma, lps) = jax.lax.scan(step, (x, adj), (ts, jax.random.split(kloop, n)))
    traj_x = jnp.swapaxes(jnp.concatenate([x[None], xs]), 0, 1)
    traj_a = jnp.swapaxes(jnp.concatenate([adj[None], adjs]), 0, 1)
    return mx[-1], ma[-1], traj_x, traj_a, lps.T
