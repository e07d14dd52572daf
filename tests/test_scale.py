"""Scale-out on 8 simulated CPU devices: determinism over device counts, model-axis sharding,
checkpoints across meshes, sharded sampling, and the memory/precision switches."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

from diffalign.align.preference import dpo
from diffalign.checkpoint import Checkpointer
from diffalign.distributed import make_mesh, model_init, parse_mesh, put, state_shardings, to_host
from diffalign.losses import dsm_loss, flow_matching_loss
from diffalign.models import MLP, ResidualMLP, functional
from diffalign.paths import Predictor
from diffalign.sampling import sample
from diffalign.sde import get_sde
from diffalign.training import init_train_state, make_optimizer, make_train_step, train

B = 64


def batch_fn(step):
    k = jax.random.fold_in(jax.random.key(7), step)
    return {"x": jax.random.normal(k, (B, 2)) * jnp.array([1.0, 0.5]) + 1.0}


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def run(mesh=None, *, shard_model=False, accumulate=1, steps=20, dtype=None, remat=False):
    with model_init(mesh if shard_model else None):
        model = MLP(2, (32, 32, 32), dtype=dtype, remat=remat, shard_model=shard_model, rngs=nnx.Rngs(0))
    apply_fn, params = functional(model)
    opt = make_optimizer(1e-2, clip_norm=1.0)
    state = init_train_state(params, opt, jax.random.key(1))
    step = make_train_step(flow_matching_loss(apply_fn, sigma_min=0.1), opt, ema_decay=0.9, accumulate=accumulate)
    return train(state, step, batch_fn, num_steps=steps, steps_per_call=10, log_every=10, progress=False, mesh=mesh)


def max_rel_diff(a, b):
    return max(float(np.max(np.abs(x - y)) / np.max(np.abs(y))) for x, y in zip(leaves(a), leaves(b)))


def test_same_seed_same_result_on_1_2_4_8_devices():
    base = run().state
    for n in (1, 2, 4, 8):
        mesh = make_mesh(devices=jax.devices()[:n])
        state = run(mesh).state
        assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == n
        assert max_rel_diff(state.params, base.params) <= 1e-6, n
        assert max_rel_diff(state.ema_params, base.ema_params) <= 1e-6, n


def test_per_example_draws_do_not_depend_on_the_number_of_shards():
    apply_fn, params = functional(MLP(2, (16,), rngs=nnx.Rngs(0)))
    loss = flow_matching_loss(apply_fn, sigma_min=0.1)
    x = batch_fn(0)
    key = jax.random.key(3)

    def draws(x):
        return jax.random.normal(key, (B, 5)), loss(params, x, key)["per_example"]

    noise0, per0 = jax.jit(draws)(x)
    for n in (2, 4, 8):
        sh = NamedSharding(make_mesh(devices=jax.devices()[:n]), P("data"))
        noise, per = jax.jit(draws, in_shardings=({"x": sh},), out_shardings=(sh, sh))(put(x, {"x": sh}))
        np.testing.assert_array_equal(np.asarray(noise), np.asarray(noise0))
        np.testing.assert_allclose(np.asarray(per), np.asarray(per0), rtol=1e-6)


def test_model_axis_sharding_follows_the_layers_and_changes_nothing():
    mesh = make_mesh(4, 2)
    state = run(mesh, shard_model=True).state
    kernel0 = state.params["layers"][0]["kernel"]
    assert kernel0.sharding.spec == P(None, "model")
    assert state.params["layers"][1]["kernel"].sharding.spec == P("model", None)
    assert state.params["out"]["bias"].sharding.spec == P()
    # EMA and both Adam moments are laid out like the parameters; the step count is replicated
    assert state.ema_params["layers"][0]["kernel"].sharding.spec == P(None, "model")
    adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu")][0]
    assert adam.mu["layers"][0]["kernel"].sharding.spec == P(None, "model")
    assert adam.nu["layers"][1]["kernel"].sharding.spec == P("model", None)
    assert state.step.sharding.is_fully_replicated
    assert max_rel_diff(state.params, run().state.params) <= 1e-6


def test_model_sharding_errors_are_clear():
    with pytest.raises(ValueError, match="must divide evenly"):
        mesh = make_mesh(1, 8)
        with model_init(mesh):
            model = MLP(2, (12,), shard_model=True, rngs=nnx.Rngs(0))
        state = init_train_state(functional(model)[1], make_optimizer(1e-3), jax.random.key(0))
        state_shardings(state, mesh)
    with pytest.raises(ValueError, match="DATAxMODEL"):
        parse_mesh("eight")
    with pytest.raises(ValueError, match="needs 6 devices"):
        parse_mesh("3x2")
    assert parse_mesh("auto") is None  # one process: plain single-device jit


def test_checkpoint_from_8_devices_restores_on_1_and_on_4x2_bit_exactly(tmp_path):
    mesh8 = make_mesh(1, 8)  # parameters split 8 ways over "model"
    state8 = run(mesh8, shard_model=True, steps=10).state
    assert len(state8.params["layers"][0]["kernel"].sharding.device_set) == 8
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(10, state8, {"run": 1})
    want = leaves(jax.tree.map(lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x,
                               to_host(state8)))

    def unwrap(t):
        return leaves(jax.tree.map(lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, t))

    one = jax.devices()[0]
    target1 = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=SingleDeviceSharding(one)), state8)
    mesh42 = make_mesh(4, 2)
    target42 = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state8,
                            state_shardings(state8, mesh42))
    for target, devices in ((target1, 1), (target42, 8)):
        restored, config = Checkpointer(tmp_path).restore(target)
        assert config == {"run": 1}
        assert len(restored.params["layers"][0]["kernel"].sharding.device_set) == devices
        for a, b in zip(unwrap(restored), want):
            np.testing.assert_array_equal(a, b)
    assert restored.params["layers"][0]["kernel"].sharding.spec == P(None, "model")


@pytest.mark.parametrize("method", ["euler", "pc", "adaptive"])
def test_sampling_sharded_over_the_sample_axis_matches_one_device(method):
    sde = get_sde("vp")

    def eps(x, t):  # exact for data N(0, 0.5^2 I)
        alpha, std = sde.marginal(jnp.ones_like(t), t)
        var = (0.25 * alpha**2 + std**2)[:, None]
        return std[:, None] * x / var

    pred = Predictor(eps, sde, "eps")
    x_T = jax.random.normal(jax.random.key(0), (64, 2))
    key = jax.random.key(1)

    def fn(k, x):
        return sample(k, pred, x, method, 20)[0]

    ref = jax.jit(fn)(key, x_T)
    mesh = make_mesh()
    sh = NamedSharding(mesh, P("data"))
    out = jax.jit(fn, in_shardings=(NamedSharding(mesh, P()), sh), out_shardings=sh)(key, put(x_T, sh))
    assert len(out.sharding.device_set) == 8
    # fixed-step samplers agree to float rounding; the adaptive solver to its own tolerance (1e-5)
    tol = 2e-4 if method == "adaptive" else 1e-5
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=tol, atol=tol)


@pytest.mark.parametrize("objective", ["mean", "dpo"])
def test_gradient_accumulation_gives_the_whole_batch_gradient(objective):
    apply_fn, params = functional(MLP(2, (32, 32), rngs=nnx.Rngs(0)))
    k = jax.random.key(1)
    batch = {"x": jax.random.normal(k, (16, 2)), "t": jax.random.uniform(jax.random.fold_in(k, 1), (16,)),
             "eps": jax.random.normal(jax.random.fold_in(k, 2), (16, 2)),
             "ref": jax.random.uniform(jax.random.fold_in(k, 3), (16,))}

    def loss_fn(p, b, key):  # noise given in the batch, so the microbatches see the same draws
        per = jnp.sum((apply_fn(p, b["x"], b["t"]) - b["eps"]) ** 2, -1)
        return {"per_example": per, "ref_loss": b["ref"], "metrics": {"mean_loss": jnp.mean(per)}}

    transform = dpo(10.0) if objective == "dpo" else None
    opt = make_optimizer(1e-3)
    results = []
    for acc in (1, 2, 4):
        state = init_train_state(params, opt, jax.random.key(0), transform)
        step = jax.jit(make_train_step(loss_fn, opt, transform, accumulate=acc))
        for _ in range(3):
            state, metrics = step(state, batch)
        results.append((state, metrics))
    (s1, m1) = results[0]
    for s, m in results[1:]:
        assert max_rel_diff(s.params, s1.params) <= 1e-6
        np.testing.assert_allclose(float(m["loss"]), float(m1["loss"]), rtol=1e-6)
        np.testing.assert_allclose(float(m["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
        np.testing.assert_allclose(float(m["mean_loss"]), float(m1["mean_loss"]), rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of 3"):
        jax.jit(make_train_step(loss_fn, opt, accumulate=3))(init_train_state(params, opt, jax.random.key(0)), batch)
    with pytest.raises(ValueError, match="positive integer"):
        make_train_step(loss_fn, opt, accumulate=0)


def test_gradient_accumulation_under_data_sharding_matches():
    mesh = make_mesh()
    a = run(mesh, accumulate=2).state
    b = run(None, accumulate=2).state
    assert max_rel_diff(a.params, b.params) <= 1e-6


def test_remat_changes_no_gradient():
    x = jax.random.normal(jax.random.key(0), (32, 2))
    t = jax.random.uniform(jax.random.key(1), (32,))
    for cls, kw in ((MLP, {"hidden": (64, 64, 64)}), (ResidualMLP, {"width": 32, "depth": 3})):
        grads = []
        for remat in (False, True):
            apply_fn, params = functional(cls(2, rngs=nnx.Rngs(0), remat=remat, **kw))
            grads.append(jax.jit(jax.grad(lambda p: jnp.sum(apply_fn(p, x, t) ** 2)))(params))
        for a, b in zip(leaves(grads[0]), leaves(grads[1])):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_remat_of_the_gdss_networks_changes_no_gradient():
    from diffalign.graphs.configs import get_config
    from diffalign.graphs.gdss import build_model

    cfg = get_config("community_small")
    n = cfg.max_nodes
    key = jax.random.key(0)
    adj = (jax.random.uniform(key, (2, n, n)) > 0.7).astype(jnp.float32)
    adj = jnp.triu(adj, 1) + jnp.triu(adj, 1).transpose(0, 2, 1)
    flags = jnp.ones((2, n))
    x = jax.random.normal(jax.random.fold_in(key, 1), (2, n, cfg.max_feat))
    grads = []
    for remat in (False, True):
        m = build_model(cfg, 0, remat=remat)

        def f(p, m=m):
            return jnp.sum(m.apply_x(p["x"], x, adj, flags) ** 2) + jnp.sum(m.apply_a(p["a"], x, adj, flags) ** 2)

        grads.append(jax.jit(jax.grad(f))(m.params))
    for a, b in zip(leaves(grads[0]), leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_compute_keeps_float32_parameters_and_trains_alike():
    f32 = run(steps=100)
    bf16 = run(steps=100, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16.state.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16.state.opt_state) if hasattr(x, "dtype")
               and jnp.issubdtype(x.dtype, jnp.floating))
    l32, l16 = f32.summary["final_metrics"]["loss"], bf16.summary["final_metrics"]["loss"]
    assert abs(l16 - l32) <= 0.05 * l32, (l16, l32)
    # the network's output comes back in the input's dtype
    apply_fn, params = functional(MLP(2, (16,), dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    assert apply_fn(params, jnp.ones((4, 2)), jnp.ones(4)).dtype == jnp.float32


def test_dsm_loss_runs_with_every_switch_on_a_4x2_mesh():
    mesh = make_mesh(4, 2)
    with model_init(mesh):
        model = MLP(2, (32, 32), dtype=jnp.bfloat16, remat=True, shard_model=True, rngs=nnx.Rngs(0))
    apply_fn, params = functional(model)
    opt = make_optimizer(1e-3)
    step = make_train_step(dsm_loss(get_sde("vp"), apply_fn), opt, accumulate=4)
    result = train(init_train_state(params, opt, jax.random.key(0)), step, batch_fn, num_steps=10,
                   steps_per_call=10, log_every=10, progress=False, mesh=mesh)
    assert np.isfinite(result.summary["final_metrics"]["loss"])


def test_gdss_training_step_with_accumulation_and_remat_runs_sharded():
    from diffalign.graphs import data as gdata
    from diffalign.graphs.configs import get_config
    from diffalign.graphs.gdss import build_model, make_batch_fn, make_step

    cfg = get_config("community_small")
    graphs, _ = gdata.load_generic("community_small", os.path.join(os.path.dirname(__file__), "data"))
    x, adj, flags = gdata.to_dense(graphs, cfg.max_nodes, cfg.max_feat)
    model = build_model(cfg, 0, remat=True)
    opt, step = make_step(model, flags, accumulate=2)
    state = init_train_state(model.params, opt, jax.random.key(0))
    result = train(state, step, make_batch_fn(x, adj, cfg.batch_size, 1), num_steps=2, steps_per_call=2,
                   log_every=2, progress=False, mesh=make_mesh())
    assert np.isfinite(result.summary["final_metrics"]["loss"])
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(result.state.params), leaves(model.params)))
