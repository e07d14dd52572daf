"""SMORe on the four-rooms grid: exact references, data, relabelling, losses, the CLI contract,
and (slow) the claims: success >= 0.9 at 10 % expert data and SMORe >= GCBC, by a gap that
grows as the expert fraction shrinks."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffalign.gcrl import gridworld as G
from diffalign.gcrl import smore as S
from clitools import cli

GAMMA, HORIZON = 0.99, 50


@pytest.fixture(scope="module")
def world():
    return G.four_rooms()


# ----------------------------------------------------------------------------- grid and references


def test_four_rooms_layout_doors_and_rooms(world):
    assert world.n_states == 104
    doors = [tuple(c) for c, r in zip(world.cells, world.room) if r < 0]
    assert sorted(doors) == [(2, 5), (5, 1), (6, 8), (9, 5)]
    assert sorted(np.bincount(world.room[world.room >= 0]).tolist()) == [20, 25, 25, 30]
    with pytest.raises(ValueError, match="not a free cell"):
        world.state(1, 5)  # the vertical wall
    with pytest.raises(ValueError, match="not a free cell"):
        world.state(11, 0)
    # walls and the grid edge block moves; "stay" stays
    s = world.state(0, 4)
    assert world.next_state[s].tolist() == [s, world.state(1, 4), world.state(0, 3), s, s]


@pytest.mark.parametrize("a,b,d", [
    ((0, 0), (0, 0), 0),
    ((2, 4), (2, 5), 1),     # into the top door
    ((0, 4), (0, 6), 6),     # across the wall: down to the door row, through, back up
    ((4, 1), (6, 1), 2),     # through the left door
    ((5, 8), (7, 8), 2),     # through the right door
    ((0, 0), (0, 10), 14),   # 7 to the door (2, 5), 7 on to the far corner
    ((0, 0), (10, 10), 20),  # opposite corners: 20 either way round, the diameter
])
def test_bfs_distances_hand_checked(world, a, b, d):
    sa, sb = world.state(*a), world.state(*b)
    assert world.dist[sa, sb] == d and world.dist[sb, sa] == d


def test_bfs_is_a_metric_and_moves_change_it_by_at_most_one(world):
    D = world.dist
    assert D.max() == 20 and (D == D.T).all() and (np.diag(D) == 0).all()
    step = np.abs(D[world.next_state].transpose(0, 2, 1) - D[:, :, None])  # |d(s', g) - d(s, g)|
    assert step.max() == 1
    mask = world.optimal_action_mask()
    assert mask.any(-1).all()  # every (s, g) has a shortest-path action


def test_grid_builder_refuses_bad_layouts():
    with pytest.raises(ValueError, match="equal-length"):
        G.make_grid(("..", "..."))
    with pytest.raises(ValueError, match="not connected"):
        G.make_grid((".#.",))
    corridor = G.make_grid(("....",))
    assert corridor.dist[0].tolist() == [0, 1, 2, 3]


def test_optimal_return_formula_and_dynamic_programming(world):
    # d = 0: every step rewarded; d = 1: all but the first; d >= horizon: nothing
    np.testing.assert_allclose(G.optimal_return_bfs(0, GAMMA, HORIZON), (1 - GAMMA**50) / (1 - GAMMA))
    np.testing.assert_allclose(G.optimal_return_bfs(1, GAMMA, HORIZON), sum(GAMMA**t for t in range(1, 50)))
    assert G.optimal_return_bfs(60, GAMMA, HORIZON) == 0.0
    v_ret, v_suc = G.optimal_values(world, GAMMA, HORIZON)
    np.testing.assert_allclose(v_ret, G.optimal_return_bfs(world.dist, GAMMA, HORIZON), rtol=1e-12)
    assert (v_suc == 1.0).all()
    # a short horizon: success exactly when d <= horizon
    _, v_suc5 = G.optimal_values(world, GAMMA, 5)
    assert ((v_suc5 == 1.0) == (world.dist <= 5)).all() and ((v_suc5 == 0.0) == (world.dist > 5)).all()
    # slip can only hurt
    r_slip, s_slip = G.optimal_values(world, GAMMA, HORIZON, slip=0.2)
    assert (r_slip <= v_ret + 1e-9).all() and (s_slip < 1.0).all() and s_slip.min() > 0.5


def test_shortest_path_rollout_earns_the_optimum(world):
    starts, goals = G.eval_pairs(world)
    assert len(starts) == 104 * 103
    hs, hg = G.eval_pairs(world, "hard")
    assert (world.room[hs] != world.room[hg]).all() and (world.room[hs] >= 0).all() and (world.room[hg] >= 0).all()
    acts = jnp.argmax(jnp.asarray(world.optimal_action_mask()), -1)
    suc, ret, fd = G.evaluate_table_policy(jax.random.key(0), world.next_state, world.dist, acts,
                                           jnp.asarray(starts), jnp.asarray(goals), HORIZON, 0.0, GAMMA)
    assert float(suc.min()) == 1.0 and float(fd.max()) == 0.0
    want = G.optimal_return_bfs(world.dist[starts, goals], GAMMA, HORIZON)
    np.testing.assert_allclose(np.asarray(ret), want, rtol=1e-5)
    with pytest.raises(ValueError, match="split"):
        G.eval_pairs(world, "easy")


# ----------------------------------------------------------------------------- data and relabelling


def test_dataset_shapes_fractions_and_dynamics(world):
    data = G.generate_dataset(jax.random.key(0), world, 400, 0.1)
    obs, act, goals, expert = map(np.asarray, data)
    assert obs.shape == (400, 51) and act.shape == (400, 50) and goals.shape == (400,)
    assert expert.sum() == 40 and expert[:40].all()
    assert (goals != obs[:, 0]).all()
    assert (obs[:, 1:] == world.next_state[obs[:, :-1], act]).all()  # deterministic grid
    # expert actions are shortest-path moves w.p. >= 1 - eps; random walks are uniform
    mask = world.optimal_action_mask()
    opt = mask[obs[:, :-1], goals[:, None], act]
    assert opt[expert].mean() > 0.8 and opt[~expert].mean() < 0.45
    np.testing.assert_allclose(np.bincount(act[~expert].ravel(), minlength=5) / act[~expert].size, 0.2, atol=0.01)
    # the expert mostly ends at its goal, random walks rarely
    assert (obs[expert, -1] == goals[expert]).mean() > 0.7 and (obs[~expert, -1] == goals[~expert]).mean() < 0.1
    again = G.generate_dataset(jax.random.key(0), world, 400, 0.1)
    assert (np.asarray(again.obs) == obs).all()
    with pytest.raises(ValueError, match="expert_fraction"):
        G.generate_dataset(jax.random.key(0), world, 10, 1.5)
    with pytest.raises(ValueError, match="n_traj"):
        G.generate_dataset(jax.random.key(0), world, 0, 0.1)


def test_slip_changes_transitions_at_the_right_rate(world):
    data = G.generate_dataset(jax.random.key(1), world, 400, 0.0, slip=0.3)
    obs, act = np.asarray(data.obs), np.asarray(data.actions)
    intended = world.next_state[obs[:, :-1], act]
    # a slip draws a random action, which differs in effect from the intended one w.p. < 1
    differs = (obs[:, 1:] != intended).mean()
    assert 0.1 < differs < 0.3


def test_her_relabelling_fraction_and_future_goals():
    n, T = 64, 20
    obs = jnp.arange(n)[:, None] * 100 + jnp.arange(T + 1)[None]  # state encodes (trajectory, time)
    data = G.Dataset(obs, jnp.zeros((n, T), jnp.int32), jnp.full((n,), -7), jnp.zeros(n, bool))
    b = G.sample_her(jax.random.key(0), data, 20_000, p_future=0.8)
    g, s = np.asarray(b.g), np.asarray(b.s)
    commanded = g == -7
    assert abs(commanded.mean() - 0.2) < 0.015
    fut = ~commanded
    assert (g[fut] // 100 == s[fut] // 100).all()  # same trajectory
    assert (g[fut] % 100 > s[fut] % 100).all() and (g[fut] % 100 <= T).all()  # strictly in the future
    assert (np.asarray(b.s_next) == s + 1).all()
    assert (np.asarray(G.sample_her(jax.random.key(1), data, 1000, p_future=0.0).g) == -7).all()
    gb = G.sample_goal_transitions(jax.random.key(2), data, 1000)
    assert (np.asarray(gb.g) == np.asarray(gb.s_next)).all()


# ----------------------------------------------------------------------------- losses and learning


def test_expectile_and_awr_weights():
    d = jnp.array([-2.0, 2.0])
    np.testing.assert_allclose(S.expectile_loss(d, 0.9), [0.1 * 4, 0.9 * 4], rtol=1e-6)
    w = S.awr_weights(jnp.array([0.0, 1.0, 10.0, 1e4]), jnp.zeros(4), kappa=3.0, max_weight=100.0)
    np.testing.assert_allclose(w, [1.0, np.exp(3.0), 100.0, 100.0], rtol=1e-5)
    assert bool(jnp.isfinite(w).all())


def test_score_losses_match_their_formulas():
    cfg = S.SMOReConfig(loss="smore")
    SD, SG, Mn = jnp.array([1.0, 2.0]), jnp.array([3.0, 5.0]), jnp.array([1.0, 0.0])
    want = -4.0 + 1e-4 * 1.5 + 0.5 * np.mean([(1 - 0.99) ** 2, 2.0**2])
    np.testing.assert_allclose(S.score_loss(SD, SG, Mn, cfg), want, rtol=1e-6)
    cfg = S.SMOReConfig(loss="stable")
    want = np.mean([(3 - 200) ** 2, (5 - 200) ** 2]) + 0.01 * 1e-4 * 2.5 + 0.5 * np.mean([(1 + 2 - 0.99) ** 2, 4.0**2])
    np.testing.assert_allclose(S.score_loss(SD, SG, Mn, cfg), want, rtol=1e-5)


def test_greedy_actions_break_ties_at_random():
    logits = jnp.zeros((1, 2000, 5)).at[0, :1000, 2].set(1.0)
    a = np.asarray(S.greedy_actions(jax.random.key(0), logits))[0]
    assert (a[:1000] == 2).all()
    np.testing.assert_allclose(np.bincount(a[1000:], minlength=5) / 1000, 0.2, atol=0.05)


def test_score_is_higher_on_goal_reaching_transitions(world):
    data = G.generate_dataset(jax.random.key(3), world, 300, 0.1)
    cfg = S.SMOReConfig(steps=1500, batch_size=256)
    state, log = S.train_smore(jax.random.key(4), data, world.n_states, cfg, 500)
    S_bar = jnp.minimum(state.params["s1"], state.params["s2"])
    D = G.sample_her(jax.random.key(5), data, 4096)
    Gb = G.sample_goal_transitions(jax.random.key(6), data, 4096)
    s_goal = float(S_bar[Gb.s, Gb.g, Gb.a].mean())
    s_data = float(S_bar[D.s, D.g, D.a][D.s_next != D.g].mean())
    assert s_goal > s_data + 50.0, (s_goal, s_data)
    assert np.isfinite(np.asarray(log["score_loss"])).all()
    # one step closer to the goal scores higher: compare optimal with non-optimal data actions
    mask = jnp.asarray(world.optimal_action_mask())
    opt = mask[D.s, D.g, D.a] & (D.s != D.g)
    vals = S_bar[D.s, D.g, D.a]
    assert float(vals[opt].mean()) > float(vals[~opt & (D.s != D.g)].mean())


def test_gcbc_imitates_a_single_action():
    # every transition takes action 3 from state 0 to 1 and back with action 2: BC must learn both
    obs = jnp.tile(jnp.array([0, 1] * 5 + [0]), (8, 1))
    act = jnp.tile(jnp.array([3, 2] * 5), (8, 1))
    data = G.Dataset(obs, act, jnp.ones(8, jnp.int32), jnp.zeros(8, bool))
    state, log = S.train_gcbc(jax.random.key(0), data, 2, S.GCBCConfig(steps=300, batch_size=64), 100)
    a = np.asarray(S.greedy_actions(jax.random.key(1), state.params["pi"]))
    assert a[0, 1] == 3 and a[1, 0] == 2
    assert float(log["bc_loss"][-1]) < 0.05
    logits, log = S.train_gcbc_mlp(jax.random.key(0), data, 2, S.GCBCConfig(steps=300, batch_size=64, lr=1e-2), 32, 100)
    a = np.asarray(S.greedy_actions(jax.random.key(1), logits))
    assert logits.shape == (2, 2, 5) and a[0, 1] == 3 and a[1, 0] == 2
    assert float(log["bc_loss"][-1]) < 0.05


def test_bad_configs_are_refused():
    from diffalign.experiments.smore import Config

    with pytest.raises(ValueError, match="loss must be one of"):
        S.SMOReConfig(loss="iql")
    with pytest.raises(ValueError, match="expectile"):
        S.SMOReConfig(expectile=1.0)
    with pytest.raises(ValueError, match="tau"):
        S.SMOReConfig(tau=0.0)
    with pytest.raises(ValueError, match="lr"):
        S.GCBCConfig(lr=-1.0)
    with pytest.raises(ValueError, match="expert fraction"):
        Config(fractions=(0.1, 1.5))
    with pytest.raises(ValueError, match="seeds"):
        Config(seeds=())
    with pytest.raises(ValueError, match="steps must be >= 1"):
        Config(steps=0)
    with pytest.raises(ValueError, match="slip"):
        Config(slip=2.0)
    with pytest.raises(ValueError, match="kappa"):
        Config(kappa=0.0)


# ----------------------------------------------------------------------------- the CLI contract


def test_smore_smoke_keeps_the_contract(tmp_path):
    out = str(tmp_path / "run")
    cli("smore", "--out", out, "--smoke", "--gcbc-mlp")
    with open(os.path.join(out, "results.json")) as f:
        r = json.load(f)
    for key in ("metrics", "config", "versions", "timings"):
        assert key in r
    m = r["metrics"]
    assert m["optimal"]["success"] == 1.0 and m["optimal"]["pairs"] == 104 * 103
    for frac in ("expert_0.5", "expert_0.1", "expert_0.02"):
        for method in ("smore", "gcbc", "gcsl", "gcbc_mlp"):
            e = m[frac][method]
            for k in ("success", "return", "final_distance"):
                assert np.isfinite(e[k]) and np.isfinite(e["hard"][k])
            assert 0.0 <= e["success"] <= 1.0 and e["return"] <= m["optimal"]["return"] + 1e-6
            assert "std" in e["spread"]["success"] and len(e["per_seed"]) == 1
        assert all("mean" in m[frac][g] for g in ("gap_success", "gap_gcsl_success", "gap_mlp_return"))
    assert r["config"]["fractions"] == [0.5, 0.1, 0.02] and r["smoke"] is True
    assert os.path.exists(os.path.join(out, "success_vs_expert.png"))
    p = cli("smore", "--out", str(tmp_path / "bad"), "--loss", "iql", check=False)
    assert p.returncode == 2 and "invalid choice: 'iql'" in p.stderr
    p = cli("smore", "--out", str(tmp_path / "bad"), "--fractions", "0.1", "2", check=False)
    assert p.returncode == 2 and "expert fraction must be in [0, 1]" in p.stderr


# ----------------------------------------------------------------------------- the claims (slow)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The default experiment (3 fractions x 3 seeds) without the MLP baseline (its own key:
    the other numbers are the same with it), run once for the claim tests."""
    from diffalign.experiments.smore import Config, run

    out = str(tmp_path_factory.mktemp("smore_full"))
    run(Config(gcbc_mlp=False), out)
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)["metrics"]


