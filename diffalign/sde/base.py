"""The SDE interface: forward drift and diffusion, closed-form marginals, prior, reverse.

Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations"
(ICLR 2021). A forward SDE dx = f(x, t) dt + g(t) dW with affine drift has Gaussian
marginals x_t | x0 ~ N(alpha(t) x0, sigma(t)^2 I), so every SDE here is also an
``AffinePath`` and shares the path samplers and conversions. Its time reversal is

    dx = [f(x, t) - g(t)^2 score(x, t)] dt + g(t) dW_bar,

and the probability-flow ODE with the same marginals is dx/dt = f(x, t) - g(t)^2 score / 2.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from ..paths.base import AffinePath, bcast


@dataclasses.dataclass(frozen=True, kw_only=True)
class SDE(AffinePath):
    """Abstract forward SDE on [t_min, t_max] with Gaussian marginals (t = 0 is data)."""

    def drift(self, x, t):
        """f(x, t) for per-example times t of shape (B,)."""
        raise NotImplementedError

    def diffusion(self, t):
        """g(t), elementwise in t."""
        raise NotImplementedError

    def marginal(self, x0, t):
        """(mean, std) of x_t | x0: mean = alpha(t) x0, std = sigma(t) (shape (B,))."""
        alpha, sigma = self.coeffs(t)
        return bcast(alpha, x0) * x0, sigma

    def marginal_sample(self, key, x0, t):
        """A draw of x_t | x0 and the standard-normal noise used: (x_t, noise)."""
        noise = jax.random.normal(key, x0.shape, x0.dtype)
        return self.interpolate(x0, noise, t), noise

    def langevin_alpha(self, t, dt):
        """The alpha_i factor of the Langevin corrector's step (score_sde): 1 unless overridden."""
        del dt
        return jnp.ones_like(t)

    def reverse(self, score_fn: Callable, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE, or the probability-flow ODE, driven by ``score_fn(x, t)``."""
        return ReverseSDE(self, score_fn, probability_flow)

    def pf_ode_velocity(self, score_fn: Callable) -> Callable:
        """dx/dt of the probability-flow ODE as a function (x, t) -> velocity."""
        return self.reverse(score_fn, probability_flow=True).drift


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """dx = [f - c g^2 score] dt + (1 - pf) g dW_bar, integrated from t_max down to t_min.

    c = 1 for the reverse SDE, 1/2 (and no noise) for the probability-flow ODE. ``drift`` is
    the coefficient of dt in forward time, so an Euler step backwards is x - drift * |dt|.
    """

    sde: SDE
    score_fn: Callable
    probability_flow: bool = False

    def drift(self, x, t):
        g2 = bcast(self.sde.diffusion(t) ** 2, x)
        c = 0.5 if self.probability_flow else 1.0
        return self.sde.drift(x, t) - c * g2 * self.score_fn(x, t)

    def diffusion(self, t):
        return jnp.zeros_like(t) if self.probability_flow else self.sde.diffusion(t)
