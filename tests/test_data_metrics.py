"""Data generators against their reference implementations; distances against known values."""

import jax
import numpy as np
import pytest

from diffalign.data.toy2d import DATASETS, get_dataset, reference_set
from diffalign.metrics import energy_distance, wasserstein2


def test_every_dataset_samples_finite_points():
    for name, ds in DATASETS.items():
        x = np.asarray(ds.sample(jax.random.key(0), 256))
        assert x.shape == (256, 2) and np.isfinite(x).all(), name
    with pytest.raises(ValueError, match="unknown 2-D data set"):
        get_dataset("spirals")
    with pytest.raises(ValueError, match="positive integer"):
        get_dataset("moons").sample(jax.random.key(0), 0)


def test_moons_arcs_match_scikit_learn():
    """Without noise, both moons generators lie on scikit-learn's make_moons arcs exactly."""
    sk = pytest.importorskip("sklearn.datasets")
    n = 1000
    arcs, _ = sk.make_moons(n_samples=n, noise=0.0, shuffle=False)
    tong = np.asarray(reference_set("tong_moons", n))
    # tong_moons = (arcs + N(0, 0.05^2)) * 2, x0 - 1: the residual is the scaled noise
    resid = (tong + np.array([1.0, 0.0])) / 2.0 - arcs
    assert abs(resid.std() - 0.05) < 0.005 and abs(resid.mean()) < 0.01
    dyn = np.asarray(reference_set("moons", n))
    # moons = (arcs + u) * 3 - 1 with one u ~ U[0, 0.2) added to both coordinates
    u = (dyn + 1.0) / 3.0 - arcs
    np.testing.assert_allclose(u[:, 0], u[:, 1], atol=1e-5)
    assert 0.0 <= u.min() and u.max() < 0.2


def test_mixtures_have_their_published_parameters():
    x = np.asarray(reference_set("8gaussians", 80_000))
    s = 1 / np.sqrt(2)  # torchcfm's order of the centres
    centers = 5.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (-s, s), (s, -s), (-s, -s)])
    own = np.arange(len(x)) % 8  # stratified: point i belongs to mode i % 8, equal counts per mode
    resid = x - centers[own]
    np.testing.assert_allclose(resid.std(0), 0.1**0.25, rtol=0.02)
    np.testing.assert_allclose(resid.mean(0), 0.0, atol=0.01)
    y = np.asarray(reference_set("tong_8gaussians", 80_000))
    np.testing.assert_allclose(np.linalg.norm(y, axis=1).mean(), 5.0, rtol=0.05)
    r = np.asarray(reference_set("ring", 80_000))
    np.testing.assert_allclose(np.linalg.norm(r, axis=1).mean(), 4.0, rtol=0.02)


def test_w2_exact_solvers_agree_and_match_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 2))
    b = rng.normal(size=(400, 2))
    w_pot = wasserstein2(a, b + np.array([3.0, 4.0]))
    # shifting one set by m adds exactly |m|^2 to the optimal squared cost's mean shift
    w0 = wasserstein2(a, b)
    assert w_pot == pytest.approx(np.sqrt(w0**2 + 25.0 + 2 * np.dot(np.array([3.0, 4.0]), (b - a).mean(0))), rel=0.05)
    from scipy.optimize import linear_sum_assignment

    c = ((a[:, None] - b[None]) ** 2).sum(-1)
    r, col = linear_sum_assignment(c)
    assert w0 == pytest.approx(np.sqrt(c[r, col].mean()), rel=1e-9)
    assert wasserstein2(a, a) == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(wasserstein2(a, np.full_like(a, np.nan)))


def test_energy_distance():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(1000, 2))
    assert energy_distance(a, a) == pytest.approx(0.0, abs=1e-3)
    near = energy_distance(a, rng.normal(size=(1000, 2)))
    far = energy_distance(a, rng.normal(size=(1000, 2)) + 2.0)
    assert near < 0.1 < far
