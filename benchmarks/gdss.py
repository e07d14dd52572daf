"""Speed of GDSS training and sampling (community_small networks) against the official code, in
the same run, and its growth with N.

    python benchmarks/gdss.py --reference GDSS          # both cores
    taskset -c 0 python benchmarks/gdss.py --threads 1 --reference GDSS   # one core
    python benchmarks/gdss.py --quick                   # fewer steps: a check, not a result

``GDSS`` is a checkout of the official code (harryjo97/GDSS, fetched by the user; nothing of it
is copied here), run by ``benchmarks/peers/gdss_official.py`` under ``--reference-python`` (a
Python with torch, networkx, tqdm and pyyaml; this one by default). Ours and theirs alternate
(ours, peer, ours, peer, ...) at the same thread count, so the ratio comes from one run: its
median, min and max over the pairs are under ``rows.train`` and ``rows.pc_sampling``. Without
``--reference`` the rows say "not measured".

Writes benchmarks/results/gdss-<N>thread(s).json. Rows:
* training step on community_small's 80 training graphs (N = 20), median over chunks;
* sampling 128 graphs with 1000 reverse steps, PC (Euler + Langevin: 4 network evaluations a
  step) and S4 (2 a step), compile time apart;
* the same two for N = 20, 40, 80, 160 (random community-like graphs of 0.6 N to N nodes), to
  show the growth: training medians over chunks of 2 steps, sampling over 20 steps, per 1000
  (with ``--reference``, the official code at each N too: at N = 160 its sampling run alone
  takes minutes; ``--sizes`` with no value skips the growth rows, ``--growth-only`` runs only them).
Training and sampling run in size buckets (the networks skip padding nodes; same numbers), and
the headline rows also without (padded). FLOP/s is XLA's count of the padded program (for
sampling: one evaluation of both networks, times evaluations per step, times steps) over the
time: the work the reference does, so with buckets it is an equivalent rate; every rate is also a
fraction of the fp32 matmul peak measured at the start of the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sizes", type=int, nargs="*", default=[20, 40, 80, 160], help="growth rows (none: skip)")
    p.add_argument("--reference", help="a checkout of the official GDSS code, timed in the same run")
    p.add_argument("--reference-python", default=sys.executable, help="the Python that runs the official code")
    p.add_argument("--reference-version", help="its commit, when the checkout has no .git")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the rows against the peer")
    p.add_argument("--steps", type=int, default=1000, help="reverse steps of the sampling rows")
    p.add_argument("--headline-only", action="store_true", help="only the rows against the peer")
    p.add_argument("--growth-only", action="store_true",
                   help="only the growth rows (--sizes), with the peer's where given: gdss-growth-<N>thread(s).json")
    p.add_argument("--dataset", default="community_small", help="community_small, or a molecule set such as QM9 "
                   "(molecule sets: the rows against the peer only)")
    p.add_argument("--graphs", type=int, help="graphs per sampling run (default: 128, or 10,000 molecules as GDSS)")
    p.add_argument("--data-dir", help="the shared data folder (molecule sets)")
    p.add_argument("--device", default="cpu", help="where the official code runs: cpu or cuda (ours: JAX's default)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return p.parse_args()


ARGS = parse()
if ARGS.threads == 1 and hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:
    sys.exit("--threads 1 measures one core: run it as `taskset -c 0 python benchmarks/gdss.py --threads 1`")

import jax  # noqa: E402
from common import interleaved, matmul_peak, peer_row, time_train_chunks, write_result  # noqa: E402
from peers import gdss_official  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffalign.graphs import data as gdata  # noqa: E402
from diffalign.graphs.configs import get_config  # noqa: E402
from diffalign.graphs.gdss import build_model, make_batch_fn, make_step, sample_flags, sampler  # noqa: E402
from diffalign.sampling.graph import evaluations_per_step  # noqa: E402
from diffalign.training import init_train_state, make_multi_step  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data")


def peer_info():
    return gdss_official.info(ARGS.reference, ARGS.reference_python, ARGS.reference_version) if ARGS.reference else None


def peer_run(task: str, data: str, threads: int, **kw) -> float:
    """One timed run of the official code in its own process (start-up and model building not timed)."""
    return gdss_official.timed_run(ARGS.reference, ARGS.reference_python, task, data, threads,
                                   dataset=ARGS.dataset, device=ARGS.device, **kw)


def headline_rows(cfg, x, adj, flags, sample_flags_, threads, peak, repeats, steps, tmp, batch_fn=None):
    """``rows.train`` and ``rows.pc_sampling``: ours as users run it (size buckets) and the official
    code on the same batch / node counts, interleaved."""
    peer = peer_info()
    np.savez(os.path.join(tmp, "train.npz"), x=x, adj=adj, flags=flags)
    n, f = sample_flags_.shape[1], cfg.max_feat
    np.savez(os.path.join(tmp, "sample.npz"), x=np.zeros((len(sample_flags_), n, f), np.float32),
             adj=np.zeros((len(sample_flags_), n, n), np.float32), flags=np.asarray(sample_flags_))
    rows = {}

    model = build_model(cfg, 0)
    bf = make_batch_fn(x, adj, cfg.batch_size, 1) if batch_fn is None else batch_fn
    opt, step = make_step(model, flags)
    state = init_train_state(model.params, opt, jax.random.key(0))
    _, padded = make_step(model, flags, num_buckets=1)
    flops = flops_of(jax.jit(padded).lower(state, bf(0)).compile())
    chunk = 10 if ARGS.quick else 50
    run = jax.jit(make_multi_step(step, bf, chunk), donate_argnums=0)
    compiled = run.lower(state).compile()
    box = [jax.block_until_ready(compiled(jax.tree.map(jnp.copy, state))[0])]  # the state is donated

    def ours_train():
        t0 = time.perf_counter()
        box[0] = jax.block_until_ready(compiled(box[0])[0])
        return (time.perf_counter() - t0) / chunk

    peer_train = (lambda: peer_run("train", os.path.join(tmp, "train.npz"), threads, iterations=10)) if peer else None
    mine, theirs = interleaved(ours_train, peer_train or (lambda: float("nan")), repeats)
    rows["train"] = peer_row(mine, theirs if peer else None, peer or "not measured", threads,
                             what=f"one training iteration on {len(x)} training graphs of {cfg.name}",
                             flops_per_iteration_padded=flops)

    f_s = sampler(model, model.params, solver="pc", num_scales=steps)  # the data set's predictor and corrector
    compiled_s = f_s.lower(jax.random.key(0), sample_flags_).compile()
    jax.block_until_ready(compiled_s(jax.random.key(0), sample_flags_))

    def ours_sample():
        t0 = time.perf_counter()
        jax.block_until_ready(compiled_s(jax.random.key(1), sample_flags_))
        return time.perf_counter() - t0

    peer_sample = (lambda: peer_run("pc", os.path.join(tmp, "sample.npz"), threads, steps=steps)) if peer else None
    mine, theirs = interleaved(ours_sample, peer_sample or (lambda: float("nan")), repeats)
    per_eval = forward_flops(model, model.params, sample_flags_)
    evals = evaluations_per_step("pc", cfg.corrector)
    rows["pc_sampling"] = peer_row(mine, theirs if peer else None, peer or "not measured", threads,
                                   what=f"PC sampling ({cfg.predictor} + {cfg.corrector}) of {len(sample_flags_)} graphs, "
                                        f"{steps} steps, {cfg.name}",
                                   flops_per_run_padded=per_eval * evals * steps if per_eval else None)
    for r, key in ((rows["train"], "flops_per_iteration_padded"), (rows["pc_sampling"], "flops_per_run_padded")):
        fl = r[key]
        r["fraction_of_peak"] = {"ours": fl / r["ours_s"] / peak if fl else None,
                                 "peer": fl / r["peer_s"] / peak if fl and r["peer_s"] else None}
    return rows


def flops_of(compiled):
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    return (cost or {}).get("flops")


def train_row(cfg, x, adj, flags, chunk, repeats):
    """The training step as trained (size buckets, the default) and with the whole padded batch
    (``num_buckets=1``). FLOP/s is the padded step's XLA count over each time: the work the
    reference does, so the bucketed row's figure is an equivalent rate, not executed FLOPs."""
    model = build_model(cfg, 0)
    bf = make_batch_fn(x, adj, cfg.batch_size, 1)
    row = {"graphs": len(x), "nodes": x.shape[1]}
    opt, padded = make_step(model, flags, num_buckets=1)
    state = init_train_state(model.params, opt, jax.random.key(0))
    f = flops_of(jax.jit(padded).lower(state, bf(0)).compile())
    for name, buckets in (("padded", 1), ("bucketed", 4)):
        _, step = make_step(model, flags, num_buckets=buckets)
        compile_s, times = time_train_chunks(step, bf, state, chunk, repeats)
        step_s = float(np.median(times))
        row[name] = {"compile_s": compile_s, "step_s": step_s, "step_s_runs": times,
                     "equivalent_flops_per_s": f / step_s if f else None}
    row.update(flops_per_step_padded=f, step_s=row["bucketed"]["step_s"], compile_s=row["bucketed"]["compile_s"])
    return row


