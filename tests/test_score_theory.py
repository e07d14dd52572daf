"""Score estimation as regression with noisy labels (Han, Razaviyayn, Xu 2024), checked exactly.

Fast tests: the closed forms against quadrature and Monte Carlo, the empirical tangent kernel
against the analytic NTK and against explicit Jacobians, closed-form kernel GD against the GD
loop, the network against kernel GD in the lazy regime, a small U-shape / k* growth check, bad
input, and the CLI contract under --smoke. The reproduction of the note's table and the wide
network at n = 300 are ``slow``.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffalign.theory import score_estimation as S
from diffalign.theory import two_layer as T
from clitools import cli

# ----------------------------------------------------------------------------- closed forms


def _normal_pdf(x, mean, sd):
    return np.exp(-0.5 * ((x - mean) / sd) ** 2) / (np.sqrt(2 * np.pi) * sd)


def test_ou_coeffs_are_the_library_vp_sde_with_constant_beta_2():
    from diffalign.sde import VPSDE

    t = np.linspace(0.0, 1.0, 11)
    alpha, sigma = S.ou_coeffs(t)
    a_vp, s_vp = VPSDE(beta_min=2.0, beta_max=2.0 + 1e-9, t_min=0.0).coeffs(jnp.asarray(t))
    np.testing.assert_allclose(alpha, np.exp(-t), rtol=1e-12)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-12)
    np.testing.assert_allclose(alpha, np.asarray(a_vp), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, np.asarray(s_vp), rtol=1e-5, atol=1e-6)


def test_posterior_mean_and_variance_match_numerical_quadrature():
    """E[X0 | X_t = x] and Var(X0 | X_t = x) by brute-force quadrature over x0 (Bayes' rule)."""
    mix = S.BIMODAL
    x0 = np.linspace(-8, 8, 40_001)
    prior = sum(w * _normal_pdf(x0, m, s) for w, m, s in zip(mix.weights, mix.means, mix.stds))
    for t in (0.05, 0.3, 1.0, 2.5):
        alpha, sigma = S.ou_coeffs(t)
        for x in (-3.0, -0.7, 0.0, 0.4, 2.0, 4.5):
            post = prior * _normal_pdf(x, alpha * x0, sigma)
            z = np.trapezoid(post, x0)
            m1 = np.trapezoid(x0 * post, x0) / z
            m2 = np.trapezoid(x0**2 * post, x0) / z
            assert abs(S.posterior_mean(mix, t, x) - m1) < 1e-7, (t, x)
            assert abs(S.posterior_variance(mix, t, x) - (m2 - m1**2)) < 1e-7, (t, x)


def test_posterior_mean_is_the_regression_function_by_monte_carlo():
    """The label noise X0 - f*(t, X_t) has mean zero given (t, X_t): uncorrelated with functions
    of the inputs; its mean square is the quadrature floor."""
    t, xt, x0 = S.sample_triples(np.random.default_rng(1), 400_000)
    noise = x0 - S.posterior_mean(S.BIMODAL, t, xt)
    for g in (np.ones_like(t), xt, t * xt, np.tanh(xt), xt**2 / 4):
        prod = noise * g
        assert abs(prod.mean()) < 4 * prod.std() / np.sqrt(t.size)
    sq = noise**2
    assert abs(sq.mean() - S.label_noise_floor()) < 4 * sq.std() / np.sqrt(t.size)
    # and the naive "linear shrinkage" is not the regression function: it leaves a correlation
    alpha, _ = S.ou_coeffs(t)
    lin = x0 - alpha * xt * 4.25 / (alpha**2 * 4.25 + 1 - alpha**2)
    assert abs((lin * np.tanh(xt)).mean()) > 20 * (lin * np.tanh(xt)).std() / np.sqrt(t.size)


def test_label_noise_floor_and_variance_of_f_star():
    floor, var_f = S.label_noise_floor(), S.var_posterior_mean()
    # the quadrature has converged
    assert abs(S.label_noise_floor(n_t=32, n_x=48) - floor) < 1e-6
    # law of total variance: E Var(X0 | X_t) + Var E[X0 | X_t] = Var X0 = 0.25 + 4
    assert abs(floor + var_f - S.BIMODAL.variance) < 1e-8
    assert abs(S.BIMODAL.variance - 4.25) < 1e-12
    # the note's numbers (1.107, 3.18) come from a finite-sample numpy run; the exact values
    # are 1.0852 and 3.1648, within 2% and 0.5% of them
    assert abs(floor / 1.107 - 1) < 0.03 and abs(var_f / 3.18 - 1) < 0.01
    # a wider time range adds more noise: at larger t, x_t says less about x0
    assert S.label_noise_floor(t_max=2.0) > floor


# ----------------------------------------------------------------------------- kernels


def _some_features(n, seed=0):
    t, xt, _ = S.sample_triples(np.random.default_rng(seed), n)
    return S.features(t, xt)


def test_analytic_ntk_is_a_psd_kernel_with_the_right_diagonal():
    z = _some_features(50)
    k = S.analytic_ntk(z)
    np.testing.assert_allclose(k, k.T, atol=1e-14)
    assert np.linalg.eigvalsh(k).min() > -1e-10
    # theta = 0: K(z, z) = |z|^2 / 2 + |z|^2 / 2
    np.testing.assert_allclose(np.diag(k), np.sum(z**2, 1), rtol=1e-12)
    np.testing.assert_allclose(S.analytic_ntk(z[:7], z), k[:7], atol=1e-14)


def test_empirical_ntk_of_a_wide_network_converges_to_the_analytic_ntk():
    z = _some_features(24)
    k = S.analytic_ntk(z)
    errs = {}
    for width in (128, 32_768):
        net = T.TwoLayerNet(width)
        k_emp = S.empirical_ntk(net.apply, net.init(jax.random.key(width)), z)
        errs[width] = np.linalg.norm(k_emp - k) / np.linalg.norm(k)
    assert errs[32_768] < 0.02, errs
    assert errs[32_768] < errs[128] / 4, errs  # O(width^{-1/2}): a factor 16 expected


def test_empirical_ntk_agrees_with_explicit_jacobians_and_jvp_matvecs():
    z1, z2 = _some_features(9, seed=1), _some_features(13, seed=2)
    net = T.TwoLayerNet(64)
    params = net.init(jax.random.key(0))
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        jac = jax.jacrev(net.apply)
        j1, j2 = jac(p64, jnp.asarray(z1)), jac(p64, jnp.asarray(z2))
        explicit = sum(np.asarray(j1[k]).reshape(9, -1) @ np.asarray(j2[k]).reshape(13, -1).T for k in j1)
    k12 = S.empirical_ntk(net.apply, params, z1, z2, block=4)  # several blocks
    np.testing.assert_allclose(k12, explicit, rtol=1e-10, atol=1e-12)
    v = np.random.default_rng(0).standard_normal(13)
    np.testing.assert_allclose(S.ntk_matvec(net.apply, params, z1, z2, v), k12 @ v, rtol=1e-10, atol=1e-12)
    # predictions through tangent features J_new (J_train^T alpha) = through the kernel
    j1, j2 = S.tangent_features(net.apply, params, z1, block=5), S.tangent_features(net.apply, params, z2)
    np.testing.assert_allclose(j1 @ j2.T, k12, rtol=1e-10, atol=1e-12)
    gd = S.KernelGD(j2 @ j2.T, v)
    np.testing.assert_allclose(gd.predict_features(j1, j2, [1, 50, 10**6]), gd.predict(k12, [1, 50, 10**6]),
                               rtol=1e-8, atol=1e-10)


def test_empirical_ntk_works_for_the_library_mlp():
    """Any ``apply_fn(params, z) -> (B,)``: here diffalign's MLP on inputs (x, t)."""
    from flax import nnx

    from diffalign.models import MLP, functional

    apply_fn, params = functional(MLP(1, (16, 16), rngs=nnx.Rngs(0)))

    def f(p, z):
        return apply_fn(p, z[:, :1], z[:, 1])[:, 0]

    z = _some_features(6)
    k = S.empirical_ntk(f, params, z)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        j = jax.jacrev(f)(p64, jnp.asarray(z))
        explicit = sum(np.asarray(leaf).reshape(6, -1) @ np.asarray(leaf).reshape(6, -1).T
                       for leaf in jax.tree.leaves(j))
    np.testing.assert_allclose(k, explicit, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(S.ntk_matvec(f, params, z, z, np.ones(6)), k.sum(1), rtol=1e-9)


# ----------------------------------------------------------------------------- kernel GD


@pytest.mark.parametrize("eta_scale", [1.0, 0.37])
def test_kernel_gd_closed_form_equals_the_gd_loop(eta_scale):
    z = _some_features(40)
    k = S.analytic_ntk(z)
    y = np.random.default_rng(3).standard_normal(40)
    gd = S.KernelGD(k, y, eta=eta_scale / np.linalg.eigvalsh(k).max())
    loop = S.kernel_gd_iterates(k, y, gd.eta, 300)
    steps = np.array([0, 1, 2, 5, 17, 100, 300])
    np.testing.assert_allclose(gd.coef(steps).T, loop[steps], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gd.train_predict(steps), k @ gd.coef(steps), rtol=1e-8, atol=1e-10)
    zt = _some_features(11, seed=5)
    np.testing.assert_allclose(gd.predict(S.analytic_ntk(zt, z), steps),
                               S.analytic_ntk(zt, z) @ loop[steps].T, rtol=1e-8, atol=1e-10)


def test_kernel_gd_interpolates_in_the_long_run():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 20))
    k = a @ a.T + np.eye(20)  # well conditioned
    y = rng.standard_normal(20)
    gd = S.KernelGD(k, y)
    np.testing.assert_allclose(gd.train_predict([1e9])[:, 0], y, atol=1e-8)
    np.testing.assert_allclose(gd.coef([1e9])[:, 0], np.linalg.solve(k, y), atol=1e-8)
    # a singular kernel: the null space gets k * eta (the limit of g_k at lam = 0), no NaN
    gd0 = S.KernelGD(np.outer(y, y), y)
    assert np.all(np.isfinite(gd0.gains([0, 1, 10**7])))


