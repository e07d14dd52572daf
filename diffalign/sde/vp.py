"""Variance-preserving (VP) and sub-VP SDEs (Song et al. 2021; DDPM in continuous time)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ..paths.base import bcast
from .base import SDE, discrete_index
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

    def discrete_beta(self, t, n: int):
        """DDPM's beta_i = linspace(beta_min / N, beta_max / N, N)[i] (= beta(i / (N-1)) / N)."""
        return jnp.linspace(self.beta_min / n, self.beta_max / n, n)[discrete_index(t, n)]

    def discrete_langevin_alpha(self, t, n: int):
        """alpha_i = 1 - beta_i (score_sde uses the DDPM alphas for VP and sub-VP alike)."""
        return 1.0 - self.discrete_beta(t, n)

    def _log_mean_coeff(self, t, dt):
        # 1/2 int_t^{t+dt} beta = dt (2 beta_min + (2 t + dt)(beta_max - beta_min)) / 4 (GDSS's form)
        return 0.25 * dt * (2 * self.beta_min + (2 * t + dt) * (self.beta_max - self.beta_min))


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

    def discretize(self, x, t, n: int):
        """DDPM (score_sde's VPSDE.discretize): f = (sqrt(alpha_i) - 1) x, G^2 = beta_i."""
        beta = self.discrete_beta(t, n)
        return bcast(jnp.sqrt(1.0 - beta), x) * x - x, beta

    def transition(self, x, t, dt):
        """(x / a, s) with a = exp(int_{t+dt}^t -beta / 2), s^2 = 1 - a^2 (GDSS's arithmetic)."""
        lmc = self._log_mean_coeff(t, dt)
        return bcast(jnp.exp(-lmc), x) * x, jnp.sqrt(1.0 - jnp.exp(2.0 * lmc))


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

    # discretize: score_sde's subVPSDE has none of its own and inherits SDE.discretize (EM).

    def transition(self, x, t, dt):
        """VP's mean x / a; s^2 = sigma(t)^2 - a^2 sigma(t+dt)^2 = (1 - a^2)(1 - e^{-B(t) - B(t+dt)}),
        B = int_0 beta: the forward kernel of sub-VP's own diffusion (VP's s^2 is 1 - a^2). Times
        below 0 (GDSS's last half-steps) count as 0 in B, where sub-VP's diffusion vanishes."""
        lmc = self._log_mean_coeff(t, dt)
        b = self.int_beta(jnp.maximum(t, 0.0)) + self.int_beta(jnp.maximum(t + dt, 0.0))
        return bcast(jnp.exp(-lmc), x) * x, jnp.sqrt(jnp.expm1(2.0 * lmc) * jnp.expm1(-b))
