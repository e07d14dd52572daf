"""Per-example losses: shapes, parametrizations, weightings, couplings, closed-form optima."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from closed_forms import gaussian_score
from diffalign.losses import dsm_loss, flow_matching_loss
from diffalign.paths import LinearPath, Predictor, convert
from diffalign.paths.coupling import couple, coupled_batch_fn, exact_ot_permutation
from diffalign.sde import VESDE, VPSDE

MU = jnp.array([1.0, -2.0])
COV = jnp.array([[1.0, 0.6], [0.6, 0.61]])


def data(n, key=0):
    return {"x": jax.random.multivariate_normal(jax.random.key(key), MU, COV, (n,))}


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=20.0)], ids=lambda s: type(s).__name__)
def test_dsm_parametrizations_agree_and_exact_score_is_optimal(sde):
    """The same network output gives the same loss in every parametrization, and the exact
    score has a lower DSM loss than perturbed versions of it (it is the minimiser)."""
    score = gaussian_score(sde, MU, COV)
    batch = data(4096)
    key = jax.random.key(1)
    losses = {}
    for par in ("score", "eps", "x0"):
        def apply(params, x, t, y, par=par):
            return convert(score(x, t) * params, "score", par, x, t, sde)

        losses[par] = dsm_loss(sde, apply, parametrization=par)(1.0, batch, key)["per_example"]
    np.testing.assert_allclose(losses["eps"], losses["score"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(losses["x0"], losses["score"], rtol=1e-3, atol=1e-3)

    def mean_loss(scale):
        apply = lambda p, x, t, y: score(x, t) * p  # noqa: E731
        return jnp.mean(dsm_loss(sde, apply, parametrization="score")(scale, batch, key)["per_example"])

    assert mean_loss(1.0) < mean_loss(0.9) and mean_loss(1.0) < mean_loss(1.1)
    # the gradient in the scale vanishes at the optimum (up to Monte Carlo error)
    assert abs(float(jax.grad(mean_loss)(1.0))) < 0.05 * abs(float(jax.grad(mean_loss)(0.8)))


def test_dsm_likelihood_weighting_is_g2_over_sigma2():
    sde = VPSDE()
    apply = lambda p, x, t, y: jnp.zeros_like(x)  # noqa: E731
    key = jax.random.key(2)
    plain = dsm_loss(sde, apply)(None, data(64), key)
    weighted = dsm_loss(sde, apply, weighting="likelihood")(None, data(64), key)
    t = plain["t"]
    w = sde.diffusion(t) ** 2 / sde.coeffs(t)[1] ** 2
    np.testing.assert_allclose(weighted["per_example"], plain["per_example"] * w, rtol=1e-5)
    assert plain["per_example"].shape == (64,)
    assert float(t.min()) >= sde.t_min and float(t.max()) <= sde.t_max
    with pytest.raises(ValueError, match="unknown DSM weighting"):
        dsm_loss(sde, apply, weighting="snr")


def test_flow_matching_target_and_exact_velocity_is_optimal():
    """On the linear path with Gaussian data the exact marginal velocity minimises CFM."""
    path = LinearPath()
    score = gaussian_score(path, MU, COV)
    vel = Predictor(score, path, "score").velocity
    batch = data(8192)
    key = jax.random.key(3)

    def mean_loss(scale):
        apply = lambda p, x, t, y: vel(x, jnp.clip(t, 0, 0.999)) * p  # noqa: E731
        return jnp.mean(flow_matching_loss(apply)(scale, batch, key)["per_example"])

    assert mean_loss(1.0) < mean_loss(0.95) and mean_loss(1.0) < mean_loss(1.05)
    # the regression target of the linear path is x1 - x0
    x0 = jnp.ones((3, 2))
    x1 = jnp.zeros((3, 2))
    np.testing.assert_allclose(path.velocity(x0, x1, jnp.array([0.1, 0.5, 0.9])), x1 - x0)


def test_exact_ot_coupling_is_optimal():
    """The minibatch plan is the best permutation (brute force over all 7! of them)."""
    k1, k2 = jax.random.split(jax.random.key(4))
    a = jax.random.normal(k1, (7, 2))
    b = jax.random.normal(k2, (7, 2)) + 1.0
    perm = np.asarray(jax.jit(exact_ot_permutation)(a, b))
    assert sorted(perm) == list(range(7))
    cost = lambda p: float(jnp.sum((a - b[np.asarray(p)]) ** 2))  # noqa: E731
    best = min(cost(p) for p in itertools.permutations(range(7)))
    assert cost(perm) == pytest.approx(best, rel=1e-6)
    # vectorised over a chunk of problems (the training loop's path) gives the same plans
    many = jax.vmap(exact_ot_permutation)(jnp.stack([a, a]), jnp.stack([b, b]))
    np.testing.assert_array_equal(many, np.stack([perm, perm]))


def test_sinkhorn_coupling_is_close_to_exact_for_small_epsilon():
    pytest.importorskip("ott")
    k1, k2 = jax.random.split(jax.random.key(5))
    a = jax.random.normal(k1, (64, 2))
    b = jax.random.normal(k2, (64, 2)) * 2 + 3
    exact = couple(None, a, b, "exact_ot")
    ent = couple(jax.random.key(6), a, b, "sinkhorn", epsilon=1e-3)
    c_exact = float(jnp.mean(jnp.sum((a - exact) ** 2, -1)))
    c_ent = float(jnp.mean(jnp.sum((a - ent) ** 2, -1)))
    c_ind = float(jnp.mean(jnp.sum((a - b) ** 2, -1)))
    # rows are sampled independently (not a permutation), so the cost can fall on either side
    assert abs(c_ent - c_exact) < 0.1 * (c_ind - c_exact)


def test_coupled_batches_and_label_dropout():
    fn = coupled_batch_fn(lambda s: {"x": jnp.ones((8, 2)) * s}, "exact_ot", seed=0)
    b = jax.jit(fn)(3)
    assert b["x_source"].shape == (8, 2)
    apply = lambda p, x, t, y: jnp.zeros_like(x) + (y[:, None] == 10)  # noqa: E731
    loss = flow_matching_loss(apply, label_dropout=0.5, num_classes=10)
    out = loss(None, {"x": jnp.zeros((4000, 2)), "y": jnp.zeros(4000, jnp.int32)}, jax.random.key(7))
    assert out["per_example"].shape == (4000,)
    with pytest.raises(ValueError, match="num_classes"):
        flow_matching_loss(apply, label_dropout=0.5)(None, {"x": jnp.zeros((4, 2)), "y": jnp.zeros(4, jnp.int32)}, jax.random.key(0))
    with pytest.raises(ValueError, match="x_source"):
        flow_matching_loss(apply, coupling="paired")(None, {"x": jnp.zeros((4, 2))}, jax.random.key(0))
    with pytest.raises(TypeError, match="dict with the data under 'x'"):
        flow_matching_loss(apply)(None, jnp.zeros((4, 2)), jax.random.key(0))


def test_library_code_is_rank_promotion_clean():
    """Losses and samplers never rely on implicit rank promotion (strict numpy semantics)."""
    from diffalign.sampling import sample

    sde = VPSDE()
    apply = lambda p, x, t, y: x * p  # noqa: E731
    with jax.numpy_rank_promotion("raise"):
        dsm_loss(sde, apply)(0.5, data(8), jax.random.key(0))
        flow_matching_loss(apply, sigma_min=0.1)(0.5, data(8), jax.random.key(0))
        pred = Predictor(lambda x, t: -x, sde, "score")
        for m in ("euler", "heun", "ddim", "dpm++2m", "edm", "euler_maruyama", "pc"):
            sample(jax.random.key(0), pred, jnp.ones((4, 3)), m, 3)
