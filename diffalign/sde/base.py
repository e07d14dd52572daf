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

    # GDSS's / score_sde's discretisation on N scales, index i = floor(t (N - 1)).

    def discretize(self, x, t, n: int):
        """(f, G^2) of one reverse-diffusion step, x <- x - f + G^2 score + G z (score_sde's
        ``SDE.discretize`` with dt = 1/N: f = drift dt, G^2 = g^2 dt); DDPM/SMLD override it."""
        dt = 1.0 / n
        return self.drift(x, t) * dt, self.diffusion(t) ** 2 * dt

    def discrete_langevin_alpha(self, t, n: int):
        """alpha_i of the Langevin corrector on N discrete scales: 1 unless overridden."""
        del n
        return jnp.ones(jnp.shape(t))

    def transition(self, x, t, dt):
        """GDSS's Gaussian transition of the linear part (no score) from t to t + dt, dt < 0.

        With x_t | x_{t+dt} ~ N(a x_{t+dt}, s^2) the forward kernel (a = alpha(t) / alpha(t+dt),
        s^2 = sigma(t)^2 - a^2 sigma(t+dt)^2), returns (x / a, s): GDSS's convention, first-order
        accurate for the reverse-time linear SDE (whose exact std is s / a). VP and VE override it
        with GDSS's arithmetic.
        """
        a_t, s_t = self.coeffs(t)
        a_p, s_p = self.coeffs(t + dt)
        a = a_t / a_p
        return x / bcast(a, x), jnp.sqrt(s_t**2 - (a * s_p) ** 2)

    def reverse(self, score_fn: Callable, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE, or the probability-flow ODE, driven by ``score_fn(x, t)``."""
        return ReverseSDE(self, score_fn, probability_flow)

    def pf_ode_velocity(self, score_fn: Callable) -> Callable:
        """dx/dt of the probability-flow ODE as a function (x, t) -> velocity."""
        return self.reverse(score_fn, probability_flow=True).drift


def discrete_index(t, n: int):
    """i = floor(t (N - 1)): the discrete scale of time t (score_sde, GDSS)."""
    return jnp.floor(t * (n - 1)).astype(jnp.int32)


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
