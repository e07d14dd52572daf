"""Variance-exploding (VE) SDE (Song et al. 2021; SMLD / NCSN in continuous time)."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from .base import SDE, discrete_index
from .registry import register_sde


@register_sde("ve")
@dataclasses.dataclass(frozen=True, kw_only=True)
class VESDE(SDE):
    """dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dW, sigma(t) = sigma_min (sigma_max/sigma_min)^t.

    alpha = 1 and the marginal std is sigma(t) (score_sde's convention: the sigma_min^2 of
    the data-smoothing term is not subtracted). Prior N(0, sigma_max^2 I).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 1e-5

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(
                f"VESDE needs 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}"
            )
        if not (0 <= self.t_min < self.t_max):
            raise ValueError(f"need 0 <= t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}")

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def coeffs(self, t):
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        return jnp.ones_like(t), self.sigma(t)

    def drift(self, x, t):
        return jnp.zeros_like(x)

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))

    def discrete_sigmas(self, t, n: int):
        """SMLD's (sigma_i, sigma_{i-1}), sigma = geomspace(sigma_min, sigma_max, N), sigma_{-1} = 0."""
        i = discrete_index(t, n)
        sig = jnp.exp(jnp.linspace(jnp.log(self.sigma_min), jnp.log(self.sigma_max), n))
        return sig[i], jnp.where(i == 0, 0.0, sig[jnp.maximum(i - 1, 0)])

    def discretize(self, x, t, n: int):
        """SMLD (score_sde's VESDE.discretize): f = 0, G^2 = sigma_i^2 - sigma_{i-1}^2."""
        sig, sig_prev = self.discrete_sigmas(t, n)
        return jnp.zeros_like(x), sig**2 - sig_prev**2

    def transition(self, x, t, dt):
        """No drift: (x, sqrt(sigma(t)^2 - sigma(t+dt)^2)), exact in both time directions."""
        return x, jnp.sqrt(self.sigma(t) ** 2 - self.sigma(t + dt) ** 2)
