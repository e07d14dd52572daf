"""Samplers driven by exact scores reproduce the target's moments and mode weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from closed_forms import gaussian_score, mixture_score, mode_fractions
from diffalign.paths import LinearPath, Predictor
from diffalign.sampling import SAMPLERS, guided, sample, time_grid
from diffalign.sde import VESDE, VPSDE, SubVPSDE

MU = jnp.array([1.0, -2.0])
L = jnp.array([[1.0, 0.0], [0.6, 0.5]])
COV = L @ L.T
N = 8000


def exact_start(path, n, key):
    """Samples of the exact marginal at t_max, so only the sampler's own error is measured."""
    a, s = path.coeffs(jnp.asarray(path.t_max))
    c = a**2 * COV + s**2 * jnp.eye(2)
    return jax.random.multivariate_normal(key, a * MU, c, (n,))


# (method, steps, tolerance on mean and covariance entries)
CASES = [
    ("euler", 200, 0.08), ("heun", 40, 0.08), ("ddim", 100, 0.08), ("dpm++2m", 20, 0.08),
    ("edm", 20, 0.12), ("euler_maruyama", 500, 0.08), ("pc", 200, 0.08), ("adaptive", None, 0.08),
]


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=20.0)], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("method,steps,tol", CASES, ids=[c[0] for c in CASES])
def test_samplers_reproduce_gaussian_moments(sde, method, steps, tol):
    pred = Predictor(gaussian_score(sde, MU, COV), sde, "score")
    x_T = exact_start(sde, N, jax.random.key(0))
    kwargs = {"steps": steps} if steps else {}
    x, nfe = jax.jit(lambda k, x: sample(k, pred, x, method, **kwargs))(jax.random.key(1), x_T)
    x = np.asarray(x)
    assert np.isfinite(x).all()
    se = 4 * np.sqrt(np.diag(COV) / N)
    np.testing.assert_array_less(np.abs(x.mean(0) - np.asarray(MU)), tol + se)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - np.asarray(COV)), tol + 0.05)
    assert float(nfe) > 0


MEANS = np.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
STDS = np.array([0.4, 0.4, 0.4])
WEIGHTS = np.array([0.5, 0.3, 0.2])


@pytest.mark.parametrize("method,steps", [("euler_maruyama", 500), ("pc", 200), ("heun", 100), ("dpm++2m", 50)])
def test_exact_mixture_score_gives_mode_weights(method, steps):
    sde = VPSDE()
    pred = Predictor(mixture_score(sde, MEANS, STDS, WEIGHTS), sde, "score")
    x_T = sde.prior_sample(jax.random.key(3), (N, 2))
    x, _ = jax.jit(lambda k, x: sample(k, pred, x, method, steps))(jax.random.key(4), x_T)
    frac = mode_fractions(x, MEANS)
    se = np.sqrt(WEIGHTS * (1 - WEIGHTS) / N)
    np.testing.assert_array_less(np.abs(frac - WEIGHTS), 4 * se + 0.01)
    # within-mode spread
    x = np.asarray(x)
    own = np.sum((x[:, None] - MEANS[None]) ** 2, -1).argmin(1)
    for k in range(3):
        np.testing.assert_allclose(x[own == k].std(0), STDS[k], rtol=0.1)


def test_linear_path_ddim_is_euler_and_flow_samplers_agree():
    """On the rectified-flow path DDIM's update is exactly an Euler step of the velocity."""
    path = LinearPath()
    pred = Predictor(gaussian_score(path, MU, COV), path, "score")
    # a Gaussian-source linear path has a well-defined score except at t = 1; start just below
    x_T = exact_start(LinearPath(t_max=0.999), 512, jax.random.key(5))
    ts = time_grid(LinearPath(t_max=0.999), 50)
    from diffalign.sampling import ddim, euler

    a = ddim(pred, x_T, 50, ts=ts)
    b = euler(pred, x_T, 50, ts=ts)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_time_grids():
    sde = VPSDE()
    for path in (sde, LinearPath()):  # the linear path ends at sigma = 0, an infinite log-SNR
        for kind in ("uniform", "log_snr", "edm"):
            ts = np.asarray(time_grid(path, 10, kind))
            assert ts.shape == (11,) and ts[0] == pytest.approx(path.t_max) and ts[-1] == pytest.approx(path.t_min)
            assert np.all(np.diff(ts) < 0), (path, kind, ts)
    lam = sde.log_snr(time_grid(sde, 10, "log_snr", keep_start=False))
    np.testing.assert_allclose(np.diff(np.asarray(lam)), np.diff(np.asarray(lam)).mean(), rtol=1e-3)
    with pytest.raises(ValueError, match="positive integer"):
        time_grid(sde, -3)
    with pytest.raises(ValueError, match="unknown time grid"):
        time_grid(sde, 3, "cosine")


def test_sampler_errors():
    sde = VPSDE()
    pred = Predictor(lambda x, t: -x, sde, "score")
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(None, pred, x, "rk4", 10)
    with pytest.raises(ValueError, match="positive integer"):
        sample(None, pred, x, "euler", 0)
    with pytest.raises(ValueError, match="needs an SDE"):
        sample(jax.random.key(0), Predictor(lambda x, t: x, LinearPath(), "velocity"), x, "pc", 10)
    assert set(SAMPLERS) >= {"euler", "heun", "ddim", "dpm++2m", "edm", "euler_maruyama", "pc", "adaptive"}


def test_guidance_is_linear_and_scale_one_is_conditional():
    def model(x, t, y):
        return x * 0 + y[:, None].astype(x.dtype)  # prediction = label value; null label = 10

    x = jnp.zeros((3, 2))
    t = jnp.full((3,), 0.5)
    y = jnp.array([1, 2, 3])
    np.testing.assert_allclose(guided(model, y, null_label=10, scale=1.0)(x, t), model(x, t, y))
    g = guided(model, y, null_label=10, scale=3.0)(x, t)
    np.testing.assert_allclose(g[:, 0], 10 + 3 * (np.array([1, 2, 3]) - 10))