def forward_flops(model, params, flags):
    """XLA's FLOP count of one evaluation of both networks on these graphs (a sampler's while
    loop is counted once by XLA's cost analysis, so sampling FLOPs are counted per evaluation)."""
    b, n = flags.shape
    x = jnp.zeros((b, n, model.config.max_feat))
    a = jnp.zeros((b, n, n))
    f = jax.jit(lambda p: (model.apply_x(p["x"], x, a, flags), model.apply_a(p["a"], x, a, flags)))
    return flops_of(f.lower(params).compile())


def sample_row(cfg, flags, solver, steps, num_buckets=4):
    """Sampling time, compile apart. FLOP/s is XLA's count of the padded networks over the time:
    an equivalent rate (with size buckets the networks skip part of that work)."""
    model = build_model(cfg, 0)
    overrides = dict(solver=solver, predictor="euler", corrector="langevin", snr=0.05, scale_eps=0.7, num_scales=steps)
    f = sampler(model, model.params, num_buckets=num_buckets, **overrides)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = f.lower(key, flags).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(key, flags))
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(jax.random.key(1), flags))
    run_s = time.perf_counter() - t0
    evals = 2 if solver == "s4" else 4
    per_eval = forward_flops(model, model.params, flags)
    fl = per_eval * evals * steps if per_eval else None
    return {"solver": solver, "size_buckets": num_buckets, "graphs": int(flags.shape[0]),
            "nodes": int(flags.shape[1]), "steps": steps, "network_evaluations_per_step": evals,
            "compile_s": compile_s, "run_s": run_s, "s_per_1000_steps": run_s * 1000 / steps,
            "flops_per_evaluation_padded": per_eval, "flops_padded": fl,
            "equivalent_flops_per_s": fl / run_s if fl else None}


