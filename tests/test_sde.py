"""SDEs: closed-form marginals against the drift/diffusion, simulation, registry and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffalign.paths import CosinePath, LinearPath, Predictor, convert, get_path
from diffalign.sde import SDE, VESDE, VPSDE, SubVPSDE, available_sdes, get_sde

SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=50.0)]
TS = jnp.linspace(0.01, 1.0, 23)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_drift_and_diffusion_match_marginals(sde):
    """For dx = f(t) x dt + g dW the Gaussian marginal has alpha'/alpha = f and
    d sigma^2/dt = g^2 + 2 f sigma^2: the closed-form coefficients must satisfy both."""
    alpha, sigma, dalpha, dsigma = sde.coeffs_and_derivs(TS)
    f = sde.drift(jnp.ones((TS.shape[0], 1)), TS)[:, 0]
    np.testing.assert_allclose(dalpha / alpha, f, rtol=1e-4, atol=1e-5)
    g2 = sde.diffusion(TS) ** 2
    np.testing.assert_allclose(2 * sigma * dsigma, g2 + 2 * f * sigma**2, rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_forward_simulation_matches_closed_form_marginal(sde):
    """Euler-Maruyama on the forward SDE from a point mass reproduces N(alpha x0, sigma^2)."""
    n, steps, t_end = 20_000, 400, 0.6
    x0 = jnp.full((n, 1), 1.5)

    def body(x, inp):
        t, k = inp
        dt = t_end / steps
        tb = jnp.full((n,), t)
        return x + sde.drift(x, tb) * dt + sde.diffusion(tb)[:, None] * jnp.sqrt(dt) * jax.random.normal(k, x.shape), None

    ts = jnp.arange(steps) * (t_end / steps)
    x, _ = jax.lax.scan(body, x0, (ts, jax.random.split(jax.random.key(0), steps)))
    mean, std = sde.marginal(x0[:1], jnp.array([t_end]))
    se = float(std[0]) / np.sqrt(n)
    assert abs(float(x.mean()) - float(mean[0, 0])) < 4 * se + 1e-3
    assert abs(float(x.std()) / float(std[0]) - 1) < 0.03


def test_vp_marginal_is_variance_preserving_and_subvp_below():
    t = jnp.linspace(0, 1, 11)
    a, s = VPSDE().coeffs(t)
    np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-6)
    _, s_sub = SubVPSDE().coeffs(t)
    assert bool(jnp.all(s_sub <= s + 1e-7))


def test_prior_matches_t_max_marginal():
    for sde in SDES:
        a, s = sde.coeffs(jnp.asarray(sde.t_max))
        assert float(a) < 0.01 or isinstance(sde, VESDE)
        np.testing.assert_allclose(float(s), sde.prior_std, rtol=1e-3)
    z = jnp.array([[0.3, -1.2]])
    expected = jax.scipy.stats.norm.logpdf(z, scale=50.0).sum()
    np.testing.assert_allclose(SDES[2].prior_logp(z)[0], expected, rtol=1e-6)


@pytest.mark.parametrize("path", [VPSDE(), VESDE(), LinearPath(), CosinePath()], ids=lambda p: type(p).__name__)
def test_conversions_round_trip(path):
    key = jax.random.key(1)
    x = jax.random.normal(key, (16, 3))
    t = jnp.linspace(0.05, 0.95, 16)
    eps = jax.random.normal(jax.random.fold_in(key, 1), (16, 3))
    for frm in ("eps", "x0", "velocity") + (("score",) if not isinstance(path, (LinearPath, CosinePath)) else ()):
        pred = convert(eps, "eps", frm, x, t, path)
        back = convert(pred, frm, "eps", x, t, path)
        np.testing.assert_allclose(back, eps, rtol=1e-4, atol=1e-4)


def test_pf_ode_velocity_equals_path_velocity():
    """f - g^2 score / 2 (Song et al.) equals alpha' x0_hat + sigma' eps_hat for the same score."""
    sde = VPSDE()
    x = jax.random.normal(jax.random.key(2), (8, 2))
    t = jnp.linspace(0.1, 0.9, 8)
    score = lambda x, t: -x * (1.0 + t[:, None])  # any field  # noqa: E731
    pf = sde.pf_ode_velocity(score)(x, t)
    v = Predictor(score, sde, "score").velocity(x, t)
    np.testing.assert_allclose(pf, v, rtol=1e-4, atol=1e-5)


def test_registry_and_errors():
    assert set(available_sdes()) >= {"vp", "subvp", "ve"}
    assert get_sde("ve", sigma_max=10.0).sigma_max == 10.0
    with pytest.raises(ValueError, match="unknown SDE 'vpp'.*available"):
        get_sde("vpp")
    with pytest.raises(ValueError, match="no parameter"):
        get_sde("vp", sigma_max=3.0)
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        VPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(sigma_min=-1.0)
    with pytest.raises(ValueError, match="unknown path"):
        get_path("spiral")
    with pytest.raises(ValueError, match="unknown parametrization"):
        Predictor(lambda x, t: x, VPSDE(), "noise")


def test_log_snr_inverse():
    for path in (VPSDE(), VESDE(), LinearPath(t_min=1e-3, t_max=1 - 1e-3), CosinePath(t_min=1e-3, t_max=1 - 1e-3)):
        t = jnp.linspace(path.t_min + 0.01, path.t_max - 0.01, 9)
        np.testing.assert_allclose(path.t_of_log_snr(path.log_snr(t)), t, atol=1e-5)


@pytest.mark.parametrize("sde", SDES + [VESDE(sigma_min=0.1, sigma_max=5.0)], ids=lambda s: type(s).__name__)
def test_transition_composes_to_the_closed_form_kernel(sde):
    """``transition(x, t, dt)`` (dt < 0) returns (x / a, s) for the forward kernel x_t | x_{t+dt} ~
    N(a x_{t+dt}, s^2). Over any partition of [t0, t1] the kernels must compose to the closed form
    a = alpha(t1) / alpha(t0), s^2 = sigma(t1)^2 - a^2 sigma(t0)^2; VP's and VE's GDSS arithmetic
    must equal the generic definition; and for small |dt|, s^2 ~ g(t + dt/2)^2 |dt| (the SDE's diffusion)."""
    u = np.linspace(0.0, 1.0, 41)
    grid = jnp.asarray(0.02 + 0.96 * u**2, dtype=jnp.float32)  # a non-uniform partition
    hi, dt = grid[1:], grid[:-1] - grid[1:]
    mean, std = sde.transition(jnp.ones((hi.shape[0], 1)), hi, dt)
    a = 1.0 / np.asarray(mean[:, 0], np.float64)
    s2 = np.asarray(std, np.float64) ** 2
    a_tot, v_tot = 1.0, 0.0
    for ak, sk2 in zip(a, s2):
        a_tot, v_tot = ak * a_tot, ak**2 * v_tot + sk2
    (al0, al1), (si0, si1) = (np.asarray(c, np.float64) for c in sde.coeffs(grid[jnp.array([0, -1])]))
    np.testing.assert_allclose(a_tot, al1 / al0, rtol=1e-5)
    np.testing.assert_allclose(v_tot, si1**2 - (al1 / al0) ** 2 * si0**2, rtol=2e-4)
    g_mean, g_std = SDE.transition(sde, jnp.ones((hi.shape[0], 1)), hi, dt)
    np.testing.assert_allclose(mean, g_mean, rtol=1e-5)
    np.testing.assert_allclose(std, g_std, rtol=2e-4)
    h = 1e-3
    _, s_small = sde.transition(jnp.ones((TS.shape[0], 1)), TS, jnp.full_like(TS, -h))
    np.testing.assert_allclose(s_small**2 / h, sde.diffusion(TS - h / 2) ** 2, rtol=1e-2)  # midpoint rule


def test_subvp_transition_is_finite_below_zero():
    """GDSS's last half-steps reach t + dt < 0: sub-VP's diffusion counts as 0 there."""
    _, std = SubVPSDE().transition(jnp.ones((3, 1)), jnp.array([1e-4, -4e-4, 0.5]), jnp.full((3,), -5e-4))
    assert np.isfinite(np.asarray(std)).all() and float(std[1]) == 0.0


def test_discretisations_are_score_sde_s():
    """VP: DDPM's beta_i = linspace(beta_min/N, beta_max/N, N)[i], f = (sqrt(1 - beta_i) - 1) x,
    G^2 = beta_i; sub-VP: SDE.discretize (f = drift / N, G^2 = g^2 / N) and VP's Langevin alphas;
    VE: SMLD's G^2 = sigma_i^2 - sigma_{i-1}^2 (sigma_{-1} = 0), f = 0; i = floor(t (N - 1))."""
    n = 50
    t = jnp.array([0.0, 0.013, 0.3, 0.5, 1.0])
    i = np.floor(np.asarray(t) * (n - 1)).astype(int)
    x = jnp.linspace(-1.0, 1.0, 10).reshape(5, 2)
    vp, sub, ve = VPSDE(), SubVPSDE(), VESDE(sigma_min=0.1, sigma_max=5.0)
    betas = np.linspace(0.1 / n, 20.0 / n, n)[i]
    np.testing.assert_allclose(betas, vp.beta(i / (n - 1)) / n, rtol=1e-5)
    f, g2 = vp.discretize(x, t, n)
    np.testing.assert_allclose(g2, betas, rtol=1e-6)
    np.testing.assert_allclose(f, (np.sqrt(1 - betas)[:, None] - 1) * x, rtol=1e-5, atol=1e-7)
    f, g2 = sub.discretize(x, t, n)
    np.testing.assert_allclose(f, sub.drift(x, t) / n, rtol=1e-6)
    np.testing.assert_allclose(g2, sub.diffusion(t) ** 2 / n, rtol=1e-6)
    for sde in (vp, sub):
        np.testing.assert_allclose(sde.discrete_langevin_alpha(t, n), 1 - betas, rtol=1e-6)
    sig = np.geomspace(0.1, 5.0, n)
    f, g2 = ve.discretize(x, t, n)
    np.testing.assert_allclose(g2, sig[i] ** 2 - np.where(i > 0, sig[np.maximum(i - 1, 0)], 0.0) ** 2, rtol=1e-4)
    assert float(jnp.abs(f).max()) == 0.0
    np.testing.assert_array_equal(ve.discrete_langevin_alpha(t, n), np.ones(5))
