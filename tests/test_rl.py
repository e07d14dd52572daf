"""Rollouts and the AWM / Flow-GRPO training steps (issues 4, 19): the per-step log-probability against the
Gaussian density, the SDE's marginals against the closed form, the zero-advantage control and
exact resumption of an alignment run."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffalign import align, losses
from diffalign.align import rl
from diffalign.sampling.flow_sde import flow_sde_sigma, flow_sde_step_moments
from diffalign.models import MLP, functional
from diffalign.training import init_train_state, make_optimizer, make_train_step, train


def test_flow_grpo_step_log_prob_is_the_gaussian_density():
    key = jax.random.key(0)
    x, v, x_next = (jax.random.normal(jax.random.fold_in(key, i), (5, 3)) for i in range(3))
    t, t_next, t_cap, a = jnp.full(5, 0.6), jnp.full(5, 0.5), 0.9, 0.7
    mean, std = flow_sde_step_moments(v, x, t, t_next, t_cap, a)
    sigma = a * np.sqrt(0.6 / 0.4)
    dt = 0.1
    m = np.asarray(x) * (1 - sigma**2 * dt / 1.2) - dt * (1 + sigma**2 * 0.4 / 1.2) * np.asarray(v)
    np.testing.assert_allclose(mean, m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, sigma * np.sqrt(dt), rtol=1e-6)
    from scipy.stats import norm

    dens = norm.logpdf(np.asarray(x_next), loc=m, scale=sigma * np.sqrt(dt)).mean(-1)
    np.testing.assert_allclose(rl.gaussian_log_prob(x_next, mean, std), dens, rtol=1e-5)
    # t = 1 uses the grid's largest t below 1 in sigma's denominator (finite)
    assert np.isfinite(float(flow_sde_sigma(1.0, 0.9)))


def test_flow_grpo_sde_keeps_the_marginals_of_gaussian_data():
    # data N(0, s^2): x_t = (1 - t) x0 + t eps has variance (1 - t)^2 s^2 + t^2 and the exact
    # velocity E[eps - x0 | x_t] = x (t - (1 - t) s^2) / var_t; the SDE must end at variance s^2
    s2 = 0.25

    def velocity(params, x, t):
        t = t[:, None]
        return x * (t - (1 - t) * s2) / ((1 - t) ** 2 * s2 + t**2)

    x1 = jax.random.normal(jax.random.key(1), (20000, 2))
    x0, traj, _ = rl.sample_flow(jax.random.key(2), velocity, None, x1, 200, sampler="sde")
    ts = np.asarray(rl.rollout_grid(200))
    for i in (50, 100, 150):
        var = (1 - ts[i]) ** 2 * s2 + ts[i] ** 2
        np.testing.assert_allclose(np.var(np.asarray(traj[i])), var, rtol=0.05)
    np.testing.assert_allclose(np.var(np.asarray(x0)), s2, rtol=0.05)
    # a deterministic rollout (Euler ODE) ends there too
    np.testing.assert_allclose(np.var(np.asarray(rl.sample_flow(None, velocity, None, x1, 200))), s2, rtol=0.05)


def _setup(reward_fn, method="awm", transform=None, lr=1e-2):
    """A small policy, its rollouts and train step; ``transform`` is AWM's (DDPO always trains
    with ``awm(weighting="uniform")``)."""
    apply_fn, params = functional(MLP(2, (32, 32), activation="silu", time_features=8, rngs=nnx.Rngs(0)))
    rollout = rl.flow_rollout(16, (2,), steps=6, sampler="sde" if method == "ddpo" else "euler")
    prepare = rl.rollout_stage(apply_fn, rollout, reward_fn)
    if method == "ddpo":
        loss_fn, tr = rl.flow_grpo_rows(apply_fn), align.awm(weighting="uniform")
    else:
        loss_fn, tr = rl.matching_rows(rl.flow_matching(apply_fn), num_times=3), transform or align.awm()
    opt = make_optimizer(lr, clip_norm=1.0)
    state = init_train_state(params, opt, jax.random.key(3), tr, ema=False, aux=rl.awm_aux(params))
    return state, make_train_step(loss_fn, opt, tr, prepare=prepare, aux_update=rl.ema_anchor_update)


def test_zero_advantages_leave_parameters_unchanged():
    # a constant reward gives zero advantages; with beta = beta_ema = 0 and no weight decay the
    # update is exactly zero, for AWM and for the DDPO baseline
    for method in ("awm", "ddpo"):
        state, step = _setup(lambda x, y: jnp.full(x.shape[0], 0.7), method, align.awm(beta=0.0, beta_ema=0.0))
        new, m = jax.jit(step)(state, {})
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
            np.testing.assert_array_equal(a, b)
        assert float(m["grad_norm"]) == 0.0
    # and a non-constant reward does move them
    state, step = _setup(lambda x, y: x[:, 0], "awm", align.awm(beta=0.0, beta_ema=0.0))
    new, _ = jax.jit(step)(state, {})
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)))


def test_awm_rows_share_times_and_carry_reference_gaps():
    apply_fn, params = functional(MLP(2, (16,), rngs=nnx.Rngs(0)))
    prepare = rl.rollout_stage(apply_fn, rl.flow_rollout(4, (2,), steps=3), lambda x, y: x[:, 0])
    batch = prepare(params, {}, jax.random.key(1), rl.awm_aux(params))
    out = rl.matching_rows(rl.flow_matching(apply_fn), num_times=6)(params, batch, jax.random.key(0), rl.awm_aux(params))
    t = np.asarray(out["t"]).reshape(4, 6)
    np.testing.assert_array_equal(t, np.broadcast_to(t[0], t.shape))  # times shared by the batch
    assert np.all(np.diff(t[0]) > 0) and np.all(np.floor((t[0] - 0.02) / (0.96 / 6)) == np.arange(6))  # stratified
    np.testing.assert_array_equal(out["reward"].reshape(4, 6), np.repeat(out["reward"].reshape(4, 6)[:, :1], 6, 1))
    np.testing.assert_allclose(out["drift_ref"], 0.0, atol=1e-12)  # the policy starts at the reference
    assert float(batch["metrics"]["drift"]) == 0.0


def test_alignment_run_resumes_bit_identically(tmp_path):
    # the EMA anchor (aux) and a transform with state (a Lagrange multiplier) are checkpointed
    def make():
        tr = losses.with_rewards(align.lagrangian(threshold=0.0, rate=0.1), then=align.awm(beta=1e-3, beta_ema=1.0))
        apply_fn, params = functional(MLP(2, (32, 32), activation="silu", time_features=8, rngs=nnx.Rngs(0)))
        prepare = rl.rollout_stage(apply_fn, rl.flow_rollout(16, (2,), steps=4), lambda x, y: x[:, 0])
        base = rl.matching_rows(rl.flow_matching(apply_fn), num_times=2)

        def loss_fn(params, batch, key, aux):
            out = base(params, batch, key, aux)
            return {**out, "cost": jnp.abs(out["reward"])}

        opt = make_optimizer(1e-2, clip_norm=1.0)
        state = init_train_state(params, opt, jax.random.key(3), tr, ema=False, aux=rl.awm_aux(params))
        return state, make_train_step(loss_fn, opt, tr, prepare=prepare, aux_update=rl.ema_anchor_update)

    kw = dict(steps_per_call=1, log_every=1, checkpoint_every=2, progress=False)
    state, step = make()
    whole = train(state, step, lambda s: {}, num_steps=6, workdir=str(tmp_path / "a"), **kw).state
    state, step = make()
    train(state, step, lambda s: {}, num_steps=3, workdir=str(tmp_path / "b"), **kw)  # "crash" after epoch 3
    state, step = make()
    resumed = train(state, step, lambda s: {}, num_steps=6, workdir=str(tmp_path / "b"), **kw)
    assert resumed.summary["resumed_from"] == 3
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed.state)):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(jax.tree.leaves(whole.aux["anchor"])[0], jax.tree.leaves(whole.aux["ref"])[0])


def test_lora_adapters_start_at_the_base_model_and_train_alone():
    from diffalign.align.lora import lora

    apply_fn, params = functional(MLP(2, (32, 32), activation="silu", time_features=8, rngs=nnx.Rngs(0)))
    adapted, ad = lora(apply_fn, params, jax.random.key(1), rank=4)
    x, t = jax.random.normal(jax.random.key(2), (5, 2)), jnp.full(5, 0.3)
    np.testing.assert_array_equal(adapted(ad, x, t), apply_fn(params, x, t))  # B = 0: the base model exactly
    n_base = sum(p.size for p in jax.tree.leaves(params))
    n_ad = sum(p.size for p in jax.tree.leaves(ad))
    assert len(ad) == 3 and n_ad < n_base  # every weight matrix (2 hidden + output), not the biases
    # one AWM epoch on the adapters: the reference (aux) is the base model; B moves, outputs change
    prepare = rl.rollout_stage(adapted, rl.flow_rollout(16, (2,), steps=4), lambda x, y: x[:, 0])
    loss_fn = rl.matching_rows(rl.flow_matching(adapted), num_times=2)
    tr = align.awm(beta=1e-3, beta_ema=1.0)
    opt = make_optimizer(1e-2, clip_norm=1.0)
    state = init_train_state(ad, opt, jax.random.key(3), tr, ema=False, aux=rl.awm_aux(ad))
    step = make_train_step(loss_fn, opt, tr, prepare=prepare, aux_update=rl.ema_anchor_update)
    new, m = jax.jit(step)(state, {})
    assert float(m["grad_norm"]) > 0
    assert not np.array_equal(adapted(new.params, x, t), apply_fn(params, x, t))
    np.testing.assert_array_equal(adapted(new.aux["ref"], x, t), apply_fn(params, x, t))


def test_flow_grpo_rows_pair_each_transition_with_its_own_sample():
    # rows are sample-major (row i * n + j is sample i's j-th step): its reward, its state, and the
    # log-probability the rollout stored for that transition (the ratio is 1 at the rollout policy)
    apply_fn, params = functional(MLP(2, (16,), rngs=nnx.Rngs(0)))
    rollout = rl.flow_rollout(5, (2,), steps=4, sampler="sde")
    batch = rl.rollout_stage(apply_fn, rollout, lambda x, y: x[:, 0] + 10.0 * x[:, 1])(params, {}, jax.random.key(4))
    out = rl.flow_grpo_rows(apply_fn)(params, batch, jax.random.key(5))
    r = np.asarray(batch["x"][:, 0] + 10.0 * batch["x"][:, 1])
    np.testing.assert_allclose(np.asarray(out["reward"]).reshape(5, 3), np.tile(r[:, None], (1, 3)), rtol=1e-6)
    np.testing.assert_allclose(out["per_example"], -out["logp_old"], rtol=1e-4, atol=1e-5)
    # the per-row loss is the Gaussian NLL of that sample's transition, recomputed by hand for step 1
    ts = np.asarray(rl.rollout_grid(4))
    traj = np.asarray(batch["trajectory"])
    v = apply_fn(params, jnp.asarray(traj[:, 1]), jnp.full(5, ts[1]))
    mean, std = flow_sde_step_moments(v, jnp.asarray(traj[:, 1]), jnp.full(5, ts[1]), jnp.full(5, ts[2]), ts[1])
    expect = -rl.gaussian_log_prob(jnp.asarray(traj[:, 2]), mean, std)
    np.testing.assert_allclose(np.asarray(out["per_example"]).reshape(5, 3)[:, 1], expect, rtol=1e-5)


def test_ema_anchor_moves_toward_the_policy_by_its_decay():
    aux = {"ref": {"w": jnp.zeros(2)}, "anchor": {"w": jnp.array([1.0, 1.0])}}
    new = rl.ema_anchor_update(aux, {"w": jnp.array([3.0, -1.0])}, 199)  # after update 200: d = 0.2
    np.testing.assert_allclose(new["anchor"]["w"], [0.2 * 1 + 0.8 * 3, 0.2 * 1 + 0.8 * -1], rtol=1e-6)
    np.testing.assert_array_equal(new["ref"]["w"], aux["ref"]["w"])  # the reference never moves
