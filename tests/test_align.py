"""AWM: advantages and the transform's controls (issue 4, point 4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffalign.align.awm import awm, ema_anchor_decay, group_advantages, log_likelihood_surrogate


def test_group_advantages_match_their_formula():
    r = jnp.array([1.0, 3.0, 2.0, 2.0, 0.0, 10.0])
    g = jnp.array([0, 0, 1, 1, 2, 2])
    a = group_advantages(r, g, 3)
    means = np.array([2.0, 2.0, 2.0, 2.0, 5.0, 5.0])
    expect = np.clip((np.asarray(r) - means) / (np.std(np.asarray(r)) + 1e-4), -5, 5) / 5
    np.testing.assert_allclose(a, expect, rtol=1e-6)
    assert a[2] == 0 and a[3] == 0  # a group with equal rewards
    np.testing.assert_array_equal(group_advantages(jnp.full(6, 0.7), g, 3), 0.0)  # a constant reward
    big = group_advantages(jnp.array([0.0] * 99 + [1e6]), jnp.zeros(100, jnp.int32), 1)
    assert float(big.max()) == 1.0  # clipped at 5, then divided by 5
    with pytest.raises(ValueError):
        group_advantages(jnp.ones((2, 3)), jnp.zeros((2, 3), jnp.int32), 1)


def test_ghuber_surrogate_and_its_gradient():
    l, t = jnp.array([0.5, 2.0]), jnp.array([0.3, 0.8])
    np.testing.assert_allclose(log_likelihood_surrogate(l, t), -(t / 0.25) * ((l + 1e-10) ** 0.25 - 1e-10**0.25),
                               rtol=1e-6)
    g = jax.grad(lambda l: log_likelihood_surrogate(l, t).sum())(l)
    np.testing.assert_allclose(g, -t * l ** (0.25 - 1), rtol=1e-5)  # large errors are down-weighted
    np.testing.assert_array_equal(log_likelihood_surrogate(l, t, "uniform"), -l)


def _toy_out(theta, adv, **extra):
    x = jnp.array([1.0, -2.0, 0.5, 3.0])
    loss = (theta * x - 1.0) ** 2
    return {"per_example": loss, "advantage": adv, "t": jnp.full(4, 0.5), **extra}


def test_awm_on_policy_gradient_is_advantage_weighted_and_zero_without_advantages():
    tr = awm()

    def objective(theta, adv):
        return tr.apply(_toy_out(theta, adv), (), 0)[0]

    assert float(jax.grad(objective)(0.7, jnp.zeros(4))) == 0.0  # control: zero advantages
    adv = jnp.array([0.5, -0.2, 1.0, 0.0])
    x = jnp.array([1.0, -2.0, 0.5, 3.0])
    l = (0.7 * x - 1.0) ** 2
    dl = 2 * (0.7 * x - 1.0) * x
    expect = np.mean(np.asarray(adv * 0.5 * l ** (0.25 - 1) * dl))  # grad of -A log p = A t l^(p-1) dl
    np.testing.assert_allclose(jax.grad(objective)(0.7, adv), expect, rtol=1e-5)
    # the value on-policy is -mean(A) (rho = 1)
    np.testing.assert_allclose(objective(0.7, adv), -np.mean(np.asarray(adv)), rtol=1e-6)


def test_awm_clips_off_policy_ratios_and_adds_drift_terms():
    adv = jnp.ones(4)
    out = _toy_out(0.7, adv, logp_old=jnp.full(4, -50.0), drift_ref=jnp.full(4, 2.0), drift_ema=jnp.full(4, 4.0))
    loss, _, m = awm(clip_eps=0.2, beta=0.1, beta_ema=0.01).apply(out, (), 0)
    # far off-policy, rho = exp(large) is clipped at 1.2 for a positive advantage: -1.2, plus the drifts
    np.testing.assert_allclose(loss, -1.2 + 0.1 * 2.0 + 0.01 * 4.0, rtol=1e-6)
    assert float(m["ratio_clipped"]) == 1.0
    with pytest.raises(KeyError):
        awm(beta=0.1).apply(_toy_out(0.7, adv), (), 0)
    with pytest.raises(ValueError):
        awm(weighting="elbo")


def test_ema_anchor_decay():
    np.testing.assert_allclose([ema_anchor_decay(s) for s in (0, 100, 300, 1000)], [0.0, 0.1, 0.3, 0.3], rtol=1e-6)
