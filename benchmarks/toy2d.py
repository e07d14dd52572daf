"""Speed of 2-D flow-matching training and sampling, against torchcfm timed in the same run.

    python benchmarks/toy2d.py                   # both cores (XLA's default)
    taskset -c 0 python benchmarks/toy2d.py --threads 1   # one core (XLA's CPU runtime ignores
                                                          # thread-count flags; pin the process)
    python benchmarks/toy2d.py --quick           # fewer repeats and steps (a check, not a result)

Writes benchmarks/results/toy2d-<N>threads.json. Compile time is reported apart from run
time; every timing is the median of ``--repeats`` runs after a warm-up.

torchcfm (the ``peers`` extra: a CPU build of torch, and torchcfm) runs in this process,
interleaved with ours (ours, peer, ours, peer, ...) at the same thread count
(``benchmarks/peers/torchcfm_toy2d.py``): ``rows.icfm_train`` (the tutorial's 20k I-CFM steps)
and ``rows.euler_sample`` (10k samples, 100 Euler steps) hold both times, every run, the peer's
versions and the ratio peer / ours (median, min, max over the pairs), and each as a fraction of
the fp32 matmul peak measured at the start of the run. Without torchcfm (or with ``--no-peer``)
they say "not measured".

Rows:
* tutorial setting (torchcfm's 8 gaussians -> moons notebook: 3x64 SELU MLP, batch 256,
  Adam, 20k steps): I-CFM, OT-CFM with the exact plan (POT, solved on host threads for a
  whole chunk of steps at once) and OT-CFM with an entropic plan computed in JAX (ott-jax),
  each with the exact W2 of 10k samples (100 Euler steps) against the 10k reference;
* sampling 10k points with 100 Euler steps, and the cheapest sampler that matches that W2;
* a 3x256 MLP at batch 4096: step time and achieved FLOP/s as a fraction of this machine's
  measured fp32 matmul peak.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0, help="0 = XLA default (all cores); 1 = one core")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--quick", action="store_true", help="1 repeat, 2000 steps, 2000 samples")
    p.add_argument("--no-peer", action="store_true", help="do not time torchcfm even where it is installed")
    p.add_argument("--headline-only", action="store_true", help="only the rows against the peer")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return p.parse_args()


ARGS = parse()
if ARGS.threads == 1:
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:
        sys.exit("--threads 1 measures one core: run it as `taskset -c 0 python benchmarks/toy2d.py --threads 1`")
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["DIFFALIGN_HOST_THREADS"] = "1"  # the host pool for exact OT plans
    os.environ["OPENBLAS_NUM_THREADS"] = "1"

import jax  # noqa: E402
from common import matmul_peak, peer_row, write_result  # noqa: E402
from peers import torchcfm_toy2d as peer_cfm  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from diffalign.data.toy2d import get_dataset, reference_set  # noqa: E402
from diffalign.losses import flow_matching_loss  # noqa: E402
from diffalign.metrics import wasserstein2  # noqa: E402
from diffalign.models import MLP, functional  # noqa: E402
from diffalign.paths import LinearPath, Predictor  # noqa: E402
from diffalign.paths import coupling as C  # noqa: E402
from diffalign.sampling import sample  # noqa: E402
from diffalign.training import init_train_state, make_multi_step, make_optimizer, make_train_step  # noqa: E402


def median_time(fn, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), ts


def tutorial_batch_fn(batch, coupling, seed=0):
    src, tgt = get_dataset("8gaussians"), get_dataset("moons")
    key = jax.random.key(seed)

    def fn(step):
        k = jax.random.fold_in(key, step)
        return {"x": tgt.sample(jax.random.fold_in(k, 0), batch), "x_source": src.sample(jax.random.fold_in(k, 1), batch)}

    return fn if coupling == "independent" else C.coupled_batch_fn(fn, coupling, seed + 1)


def train_runner(coupling, steps, chunk=500, hidden=(64, 64, 64), batch=256):
    """(compile seconds, ``run() -> (seconds, params)`` for ``steps`` steps from a fresh state,
    apply_fn, XLA's FLOP count of one step): compiled once, warmed up once."""
    apply_fn, params = functional(MLP(2, hidden, rngs=nnx.Rngs(0)))
    loss_fn = flow_matching_loss(apply_fn, coupling="paired" if coupling != "independent" else "independent", sigma_min=0.1)
    opt = make_optimizer(1e-3)
    state0 = init_train_state(params, opt, jax.random.key(0), ema=False)
    step = make_train_step(loss_fn, opt)
    # vmapped Sinkhorn solves run until the slowest converges: per step is faster for it
    vec = coupling != "sinkhorn"
    run = jax.jit(make_multi_step(step, tutorial_batch_fn(batch, coupling), chunk, vectorize_batches=vec), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = run.lower(state0).compile()
    compile_s = time.perf_counter() - t0

    jax.block_until_ready(compiled(jax.tree.map(jnp.copy, state0)))  # warm-up (thread pools, caches)
    batch0 = tutorial_batch_fn(batch, "independent")(0)
    flops = (jax.jit(step).lower(state0, batch0).compile().cost_analysis() or {}).get("flops")

    def run():
        s = jax.tree.map(jnp.copy, state0)
        t0 = time.perf_counter()
        for _ in range(steps // chunk):
            s, _ = compiled(s)
        jax.block_until_ready(s)
        return time.perf_counter() - t0, s.params

    return compile_s, run, apply_fn, flops


def train_bench(coupling, steps, repeats, **kw):
    """Compile once, then time ``steps`` training steps (scan chunks of 500) ``repeats`` times."""
    compile_s, run, apply_fn, _ = train_runner(coupling, steps, **kw)
    times = []
    for _ in range(repeats):
        t, params = run()
        times.append(t)
    run_s = float(np.median(times))
    return {"compile_s": compile_s, "run_s": run_s, "runs_s": times, "steps": steps, "repeats": repeats,
            "steps_per_sec": steps / run_s}, apply_fn, params


def w2_of(apply_fn, params, n, method="euler", steps=100):
    pred = Predictor(lambda x, t: apply_fn(params, x, t), LinearPath(), "velocity")
    x_T = get_dataset("8gaussians").sample(jax.random.key(31337), n)
    x, nfe = jax.jit(lambda x: sample(None, pred, x, method, steps))(x_T)
    return wasserstein2(np.asarray(x), np.asarray(reference_set("moons", n))), int(nfe)


def sampling_bench(apply_fn, params, n, repeats, method="euler", steps=100):
    pred = Predictor(lambda x, t: apply_fn(params, x, t), LinearPath(), "velocity")
    x_T = get_dataset("8gaussians").sample(jax.random.key(31337), n)
    f = jax.jit(lambda x: sample(None, pred, x, method, steps)[0])
    t0 = time.perf_counter()
    compiled = f.lower(x_T).compile()
    compile_s = time.perf_counter() - t0
    compiled(x_T).block_until_ready()
    run_s, all_s = median_time(lambda: compiled(x_T), max(repeats, 7))
    return {"method": method, "steps": steps, "compile_s": compile_s, "run_s": run_s, "runs_s": all_s,
            "samples_per_sec": n / run_s}


def big_step_bench(repeats, chunk=20):
    apply_fn, params = functional(MLP(2, (256, 256, 256), rngs=nnx.Rngs(0)))
    loss_fn = flow_matching_loss(apply_fn, sigma_min=0.1)
    opt = make_optimizer(1e-3)
    state0 = init_train_state(params, opt, jax.random.key(0), ema=False)
    step = make_train_step(loss_fn, opt)
    batch_fn = lambda s: {"x": get_dataset("moons").sample(jax.random.fold_in(jax.random.key(1), s), 4096)}  # noqa: E731
    one = jax.jit(step).lower(state0, batch_fn(0)).compile()
    flops = (one.cost_analysis() or {}).get("flops")
    run = jax.jit(make_multi_step(step, batch_fn, chunk, vectorize_batches=True), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = run.lower(state0).compile()
    compile_s = time.perf_counter() - t0
    compiled(jax.tree.map(jnp.copy, state0))
    run_s, all_s = median_time(lambda: compiled(jax.tree.map(jnp.copy, state0))[0], repeats)
    step_s = run_s / chunk
    return {"batch": 4096, "hidden": [256, 256, 256], "compile_s": compile_s, "step_s": step_s, "runs_s": all_s,
            "flops_per_step_xla": flops, "achieved_flops_per_s": flops / step_s if flops else None}


def peer_rows(steps, n, repeats, threads, peak):
    """``rows.icfm_train`` and ``rows.euler_sample``: ours and torchcfm interleaved. Also returns
    our I-CFM row of the detailed table (its timed runs are the interleaved ones)."""
    peer = peer_cfm.info() if peer_cfm.available() and not ARGS.no_peer else None
    compile_s, run, apply_fn, flops = train_runner("independent", steps)
    ours, theirs, peer_model = [], [], None
    for _ in range(repeats):
        t, params = run()
        ours.append(t)
        if peer:
            t, peer_model = peer_cfm.train(steps, threads)
            theirs.append(t)
    rows = {"icfm_train": peer_row(ours, theirs or None, peer or "not measured", threads,
                                   what=f"{steps} I-CFM steps of the tutorial setting (3x64 SELU MLP, batch 256)",
                                   flops_per_step=flops)}
    run_s = float(np.median(ours))
    detail = {"compile_s": compile_s, "run_s": run_s, "runs_s": ours, "steps": steps, "repeats": repeats,
              "steps_per_sec": steps / run_s}

    pred = Predictor(lambda x, t: apply_fn(params, x, t), LinearPath(), "velocity")
    x_T = get_dataset("8gaussians").sample(jax.random.key(31337), n)
    f = jax.jit(lambda x: sample(None, pred, x, "euler", 100)[0]).lower(x_T).compile()
    f(x_T).block_until_ready()
    if peer:
        peer_cfm.euler_sample(peer_model, n, 100, threads)  # warm-up

    def ours_sample():
        t0 = time.perf_counter()
        f(x_T).block_until_ready()
        return time.perf_counter() - t0

    ours, theirs = [], []
    for _ in range(max(repeats, 7)):
        ours.append(ours_sample())
        if peer:
            theirs.append(peer_cfm.euler_sample(peer_model, n, 100, threads)[0])
    fwd = (jax.jit(lambda x: apply_fn(params, x, jnp.zeros(x.shape[0]))).lower(x_T).compile().cost_analysis() or {}).get("flops")
    rows["euler_sample"] = peer_row(ours, theirs or None, peer or "not measured", threads,
                                    what=f"{n} samples, 100 Euler steps of the trained I-CFM network",
                                    flops_per_run=fwd * 100 if fwd else None)
    if peer:  # the peer's model is trained as ours: its W2 says the two runs did the same job
        x = peer_cfm.euler_sample(peer_model, n, 100, threads, seed=2)[1]
        rows["icfm_train"]["peer_w2_100_euler"] = wasserstein2(x.numpy(), np.asarray(reference_set("moons", n)))
    rows["icfm_train"]["ours_w2_100_euler"] = w2_of(apply_fn, params, n)[0]
    for r, fl, per in ((rows["icfm_train"], flops, steps), (rows["euler_sample"], rows["euler_sample"]["flops_per_run"], 1)):
        total = fl * per if fl else None
        r["fraction_of_peak"] = {"ours": total / r["ours_s"] / peak if total else None,
                                 "peer": total / r["peer_s"] / peak if total and r["peer_s"] else None}
    return rows, (detail, apply_fn, params)


def main():
    repeats, steps, n = ARGS.repeats, ARGS.steps, 10_000
    if ARGS.quick:
        repeats, steps, n = 1, 2000, 2000
    threads = ARGS.threads or os.cpu_count()
    res = {"threads": threads, "quick": ARGS.quick, "platform": platform.platform(), "python": sys.version.split()[0],
           "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}
    print(f"benchmarking with {threads} thread(s), {repeats} repeats, {steps} steps")

    peak = matmul_peak()
    res["matmul_peak_flops_per_s"] = peak
    print(f"fp32 matmul peak (2048^2): {peak / 1e9:.0f} GFLOP/s")

    res["rows"], icfm = peer_rows(steps, n, repeats, threads, peak)
    for name, r in res["rows"].items():
        ratio = f"{r['ratio']['median']:.2f}x (range {r['ratio']['min']:.2f}-{r['ratio']['max']:.2f})" if r["ratio"] else "peer not measured"
        print(f"{name}: ours {r['ours_s']:.4g} s, torchcfm {r['peer_s'] if r['peer_s'] is None else round(r['peer_s'], 4)} s: {ratio}")
    if ARGS.headline_only:
        write_result(ARGS.out, "toy2d", threads, ARGS.quick, res)
        return

    rows = {}
    # the entropic row is there for its W2 and as a pure-JAX alternative; one timed run is enough
    for name, coupling, reps in (("icfm", "independent", repeats), ("otcfm_exact", "exact_ot", repeats),
                                 ("otcfm_sinkhorn", "sinkhorn", 1)):
        r, apply_fn, params = icfm if name == "icfm" else train_bench(coupling, steps, reps)
        r["w2_100_euler"], _ = w2_of(apply_fn, params, n)
        r["w2_1_step"], _ = w2_of(apply_fn, params, n, steps=1)
        rows[name] = r
        print(f"train {name:>15}: compile {r['compile_s']:.1f}s, {steps} steps in {r['run_s']:.2f}s "
              f"({r['steps_per_sec']:.0f}/s), W2 {r['w2_100_euler']:.3f} (1 step {r['w2_1_step']:.3f})")
        if name == "icfm":
            icfm_model = (apply_fn, params)
    res["train_tutorial"] = rows

    apply_fn, params = icfm_model
    samp = [sampling_bench(apply_fn, params, n, repeats)]
    target, _ = w2_of(apply_fn, params, n)
    samp[0]["w2"] = target
    for method, st in (("heun", 5), ("heun", 10), ("heun", 20), ("euler", 50)):
        w, nfe = w2_of(apply_fn, params, n, method, st)
        r = sampling_bench(apply_fn, params, n, repeats, method, st)
        r.update(w2=w, nfe=nfe)
        samp.append(r)
    samp[0]["nfe"] = 100
    for r in samp:
        print(f"sample {n} {r['method']:>5} x{r['steps']:<3} (NFE {r['nfe']:>3}): {r['run_s'] * 1e3:.1f} ms, W2 {r['w2']:.3f}")
    equal = [r for r in samp[1:] if r["w2"] <= target + 0.01]
    res["sampling_icfm"] = {"euler_100": samp[0], "alternatives": samp[1:],
                            "fastest_at_equal_w2": min(equal, key=lambda r: r["run_s"]) if equal else None,
                            "equal_w2_tolerance": 0.01}

    big = big_step_bench(repeats)
    big["fraction_of_peak"] = big["achieved_flops_per_s"] / peak if big["achieved_flops_per_s"] else None
    res["mlp_3x256_batch4096"] = big
    print(f"3x256 MLP, batch 4096: {big['step_s'] * 1e3:.2f} ms/step, "
          f"{(big['achieved_flops_per_s'] or 0) / 1e9:.0f} GFLOP/s = {100 * (big['fraction_of_peak'] or 0):.0f}% of peak")

    write_result(ARGS.out, "toy2d", threads, ARGS.quick, res)


if __name__ == "__main__":
    main()