def test_early_stopping_u_shape_and_k_star_growing_with_n_small():
    """The headline at small cost: analytic NTK, n = 100 and 1000, two draws each."""
    ks = S.iteration_grid(10**7, 40)
    k_star, best = {}, {}
    for n in (100, 1000):
        for d in range(2):
            rng = np.random.default_rng([7, n, d])
            t, xt, x0 = S.sample_triples(rng, n)
            tt, xtt, _ = S.sample_triples(rng, 1500)
            z, zt = S.features(t, xt), S.features(tt, xtt)
            curve = S.excess_risk(S.KernelGD(S.analytic_ntk(z), x0).predict(S.analytic_ntk(zt, z), ks),
                                  S.posterior_mean(S.BIMODAL, tt, xtt))
            i = int(np.argmin(curve))
            assert 0 < i < len(ks) - 1                     # an interior minimum
            assert curve[i] < 0.3 * curve[0] and curve[i] < 0.5 * curve[-1], (n, d, curve[[0, i, -1]])
            k_star.setdefault(n, []).append(ks[i])
            best.setdefault(n, []).append(curve[i])
    assert np.median(k_star[1000]) > 1.3 * np.median(k_star[100]), k_star
    assert np.mean(best[1000]) < 0.5 * np.mean(best[100]), best


