"""IGSO(3) against its series (Str2Str's convention) and the rotation maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffalign.geometry import IGSO3, exp_map, igso3_angle_density, igso3_mean_angle, log_map

# E[w] by quadrature of the truncated series (shared/reference/other-seed-methods.md, section 1.3 A)
MEAN_ANGLE = {0.1: 0.1595, 0.25: 0.3979, 0.5: 0.7895, 1.0: 1.5212, 1.5: 2.0065, 3.0: 2.2072}


@pytest.mark.parametrize("sigma", sorted(MEAN_ANGLE))
def test_mean_angle_matches_the_series_table(sigma):
    assert abs(igso3_mean_angle(sigma) - MEAN_ANGLE[sigma]) < 1e-3


def test_density_is_normalised_and_has_the_right_limits():
    w = np.linspace(0.0, np.pi, 20_001)
    for sigma in (0.05, 0.3, 1.0, 2.5):
        assert abs(np.trapezoid(igso3_angle_density(w, sigma), w) - 1.0) < 1e-4
    # uniform on SO(3): f(w) = (1 - cos w) / pi, mean pi/2 + 2/pi
    assert abs(igso3_mean_angle(10.0) - (np.pi / 2 + 2 / np.pi)) < 1e-4
    # small sigma: the rotation vector is Gaussian with per-axis std sigma (Maxwell mean 2 sigma sqrt(2/pi))
    assert abs(igso3_mean_angle(0.02) / (2 * 0.02 * np.sqrt(2 / np.pi)) - 1.0) < 1e-2


def test_exp_and_log_maps_are_inverse_rotations():
    v = jax.random.normal(jax.random.key(0), (500, 3)) * 1.2
    v = v * jnp.minimum(1.0, 3.0 / jnp.linalg.norm(v, axis=-1, keepdims=True))  # angles < pi
    r = exp_map(v)
    np.testing.assert_allclose(np.asarray(r @ jnp.swapaxes(r, -1, -2)), np.broadcast_to(np.eye(3), r.shape), atol=1e-5)
    np.testing.assert_allclose(np.asarray(jnp.linalg.det(r)), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(log_map(r)), np.asarray(v), atol=1e-4)
    np.testing.assert_allclose(np.asarray(exp_map(jnp.zeros((2, 3)))), np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-7)


@pytest.fixture(scope="module")
def igso3():
    return IGSO3(0.1, 1.5, num_sigmas=64)


def _angles(r):
    return np.asarray(jnp.linalg.norm(log_map(r), axis=-1))


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.5])
def test_samples_have_the_series_mean_angle(igso3, sigma):
    n = 20_000
    w = _angles(igso3.sample(jax.random.key(1), sigma, (n,)))
    se = w.std() / np.sqrt(n)
    assert abs(w.mean() - MEAN_ANGLE[sigma]) < 3 * se + 2e-3, (w.mean(), MEAN_ANGLE[sigma], se)


def test_composed_increments_add_sigma_squared(igso3):
    """Brownian motion on SO(3): IGSO3(0.3) then IGSO3(0.4) is IGSO3(0.5)."""
    n = 20_000
    k1, k2 = jax.random.split(jax.random.key(2))
    w = _angles(igso3.sample(k1, 0.3, (n,)) @ igso3.sample(k2, 0.4, (n,)))
    se = w.std() / np.sqrt(n)
    assert abs(w.mean() - MEAN_ANGLE[0.5]) < 3 * se + 2e-3


def test_score_norm_matches_the_quotient_rule(igso3):
    """The Haar score d/dw log(series) from the table against the series differentiated term by term."""
    sigma = float(igso3.sigmas[40])
    w = np.concatenate([np.linspace(0.0, 0.2, 21), np.linspace(0.2, 3.0, 15)])
    w = w[(w == 0) | (igso3_angle_density(w, sigma) > 1e-6)]  # where the series is accurate (the tail cancels to noise)
    assert len(w) >= 28
    l = np.arange(1000, dtype=np.float64)[:, None]
    c = (2 * l + 1) * np.exp(-l * (l + 1) * sigma**2 / 2)
    wq = np.maximum(w, 1e-9)  # the quotient rule's limit at w = 0 is 0 (log series is even)
    num, den = np.sin((l + 0.5) * wq), np.sin(wq / 2)
    s = np.sum(c * num / den, 0)
    ds = np.sum(c * ((l + 0.5) * np.cos((l + 0.5) * wq) * den - num * 0.5 * np.cos(wq / 2)) / den**2, 0)
    exact = np.where(w == 0, 0.0, ds / s)
    np.testing.assert_allclose(np.asarray(igso3.score_norm(jnp.asarray(w), sigma)), exact, rtol=2e-2, atol=2e-2)
    # in the far tail (density below 1e-10 of its peak) the table follows the Gaussian limit, not noise
    wt = np.linspace(1.5, 3.1, 9)
    tail = np.asarray(igso3.score_norm(jnp.asarray(wt), 0.1))
    np.testing.assert_allclose(tail, 2 / wt - 1 / np.tan(wt / 2) - wt / 0.01, rtol=1e-3)
    # the score at r_t = r_0 exp(v) points along v with that norm
    r0 = exp_map(jnp.array([0.3, -0.2, 0.5]))
    v = jnp.array([0.0, 0.0, 1.0])
    score = igso3.score(r0 @ exp_map(v), r0, sigma)
    np.testing.assert_allclose(np.asarray(score), np.asarray(v * igso3.score_norm(1.0, sigma)), rtol=1e-3, atol=1e-4)


def test_bad_sigma_range_is_refused():
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        IGSO3(1.0, 0.5)


def test_log_map_is_accurate_up_to_pi():
    n = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    for theta in (0.0, 1e-4, 0.5, 2.0, 3.0, np.pi - 1e-2, np.pi - 1e-3, np.pi - 3e-4, np.pi - 1e-5):
        v = log_map(exp_map(jnp.asarray(theta * n, jnp.float32)))
        np.testing.assert_allclose(np.asarray(v), theta * n, atol=1e-5)