def random_flags(n_nodes, graphs=128, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(int(0.6 * n_nodes), n_nodes + 1, graphs)  # like community_small: 12..20 of 20
    return jnp.asarray((np.arange(n_nodes)[None, :] < counts[:, None]).astype(np.float32))


def random_graphs(n_nodes, graphs, seed=0):
    import networkx as nx

    rng = np.random.default_rng(seed)
    nums, edges = [], []
    for i in range(graphs):
        n = int(rng.integers(int(0.6 * n_nodes), n_nodes + 1))
        g = nx.connected_caveman_graph(2, n // 2) if n >= 4 else nx.path_graph(n)
        g = nx.convert_node_labels_to_integers(g)
        nums.append(g.number_of_nodes())
        edges.append(np.asarray(list(g.edges()), np.int64).reshape(-1, 2))
    return gdata.EdgeLists(np.asarray(nums), tuple(edges), 0)


def growth_rows(threads, quick):
    """Training step and sampling time for N = ``--sizes`` (random community-like graphs), ours
    (padded and bucketed) and, with ``--reference``, the official code on the same graphs and node
    counts (one run each after a warm-up: training over 3 iterations, sampling 20 PC steps)."""
    import tempfile

    rows, peer, base = [], peer_info(), get_config("community_small")
    steps = 5 if quick else 20
    for n in ARGS.sizes:
        c = base.__class__(**{**base.__dict__, "max_nodes": n, "max_feat": max(10, n)})
        g = random_graphs(n, 80, seed=n)
        gx, ga, gf = gdata.to_dense(g, n, c.max_feat)
        flags = random_flags(n)
        row = {"nodes": n, "train": train_row(c, gx, ga, gf, chunk=2, repeats=1 if quick else 3)}
        for solver in ("pc", "s4"):
            row[solver] = sample_row(c, flags, solver, steps)
        line = (f"N={n}: train {row['train']['padded']['step_s'] * 1e3:.1f} ms/step padded, "
                f"{row['train']['bucketed']['step_s'] * 1e3:.1f} bucketed; sample 128 graphs "
                f"pc {row['pc']['s_per_1000_steps']:.1f} s / s4 {row['s4']['s_per_1000_steps']:.1f} s per 1000 steps")
        if peer:
            with tempfile.TemporaryDirectory() as tmp:
                train_npz, sample_npz = os.path.join(tmp, "train.npz"), os.path.join(tmp, "sample.npz")
                np.savez(train_npz, x=gx, adj=ga, flags=gf)
                b = flags.shape[0]
                np.savez(sample_npz, x=np.zeros((b, n, c.max_feat), np.float32), adj=np.zeros((b, n, n), np.float32),
                         flags=np.asarray(flags))
                size = dict(max_nodes=n, max_feat=c.max_feat)
                run = dict(dataset="community_small", **size)  # the growth rows' config, whatever --dataset says
                train_s = gdss_official.timed_run(ARGS.reference, ARGS.reference_python, "train", train_npz, threads,
                                                  iterations=3, warmup=1, device=ARGS.device, **run)
                pc_s = gdss_official.timed_run(ARGS.reference, ARGS.reference_python, "pc", sample_npz, threads,
                                               steps=steps, device=ARGS.device, **run)
            row["peer"] = {**peer, "train_step_s": train_s, "pc_s_per_1000_steps": pc_s * 1000 / steps,
                           "pc_steps_timed": steps}
            row["ratio"] = {"train": train_s / row["train"]["bucketed"]["step_s"],
                            "pc": pc_s * 1000 / steps / row["pc"]["s_per_1000_steps"]}
            line += (f"; official: train {train_s * 1e3:.1f} ms ({row['ratio']['train']:.2f}x), "
                     f"pc {row['peer']['pc_s_per_1000_steps']:.1f} s per 1000 ({row['ratio']['pc']:.2f}x)")
        rows.append(row)
        print(line, flush=True)
    return rows


def main():
    quick = ARGS.quick
    threads = ARGS.threads or os.cpu_count()
    res = {"threads": threads, "quick": quick, "platform": platform.platform(), "jax": jax.__version__,
           "devices": [str(d) for d in jax.devices()], "dataset": ARGS.dataset, "command": "python " + " ".join(sys.argv)}
    cfg = get_config(ARGS.dataset)
    batch_fn = None
    if cfg.kind == "generic":
        train_graphs, _ = gdata.load_generic(ARGS.dataset, DATA if ARGS.dataset == "community_small" else ARGS.data_dir)
        x, adj, flags = gdata.to_dense(train_graphs, cfg.max_nodes, cfg.max_feat)
    else:  # a molecule set: one training batch as the loader draws it, the node flags of the training set
        from diffalign.graphs.evaluation import load_data

        data = load_data(ARGS.dataset, cfg, ARGS.data_dir)
        batch_fn, flags = data.batch_fn(1), data.flags
        b = batch_fn(0)
        x, adj = np.asarray(b["x"]), np.asarray(b["adj"])
    graphs = ARGS.graphs or (128 if cfg.kind == "generic" else 10_000)
    peak = matmul_peak()
    res["matmul_peak_flops_per_s"] = peak
    print(f"fp32 matmul peak (2048^2): {peak / 1e9:.0f} GFLOP/s")
    if ARGS.growth_only:
        res["growth"] = growth_rows(threads, quick)
        write_result(ARGS.out, "gdss-growth", threads, quick, res)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        drawn = random_flags(20, graphs) if ARGS.dataset == "community_small" else sample_flags(jax.random.key(0), flags, graphs)
        rows = headline_rows(cfg, x, adj, flags, drawn, threads, peak, 1 if quick else ARGS.repeats,
                             50 if quick else ARGS.steps, tmp, batch_fn)
    res["rows"] = rows
    for name, r in rows.items():
        ratio = f"{r['ratio']['median']:.2f}x (range {r['ratio']['min']:.2f}-{r['ratio']['max']:.2f})" if r["ratio"] else "peer not measured"
        print(f"{name}: ours {r['ours_s']:.4g} s, official {r['peer_s'] if r['peer_s'] is None else round(r['peer_s'], 4)} s: {ratio}")
    name = "gdss" + ("" if ARGS.dataset == "community_small" else f"-{ARGS.dataset.lower()}") + \
        ("-gpu" if jax.default_backend() == "gpu" else "")
    if ARGS.headline_only or ARGS.dataset != "community_small" or jax.default_backend() == "gpu":
        write_result(ARGS.out, name, threads, quick, res)
        return
    res["train_community_small"] = train_row(cfg, x, adj, flags, chunk=10 if quick else 50,
                                             repeats=1 if quick else 3)
    r = res["train_community_small"]
    for name in ("padded", "bucketed"):
        print(f"train community_small, {name}: {r[name]['step_s'] * 1e3:.1f} ms/step (compile "
              f"{r[name]['compile_s']:.1f} s), {(r[name]['equivalent_flops_per_s'] or 0) / 1e9:.0f} GFLOP/s")
    steps = 50 if quick else 1000
    res["sample_community_small"] = []
    for solver, buckets in (("pc", 4), ("pc", 1), ("s4", 4)):
        s = sample_row(cfg, random_flags(20), solver, steps, buckets)
        res["sample_community_small"].append(s)
        print(f"sample 128 graphs {solver}{'' if buckets > 1 else ' padded'}: {s['s_per_1000_steps']:.1f} s per "
              f"1000 steps (compile {s['compile_s']:.1f} s), {(s['equivalent_flops_per_s'] or 0) / 1e9:.0f} GFLOP/s")
    res["growth"] = growth_rows(threads, quick)
    write_result(ARGS.out, "gdss", threads, quick, res)


if __name__ == "__main__":
    main()
