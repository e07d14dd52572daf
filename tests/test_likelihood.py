"""Probability-flow likelihoods against closed forms; bits/dim arithmetic."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from closed_forms import gaussian_marginal_logp, gaussian_score
from diffalign.paths import LinearPath, Predictor
from diffalign.sampling import bits_per_dim, log_likelihood
from diffalign.sde import VESDE, VPSDE

MU = jnp.array([1.0, -2.0])
L = jnp.array([[1.0, 0.0], [0.6, 0.5]])
COV = L @ L.T


@pytest.mark.parametrize("path", [VPSDE(), VESDE(sigma_max=20.0), LinearPath()], ids=lambda p: type(p).__name__)
def test_exact_likelihood_matches_gaussian(path):
    t_min = 1e-5 if path.t_min > 0 else 0.0
    t_max = path.t_max if not isinstance(path, LinearPath) else 1.0 - 1e-4
    pred = Predictor(gaussian_score(path, MU, COV), path, "score")
    x = jax.random.multivariate_normal(jax.random.key(0), MU, COV, (64,))
    prior = gaussian_marginal_logp(path, MU, COV, t_max)  # the exact p_T: isolates the ODE's error
    lp = jax.jit(lambda x: log_likelihood(pred.velocity, x, prior, t_min, t_max))(x)
    true = gaussian_marginal_logp(path, MU, COV, t_min)(x)
    assert float(jnp.max(jnp.abs(lp - true))) < 1e-2


def test_hutchinson_is_unbiased():
    sde = VPSDE()
    pred = Predictor(gaussian_score(sde, MU, COV), sde, "score")
    x = jnp.tile(jnp.array([[0.5, -1.5]]), (512, 1))
    prior = gaussian_marginal_logp(sde, MU, COV, sde.t_max)
    lp = jax.jit(lambda x, k: log_likelihood(pred.velocity, x, prior, 1e-5, 1.0, divergence="hutchinson", key=k))(
        x, jax.random.key(1)
    )
    true = float(gaussian_marginal_logp(sde, MU, COV, 1e-5)(x[:1])[0])
    se = float(jnp.std(lp)) / math.sqrt(len(lp))
    assert abs(float(jnp.mean(lp)) - true) < 4 * se + 1e-3
    assert float(jnp.std(lp)) > 0  # it is an estimate, not the exact trace


def test_default_prior_error_is_small_and_reported():
    """With the N(0, I) prior of VP (beta_max = 20) the error is the prior mismatch at t = 1."""
    sde = VPSDE()
    pred = Predictor(gaussian_score(sde, MU, COV), sde, "score")
    x = jax.random.multivariate_normal(jax.random.key(2), MU, COV, (64,))
    lp = jax.jit(lambda x: log_likelihood(pred.velocity, x, sde.prior_logp, 1e-5, 1.0))(x)
    true = gaussian_marginal_logp(sde, MU, COV, 1e-5)(x)
    assert float(jnp.mean(jnp.abs(lp - true))) < 0.05


def test_bits_per_dim():
    # a uniform density on [-1, 1)^D of dequantised K-level data is worth exactly log2(K) bits/dim
    d, k = 64, 17
    logp = jnp.full((3,), -d * math.log(2.0))
    np.testing.assert_allclose(bits_per_dim(logp, d, scale=2.0, num_levels=k), math.log2(k), rtol=1e-6)
    np.testing.assert_allclose(bits_per_dim(jnp.array([-d * math.log(2.0)]), d), 1.0, rtol=1e-6)


def test_likelihood_errors():
    pred = Predictor(lambda x, t: -x, VPSDE(), "score")
    with pytest.raises(ValueError, match="unknown divergence"):
        log_likelihood(pred.velocity, jnp.zeros((2, 2)), VPSDE().prior_logp, 1e-5, 1.0, divergence="skilling")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        log_likelihood(pred.velocity, jnp.zeros((2, 2)), VPSDE().prior_logp, 1e-5, 1.0, divergence="hutchinson")
