"""Issue 19: DiffusionNFT, Flow-GRPO as released, online pair forming, the step's rollout stage and
minibatch updates, and ``diffalign align-bench --smoke``.

Hand-computed values on tiny inputs; NFT's gradient identity with AWM (method notes
``alignment-methods-2.md`` section 1.3); Flow-GRPO's per-step log-probability against scipy and its
SDE step against the Euler step as the noise level goes to 0."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffalign import align
from diffalign.align import recipes, rl
from diffalign.losses import mean
from diffalign.models import MLP, functional
from diffalign.sampling.flow_sde import flow_sde_step_moments
from diffalign.training import init_train_state, make_train_step


def _mean_sq(a, b):
    return np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, axis=-1)


def test_nft_loss_matches_a_hand_computation_on_vectors():
    # three rows, two dimensions: v_theta, v_old and the target u written out
    v = np.array([[0.5, -1.0], [2.0, 0.0], [0.1, 0.3]])
    v_old = np.array([[0.0, -0.5], [1.0, 1.0], [0.1, 0.2]])
    u = np.array([[1.0, 1.0], [0.0, 0.5], [-0.4, 0.2]])
    adv = np.array([0.6, -1.0, 0.0])
    beta = 0.7
    r = (1 + adv) / 2
    vp, vm = v_old + beta * (v - v_old), v_old - beta * (v - v_old)
    expect = np.mean((r * _mean_sq(vp, u) + (1 - r) * _mean_sq(vm, u)) / beta)
    out = {"per_example": jnp.asarray(_mean_sq(v, u), jnp.float32), "old_loss": jnp.asarray(_mean_sq(v_old, u), jnp.float32),
           "drift_old": jnp.asarray(_mean_sq(v, v_old), jnp.float32), "advantage": jnp.asarray(adv, jnp.float32)}
    loss, _, m = align.nft(beta).apply(out, (), 0)
    np.testing.assert_allclose(float(loss), expect, rtol=1e-5)
    np.testing.assert_allclose(float(m["nft_positive"]), np.mean(_mean_sq(vp, u)), rtol=1e-5)
    np.testing.assert_allclose(float(align.nft(beta, scale=5.0).apply(out, (), 0)[0]), 5 * expect, rtol=1e-5)
    with pytest.raises(KeyError, match="old_loss"):
        align.nft().apply({"per_example": out["per_example"], "advantage": out["advantage"]}, (), 0)
    # the released code's x0-space branches, each over its own mean absolute error
    t = np.array([0.9, 0.5, 0.2])

    def branch(err):
        x0 = t[:, None] * err
        return np.mean(x0**2, -1) / np.maximum(np.mean(np.abs(x0), -1), 1e-5)

    x0_expect = 5 * np.mean((r * branch(vp - u) + (1 - r) * branch(vm - u)) / beta)
    res = {"residual": jnp.asarray(v - u, jnp.float32), "old_residual": jnp.asarray(v_old - u, jnp.float32),
           "t": jnp.asarray(t, jnp.float32), "advantage": out["advantage"]}
    np.testing.assert_allclose(float(align.nft(beta, scale=5.0, weighting="x0").apply(res, (), 0)[0]), x0_expect,
                               rtol=1e-5)


def test_flow_grpo_loss_matches_a_hand_computation():
    logp = np.array([-1.0, -2.0, -0.5, -3.0])
    logp_old = np.array([-1.0, -2.00005, -0.4, -3.0])  # ratios 1, e^-5e-5 (inside 1e-4), e^-0.1, 1
    adv = np.array([0.2, -0.4, 1.0, -1.0])  # in [-1, 1]: Flow-GRPO weights by 5 x
    kl = np.array([0.1, 0.0, 0.3, 0.2])
    ratio = np.exp(logp - logp_old)
    a5 = 5 * adv
    policy = np.maximum(-a5 * ratio, -a5 * np.clip(ratio, 1 - 1e-4, 1 + 1e-4))
    expect = policy.mean() + 0.04 * kl.mean()
    out = {"per_example": jnp.asarray(-logp, jnp.float32), "logp_old": jnp.asarray(logp_old, jnp.float32),
           "advantage": jnp.asarray(adv, jnp.float32), "kl_ref": jnp.asarray(kl, jnp.float32)}
    loss, _, m = align.flow_grpo().apply(out, (), 0)
    np.testing.assert_allclose(float(loss), expect, rtol=1e-5)
    np.testing.assert_allclose(float(m["ratio_clipped"]), 0.25)  # only the third row leaves the clip range


def _tiny():
    return functional(MLP(2, (16, 16), activation="silu", time_features=8, rngs=nnx.Rngs(0)))


def _batch(n=8, adv=None):
    x = jax.random.normal(jax.random.key(1), (n, 2))
    adv = jnp.linspace(-1, 1, n) if adv is None else adv
    return {"x": x, "y": None, "group": jnp.zeros(n, jnp.int32), "reward": adv, "advantage": adv}


def _grad(transform, batch, params, apply_fn, aux, **rows):
    loss_fn = rl.matching_rows(rl.flow_matching(apply_fn), num_times=3, **rows)
    g = jax.grad(lambda p: transform.apply(loss_fn(p, batch, jax.random.key(2), aux), (), 0)[0])(params)
    return [np.asarray(a) for a in jax.tree.leaves(g)]


def test_nft_gradient_at_the_old_policy_is_awm_uniform_with_advantage_2r_minus_1():
    apply_fn, params = _tiny()
    aux = {"old": params}
    batch = _batch()
    for beta in (0.1, 1.0):
        nft = _grad(align.nft(beta), batch, params, apply_fn, aux)
        awm = _grad(align.awm(weighting="uniform"), batch, params, apply_fn, aux)
        for a, b in zip(nft, awm):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    # r = 1/2 everywhere (advantage 0): a zero gradient
    zero = _grad(align.nft(1.0), _batch(adv=jnp.zeros(8)), params, apply_fn, aux)
    assert max(np.max(np.abs(a)) for a in zero) < 1e-6
    # r = 1 everywhere: the pretraining gradient (the batch mean of the matching losses)
    ones = _batch(adv=jnp.ones(8))
    one = _grad(align.nft(1.0), ones, params, apply_fn, aux)
    pre = _grad(mean(), ones, params, apply_fn, aux)
    for a, b in zip(one, pre):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    assert max(np.max(np.abs(a)) for a in pre) > 1e-3
    # away from the old policy the proximal term differs from AWM's: the gradients part
    moved = jax.tree.map(lambda p: p + 0.05, params)
    a = _grad(align.nft(1.0), batch, moved, apply_fn, aux)
    b = _grad(align.awm(weighting="uniform"), batch, moved, apply_fn, aux)
    assert max(np.max(np.abs(x - y)) for x, y in zip(a, b)) > 1e-4


def test_flow_grpo_log_prob_against_scipy_and_its_step_tends_to_euler():
    from scipy.stats import norm

    key = jax.random.key(0)
    x, v, x_next = (jax.random.normal(jax.random.fold_in(key, i), (4, 3)) for i in range(3))
    t, t_next = jnp.full(4, 0.7), jnp.full(4, 0.6)
    mean, std = flow_sde_step_moments(v, x, t, t_next, 0.9, 0.7)
    expect = norm.logpdf(np.asarray(x_next), loc=np.asarray(mean), scale=np.asarray(std)).mean(-1)
    np.testing.assert_allclose(rl.gaussian_log_prob(x_next, mean, std), expect, rtol=1e-5)
    # the sampler's stored log-probabilities are those of the states it drew
    apply_fn, params = _tiny()
    x1 = jax.random.normal(jax.random.key(3), (6, 2))
    _, traj, lps = rl.sample_flow(jax.random.key(4), apply_fn, params, x1, 5, sampler="sde", noisy_last=True)
    ts = rl.rollout_grid(5)
    for k in range(5):
        tb = jnp.full(6, ts[k])
        m, s = flow_sde_step_moments(apply_fn(params, traj[k], tb), traj[k], tb, jnp.full(6, ts[k + 1]), ts[1], 0.7)
        want = norm.logpdf(np.asarray(traj[k + 1]), loc=np.asarray(m), scale=np.asarray(s)).mean(-1)
        np.testing.assert_allclose(lps[k], want, rtol=1e-4, atol=1e-5)
    # as a -> 0 the SDE step is the Euler step x - dt v, its std 0
    euler = np.asarray(x) - 0.1 * np.asarray(v)
    for a in (1e-2, 1e-4):
        mean, std = flow_sde_step_moments(v, x, t, t_next, 0.9, a)
        np.testing.assert_allclose(mean, euler, atol=5 * a**2 + 1e-6)
        assert float(jnp.max(std)) < 2 * a
    mean, std = flow_sde_step_moments(v, x, t, t_next, 0.9, 0.0)
    np.testing.assert_allclose(mean, euler, rtol=1e-6, atol=1e-7)


def test_pairs_are_best_against_worst_and_tied_groups_form_none():
    r = jnp.array([0.1, 0.9, 0.5, 0.2, 1.0, 1.0, 1.0, 1.0, 0.3, 0.0, 0.3, 0.7])
    best, worst, valid = rl.best_worst_pairs(r, 3)
    np.testing.assert_array_equal(best, [1, 4, 11])
    np.testing.assert_array_equal(worst, [0, 4, 9])
    np.testing.assert_array_equal(valid, [True, False, True])
    # the DPO rows: [chosen; rejected] sharing times and noise, the tied group masked out
    apply_fn, params = _tiny()
    x = jax.random.normal(jax.random.key(1), (12, 2))
    batch = {"x": x, "y": None, "group": jnp.arange(12) // 4, "reward": r, "advantage": r - r.mean()}
    rows = rl.matching_rows(rl.flow_matching(apply_fn), num_times=2, times="logit_normal", pair_group_size=4)
    out = rows(params, batch, jax.random.key(2), {"ref": params})
    np.testing.assert_array_equal(out["reward"][:6], np.repeat(r[np.array([1, 4, 11])], 2))
    np.testing.assert_array_equal(out["reward"][6:], np.repeat(r[np.array([0, 4, 9])], 2))
    np.testing.assert_array_equal(out["t"][:6], out["t"][6:])
    np.testing.assert_array_equal(out["mask"], [1, 1, 0, 0, 1, 1] * 2)
    # at the reference every implicit reward is 0: DPO's loss is log 2 on the valid pairs only
    loss, _, _ = align.dpo(100.0).apply(out, (), 0)
    np.testing.assert_allclose(float(loss), np.log(2.0), rtol=1e-6)
    # a masked pair changes nothing: perturb the tied group's rows
    moved = {**out, "per_example": out["per_example"].at[jnp.array([2, 3, 8, 9])].add(5.0)}
    np.testing.assert_allclose(float(align.dpo(100.0).apply(moved, (), 0)[0]), np.log(2.0), rtol=1e-6)


def test_prepare_runs_once_and_minibatches_are_sequential_updates():
    import optax

    # loss: mean over rows of (w . x - y)^2; prepare doubles x and counts its calls in metrics
    def loss_fn(params, batch, key):
        return {"per_example": (batch["x"] @ params["w"] - batch["y"]) ** 2}

    def prepare(params, batch, key, aux):
        return {"x": 2.0 * batch["x"], "y": batch["y"], "metrics": {"prepared": jnp.sum(params["w"])}}

    opt = optax.sgd(0.1)
    params = {"w": jnp.array([0.5, -0.2])}
    x = jax.random.normal(jax.random.key(0), (6, 2))
    y = jnp.arange(6.0)
    state = init_train_state(params, opt, jax.random.key(1), ema=False)
    new, m = make_train_step(loss_fn, opt, prepare=prepare, minibatches=2, ema_decay=0.0)(state, {"x": x, "y": y})
    w = np.asarray(params["w"], np.float64)
    for j in (0, 1):  # rows j, j + 2, j + 4, one SGD step each, in order
        xs, ys = 2 * np.asarray(x)[j::2], np.asarray(y)[j::2]
        w = w - 0.1 * 2 * xs.T @ (xs @ w - ys) / len(ys)
    np.testing.assert_allclose(new.params["w"], w, rtol=1e-5)
    np.testing.assert_allclose(float(m["prepared"]), 0.3, rtol=1e-6)
    assert int(new.step) == 1
    with pytest.raises(ValueError, match="minibatches"):
        make_train_step(loss_fn, opt, minibatches=0)


@pytest.mark.parametrize("method", recipes.METHODS)
def test_every_recipe_trains_on_the_shared_step(method):
    # one epoch of each recipe on a tiny policy: finite, and the parameters move under a reward
    apply_fn, params = _tiny()
    for regime in recipes.REGIMES:
        r = recipes.recipe(method, regime)
        a = recipes.build(r, apply_fn, params, lambda x, y: x[:, 0], (2,), samples=16, group_size=4, lr=1e-2)
        new, m = jax.jit(a.step)(a.state, {})
        assert not bool(m["nonfinite"])
        moved = any(not np.array_equal(p, q) for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(new.params)))
        assert moved, (method, regime)
        assert a.evals_per_epoch["total"] == a.evals_per_epoch["forward"] + a.evals_per_epoch["backward"] > 0
        if regime == "equalised":
            assert dict(r.penalties) == recipes.EQUALISED and "anchor" in new.aux
        if method == "nft":  # the old policy lags: after one update it sits between the start and the policy
            d = float(rl.nft_old_decay(1))
            old = jax.tree.leaves(new.aux["old"])[0]
            np.testing.assert_allclose(old, d * jax.tree.leaves(params)[0] + (1 - d) * jax.tree.leaves(new.params)[0],
                                       rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="unknown alignment method"):
        recipes.recipe("ppo")


def test_align_bench_smoke(tmp_path):
    from diffalign.cli import main

    out = tmp_path / "bench"
    assert main(["align-bench", "--smoke", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["metrics"]["best"]) == {f"{m}/{g}" for m in recipes.METHODS for g in recipes.REGIMES}
    grid = res["grid"]
    assert len(grid) == 12 and all("median_final_score" in e and "evals_per_epoch" in e for e in grid)
    assert (out / "table.md").read_text().startswith("# align-bench, task ring")
    assert (out / "curves.png").exists() and (out / "front.png").exists()
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert len(runs) == 12 and all(len(r["score_curve"]) == 3 for r in runs)  # evaluated after every epoch
    # a rerun with a wider grid reuses the runs it shares and adds the new ones
    assert main(["align-bench", "--smoke", "--out", str(out), "--methods", "awm", "--regimes", "own",
                 "--lrs", "1e-3", "3e-3"]) == 0
    again = json.loads((out / "runs.json").read_text())["runs"]
    assert len(again) == 13
    first = next(r for r in runs if (r["method"], r["regime"]) == ("awm", "own"))
    assert next(r for r in again if (r["method"], r["regime"], r["lr"]) == ("awm", "own", 1e-3)) == first
    res = json.loads((out / "results.json").read_text())
    assert [e["lr"] for e in res["grid"]] == [1e-3, 3e-3]


def _tiny_gdss():
    import dataclasses

    from diffalign.graphs.configs import get_config
    from diffalign.graphs.gdss import build_model

    cfg = dataclasses.replace(get_config("community_small"), max_nodes=5, x_depth=1, x_nhid=4, a_nhid=4, a_layers=2,
                              a_linears=2, adim=4, c_hid=4, c_final=2, heads=2, batch_size=8)
    return build_model(cfg, 0)


def test_matching_methods_train_gdss_through_its_pretraining_loss():
    # the graph rows: NFT's gradient at the old policy is AWM-uniform's there too, and every
    # matching-loss recipe takes one epoch on GDSS through the same step
    from diffalign.graphs import align as galign

    model = _tiny_gdss()
    flags = (np.arange(5)[None] < np.array([[3], [4], [5], [5]])).astype(np.float32)

    def host(x, a):  # reward: edge count, all valid
        return np.asarray(a).sum((1, 2)).astype(np.float32) / 10.0, np.ones(len(a), np.float32)

    prepare = galign.graph_rollout_stage(model, flags, host, num_samples=8, group_size=4, num_scales=3)
    batch = prepare(model.params, {}, jax.random.key(1))
    assert batch["advantage"].shape == (8,) and float(jnp.max(jnp.abs(batch["advantage"]))) <= 1.0
    rows = rl.matching_rows(galign.gdss_matching(model), num_times=2, t_range=(model.gsde.train_eps, 1.0))
    aux = {"old": model.params}

    def grad(tr):
        g = jax.grad(lambda p: tr.apply(rows(p, batch, jax.random.key(2), aux), (), 0)[0])(model.params)
        return [np.asarray(a) for a in jax.tree.leaves(g)]

    for a, b in zip(grad(align.nft(0.5)), grad(align.awm(weighting="uniform"))):
        np.testing.assert_allclose(a, b, rtol=5e-4, atol=1e-6)
    for method in recipes.METHODS:
        a = galign.build(recipes.recipe(method), model, model.params, flags, host, samples=8, group_size=4, lr=1e-2,
                         rollout_steps=3, num_times=2)
        new, m = jax.jit(a.step)(a.state, {})
        assert not bool(m["nonfinite"]), method
        assert any(not np.array_equal(p, q) for p, q in zip(jax.tree.leaves(model.params), jax.tree.leaves(new.params)))


def test_graph_policy_steps_score_their_own_draws():
    # Flow-GRPO on GDSS: the predictor-only sampler's stored log-probabilities are the Gaussian
    # densities of its draws over the free entries (scipy), and the rows at the rollout policy
    # give ratio 1 and zero KL to an identical reference
    from scipy.stats import norm

    from diffalign.graphs import align as galign
    from diffalign.sampling.graph import graph_log_prob, graph_step_moments

    model = _tiny_gdss()
    flags = (np.arange(5)[None] < np.array([[3], [4], [5], [5]])).astype(np.float32)

    def host(x, a):
        return np.asarray(a).sum((1, 2)).astype(np.float32), np.ones(len(a), np.float32)

    prepare = galign.graph_rollout_stage(model, flags, host, num_samples=4, num_scales=4, trajectories=True)
    batch = prepare(model.params, {}, jax.random.key(3))
    tx, ta, fl = batch["traj_x"], batch["traj_a"], batch["flags"]
    assert tx.shape[:2] == (4, 5) and batch["log_probs"].shape == (4, 4)
    import dataclasses

    from diffalign.graphs.gdss import score_fns

    gsde = dataclasses.replace(model.gsde, num_scales=4)
    sx, sa = score_fns(model, model.params)
    t = jnp.full(4, jnp.linspace(1.0, gsde.sample_eps, 4)[1])
    mx, sdx, ma, sda = graph_step_moments(gsde, model.config.predictor, sx, sa, tx[:, 1], ta[:, 1], fl, t)
    for i in range(4):
        n = int(fl[i].sum())
        iu = np.triu_indices(n, 1)
        vals = [norm.logpdf(np.asarray(tx[i, 2, :n]), np.asarray(mx[i, :n]), np.asarray(sdx[i, :n])).ravel(),
                norm.logpdf(np.asarray(ta[i, 2, :n, :n])[iu], np.asarray(ma[i, :n, :n])[iu],
                            np.asarray(sda[i, :n, :n])[iu])]
        np.testing.assert_allclose(batch["log_probs"][i, 1], np.concatenate(vals).mean(), rtol=2e-4, atol=2e-4)
    rows = galign.graph_grpo_rows(model, train_steps=3, num_scales=4)
    out = rows(model.params, batch, jax.random.key(4), {"ref": model.params})
    np.testing.assert_allclose(out["per_example"], -out["logp_old"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["kl_ref"], 0.0, atol=1e-6)
    np.testing.assert_allclose(out["drift_ref"], 0.0, atol=1e-9)
    assert np.all(np.isfinite(graph_log_prob(tx[:, 2], mx, sdx, ta[:, 2], ma, sda, fl)))


def test_align_bench_sizes_follow_the_task_and_qm9_needs_its_models(tmp_path, capsys):
    from diffalign.cli import main
    from experiments.align_bench import Config, run_settings, stable_run

    ring, qm9 = Config(), Config(task="qm9")
    assert (ring.epochs, ring.samples_per_epoch, ring.eval_samples, ring.eval_steps) == (150, 512, 1024, 20)
    assert (qm9.epochs, qm9.samples_per_epoch, qm9.eval_samples, qm9.eval_steps) == (30, 64, 256, 100)
    assert Config(task="qm9", epochs=7).epochs == 7 and qm9.target_level == 0.05
    # the flows' reuse key has no QM9 settings (a rerun of the ring grid still reuses its runs)
    assert not {"gdss_runs", "rollout_steps", "final_samples"} & set(run_settings(ring))
    assert {"rollout_steps", "final_samples"} <= set(run_settings(qm9))
    # on QM9 a run that breaks validity is not stable, whatever its QED (scored over valid molecules)
    assert stable_run({"stable": True, "final": {"validity_wo_correction_change": -9.0}})
    assert not stable_run({"stable": True, "final": {"validity_wo_correction_change": -11.0}})
    assert stable_run({"stable": True, "final": None}) and not stable_run({"stable": False, "final": {}})
    # a full qm9 run without trained GDSS models: said plainly, before any work
    assert main(["align-bench", "--task", "qm9", "--out", str(tmp_path / "q")]) == 1
    assert "--task qm9 needs --gdss-runs" in capsys.readouterr().err


@pytest.mark.slow
def test_align_bench_qm9_smoke(tmp_path, monkeypatch):
    from diffalign.cli import main

    # the 3,000-molecule QM9 fixture (tests/data/README.md): runs on a clean clone, and faster
    monkeypatch.setenv("DIFFALIGN_DATA", os.path.join(os.path.dirname(__file__), "data"))
    out = tmp_path / "bench"
    assert main(["align-bench", "--task", "qm9", "--smoke", "--out", str(out), "--methods", "awm", "flow_grpo",
                 "nft", "--regimes", "own"]) == 0
    res = json.loads((out / "results.json").read_text())
    (base,) = res["metrics"]["base"].values()
    assert base["score"] == 0.0 and 0 <= base["final_uniqueness"] <= 1 and "final_fcd" in base
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert len(runs) == 3 and all(len(r["score_curve"]) == 2 for r in runs)
    for r in runs:  # the bar's columns, against the base model's final molecules
        f = r["final"]
        assert {"qed_gain", "uniqueness_change", "novelty_change", "meets_bar"} <= set(f)
        assert np.isclose(f["uniqueness_change"], 100 * (f["final_uniqueness"] - base["final_uniqueness"]))
    assert "meets the bar" in (out / "table.md").read_text()


def test_the_diversity_aware_qed_reward_zeroes_training_molecules_and_repeats():
    from diffalign.graphs import molecules as M
    from diffalign.graphs.align import qed_reward

    smiles = ["CCO", "c1ccccc1O", "CC(=O)N"]
    types, bonds = M.encode(smiles, "QM9")
    x = np.eye(4, dtype=np.float32)[np.maximum(types, 0)] * (types >= 0)[..., None]
    batch = (x[[0, 0, 1, 2]], bonds[[0, 0, 1, 2]].astype(np.float32))  # CCO twice
    plain, valid = qed_reward("QM9")(*batch)
    assert np.all(valid == 1) and np.all(plain > 0) and plain[0] == plain[1]
    train = set(M.canonical(["c1ccccc1O"]))
    r, _ = qed_reward("QM9", novel_against=train, unique=True)(*batch)
    np.testing.assert_array_equal(r, [plain[0], 0.0, 0.0, plain[3]])  # the repeat and the training molecule
    r, _ = qed_reward("QM9", unique=True)(*batch)
    np.testing.assert_array_equal(r, [plain[0], 0.0, plain[2], plain[3]])
