"""DMD (Yin et al., CVPR 2024): a one-step generator by distribution matching plus regression.

One fake-score update per generator update; the generator's loss is 1/2 ||x - sg(x - g)||^2 with
g = (mu_fake - mu_real) / mean|x - mu_real| at t ~ U[t_range], plus ``regression_weight`` times
the squared error to precomputed teacher ODE pairs (``batch["z"]`` -> ``batch["y"]``; LPIPS in
the paper, Euclidean here).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from . import objectives as O
from .base import DistillationMethod


def distribution_matching_loss(method: DistillationMethod, experts, fake, key):
    """DMD / DMD2's generator loss: the prediction at a backward-simulated step k ~ U{0..K-1}
    (through the current generator, detached), pushed by the DMD gradient at t ~ U[t_range]."""
    z, kr, kk, kt, eps = method.draws(key)
    B = method.batch_size
    lo, hi = method.t_range
    states, _ = method.rollout(jax.lax.stop_gradient(experts), z, key=kr)
    k = jax.random.randint(kk, (B,), 0, method.student_steps)
    x_in, t_in = method.pick(states[:-1], k), method.grid[k]
    x = method.predictor(method.expert(experts, 0)).x0(jax.lax.stop_gradient(x_in), t_in)
    t = jax.random.uniform(kt, (B,), minval=lo, maxval=hi)
    x_t = method.path.interpolate(jax.lax.stop_gradient(x), eps, t)
    mu_fake, mu_real = method.denoisers(fake, x_t, t)
    return O.matching_loss(x, O.dm_gradient(mu_fake, mu_real, jax.lax.stop_gradient(x)))


def final_predictions(method: DistillationMethod, experts, key):
    """(x_s, s, t_max) for the fake score: the generator's prediction at a random step, at s = 0."""
    B = method.batch_size
    kz, kr, kk = jax.random.split(key, 3)
    z = method.prior_noise(kz, (B,) + method.data_shape)
    _, x0s = method.rollout(jax.lax.stop_gradient(experts), z, key=kr)
    k = jax.random.randint(kk, (B,), 0, method.student_steps)
    return method.pick(x0s, k), jnp.zeros((B,)), jnp.ones((B,))


@dataclasses.dataclass(frozen=True)
class DMD(DistillationMethod):
    """DMD: ``regression_weight`` weighs the regression to the teacher's ODE pairs (0: off)."""

    name = "dmd"
    default_fake_updates = 1

    regression_weight: float = 0.25

    def __post_init__(self):
        super().__post_init__()
        if self.student_steps != 1:
            raise ValueError("dmd distils a one-step generator (student_steps=1); use dmd2, phased-dmd or tdm for more")

    def fake_sample(self, experts, phase, key):
        return final_predictions(self, experts, key)

    def generator_loss(self, experts, fake, batch, key, phase: int = 0):
        loss = distribution_matching_loss(self, experts, fake, key)
        terms = {"loss_dm": loss}
        if self.regression_weight > 0:
            y_hat = self.sample(experts, batch["z"])
            reg = jnp.mean(((y_hat - batch["y"]) ** 2).reshape(self.batch_size, -1), axis=-1)
            terms["loss_regression"] = reg
            loss = loss + self.regression_weight * reg
        return loss, terms
