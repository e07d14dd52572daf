"""GDSS: networks, the system's noise and loss, orbit counts, MMDs against the reference evaluator."""

import os

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
from flax import nnx

from diffalign.graphs import data as gdata
from diffalign.graphs.configs import CONFIGS, get_config
from diffalign.graphs.gdss import build_model, make_batch_fn, quantize_generic
from diffalign.graphs.metrics import gaussian_emd_gram, graph_mmds
from diffalign.graphs.networks import ScoreNetworkA, ScoreNetworkX, count_params
from diffalign.graphs.orbits import orbit_counts, orbit_counts_brute_force
from diffalign.sampling.graph import sample_graphs
from diffalign.graphs.system import GraphSDE, gdss_loss, node_flags, perturb
from diffalign.sampling.graph import sym_noise
from diffalign.models import functional
from diffalign.sde import VESDE, VPSDE

DATA = os.path.join(os.path.dirname(__file__), "data")


def random_graph_batch(key, b=3, n=9, f=5, real=(9, 6, 4)):
    kx, ka = jax.random.split(key)
    flags = (jnp.arange(n)[None, :] < jnp.asarray(real)[:, None]).astype(jnp.float32)
    x = jax.random.normal(kx, (b, n, f)) * flags[..., None]
    a = sym_noise(ka, (b, n, n), flags)
    return x, a, flags


def small_nets(f=5):
    rngs = nnx.Rngs(0)
    return ScoreNetworkX(f, 2, 8, rngs=rngs), ScoreNetworkA(f, 8, 3, 2, 2, 4, 3, 8, 2, rngs=rngs)