# ----------------------------------------------------------------------------- the network


def test_symmetric_network_starts_at_zero_and_tracks_kernel_gd_when_wide():
    """Lazy regime: at small n and large width, full-batch GD of the network is kernel GD with
    its empirical tangent kernel at init (eta = lr / n); the gap shrinks with width."""
    n = 40
    t, xt, x0 = S.sample_triples(np.random.default_rng(2), n)
    tt, xtt, _ = S.sample_triples(np.random.default_rng(3), 200)
    z, zt = S.features(t, xt), S.features(tt, xtt)
    steps = np.array([1, 3, 10, 30, 100])
    rel = {}
    for width in (512, 8192):
        net = T.TwoLayerNet(width)
        params = net.init(jax.random.key(1))
        if width == 8192:
            # f_0 = 0 up to float32 summation round-off (the outputs are O(1))
            assert float(jnp.abs(net.apply(params, jnp.asarray(zt, jnp.float32))).max()) < 1e-5
        gd = S.KernelGD(S.empirical_ntk(net.apply, params, z), x0)
        res = T.train_two_layer(net.apply, params, z, x0, lr=n * gd.eta, record_steps=steps,
                                z_test=zt, f_test=np.zeros(200), z_val=zt, y_val=np.zeros(200))
        kernel_pred = gd.predict(S.empirical_ntk(net.apply, params, zt, z), steps)  # (200, steps)
        err = np.abs(res["held_out_pred"].T - kernel_pred).max(axis=0)
        rel[width] = err / np.abs(kernel_pred).max(axis=0)
        assert np.all(np.diff(res["train_loss"]) < 0)        # GD on a loss convex in function space
    assert np.all(rel[8192] < 0.03), rel
    assert rel[8192][-1] < rel[512][-1] / 2, rel
    unsym = T.TwoLayerNet(8192, symmetric=False)
    assert float(jnp.abs(unsym.apply(unsym.init(jax.random.key(1)), jnp.asarray(zt, jnp.float32))).max()) > 0.1