@pytest.mark.slow
def test_smore_reaches_ninety_percent_at_ten_percent_expert(full_run):
    e = full_run["expert_0.1"]["smore"]
    assert e["success"] >= 0.9, e["spread"]["success"]
    assert full_run["optimal"]["success"] == 1.0


@pytest.mark.slow
def test_smore_at_least_gcbc_on_every_fraction_and_seed(full_run):
    """Both baselines (GCBC with p_future 0.8, GCSL-style with future goals only) are trained as
    long as SMORe with the same decayed rate, on the same data and keys."""
    for frac in ("expert_0.5", "expert_0.1", "expert_0.02"):
        for base in ("gcbc", "gcsl"):
            for a, b in zip(full_run[frac]["smore"]["per_seed"], full_run[frac][base]["per_seed"]):
                assert a["seed"] == b["seed"]
                assert a["all"]["success"] >= b["all"]["success"], (frac, base, a, b)
                assert a["all"]["return"] >= b["all"]["return"], (frac, base, a, b)


@pytest.mark.slow
def test_gap_grows_as_expert_fraction_shrinks(full_run):
    """The mean success and return gaps over each baseline grow at every step 0.5 -> 0.1 -> 0.02."""
    for key in ("gap", "gap_gcsl"):
        for m in ("success", "return"):
            means = [full_run[f][f"{key}_{m}"]["mean"] for f in ("expert_0.5", "expert_0.1", "expert_0.02")]
            assert means[0] < means[1] < means[2], (key, m, means)


