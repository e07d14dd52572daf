"""Heating-annealing (Str2Str's sampler) on the three-well landscape with its exact score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffalign.sampling.heat_anneal import heat_anneal
from diffalign.sde import get_sde
from diffalign.experiments.str2str import WELL_MEANS, WELL_STD, WELL_WEIGHTS, exact_well_probabilities, well_fractions

# the three-well landscape and its exact reference live with the experiment that uses them
W, MU, S = WELL_WEIGHTS, WELL_MEANS, WELL_STD  # 0.5 / 0.3 / 0.2 at (-1.5, 0), (1.5, 0), (0, 2); std 0.35
SDE = get_sde("vp")  # beta 0.1 -> 20, as the experiment's (the reference depends only on the marginal at t_delta)
N = 20_000

def score(x, t):
    """The exact score of p_t: a mixture with means alpha mu_k and variances alpha^2 s^2 + 1 - alpha^2."""
    a, std = SDE.marginal(jnp.ones_like(t), t)
    var = (a**2 * S**2 + std**2)[:, None]
    d = x[:, None, :] - a[:, None, None] * jnp.asarray(MU, x.dtype)[None]
    r = jax.nn.softmax(jnp.log(jnp.asarray(W, x.dtype))[None] - 0.5 * jnp.sum(d**2, -1) / var, -1)
    return jnp.sum(r[..., None] * -d / var[..., None], 1)


def anneal(t_delta, method):
    run = jax.jit(lambda k: heat_anneal(k, score, SDE, jnp.asarray(MU[0], jnp.float32), t_delta, 400,
                                        method=method, replicas=N))
    return well_fractions(run(jax.random.key(1)))


def test_the_exact_reference_is_the_published_one():
    np.testing.assert_allclose(exact_well_probabilities(0.3), [0.783, 0.106, 0.111], atol=2e-3)
    np.testing.assert_allclose(exact_well_probabilities(0.5), [0.561, 0.255, 0.184], atol=2e-3)


@pytest.mark.parametrize("t_delta", [0.2, 0.3, 0.5, 0.7])
def test_sde_annealing_lands_in_each_well_with_the_exact_probabilities(t_delta):
    exact = exact_well_probabilities(t_delta)
    got = anneal(t_delta, "sde")
    se = np.sqrt(exact * (1 - exact) / N)
    assert np.all(np.abs(got - exact) <= 3 * se + 1e-3), (got, exact, se)
    # the probability-flow ODE is more local: it keeps more replicas in the starting well
    assert anneal(t_delta, "ode")[0] > got[0] + 3 * se[0]


def test_bad_arguments_are_refused():
    x0 = jnp.zeros(2)
    with pytest.raises(ValueError, match="t_delta must be in"):
        heat_anneal(jax.random.key(0), score, SDE, x0, 1.5, 10, replicas=4)
    with pytest.raises(ValueError, match="unknown annealing method"):
        heat_anneal(jax.random.key(0), score, SDE, x0, 0.5, 10, method="langevin", replicas=4)


def test_denoise_returns_the_posterior_mean_at_t_min():
    """Data N(m, s^2): at t_min, E[x0 | x_t] = m + alpha s^2 (x_t - alpha m) / v, v = alpha^2 s^2 + sigma^2,
    so the denoised replicas have mean m and variance alpha^2 s^4 / v (smaller than s^2)."""
    m, s, n = 0.7, 0.05, 20_000
    sde = get_sde("vp", t_min=0.01)

    def gauss_score(x, t):
        a, std = sde.marginal(jnp.ones_like(t), t)
        return -(x - (a * m)[:, None]) / (a**2 * s**2 + std**2)[:, None]

    out = jax.jit(lambda k: heat_anneal(k, gauss_score, sde, jnp.full((1,), m), 0.5, 500, replicas=n, denoise=True))(jax.random.key(3))
    a, std = (float(v[0]) for v in sde.marginal(jnp.ones(1), jnp.full((1,), 0.01)))
    var = a**2 * s**4 / (a**2 * s**2 + std**2)
    assert abs(float(out.mean()) - m) < 4 * np.sqrt(var / n)
    assert float(out.var()) == pytest.approx(var, rel=0.1)
    assert var < 0.5 * (a**2 * s**2 + std**2)  # the variance of the sample at t_min itself


def test_the_released_samplers_deviations_over_anneal():
    """str2str_compat reproduces the reference note's numbers for Str2Str's released sampler (exact
    score, floor(1000 T_delta) steps, t_min 0.01): the PF-ODE's within-well RMS spread drops from the
    law's ~0.495 to 0.08 at T_delta 0.25, and at 0.7 the well fractions move from .544/.265/.191 to
    .884/.098/.018."""
    sde = get_sde("vp", t_min=0.01)
    start = jnp.asarray(MU[0], jnp.float32)

    def rms(x):
        x = np.asarray(x)
        k = np.argmin(((x[:, None] - MU[None]) ** 2).sum(-1), -1)
        return np.sqrt(((x - MU[k]) ** 2).sum(-1).mean())

    def run(t_delta, compat):
        return jax.jit(lambda k: heat_anneal(k, score, sde, start, t_delta, int(1000 * t_delta), method="ode",
                                             replicas=4000, str2str_compat=compat))(jax.random.key(0))

    assert abs(rms(run(0.25, False)) - 0.495) < 0.03 and abs(rms(run(0.25, True)) - 0.08) < 0.02
    np.testing.assert_allclose(well_fractions(run(0.7, True)), [0.884, 0.098, 0.018], atol=0.02)
    np.testing.assert_allclose(well_fractions(run(0.7, False)), [0.544, 0.265, 0.191], atol=0.02)