# ----------------------------------------------------------------------------- rule and input errors


def test_held_out_stop_picks_the_minimum():
    ks = np.array([1, 10, 100, 1000])
    assert S.held_out_stop(ks, [3.0, 1.0, 2.0, 2.5]) == (10, 1)
    with pytest.raises(ValueError, match="equal-length"):
        S.held_out_stop(ks, [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        S.held_out_stop(ks, [1.0, np.nan, 2.0, 3.0])


def test_iteration_grid():
    g = S.iteration_grid(10**7, 80)
    assert g[0] == 1 and g[-1] == 10**7 and np.all(np.diff(g) > 0)
    assert len(g) > 400
    assert list(S.iteration_grid(1)) == [1]


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="sum to 1"):
        S.GaussianMixture1D((0.5, 0.6), (0.0, 1.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="stds must be positive"):
        S.GaussianMixture1D((1.0,), (0.0,), (0.0,))
    with pytest.raises(ValueError, match="equally many"):
        S.GaussianMixture1D((1.0,), (0.0, 1.0), (1.0,))
    with pytest.raises(ValueError, match="positive integer"):
        S.sample_triples(0, 0)
    with pytest.raises(ValueError, match="t_min < t_max"):
        S.sample_triples(0, 10, t_min=0.5, t_max=0.1)
    with pytest.raises(ValueError, match=">= 0"):
        S.ou_coeffs(-1.0)
    with pytest.raises(ValueError, match="equal length"):
        S.features(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"\(n, d\) and \(m, d\)"):
        S.analytic_ntk(np.ones((3, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="nonzero"):
        S.analytic_ntk(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="square"):
        S.KernelGD(np.ones((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match="labels must have shape"):
        S.KernelGD(np.eye(3), np.ones(4))
    with pytest.raises(ValueError, match="eta must be in"):
        S.KernelGD(np.eye(3), np.ones(3), eta=1.5)
    with pytest.raises(ValueError, match=">= 0"):
        S.KernelGD(np.eye(3), np.ones(3)).gains([-1])
    with pytest.raises(ValueError, match="cross kernel"):
        S.KernelGD(np.eye(3), np.ones(3)).predict(np.ones((2, 4)), [1])
    with pytest.raises(ValueError, match="even width"):
        T.TwoLayerNet(7)
    params = {"w": jnp.ones((3,))}
    column = lambda p, z: (z @ p["w"])[:, None]  # noqa: E731  (B, 1), not (B,)
    for fn in (S.empirical_ntk, S.tangent_features):
        with pytest.raises(ValueError, match=r"to \(B,\) outputs, got \(2, 1\)"):
            fn(column, params, np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"to \(B,\) outputs, got \(\)"):
        S.ntk_matvec(lambda p, z: jnp.sum(z @ p["w"]), params, np.ones((4, 3)), np.ones((4, 3)), np.ones(4))
    with pytest.raises(ValueError, match="do not match"):
        S.excess_risk(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="k_max >= 1"):
        S.iteration_grid(0)
    net = T.TwoLayerNet(4)
    p = net.init(jax.random.key(0))
    with pytest.raises(ValueError, match="v must have shape"):
        S.ntk_matvec(net.apply, p, np.ones((2, 3)), np.ones((3, 3)), np.ones(2))
    z = np.ones((5, 3))
    with pytest.raises(ValueError, match="increasing"):
        T.train_two_layer(net.apply, p, z, np.ones(5), lr=0.1, record_steps=[5, 3],
                          z_test=z, f_test=np.ones(5), z_val=z, y_val=np.ones(5))
    with pytest.raises(ValueError, match="test inputs"):
        T.train_two_layer(net.apply, p, z, np.ones(5), lr=0.1, record_steps=[1],
                          z_test=z, f_test=np.ones(4), z_val=z, y_val=np.ones(5))


# ----------------------------------------------------------------------------- the experiment


def test_config_refuses_bad_settings():
    from diffalign.experiments.score_theory import Config

    for kw, msg in [({"draws": 0}, "draws must be >= 1"), ({"width": 33}, "width must be even"),
                    ({"ns": (1, 100)}, "ns must be"), ({"holdout_fractions": (0.0,)}, "holdout_fractions"),
                    ({"t_min": 0.0}, "t_min"), ({"network_max_n": -1}, "network_max_n")]:
        with pytest.raises(ValueError, match=msg):
            Config(**kw)


def test_cli_smoke_keeps_the_contract(tmp_path):
    out = str(tmp_path / "run")
    p = cli("score-theory", "--out", out, "--smoke")
    assert "results:" in p.stdout
    with open(os.path.join(out, "results.json")) as f:
        r = json.load(f)
    assert r["experiment"] == "score-theory" and r["smoke"] is True
    for key in ("metrics", "config", "versions", "timings"):
        assert r[key]
    assert r["config"]["ns"] == [50, 100] and r["config"]["draws"] == 2
    m = r["metrics"]
    for n in (50, 100):
        for kind in ("analytic_ntk", "empirical_ntk", "network"):
            e = m[f"n_{n}"][kind]
            for key in ("best_iteration", "best_excess", "excess_at_1", "held_out_rule"):
                assert np.isfinite(e[key] if key != "held_out_rule" else e[key]["excess"]), (n, kind, key)
            assert len(e["best_excess_per_draw"]) == 2
            assert e["best_excess"] < e["excess_at_1"]
        assert np.isfinite(m[f"n_{n}"]["analytic_ntk"]["converged_excess"])
    assert 1.0 < m["label_noise_floor"] < 1.2
    assert os.path.getsize(os.path.join(out, "excess_vs_iteration.png")) > 1000
    curves = np.load(os.path.join(out, "curves.npz"))
    assert curves["n100_analytic_ntk_excess"].shape[0] == 2


def test_cli_refuses_bad_arguments(tmp_path):
    p = cli("score-theory", "--out", str(tmp_path / "x"), "--draws", "0", check=False)
    assert p.returncode == 2 and "draws must be >= 1" in p.stderr
    assert not os.path.exists(tmp_path / "x")


# ----------------------------------------------------------------------------- slow: the note's numbers


def _run_metrics(tmp_path, **kw):
    from diffalign.experiments.score_theory import Config, run

    run(dataclasses.replace(Config(), **kw), str(tmp_path))
    with open(tmp_path / "results.json") as f:
        return json.load(f)["metrics"]


@pytest.mark.slow
def test_analytic_kernel_reproduces_the_reference_table(tmp_path):
    """Analytic NTK, n = 100 ... 3000, five draws (about 2 min on 2 busy cores)."""
    from diffalign.experiments.score_theory import REFERENCE

    m = _run_metrics(tmp_path, empirical=False, network_max_n=0)
    k_stars = []
    for n, ref in REFERENCE.items():
        a = m[f"n_{n}"]["analytic_ntk"]
        k_stars.append(a["best_iteration"])
        assert 0.5 <= a["best_iteration"] / ref["best_iteration"] <= 2.0, (n, a["best_iteration"])
        assert 1 / 1.5 <= a["best_excess"] / ref["best_excess"] <= 1.5, (n, a["best_excess"])
        assert a["converged_excess"] > 3 * a["best_excess"], n               # prediction (iv)
        assert abs(a["excess_at_1"] / ref["excess_at_1"] - 1) < 0.1, n
        # the held-out rule (4n held-out triples, at most 4000) lands close to the oracle's risk
        assert a["held_out_rule"]["excess_over_oracle_best"] < 1.25, n
        assert a["held_out_rule"]["max_factor_from_oracle"] <= 2.0, n
    assert all(b >= a for a, b in zip(k_stars, k_stars[1:])), k_stars       # k* grows with n
    assert -0.8 < m["rate_slope_300_to_3000"]["analytic_ntk"] < -0.25


@pytest.mark.slow
def test_empirical_kernel_matches_the_analytic_kernel(tmp_path):
    """The width-2048 network's tangent kernel at init, same draws, n = 100 ... 1000 (about 1 min);
    n = 3000 is in the full run only (+5% there)."""
    m = _run_metrics(tmp_path, ns=(100, 300, 1000), network_max_n=0)
    for n in (100, 300, 1000):
        a, e = m[f"n_{n}"]["analytic_ntk"], m[f"n_{n}"]["empirical_ntk"]
        assert abs(e["best_excess"] / a["best_excess"] - 1) <= 0.10, (n, e["best_excess"], a["best_excess"])
        assert 0.5 <= e["best_iteration"] / a["best_iteration"] <= 2.0, n
        assert e["converged_excess"] > 3 * e["best_excess"], n
        assert e["held_out_rule"]["excess_over_oracle_best"] < 1.25, n


@pytest.mark.slow
def test_wide_network_tracks_the_kernel_curve_at_n300(tmp_path):
    """Width 2 x 1024, both layers trained, full-batch GD with step n / lam_max, three draws."""
    from diffalign.experiments.score_theory import Config, run

    cfg = dataclasses.replace(Config(), ns=(300,), draws=3, empirical=False)
    run(cfg, str(tmp_path))
    with open(tmp_path / "results.json") as f:
        m = json.load(f)["metrics"]["n_300"]
    net, ker = m["network"], m["network"]["analytic_ntk_same_draws"]
    assert 1 / 1.5 <= net["best_excess"] / ker["best_excess"] <= 1.5, (net["best_excess"], ker)
    assert 0.5 <= net["best_iteration"] / ker["best_iteration"] <= 2.0, (net["best_iteration"], ker)
    assert net["final_excess"] > 1.3 * net["best_excess"]                   # U-shaped
    assert net["excess_at_1"] > 10 * net["best_excess"]
    # the note's numpy network (other draws): minimum at step 572. Its value 0.034 is not compared:
    # at n = 300 the per-draw minimum ranges over 0.03-0.10, so the same-draw kernel is the reference
    assert 0.5 <= net["best_iteration"] / 572 <= 2.0