def test_networks_are_permutation_equivariant_and_masked():
    netx, neta = small_nets()
    x, a, flags = random_graph_batch(jax.random.key(0))
    perm = jax.random.permutation(jax.random.key(1), 9)
    ox, oa = netx(x, a, flags), neta(x, a, flags)
    px, pa, pf = x[:, perm], a[:, perm][:, :, perm], flags[:, perm]
    np.testing.assert_allclose(netx(px, pa, pf), ox[:, perm], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(neta(px, pa, pf), oa[:, perm][:, :, perm], rtol=1e-4, atol=1e-5)
    # the A-network's output is symmetric, zero on the diagonal and on padded rows and columns
    np.testing.assert_allclose(oa, jnp.swapaxes(oa, 1, 2), atol=1e-6)
    assert float(jnp.abs(jnp.diagonal(oa, axis1=1, axis2=2)).max()) == 0.0
    pad = 1 - flags
    assert float(jnp.abs(oa * pad[:, :, None]).max()) == 0.0 and float(jnp.abs(ox * pad[..., None]).max()) == 0.0
    # padding does not change the real nodes' outputs
    x2, a2 = jnp.pad(x, ((0, 0), (0, 4), (0, 0))), jnp.pad(a, ((0, 0), (0, 4), (0, 4)))
    f2 = jnp.pad(flags, ((0, 0), (0, 4)))
    np.testing.assert_allclose(neta(x2, a2, f2)[:, :9, :9], oa, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(netx(x2, a2, f2)[:, :9], ox, rtol=1e-4, atol=1e-5)


def _plain_score_network_a(net, x, adj, flags):
    """ScoreNetworkA written out as the paper's code computes it: channel by channel, every
    per-entry MLP on the full N x N matrix, S + S^T. The library's version batches the channels
    and evaluates the per-entry MLPs on the packed upper triangle."""
    from diffalign.graphs.networks import mask_adj, mask_x, normalize_adj

    def gcn(g, h, an):
        return an @ (h @ g.lin.kernel[...]) + g.bias[...]

    adjc = jnp.stack([adj] + [adj @ adj] * (net.c_init - 1), 1)
    chans = [adjc]
    for layer in net.layers:
        vs, ms = [], []
        for c, att in enumerate(layer.attn):
            an = normalize_adj(adjc[:, c])
            q, k, v = gcn(att.q, x, an), gcn(att.k, x, an), gcn(att.v, x, an)
            b, n, d = q.shape
            qh, kh = q.reshape(b, n, att.heads, -1), k.reshape(b, n, att.heads, -1)
            s = jnp.tanh(jnp.einsum("bihd,bjhd->bhij", qh, kh) / np.sqrt(att.dout)).mean(1)
            vs.append(v)
            ms.append(0.5 * (s + jnp.swapaxes(s, -1, -2)))
        x = jnp.tanh(mask_x(layer.multi_channel(jnp.concatenate(vs, -1)), flags))
        s = layer.mlp(jnp.concatenate([jnp.stack(ms, -1), jnp.moveaxis(adjc, 1, -1)], -1))
        adjc = mask_adj(jnp.moveaxis(s + jnp.swapaxes(s, 1, 2), -1, 1), flags)
        chans.append(adjc)
    score = net.final(jnp.moveaxis(jnp.concatenate(chans, 1), 1, -1))[..., 0]
    return mask_adj(score * (1 - jnp.eye(adj.shape[-1])), flags)


def test_score_network_a_equals_its_plain_form():
    _, neta = small_nets()
    x, a, flags = random_graph_batch(jax.random.key(4))
    np.testing.assert_allclose(neta(x, a, flags), _plain_score_network_a(neta, x, a, flags), rtol=1e-4, atol=1e-5)


def test_size_buckets_hold_every_batch_and_change_no_loss():
    """Buckets from the training set's sizes hold any batch drawn from it; the bucketed loss and
    gradient equal the padded ones; a batch that does not fit is evaluated whole."""
    from diffalign.graphs.gdss import make_step
    from diffalign.graphs.system import fits_layout, size_buckets
    from diffalign.training import init_train_state

    import dataclasses

    cfg = dataclasses.replace(get_config("ego_small"), x_nhid=8, a_nhid=8, adim=8, a_layers=2, c_hid=4, c_final=2)
    train, _ = gdata.load_generic("ego_small", DATA)
    x, adj, flags = gdata.to_dense(train, cfg.max_nodes, cfg.max_feat)
    layout = size_buckets(flags, cfg.batch_size, 4)
    assert sum(c for c, _ in layout) == cfg.batch_size
    caps = [cap for _, cap in layout]
    assert caps == sorted(caps, reverse=True) and caps[0] == int(flags.sum(1).max()) and caps[-1] < caps[0]
    rng = np.random.default_rng(0)
    for _ in range(20):  # any subset of the training graphs fits
        idx = rng.choice(len(flags), cfg.batch_size, replace=False)
        assert bool(fits_layout(layout, jnp.asarray(flags[idx])))
    assert not bool(fits_layout(layout, jnp.asarray(np.ones((cfg.batch_size, cfg.max_nodes), np.float32))))

    model = build_model(cfg, 0)
    padded = gdss_loss(model.gsde, model.apply_x, model.apply_a)
    by_buckets = gdss_loss(model.gsde, model.apply_x, model.apply_a, layout)
    bf = make_batch_fn(x, adj, cfg.batch_size, 1)

    def total(loss):
        return jax.jit(jax.value_and_grad(lambda p, b, k: jnp.sum(loss(p, b, k)["per_example"] * b["mask"])))

    f0, f1 = total(padded), total(by_buckets)
    for step in (0, 1):  # step 1 is the epoch's last batch: 32 graphs and 96 masked
        batch, key = bf(step), jax.random.key(step)
        (v0, g0), (v1, g1) = f0(model.params, batch, key), f1(model.params, batch, key)
        np.testing.assert_allclose(v1, v0, rtol=1e-5)
        for a0, a1 in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
            np.testing.assert_allclose(a1, a0, rtol=1e-3, atol=1e-4 * float(jnp.abs(a0).max()))

    # the training step: bucketed on training batches, whole on a batch that does not fit
    opt, step = make_step(model, flags)
    _, step_padded = make_step(model, flags, num_buckets=1)
    state = init_train_state(model.params, opt, jax.random.key(0))
    big = {"x": jnp.tile(x[:1], (cfg.batch_size, 1, 1)), "adj": jnp.tile(adj[:1], (cfg.batch_size, 1, 1))}
    big["adj"] = big["adj"].at[:, :, -1].set(1.0).at[:, -1, :].set(1.0).at[:, -1, -1].set(0.0)
    big["mask"] = jnp.ones((cfg.batch_size,))
    step, step_padded = jax.jit(step), jax.jit(step_padded)
    for batch in (bf(0), big):
        m1, m0 = step(state, batch)[1], step_padded(state, batch)[1]
        np.testing.assert_allclose(m1["loss"], m0["loss"], rtol=1e-5)
        np.testing.assert_allclose(m1["grad_norm"], m0["grad_norm"], rtol=1e-4)


def test_parameter_counts_match_the_released_checkpoints():
    expected = {"community_small": (72_434, 134_369), "ego_small": (44_093, 135_713), "ENZYMES": (182_066, 204_113),
                "QM9": (8_564, 23_825), "ZINC250k": (11_429, 62_873)}
    for name, (cx, ca) in expected.items():
        m = build_model(get_config(name), 0)
        assert (count_params(m.params["x"]), count_params(m.params["a"])) == (cx, ca), name


def test_mlps_start_as_pytorch_linear_layers():
    """GDSS's MLPs keep nn.Linear's default init: weights and biases uniform on +-1/sqrt(fan_in)."""
    from diffalign.graphs.networks import MLP

    mlp = MLP(3, 400, 300, 200, rngs=nnx.Rngs(0))
    for lin in mlp.linears:
        w, b = np.asarray(lin.kernel[...]), np.asarray(lin.bias[...])
        bound = 1 / np.sqrt(w.shape[0])
        assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
        np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.02)  # uniform, not normal
        assert b.std() > 0.5 * bound / np.sqrt(3)  # biases are not zero


def test_noise_and_perturbation_are_symmetric_and_masked():
    x, a, flags = random_graph_batch(jax.random.key(2))
    z = sym_noise(jax.random.key(3), a.shape, flags)
    np.testing.assert_array_equal(z, jnp.swapaxes(z, 1, 2))
    assert float(jnp.abs(jnp.diagonal(z, axis1=1, axis2=2)).max()) == 0.0
    gsde = GraphSDE(VPSDE(beta_min=0.1, beta_max=1.0), VESDE(sigma_min=0.2, sigma_max=1.0))
    xt, at, zx, za = perturb(gsde, jax.random.key(4), x, a, flags, jnp.full((3,), 0.7))
    pad = 1 - flags
    for v in (xt, zx):
        assert float(jnp.abs(v * pad[..., None]).max()) == 0.0
    for v in (at, za):
        assert float(jnp.abs(v * pad[:, :, None]).max()) == 0.0
        np.testing.assert_allclose(v, jnp.swapaxes(v, 1, 2), atol=1e-6)
    np.testing.assert_array_equal(node_flags(a), flags)


def test_loss_at_the_optimum_of_a_gaussian_toy():
    """VE with sigma nearly constant: the optimal VE 'score' is -x / (s^2 + sigma^2) for zero-mean
    Gaussian entries of variance s^2, and the loss there is 1/2 s^2 / (s^2 + sigma^2) per entry."""
    s, sig, n, f, b = 0.8, 0.5, 6, 3, 4000
    gsde = GraphSDE(VESDE(sigma_min=sig, sigma_max=sig * 1.0001), VESDE(sigma_min=sig, sigma_max=sig * 1.0001))
    k1, k2 = jax.random.split(jax.random.key(5))
    flags = jnp.ones((b, n))
    x0 = s * jax.random.normal(k1, (b, n, f))
    a0 = s * sym_noise(k2, (b, n, n), flags)

    def apply(scale, x, adj, flags):
        return -scale * x / (s**2 + sig**2)

    loss = gdss_loss(gsde, lambda p, x, a, fl: apply(p, x, a, fl), lambda p, x, a, fl: apply(p, a, a, fl))
    out = loss({"x": 1.0, "a": 1.0}, {"x": x0, "adj": a0}, jax.random.key(6))
    per_entry = 0.5 * s**2 / (s**2 + sig**2)
    np.testing.assert_allclose(float(out["loss_x"].mean()), per_entry * n * f, rtol=0.02)
    np.testing.assert_allclose(float(out["loss_a"].mean()), per_entry * n * (n - 1), rtol=0.02)
    grad = jax.grad(lambda p: loss(p, {"x": x0, "adj": a0}, jax.random.key(6))["per_example"].mean())
    g = grad({"x": 1.0, "a": 1.0})
    assert abs(g["x"]) < 0.05 * per_entry * n * f and abs(g["a"]) < 0.05 * per_entry * n * (n - 1)


def test_orbit_counts_equal_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(25):
        n = int(rng.integers(2, 11))
        p = rng.uniform(0.1, 0.9)
        e = [(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < p]
        np.testing.assert_array_equal(orbit_counts(n, e), orbit_counts_brute_force(n, e))
    # named graphlets: K4 puts every node in orbit 14 once; a 4-cycle in orbit 8; a star's centre in 7
    np.testing.assert_array_equal(orbit_counts(4, list(nx.complete_graph(4).edges()))[:, 14], [1, 1, 1, 1])
    np.testing.assert_array_equal(orbit_counts(4, list(nx.cycle_graph(4).edges()))[:, 8], [1, 1, 1, 1])
    star = orbit_counts(4, [(0, 1), (0, 2), (0, 3)])
    assert star[0, 7] == 1 and list(star[1:, 6]) == [1, 1, 1]


def test_emd_kernel_equals_a_reference_emd():
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(1)
    for scale, sigma in ((1.0, 1.0), (100.0, 0.1)):
        x = rng.random((4, 12))
        y = rng.random((3, 12))
        x /= x.sum(1, keepdims=True)
        y /= y.sum(1, keepdims=True)
        ground = np.abs(np.arange(12)[:, None] - np.arange(12)[None, :]) / scale
        emd = np.array([[ot.emd2(a, b, ground) for b in y] for a in x])
        np.testing.assert_allclose(gaussian_emd_gram(x, y, sigma, scale), np.exp(-emd**2 / (2 * sigma**2)), rtol=1e-6)


def test_mmds_match_the_reference_evaluator_on_enzymes():
    """The reference evaluator's numbers for ENZYMES train graphs [117:234] against its test set."""
    g = gdata.read_edge_lists(os.path.join(DATA, "graphs", "ENZYMES.npz"))
    m = graph_mmds(g.subset(range(117)), g.subset(range(117, 234)))
    np.testing.assert_allclose(m["degree"], 0.0118066, rtol=1e-3)
    np.testing.assert_allclose(m["clustering"], 0.0873168, rtol=1e-3)
    np.testing.assert_allclose(m["orbit"], 0.0174581, rtol=1e-3)


def test_edgeless_samples_count_against_the_model():
    """As the reference evaluator: an edgeless sample (a single node after quantisation) is
    scored, not dropped, so a model emitting them is penalised."""
    g = gdata.read_edge_lists(os.path.join(DATA, "graphs", "community_small.npz"))
    ref, good = g.subset(range(20)), g.subset(range(20, 40))
    empty = quantize_generic(np.zeros((5, 20, 20)), np.ones((5, 20)))
    assert list(empty.num_nodes) == [1] * 5
    mixed = gdata.EdgeLists(np.concatenate([good.num_nodes[:15], empty.num_nodes]),
                            tuple(good.edges[:15]) + tuple(empty.edges), 0)
    base, worse = graph_mmds(ref, good.subset(range(15))), graph_mmds(ref, mixed)
    for k in ("degree", "clustering"):
        assert worse[k] > base[k] + 0.05, k
    assert worse["orbit"] > 2 * base["orbit"]


def test_data_loading_batches_and_quantisation(tmp_path):
    train, test = gdata.load_generic("community_small", DATA)
    assert (len(train), len(test)) == (80, 20)
    cfg = get_config("community_small")
    x, a, flags = gdata.to_dense(train, cfg.max_nodes, cfg.max_feat)
    np.testing.assert_array_equal(x.sum(-1), flags)  # one-hot degree on real nodes only
    np.testing.assert_array_equal(a.sum(-1), np.argmax(x, -1) * flags)
    bf = make_batch_fn(x, a, 128, 0)
    b0 = bf(0)
    assert b0["x"].shape == (80, 20, 10) and float(b0["mask"].sum()) == 80  # one batch of all graphs
    ego_train, _ = gdata.load_generic("ego_small", DATA)
    ex, ea, _ = gdata.to_dense(ego_train, 18, 17)
    eb = make_batch_fn(ex, ea, 128, 0)
    assert float(eb(0)["mask"].sum()) == 128 and float(eb(1)["mask"].sum()) == 32  # 160 = 128 + 32
    # round trip: dense clean graphs quantise back to the same edge lists
    q = quantize_generic(a, flags)
    path = gdata.write_edge_lists(str(tmp_path / "g.npz"), q)
    back = gdata.read_edge_lists(path)
    assert graph_mmds(train, back)["degree"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="unknown graph data set"):
        gdata.load_generic("planar", DATA)
    with pytest.raises(ValueError, match="not an edge-list file"):
        np.savez(tmp_path / "bad.npz", foo=np.zeros(3))
        gdata.read_edge_lists(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="more than the padding size"):
        gdata.to_dense(train, 5, 10)


@pytest.mark.parametrize("solver,predictor,corrector", [("pc", "euler", "langevin"), ("pc", "reverse", "none"),
                                                        ("s4", "euler", "langevin")])
def test_samplers_keep_symmetry_and_masks(solver, predictor, corrector):
    netx, neta = small_nets()
    ax, px = functional(netx)
    aa, pa = functional(neta)
    gsde = GraphSDE(VPSDE(beta_min=0.1, beta_max=1.0), VESDE(sigma_min=0.2, sigma_max=1.0), num_scales=20)
    _, _, flags = random_graph_batch(jax.random.key(7))

    def sx(x, adj, fl, t):
        return ax(px, x, adj, fl)

    def sa(x, adj, fl, t):
        return aa(pa, x, adj, fl)

    x, a = jax.jit(lambda k: sample_graphs(k, gsde, sx, sa, flags, 5, solver=solver, predictor=predictor,
                                           corrector=corrector, snr=0.1, scale_eps=0.7))(jax.random.key(8))
    assert np.isfinite(np.asarray(a)).all()
    np.testing.assert_allclose(a, jnp.swapaxes(a, 1, 2), atol=1e-5)
    pad = 1 - flags
    assert float(jnp.abs(a * pad[:, :, None]).max()) == 0.0 and float(jnp.abs(x * pad[..., None]).max()) == 0.0


def test_sampler_size_buckets_change_no_sample():
    """The sampler fits size buckets to the flags it is given: the same samples as one padded
    evaluation, and a layout of its own for each set of flags."""
    import dataclasses

    from diffalign.graphs.gdss import sampler

    cfg = dataclasses.replace(get_config("ego_small"), x_nhid=8, a_nhid=8, adim=8, a_layers=2, c_hid=4, c_final=2,
                              predictor="reverse", corrector="langevin", snr=0.1, scale_eps=0.7)
    model = build_model(cfg, 0)
    train, _ = gdata.load_generic("ego_small", DATA)
    _, _, flags = gdata.to_dense(train, cfg.max_nodes, cfg.max_feat)
    fl = jnp.asarray(flags[:24])
    f, f_padded = sampler(model, model.params, num_scales=10), sampler(model, model.params, num_scales=10,
                                                                       num_buckets=1)
    x1, a1 = f(jax.random.key(3), fl)
    x0, a0 = f_padded(jax.random.key(3), fl)
    np.testing.assert_allclose(a1, a0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(x1, x0, rtol=1e-4, atol=1e-4)


def test_configs_are_complete():
    assert set(CONFIGS) == {"community_small", "ego_small", "ENZYMES", "grid", "QM9", "ZINC250k"}
    assert get_config("ENZYMES").solver == "s4" and get_config("grid").predictor == "reverse"


def test_graphs_commands_keep_the_contract(tmp_path):
    """`graphs train --smoke` writes results, metrics and edge-list samples; `graphs evaluate`
    scores any edge-list file (here the training graphs themselves)."""
    from diffalign.cli import main

    out = tmp_path / "train"
    assert main(["graphs", "train", "--dataset", "community_small", "--data-dir", DATA, "--out", str(out), "--smoke"]) == 0
    import json

    r = json.load(open(out / "results.json"))
    assert r["metrics"]["train_steps"] == 4 and r["metrics"]["nfe_per_graph"] == 160
    assert set(json.load(open(out / "metrics.json"))) == {"degree", "clustering", "orbit"}
    assert len(gdata.read_edge_lists(str(out / "samples.npz"))) == 20
    train, _ = gdata.load_generic("community_small", DATA)
    path = gdata.write_edge_lists(str(tmp_path / "train_graphs.npz"), train.subset(range(20)))
    ev = tmp_path / "eval"
    assert main(["graphs", "evaluate", "--dataset", "community_small", "--data-dir", DATA, "--samples", path,
                 "--out", str(ev)]) == 0
    m = json.load(open(ev / "metrics.json"))
    assert 0 <= m["degree"] < 0.05 and m["num_generated"] == 20
    assert main(["graphs", "evaluate", "--dataset", "community_small", "--data-dir", DATA, "--samples",
                 str(tmp_path / "missing.npz"), "--out", str(ev)]) == 1
    # a table over "training seeds" (the same run twice: zero spread, the run's own means)
    tab = tmp_path / "table"
    assert main(["graphs", "table", "--runs", str(out), str(out), "--out", str(tab)]) == 0
    t = json.load(open(tab / "results.json"))
    assert t["metrics"]["orbit"] == pytest.approx(r["metrics"]["orbit"], nan_ok=True)
    assert t["metrics"]["orbit_std"] == 0 or np.isnan(t["metrics"]["orbit_std"])
    assert t["rows"]["average"]["paper"] == pytest.approx(0.046, abs=1e-3) and (tab / "table.md").exists()
    assert main(["graphs", "table", "--runs", str(tmp_path / "nowhere"), "--out", str(tab)]) == 1
    # sampling from a run that never wrote results.json (killed): the config comes from the checkpoint
    os.remove(out / "results.json")
    smp = tmp_path / "sample"
    assert main(["graphs", "sample", "--run", str(out), "--seeds", "5", "--num-scales", "10", "--no-score",
                 "--out", str(smp)]) == 0
    assert len(gdata.read_edge_lists(str(smp / "samples_seed5.npz"))) == 20 and not (smp / "metrics.json").read_text().strip("{}\n ")
