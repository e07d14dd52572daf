"""Affine Gaussian probability paths, the shared ground of SDEs and flow matching.

Every process in diffalign is written in one time convention: ``t = 0`` is data and
``t = 1`` is the source (noise, or a source distribution in flow matching), and a
path interpolates

    x_t = alpha(t) * x0 + sigma(t) * x1,        x0 ~ data, x1 ~ source.

The diffusion SDEs (VP, sub-VP, VE; Song et al. 2021) have Gaussian marginals of
exactly this form with x1 ~ N(0, I); flow-matching paths (rectified flow, the
trigonometric VP interpolant; Lipman et al. 2023, Liu et al. 2023, Albergo &
Vanden-Eijnden 2023) use it with any source. Samplers that only need alpha and sigma
(DDIM, DPM-Solver++, EDM's Heun) therefore work on all of them.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True, kw_only=True)
class AffinePath:
    """x_t = alpha(t) x0 + sigma(t) x1 on [t_min, t_max]; subclasses define ``coeffs``.

    Attributes:
      t_min: smallest time used for training and where samplers stop.
      t_max: time at which sampling starts (the source / prior).
    """

    t_min: float = 0.0
    t_max: float = 1.0

    def coeffs(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(alpha(t), sigma(t)), elementwise in ``t``."""
        raise NotImplementedError

    def coeffs_and_derivs(self, t: jax.Array):
        """(alpha, sigma, dalpha/dt, dsigma/dt), exact through forward-mode autodiff."""
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        (alpha, sigma), (dalpha, dsigma) = jax.jvp(self.coeffs, (t,), (jnp.ones_like(t),))
        return alpha, sigma, dalpha, dsigma

    @property
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian source N(0, prior_std^2 I) at t_max."""
        return 1.0

    def prior_sample(self, key, shape, dtype=jnp.float32):
        """A draw from the Gaussian source at t_max (a flow's noise, an SDE's prior)."""
        return self.prior_std * jax.random.normal(key, shape, dtype)

    def prior_logp(self, z):
        """Log-density of the Gaussian source, summed over all but the leading (batch) axis."""
        d = math.prod(z.shape[1:])
        s2 = self.prior_std**2
        sq = jnp.sum(z.reshape(z.shape[0], -1) ** 2, axis=-1)
        return -0.5 * d * math.log(2 * math.pi * s2) - 0.5 * sq / s2

    def log_snr(self, t: jax.Array) -> jax.Array:
        """lambda(t) = log(alpha / sigma), half the log signal-to-noise ratio (DPM-Solver's lambda)."""
        alpha, sigma = self.coeffs(t)
        return jnp.log(alpha) - jnp.log(sigma)

    def interpolate(self, x0, x1, t):
        """x_t for per-example times ``t`` of shape (B,)."""
        alpha, sigma = self.coeffs(t)
        return bcast(alpha, x0) * x0 + bcast(sigma, x0) * x1

    def velocity(self, x0, x1, t):
        """Conditional velocity d x_t / dt = alpha'(t) x0 + sigma'(t) x1."""
        _, _, dalpha, dsigma = self.coeffs_and_derivs(t)
        return bcast(dalpha, x0) * x0 + bcast(dsigma, x0) * x1

    def t_of_log_snr(self, lam: jax.Array, iters: int = 60) -> jax.Array:
        """Inverse of ``log_snr`` on [t_min, t_max] by bisection (log_snr decreases in t)."""
        lam = jnp.asarray(lam, dtype=jnp.result_type(float))
        lo = jnp.full_like(lam, self.t_min)
        hi = jnp.full_like(lam, self.t_max)

        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # still too little noise: move right
            return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

        lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
        return 0.5 * (lo + hi)


def bcast(c: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcast per-example coefficients of shape (B,) (or scalars) against x of shape (B, ...)."""
    c = jnp.asarray(c)
    if c.ndim == 0:
        return c
    if c.ndim > x.ndim or any(a != b and 1 not in (a, b) for a, b in zip(c.shape, x.shape)):
        # checked at trace time (static shapes), so a wrong time array fails here, by name
        raise ValueError(
            f"per-example times (or coefficients) of shape {tuple(c.shape)} do not fit a batch of shape "
            f"{tuple(x.shape)}: pass a scalar or one time per example, shape ({x.shape[0] if x.ndim else ''},)"
        )
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearPath(AffinePath):
    """Rectified flow / conditional flow matching path: alpha = 1 - t, sigma = t.

    Liu et al. 2023 (rectified flow), Lipman et al. 2023 and Tong et al. 2024 (CFM).
    Its velocity target is x1 - x0.
    """

    def coeffs(self, t):
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        return 1.0 - t, t


@dataclasses.dataclass(frozen=True, kw_only=True)
class CosinePath(AffinePath):
    """Trigonometric variance-preserving interpolant: alpha = cos(pi t / 2), sigma = sin(pi t / 2).

    Albergo & Vanden-Eijnden 2023; torchcfm's VariancePreservingConditionalFlowMatcher.
    """

    def coeffs(self, t):
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        return jnp.cos(0.5 * math.pi * t), jnp.sin(0.5 * math.pi * t)


def get_path(name: str, **kwargs) -> AffinePath:
    """A path by name: ``"linear"``, ``"cosine"``, or any registered SDE (``"vp"``, ``"ve"``, ...).

    Using an SDE as a flow-matching path gives e.g. Lipman et al.'s VP path
    (alpha = exp(-int beta / 2), sigma = sqrt(1 - alpha^2)).
    """
    if name == "linear":
        return LinearPath(**kwargs)
    if name == "cosine":
        return CosinePath(**kwargs)
    from ..sde.registry import available_sdes, get_sde

    if name in available_sdes():
        return get_sde(name, **kwargs)
    raise ValueError(
        f"unknown path {name!r}; expected 'linear', 'cosine' or an SDE name ({', '.join(available_sdes())})"
    )
