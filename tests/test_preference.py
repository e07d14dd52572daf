"""Preference and reward transforms against hand-computed closed forms; composition (issue 4, point 4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffalign import align, losses


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


L = np.array([0.30, 0.50, 0.90, 0.20])  # policy losses: chosen (0, 1), rejected (2, 3)
R = np.array([0.40, 0.45, 0.70, 0.25])  # the reference's losses at the same draws
G = R - L  # implicit rewards g = l_ref - l_theta


def _out(**extra):
    return {"per_example": jnp.asarray(L, jnp.float32), "ref_loss": jnp.asarray(R, jnp.float32), **extra}


def test_dpo_and_rpo_closed_forms():
    beta = 10.0
    expect = np.mean(-np.log(_sig(beta / 2 * (G[:2] - G[2:]))))
    loss, _, m = align.dpo(beta).apply(_out(), (), 0)
    np.testing.assert_allclose(loss, expect, rtol=1e-5)
    assert float(m["preference_accuracy"]) == 0.5  # pair (0, 2): g_w - g_l > 0; pair (1, 3): < 0
    loss, _, _ = align.rpo(beta, eta=0.3).apply(_out(), align.rpo(beta, eta=0.3).init(), 0)
    np.testing.assert_allclose(loss, expect + 0.3 * L[:2].mean(), rtol=1e-5)
    # the gradient flows through the policy's losses only: d/dl_w = beta/2 (1 - sigmoid(margin)) / n
    grad = jax.grad(lambda l: align.dpo(beta).apply({**_out(), "per_example": l}, (), 0)[0])(jnp.asarray(L, jnp.float32))
    margin = beta / 2 * (G[:2] - G[2:])
    np.testing.assert_allclose(grad[:2], (beta / 2) * (1 - _sig(margin)) / 2, rtol=1e-5)  # raising l_w costs
    np.testing.assert_allclose(grad[2:], -(beta / 2) * (1 - _sig(margin)) / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        align.dpo(beta).apply({"per_example": jnp.ones(3), "ref_loss": jnp.ones(3)}, (), 0)
    with pytest.raises(KeyError, match="ref_loss"):
        align.dpo(beta).apply({"per_example": jnp.ones(4)}, (), 0)


def test_kto_closed_form():
    beta, y = 5.0, np.array([1.0, 0.0, 1.0, 0.0])
    z = max(0.0, G.mean())
    s = 2 * y - 1
    w = np.where(y == 1, 1.0, 1.5)
    expect = np.mean(w * (1 - _sig(s * beta * (G - z))))
    loss, _, m = align.kto(beta, lambda_undesirable=1.5).apply(_out(label=jnp.asarray(y)), (), 0)
    np.testing.assert_allclose(loss, expect, rtol=1e-5)
    np.testing.assert_allclose(m["kto_reference_point"], z, rtol=1e-5, atol=1e-7)


def test_bco_running_delta_is_state():
    beta, y = 4.0, jnp.array([1.0, 1.0, 0.0, 0.0])
    tr = align.bco(beta)
    state = tr.init()
    loss1, state, m1 = tr.apply(_out(label=y), state, 0)
    np.testing.assert_allclose(m1["bco_delta"], beta * G.mean(), rtol=1e-5)
    expect = np.mean(-np.log(_sig((2 * np.asarray(y) - 1) * (beta * G - beta * G.mean()))))
    np.testing.assert_allclose(loss1, expect, rtol=1e-5)
    # a second batch: delta is the running mean over both batches (8 rewards)
    L2 = L + 0.1
    _, state, m2 = tr.apply({"per_example": jnp.asarray(L2, jnp.float32), "ref_loss": jnp.asarray(R), "label": y}, state, 1)
    np.testing.assert_allclose(m2["bco_delta"], beta * np.concatenate([G, R - L2]).mean(), rtol=1e-5)
    assert float(state["count"]) == 8


def test_lipo_lambda_closed_form():
    beta = 2.0
    psi = np.array([2.0, 0.0, 1.0, 0.0, 1.0, 2.0])  # two lists of three
    Ls = np.array([0.1, 0.4, 0.3, 0.2, 0.25, 0.6])
    Rs = np.array([0.3, 0.3, 0.3, 0.3, 0.3, 0.3])
    s = beta * (Rs - Ls)
    total = 0.0
    for lst in (slice(0, 3), slice(3, 6)):
        sl, pl = s[lst], psi[lst]
        tau = np.array([1 + np.sum(sl > sl[i]) for i in range(3)])
        gain, inv_d = 2.0**pl - 1, 1 / np.log2(1 + tau)
        for i in range(3):
            for j in range(3):
                if pl[i] > pl[j]:
                    total += abs(gain[i] - gain[j]) * abs(inv_d[i] - inv_d[j]) * np.log1p(np.exp(-(sl[i] - sl[j])))
    out = {"per_example": jnp.asarray(Ls, jnp.float32), "ref_loss": jnp.asarray(Rs, jnp.float32), "reward": jnp.asarray(psi)}
    loss, _, _ = align.lipo(beta, list_size=3).apply(out, (), 0)
    np.testing.assert_allclose(loss, total / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="whole lists"):
        align.lipo(beta, list_size=4).apply(out, (), 0)


def test_rwr_weights_are_a_softmax_of_rewards():
    r = np.array([1.0, 0.0, 2.0, 0.5])
    w = np.exp(r / 0.5) / np.exp(r / 0.5).sum()
    loss, _, _ = align.rwr(0.5).apply(_out(reward=jnp.asarray(r)), (), 0)
    np.testing.assert_allclose(loss, np.sum(w * L), rtol=1e-5)


def test_reward_transforms():
    r = jnp.array([[1.0, -1.0], [0.0, 2.0], [3.0, 0.5]])
    # LSC: sum over objectives of log sigmoid(r - r_ref)
    out, _, _ = align.log_sigmoid_reward(reference=jnp.array([0.5, 0.0])).apply({"reward": r}, (), 0)
    np.testing.assert_allclose(out["reward"], np.log(_sig(np.asarray(r) - [0.5, 0.0])).sum(1), rtol=1e-5)
    # Lagrangian: (r - lambda c) / (1 + lambda), then ln lambda += rate lambda (mean c - threshold)
    lag = align.lagrangian(threshold=0.5, rate=0.1, init_multiplier=2.0)
    c = jnp.array([1.0, 0.0, 2.0])
    out, st, m = lag.apply({"reward": r[:, 0], "cost": c}, lag.init(), 0)
    np.testing.assert_allclose(out["reward"], (np.asarray(r[:, 0]) - 2.0 * np.asarray(c)) / 3.0, rtol=1e-5)
    np.testing.assert_allclose(st["log_lambda"], np.log(2.0) + 0.1 * 2.0 * (1.0 - 0.5), rtol=1e-5)
    # LSC with one reference per example (B,) against rewards (B, objectives)
    out, _, _ = align.log_sigmoid_reward().apply({"reward": r, "reward_ref": jnp.array([0.0, 1.0, 2.0])}, (), 0)
    np.testing.assert_allclose(out["reward"], np.log(_sig(np.asarray(r) - np.array([[0.0], [1.0], [2.0]]))).sum(1),
                               rtol=1e-5)
    # dynamic weights: r @ w with w uniform at first, then softmax(log w + rate I / scale),
    # I_k = sum_j <a_k, a_j> / B on centred rewards
    dyn = align.dynamic_weights(2, rate=0.5)
    out, st, _ = dyn.apply({"reward": r}, dyn.init(), 0)
    np.testing.assert_allclose(out["reward"], np.asarray(r).mean(1), rtol=1e-5)
    a = np.asarray(r) - np.asarray(r).mean(0)
    logits = np.log(0.5) + 0.5 * (a.T @ a / 3).sum(1)
    np.testing.assert_allclose(np.exp(st["log_w"]), np.exp(logits) / np.exp(logits).sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="objectives"):
        dyn.apply({"reward": r[:, :1]}, dyn.init(), 0)
    # two objectives that conflict: the one with the larger spread takes over the weight
    big = jax.random.normal(jax.random.key(0), (64,))
    rs = jnp.stack([3.0 * big, -big], 1)
    st = dyn.init()
    for i in range(5):
        _, st, m = dyn.apply({"reward": rs}, st, i)
    w = np.exp(st["log_w"])
    assert w[0] > 0.9 and abs(w.sum() - 1) < 1e-6


def test_transforms_compose():
    # weighted sums of transforms: 2 DPO + 0.5 RWR, with states and prefixed metrics
    beta = 10.0
    both = losses.combine((2.0, align.dpo(beta)), (0.5, align.rwr(0.5)))
    out = _out(reward=jnp.array([1.0, 0.0, 2.0, 0.5]))
    loss, state, m = both.apply(out, both.init(), 0)
    dpo_value = np.mean(-np.log(_sig(beta / 2 * (G[:2] - G[2:]))))
    w = np.exp(np.array([1.0, 0.0, 2.0, 0.5]) / 0.5)
    np.testing.assert_allclose(loss, 2.0 * dpo_value + 0.5 * np.sum(w / w.sum() * L), rtol=1e-5)
    assert state == ((), ()) and "0/preference_accuracy" in m and "1/loss" in m
    # a mask leaves out the pairs whose chosen row it zeroes (an online group of tied rewards)
    masked = align.dpo(beta).apply(_out(mask=jnp.array([1.0, 0.0, 1.0, 0.0])), (), 0)[0]
    np.testing.assert_allclose(masked, -np.log(_sig(beta / 2 * (G[0] - G[2]))), rtol=1e-5)
    with pytest.raises(ValueError, match="padded"):
        align.bco(beta).apply(_out(mask=jnp.ones(4), label=jnp.ones(4)), (), 0)
    # reward transforms in front of AWM: the Lagrangian rewrites rewards before advantages
    lag = align.lagrangian(threshold=0.0, init_multiplier=1.0)
    tr = losses.with_rewards(lag, then=align.awm(weighting="uniform"))
    out = {"per_example": jnp.asarray(L, jnp.float32), "reward": jnp.array([1.0, 0.0, 1.0, 0.0]),
           "cost": jnp.array([2.0, 0.0, 0.0, 0.0])}
    state = tr.init()
    loss, state, m = tr.apply(out, state, 0)
    shaped = (np.array([1.0, 0.0, 1.0, 0.0]) - np.array([2.0, 0.0, 0.0, 0.0])) / 2
    adv = align.group_advantages(jnp.asarray(shaped), jnp.zeros(4, jnp.int32), 1)
    np.testing.assert_allclose(loss, -np.mean(np.asarray(adv)), rtol=1e-5, atol=1e-7)
    assert float(m["multiplier"]) == 1.0 and float(jnp.exp(state[0][0]["log_lambda"])) > 1.0
    with pytest.raises(TypeError):
        losses.with_rewards(align.dpo(), then=align.awm())
