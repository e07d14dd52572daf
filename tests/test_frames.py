"""Residue frames and the SE(3) diffusion of Str2Str, against exact references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffalign.geometry import exp_map, igso3_mean_angle, log_map
from diffalign.geometry.frames import FrameDiffusion, frames_to_backbone, heat_anneal_frames, rigid_from_3_points


@pytest.fixture(scope="module")
def diffusion():
    return FrameDiffusion()


def _random_frames(key, shape):
    k1, k2 = jax.random.split(key)
    return exp_map(jax.random.normal(k1, (*shape, 3))), 10.0 * jax.random.normal(k2, (*shape, 3))


def test_frames_and_backbone_round_trip_and_are_equivariant():
    rots, trans = _random_frames(jax.random.key(0), (5, 7))
    atoms = frames_to_backbone(rots, trans)
    r2, t2 = rigid_from_3_points(atoms[..., 0, :], atoms[..., 1, :], atoms[..., 2, :])
    np.testing.assert_allclose(np.asarray(r2), np.asarray(rots), atol=1e-5)
    np.testing.assert_allclose(np.asarray(t2), np.asarray(trans), atol=1e-5)
    # ideal geometry: N-CA 1.4605 A (|(-0.525, 1.363, 0)|), CA-C 1.526 A
    np.testing.assert_allclose(np.linalg.norm(np.asarray(atoms[..., 0, :] - atoms[..., 1, :]), axis=-1), 1.4605, atol=1e-3)
    # a global rotation g and shift u act on frames as (g R, g x + u)
    g, u = exp_map(jnp.array([0.4, -1.0, 0.3])), jnp.array([1.0, 2.0, -3.0])
    moved = jnp.einsum("ij,...aj->...ai", g, atoms) + u
    r3, t3 = rigid_from_3_points(moved[..., 0, :], moved[..., 1, :], moved[..., 2, :])
    np.testing.assert_allclose(np.asarray(r3), np.asarray(g @ rots), atol=1e-5)
    np.testing.assert_allclose(np.asarray(t3), np.asarray(trans @ g.T + u), atol=1e-4)


def test_rotation_schedule_and_its_diffusion(diffusion):
    np.testing.assert_allclose(float(diffusion.sigma(0.0)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(diffusion.sigma(1.0)), 1.5, rtol=1e-6)
    t = jnp.linspace(0.05, 0.95, 7)
    fd = (diffusion.sigma(t + 1e-3) ** 2 - diffusion.sigma(t - 1e-3) ** 2) / 2e-3
    np.testing.assert_allclose(np.asarray(diffusion.rot_g2(t)), np.asarray(fd), rtol=1e-3)


def test_forward_marginal_is_exact(diffusion):
    n, t = 20_000, 0.4
    rots0, trans0 = _random_frames(jax.random.key(1), (1, 2))
    rots0, trans0 = jnp.broadcast_to(rots0, (n, 2, 3, 3)), jnp.broadcast_to(trans0, (n, 2, 3))
    r_t, x_t = diffusion.forward_marginal(jax.random.key(2), rots0, trans0, jnp.full((n,), t))
    w = np.linalg.norm(np.asarray(log_map(jnp.swapaxes(rots0, -1, -2) @ r_t)), axis=-1).ravel()
    assert abs(w.mean() - igso3_mean_angle(float(diffusion.sigma(t)))) < 3 * w.std() / np.sqrt(w.size) + 2e-3
    a, std = (float(v[0]) for v in diffusion.sde.marginal(jnp.ones(1), jnp.full((1,), t)))
    xs = np.asarray(x_t) * diffusion.trans_scale
    np.testing.assert_allclose(xs.mean(0), a * np.asarray(trans0[0]) * diffusion.trans_scale, atol=4 * std / np.sqrt(n))
    np.testing.assert_allclose(xs.std(0), std, rtol=0.03)


@pytest.mark.parametrize("t_delta", [0.3, 1.0])
def test_reverse_sde_with_the_exact_score_returns_the_data_law(diffusion, t_delta):
    """Data: one frame per residue (a point mass). With its exact score, annealing from any t_delta
    ends at the forward marginal at t_min: IGSO3(sigma(t_min)) around R_0 and N(alpha x_0, std^2)."""
    n, steps = 2000, round(1000 * t_delta)  # Str2Str's grid spacing, 0.001
    rots0, trans0 = _random_frames(jax.random.key(3), (1, 3))
    rots0, trans0 = jnp.broadcast_to(rots0, (n, 3, 3, 3)), jnp.broadcast_to(trans0, (n, 3, 3))
    x0 = trans0 * diffusion.trans_scale

    def score(r, x, t):
        a, std = diffusion.sde.marginal(jnp.ones_like(t), t)
        s_trans = -(x * diffusion.trans_scale - a[:, None, None] * x0) / (std**2)[:, None, None]
        return diffusion.igso3.score(r, rots0, diffusion.sigma(t)[:, None]), s_trans

    r, x = jax.jit(lambda k: heat_anneal_frames(k, score, diffusion, rots0, trans0, t_delta, steps, center=False))(jax.random.key(4))
    w = np.linalg.norm(np.asarray(log_map(jnp.swapaxes(rots0, -1, -2) @ r)), axis=-1).ravel()
    expected = igso3_mean_angle(float(diffusion.sigma(diffusion.t_min)))
    # Euler's error: +3.6% on the mean angle from t_delta 1 in 400 steps, +0.5% in 1600, +0.1% in 3200
    assert abs(w.mean() - expected) < 3 * w.std() / np.sqrt(w.size) + 0.05 * expected, (w.mean(), expected)
    a, std = (float(v[0]) for v in diffusion.sde.marginal(jnp.ones(1), jnp.full((1,), diffusion.t_min)))
    xs = np.asarray(x) * diffusion.trans_scale
    np.testing.assert_allclose(xs.mean(0), a * np.asarray(x0[0]), atol=5 * std / np.sqrt(n))
    # Euler-Maruyama's error on this std from t_delta 0.3: +3% in 400 steps, +0.3% in 1600 (near t_min the
    # reverse drift is stiff: std^2 = 0.002 at t = 0.01)
    np.testing.assert_allclose(xs.std(0), std, rtol=0.07)
    # the probability-flow ODE keeps the marginals too: the rotations' spread and the positions' law
    r, x = jax.jit(lambda k: heat_anneal_frames(k, score, diffusion, rots0, trans0, t_delta, steps, method="ode", center=False))(jax.random.key(5))
    w = np.linalg.norm(np.asarray(log_map(jnp.swapaxes(rots0, -1, -2) @ r)), axis=-1).ravel()
    assert abs(w.mean() - expected) < 3 * w.std() / np.sqrt(w.size) + 0.05 * expected, (w.mean(), expected)
    xs = np.asarray(x) * diffusion.trans_scale
    np.testing.assert_allclose(xs.mean(0), a * np.asarray(x0[0]), atol=5 * std / np.sqrt(n))
    np.testing.assert_allclose(xs.std(0), std, rtol=0.07)


def test_centring_and_replicas(diffusion):
    """center=True removes each conformation's mean position after every step (Str2Str's
    center_trans); replicas= broadcasts one structure."""
    rots0, trans0 = _random_frames(jax.random.key(6), (5,))
    zero_score = lambda r, x, t: (jnp.zeros_like(x), jnp.zeros_like(x))  # noqa: E731
    r, x = heat_anneal_frames(jax.random.key(7), zero_score, diffusion, rots0, trans0, 0.5, 20, replicas=8)
    assert r.shape == (8, 5, 3, 3) and x.shape == (8, 5, 3)
    np.testing.assert_allclose(np.asarray(x.mean(1)), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(r @ jnp.swapaxes(r, -1, -2)), np.broadcast_to(np.eye(3), r.shape), atol=1e-4)


def test_bad_arguments_are_refused(diffusion):
    rots, trans = _random_frames(jax.random.key(0), (2, 3))
    with pytest.raises(ValueError, match="t_delta must be in"):
        heat_anneal_frames(jax.random.key(0), None, diffusion, rots, trans, 0.001, 10)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        FrameDiffusion(sigma_min=2.0)
    with pytest.raises(ValueError, match="unknown reverse method"):
        diffusion.reverse_step(jax.random.key(0), rots, trans, jnp.zeros_like(trans), jnp.zeros_like(trans),
                               jnp.full((2,), 0.5), 0.01, method="langevin")
