"""Train state, step, loop: transform identity, sharding, exact resume, failures and bad input."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from diffalign.losses import mean, weighted
from diffalign.checkpoint import CheckpointError, Checkpointer
from diffalign.distributed import make_mesh
from diffalign.losses import flow_matching_loss
from diffalign.models import MLP, functional
from diffalign.training.logger import logged_train_seconds, read_log
from diffalign.training import (
    NonFiniteLossError,
    ema_decay_at,
    init_train_state,
    make_multi_step,
    make_optimizer,
    make_train_step,
    train,
)

BATCH = 64


def setup(seed=0, hidden=(32, 32)):
    apply_fn, params = functional(MLP(2, hidden, rngs=nnx.Rngs(seed)))
    loss_fn = flow_matching_loss(apply_fn, sigma_min=0.1)
    opt = make_optimizer(1e-2, clip_norm=1.0)
    state = init_train_state(params, opt, jax.random.key(seed))
    return loss_fn, opt, state


def batch_fn(step):
    k = jax.random.fold_in(jax.random.key(99), step)
    return {"x": jax.random.normal(k, (BATCH, 2)) * 0.5 + jnp.array([2.0, -1.0])}


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree) if not jnp.issubdtype(x.dtype, jax.dtypes.prng_key)]


def test_all_equal_weights_give_exactly_the_mean_gradients():
    loss_fn, _, state = setup()
    batch = batch_fn(0)

    def grads(transform, with_weights):
        def f(p):
            out = loss_fn(p, batch, jax.random.key(1))
            if with_weights:
                out = {**out, "weight": jnp.ones_like(out["per_example"])}
            return transform.apply(out, transform.init(), 0)[0]

        return jax.jit(jax.grad(f))(state.params)

    g_mean = grads(mean(), False)
    g_w = grads(weighted(), True)
    for a, b in zip(leaves(g_mean), leaves(g_w)):
        np.testing.assert_array_equal(a, b)


def test_weighted_transform_errors():
    t = weighted()
    with pytest.raises(KeyError, match="weight"):
        t.apply({"per_example": jnp.ones(3)}, (), 0)
    with pytest.raises(TypeError, match="per_example"):
        mean().apply({"loss": jnp.ones(3)}, (), 0)


def test_sharded_step_on_8_devices_matches_single_device():
    assert jax.device_count() >= 8
    loss_fn, opt, state = setup()
    step = make_train_step(loss_fn, opt, ema_decay=0.9)
    single = train(state, step, batch_fn, num_steps=20, steps_per_call=10, log_every=10, progress=False)
    sharded = train(state, step, batch_fn, num_steps=20, steps_per_call=10, log_every=10, progress=False,
                    mesh=make_mesh())
    leaf = jax.tree.leaves(sharded.state.params)[0]
    assert len(leaf.sharding.device_set) == 8
    for a, b in zip(leaves(single.state.params), leaves(sharded.state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(leaves(single.state.ema_params), leaves(sharded.state.ema_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the caller's state was not consumed by buffer donation
    assert int(state.step) == 0 and np.isfinite(leaves(state.params)[0]).all()


def test_resumed_run_is_bit_identical(tmp_path):
    loss_fn, opt, state = setup()
    step = make_train_step(loss_fn, opt, ema_decay=0.99)
    kw = dict(steps_per_call=10, log_every=10, checkpoint_every=20, progress=False, config={"lr": 1e-2})
    full = train(state, step, batch_fn, num_steps=60, workdir=str(tmp_path / "full"), **kw)
    half = train(state, step, batch_fn, num_steps=30, workdir=str(tmp_path / "resumed"), **kw)
    assert int(half.state.step) == 30
    resumed = train(state, step, batch_fn, num_steps=60, workdir=str(tmp_path / "resumed"), **kw)
    assert resumed.summary["resumed_from"] == 30 and resumed.summary["steps_run"] == 30
    for a, b in zip(leaves(full.state), leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)
    assert jax.random.key_data(full.state.key).tolist() == jax.random.key_data(resumed.state.key).tolist()
    # metrics were logged for both halves
    rows = open(tmp_path / "resumed" / "metrics.jsonl").read().splitlines()
    assert len(rows) == 6
    # the run time of both segments is summed from the log, the resumed segment alone is less
    both = resumed.summary["train_s_all_segments"]
    assert both > resumed.summary["train_s"] > 0
    assert both == pytest.approx(sum(10 / json.loads(r)["steps_per_sec"] for r in rows))


def test_time_limit_stops_at_a_log_boundary_with_a_checkpoint_and_resumes(tmp_path):
    loss_fn, opt, state = setup()
    step = make_train_step(loss_fn, opt)
    kw = dict(steps_per_call=10, log_every=10, checkpoint_every=40, progress=False)
    cut = train(state, step, batch_fn, num_steps=40, workdir=str(tmp_path / "cut"), time_limit_s=0.0, **kw)
    assert int(cut.state.step) == 10 and "step 10 of 40" in cut.summary["stopped_early"]
    with Checkpointer(str(tmp_path / "cut" / "checkpoints")) as ck:
        assert ck.latest_step() == 10  # saved although 10 is not a checkpoint interval
    rest = train(state, step, batch_fn, num_steps=40, workdir=str(tmp_path / "cut"), **kw)
    full = train(state, step, batch_fn, num_steps=40, **kw)
    assert rest.summary["stopped_early"] is None and rest.summary["resumed_from"] == 10
    for a, b in zip(leaves(full.state), leaves(rest.state)):
        np.testing.assert_array_equal(a, b)


def test_read_log_keeps_the_last_row_of_a_step_logged_twice(tmp_path):
    rows = [{"step": 10, "steps_per_sec": 5.0}, {"step": 20, "steps_per_sec": 5.0},
            {"step": 20, "steps_per_sec": 10.0}, {"step": 30, "steps_per_sec": 10.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_log(str(tmp_path))
    assert [r["step"] for r in got] == [10, 20, 30] and got[1]["steps_per_sec"] == 10.0
    assert logged_train_seconds(got) == pytest.approx(10 / 5 + 10 / 10 + 10 / 10)


def test_resume_refuses_a_different_config(tmp_path):
    loss_fn, opt, state = setup()
    step = make_train_step(loss_fn, opt)
    train(state, step, batch_fn, num_steps=10, workdir=str(tmp_path), config={"lr": 1e-2}, steps_per_call=10,
          progress=False)
    with pytest.raises(CheckpointError, match="different config.*lr"):
        train(state, step, batch_fn, num_steps=20, workdir=str(tmp_path), config={"lr": 5e-3}, progress=False)


def test_nonfinite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    loss_fn, opt, state = setup()
    step = make_train_step(loss_fn, opt)

    def poisoned(s):
        b = batch_fn(s)
        return {"x": jnp.where(s >= 25, jnp.nan, b["x"])}

    with pytest.raises(NonFiniteLossError, match=r"step 25.*last good checkpoint is step 20") as err:
        train(state, step, poisoned, num_steps=50, workdir=str(tmp_path), steps_per_call=10, checkpoint_every=10,
              progress=False)
    assert err.value.step == 25 and err.value.last_checkpoint == 20
    ck = Checkpointer(tmp_path / "checkpoints")
    assert ck.all_steps()[-1] == 20
    restored, _ = ck.restore(state)
    assert int(restored.step) == 20 and all(np.isfinite(x).all() for x in leaves(restored.params))
    ck.close()


def test_nan_data_is_reported_at_step_zero():
    loss_fn, opt, state = setup()
    step = make_train_step(loss_fn, opt)
    with pytest.raises(NonFiniteLossError, match="step 0.*check the data for NaN"):
        train(state, step, lambda s: {"x": jnp.full((BATCH, 2), jnp.nan)}, num_steps=5, progress=False)


def test_multi_step_halts_after_a_bad_step():
    loss_fn, opt, state = setup()
    step = make_train_step(loss_fn, opt)
    bad = lambda s: {"x": jnp.where(s == 3, jnp.inf, batch_fn(s)["x"])}  # noqa: E731
    new, metrics = jax.jit(make_multi_step(step, bad, 8))(state)
    assert int(new.step) == 3
    np.testing.assert_array_equal(np.asarray(metrics["nonfinite"]), [0, 0, 0, 1, 1, 1, 1, 1])


def test_bad_inputs_get_clear_errors(tmp_path):
    loss_fn, opt, state = setup()
    step = make_train_step(loss_fn, opt)
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        train(state, step, batch_fn, num_steps=-5)
    with pytest.raises(ValueError, match=r"cannot run on the batches.*shape \(batch, 2\), got \(64, 3\)"):
        train(state, step, lambda s: {"x": jnp.zeros((BATCH, 3))}, num_steps=5, progress=False)
    with pytest.raises(ValueError, match="batch size 60 is not divisible by the 8 devices"):
        train(state, step, lambda s: {"x": jnp.zeros((60, 2))}, num_steps=5, progress=False, mesh=make_mesh())
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match="not a directory"):
        Checkpointer(blocker)
    # a corrupt checkpoint: a complete-looking step whose contents are garbage
    train(state, step, batch_fn, num_steps=10, workdir=str(tmp_path / "run"), steps_per_call=10, progress=False)
    step_dir = tmp_path / "run" / "checkpoints" / "10" / "state"
    for root, _, files in os.walk(step_dir):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    with pytest.raises(CheckpointError, match="could not restore checkpoint step 10"):
        train(state, step, batch_fn, num_steps=20, workdir=str(tmp_path / "run"), progress=False)
    with pytest.raises(ValueError, match="learning rate must be positive"):
        make_optimizer(-1.0)
    with pytest.raises(ValueError, match="ema_decay"):
        make_train_step(loss_fn, opt, ema_decay=1.5)
    with pytest.raises(TypeError, match="typed PRNG key"):
        init_train_state(state.params, opt, jax.random.PRNGKey(0))


def test_ema_warmup_and_optimizer_schedule():
    np.testing.assert_allclose(ema_decay_at(jnp.asarray(0), 0.999, True), 2 / 11)  # n = 1 at the first update
    np.testing.assert_allclose(ema_decay_at(jnp.asarray(10_000), 0.999, True), 0.999)
    np.testing.assert_allclose(ema_decay_at(jnp.asarray(5), 0.999, False), 0.999)
    opt = make_optimizer(1.0, schedule="exponential", decay_rate=0.5, decay_steps=1)
    p = {"w": jnp.zeros(())}
    s = opt.init(p)
    ups = []
    for _ in range(3):
        u, s = opt.update({"w": jnp.ones(())}, s, p)
        ups.append(float(u["w"]))
    np.testing.assert_allclose(np.abs(ups), [1.0, 0.5, 0.25], rtol=1e-3)
    assert isinstance(make_optimizer(1e-3, name="adamw", weight_decay=1e-5), optax.GradientTransformation)


def test_checkpoints_from_before_the_aux_field_still_restore(tmp_path):
    # states written before TrainState gained ``aux`` (every GDSS run of issue 3) restore into
    # a state whose aux is None
    from flax import struct

    @struct.dataclass
    class OldState:
        params: object
        opt_state: object
        ema_params: object
        step: jax.Array
        key: jax.Array
        transform_state: object

    opt = optax.adam(1e-3)
    new = init_train_state({"w": jnp.arange(3.0)}, opt, jax.random.key(0))
    old = OldState(**{f: getattr(new, f) for f in ("params", "opt_state", "ema_params", "step", "key", "transform_state")})
    old = old.replace(params={"w": jnp.array([5.0, 6.0, 7.0])})
    with Checkpointer(tmp_path / "ck") as ck:
        ck.save(1, old)
    with Checkpointer(tmp_path / "ck") as ck:
        restored, _ = ck.restore(new)
    assert isinstance(restored, type(new)) and restored.aux is None
    np.testing.assert_array_equal(restored.params["w"], [5.0, 6.0, 7.0])