@pytest.mark.slow
def test_smore_at_least_mlp_gcbc(tmp_path):
    """Against the stronger baseline (GCBC with an MLP that generalises across goals), one seed:
    SMORe is at least as good, and the gap is larger with 2 % than with 50 % expert data."""
    from diffalign.experiments.smore import Config, run

    run(Config(fractions=(0.5, 0.02), seeds=(0,), gcbc_mlp=True), str(tmp_path))
    with open(tmp_path / "results.json") as f:
        m = json.load(f)["metrics"]
    for frac in ("expert_0.5", "expert_0.02"):
        for k in ("success", "return"):
            assert m[frac]["smore"][k] >= m[frac]["gcbc_mlp"][k], (frac, k)
    assert m["expert_0.02"]["gap_mlp_success"]["mean"] > m["expert_0.5"]["gap_mlp_success"]["mean"]


def test_learners_refuse_out_of_range_data():
    """Indices past the tables would be clamped silently inside jit: refused on the host."""
    world = G.four_rooms()
    data = G.generate_dataset(jax.random.key(0), world, 4, 0.5, 10, 0.2, 0.0)
    bad = data._replace(actions=data.actions.at[0, 0].set(7))
    with pytest.raises(ValueError, match="actions must lie in"):
        S.train_gcbc(jax.random.key(0), bad, world.n_states, S.GCBCConfig(steps=10, batch_size=8))
    bad = data._replace(goals=data.goals.at[0].set(world.n_states))
    with pytest.raises(ValueError, match="goals must lie in"):
        S.train_smore(jax.random.key(0), bad, world.n_states, S.SMOReConfig(steps=10, batch_size=8))
