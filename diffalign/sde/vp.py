"""Variance-preserving (VP) and sub-VP SDEs (Song et al. 2021; DDPM in continuous time)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ..paths.base import bcast
from .base import SDE
from .registry import register_sde


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LinearBetaSDE(SDE):
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3

    def __post_init__(self):
        if not (0 <= self.beta_min < self.beta_max):
            raise ValueError(
                f"{type(self).__name__} needs 0 <= beta_min < beta_max, got "
                f"beta_min={self.beta_min}, beta_max={self.beta_max}"
            )
        if not (0 <= self.t_min < self.t_max):
            raise ValueError(f"need 0 <= t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}")

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def int_beta(self, t):
        """integral_0^t beta(s) ds."""
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def drift(self, x, t):
        return -0.5 * bcast(self.beta(t), x) * x

    def langevin_alpha(self, t, dt):
        # score_sde uses alpha_i = 1 - beta_i of the discrete DDPM chain, beta_i = beta(t) dt.
        return 1.0 - self.beta(t) * dt


@register_sde("vp")
@dataclasses.dataclass(frozen=True, kw_only=True)
class VPSDE(_LinearBetaSDE):
    """dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW, beta linear from beta_min to beta_max.

    alpha(t) = exp(-int_0^t beta / 2), sigma(t)^2 = 1 - alpha(t)^2; prior N(0, I).
    """

    def coeffs(self, t):
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        log_alpha = -0.5 * self.int_beta(t)
        return jnp.exp(log_alpha), jnp.sqrt(-jnp.expm1(2.0 * log_alpha))

    def diffusion(self, t):
        return jnp.sqrt(self.beta(t))


@register_sde("subvp")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SubVPSDE(_LinearBetaSDE):
    """dx = -beta x / 2 dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dW.

    Same mean as VP, std sigma(t) = 1 - exp(-int_0^t beta) = 1 - alpha^2, never above VP's;
    Song et al. 2021 report better likelihoods with it.
    """

    def coeffs(self, t):
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        ib = self.int_beta(t)
        return jnp.exp(-0.5 * ib), -jnp.expm1(-ib)

    def diffusion(self, t):
        return jnp.sqrt(self.beta(t) * -jnp.expm1(-2.0 * self.int_beta(t)))
