"""Predictor and corrector registries (score_sde's ``register_predictor`` / ``register_corrector``).

Kernels are pure single-step updates; the caller evaluates the score and draws the noise (so a
graph sampler can pass masked, symmetric noise and a score of the whole system):

* predictor ``fn(sde, x, score, t, noise, *, h, n) -> (x, x_mean)``: one reverse step from t to
  t - h, with ``n`` the number of discrete scales (for the DDPM/SMLD discretisations);
* corrector ``fn(sde, x, score, t, noise, *, n, snr, scale_eps) -> (x, x_mean)`` at fixed t.

``t`` holds per-example times (B,) or a scalar; ``noise`` is standard normal shaped like x.
"""

from __future__ import annotations

import jax.numpy as jnp

from ..paths.base import bcast
from .registry import Registry

PREDICTOR_REGISTRY = Registry("predictor")
CORRECTOR_REGISTRY = Registry("corrector")
register_predictor = PREDICTOR_REGISTRY.register
register_corrector = CORRECTOR_REGISTRY.register
get_predictor = PREDICTOR_REGISTRY.get
get_corrector = CORRECTOR_REGISTRY.get


def available_predictors() -> tuple[str, ...]:
    return tuple(PREDICTOR_REGISTRY.names)


def available_correctors() -> tuple[str, ...]:
    return tuple(CORRECTOR_REGISTRY.names)


@register_predictor("euler")
def euler_maruyama_predictor(sde, x, score, t, noise, *, h, n=None):
    """Euler-Maruyama on the reverse SDE: x - (f - g^2 score) h + g sqrt(h) z."""
    del n
    g = sde.diffusion(t)
    mean = x - (sde.drift(x, t) - bcast(g**2, x) * score) * h
    return mean + bcast(g, x) * jnp.sqrt(h) * noise, mean


@register_predictor("reverse")
def reverse_diffusion_predictor(sde, x, score, t, noise, *, h=None, n):
    """score_sde's reverse diffusion: (f, G^2) = sde.discretize(x, t, n), x - f + G^2 score + G z
    (DDPM's ancestral-like step for VP, SMLD's for VE, Euler-Maruyama with dt = 1/N otherwise)."""
    del h
    f, g2 = sde.discretize(x, t, n)
    mean = x - f + bcast(g2, x) * score
    return mean + bcast(jnp.sqrt(g2), x) * noise, mean


def _batch_mean_norm(v):
    return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))


def langevin_step(x, score, noise, alpha, snr: float, scale_eps: float = 1.0):
    """One Langevin MCMC step (Song et al. 2021, Alg. 4; GDSS): eps = 2 alpha (snr <|z|> / <|s|>)^2
    with batch means of per-example norms, x_mean = x + eps s, x = x_mean + sqrt(2 eps) z scale_eps."""
    step = (snr * _batch_mean_norm(noise) / _batch_mean_norm(score)) ** 2 * 2.0 * alpha
    mean = x + bcast(step, x) * score
    return mean + bcast(jnp.sqrt(2.0 * step), x) * noise * scale_eps, mean


@register_corrector("langevin")
def langevin(sde, x, score, t, noise, *, n, snr, scale_eps=1.0):
    """``langevin_step`` with score_sde's alpha_i on N discrete scales (1 - beta_i for VP, sub-VP)."""
    return langevin_step(x, score, noise, sde.discrete_langevin_alpha(t, n), snr, scale_eps)


@register_corrector("none")
def no_corrector(sde, x, score, t, noise, *, n=None, snr=None, scale_eps=None):
    """The identity (samplers skip its score evaluation)."""
    return x, x


PREDICTORS = PREDICTOR_REGISTRY.names
CORRECTORS = CORRECTOR_REGISTRY.names
