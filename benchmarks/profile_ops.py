"""Where the time goes: per-operation times of a compiled program, from ``jax.profiler``'s trace.

    taskset -c 0 python benchmarks/profile_ops.py --threads 1 --target gdss-train   # one core
    taskset -c 0 python benchmarks/profile_ops.py --threads 1 --target euler

Targets: ``gdss-train`` (one GDSS training iteration on community_small's 80 training graphs, as
``benchmarks/gdss.py`` times it: chunks of steps, size buckets), ``gdss-pc`` (PC sampling of 128
graphs, 50 steps), ``euler`` (10k samples x 100 Euler steps of the 3x64 SELU MLP, as
``benchmarks/toy2d.py``), ``icfm`` (I-CFM training steps, batch 256). The program is compiled and
run once untraced, then run ``--repeats`` times under ``jax.profiler.trace`` with a Perfetto
trace; XLA's CPU thunks appear there as events named after their HLO instructions. Writes
benchmarks/results/profile-<target>-<N>thread(s).json: the wall time per run, the traced ops'
total, each op class's share (matrix products, fusions of elementwise work, copies and the
rest) and the top ops by time, with their HLO text where it names them.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=("gdss-train", "gdss-pc", "euler", "icfm"), required=True)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return p.parse_args()


ARGS = parse()
if ARGS.threads == 1 and hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:
    sys.exit("--threads 1 measures one core: run it under `taskset -c 0`")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import matmul_peak, write_result  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data")


def gdss_train():
    from diffalign.graphs import data as gdata
    from diffalign.graphs.configs import get_config
    from diffalign.graphs.gdss import build_model, make_batch_fn, make_step
    from diffalign.training import init_train_state, make_multi_step

    cfg = get_config("community_small")
    graphs, _ = gdata.load_generic("community_small", DATA)
    x, adj, flags = gdata.to_dense(graphs, cfg.max_nodes, cfg.max_feat)
    model = build_model(cfg, 0)
    opt, step = make_step(model, flags)
    state = init_train_state(model.params, opt, jax.random.key(0))
    chunk = 10
    run = jax.jit(make_multi_step(step, make_batch_fn(x, adj, cfg.batch_size, 1), chunk), donate_argnums=0)
    compiled = run.lower(state).compile()
    box = [jax.tree.map(jnp.copy, state)]

    def once():
        box[0] = jax.block_until_ready(compiled(box[0])[0])

    return once, compiled, chunk, "training iterations"


def gdss_pc():
    from diffalign.graphs.configs import get_config
    from diffalign.graphs.gdss import build_model, sampler

    cfg = get_config("community_small")
    model = build_model(cfg, 0)
    rng = np.random.default_rng(0)
    counts = rng.integers(12, 21, 128)
    flags = jnp.asarray((np.arange(20)[None, :] < counts[:, None]).astype(np.float32))
    steps = 50
    f = sampler(model, model.params, solver="pc", num_scales=steps)
    compiled = f.lower(jax.random.key(0), flags).compile()

    def once():
        jax.block_until_ready(compiled(jax.random.key(1), flags))

    return once, compiled, steps, "PC steps of 128 graphs"


def toy_model():
    from flax import nnx

    from diffalign.models import MLP, functional

    return functional(MLP(2, (64, 64, 64), rngs=nnx.Rngs(0)))  # 3x64 SELU, as benchmarks/toy2d.py


def euler():
    from diffalign.data.toy2d import get_dataset
    from diffalign.paths import LinearPath, Predictor
    from diffalign.sampling import sample

    apply_fn, params = toy_model()
    pred = Predictor(lambda x, t: apply_fn(params, x, t), LinearPath(), "velocity")
    x_T = get_dataset("8gaussians").sample(jax.random.key(31337), 10_000)
    steps = 100
    compiled = jax.jit(lambda x: sample(None, pred, x, "euler", steps)[0]).lower(x_T).compile()

    def once():
        jax.block_until_ready(compiled(x_T))

    return once, compiled, steps, "Euler steps of 10k samples"


def icfm():
    from diffalign.data.toy2d import get_dataset
    from diffalign.losses import flow_matching_loss
    from diffalign.training import init_train_state, make_multi_step, make_optimizer, make_train_step

    apply_fn, params = toy_model()
    loss_fn = flow_matching_loss(apply_fn, coupling="independent", sigma_min=0.1)
    opt = make_optimizer(1e-3)
    state0 = init_train_state(params, opt, jax.random.key(0), ema=False)
    src, tgt = get_dataset("8gaussians"), get_dataset("moons")
    key = jax.random.key(0)

    def batch_fn(step):  # the tutorial batch of benchmarks/toy2d.py
        k = jax.random.fold_in(key, step)
        return {"x": tgt.sample(jax.random.fold_in(k, 0), 256), "x_source": src.sample(jax.random.fold_in(k, 1), 256)}

    chunk = 500
    compiled = jax.jit(make_multi_step(make_train_step(loss_fn, opt), batch_fn, chunk, vectorize_batches=True),
                       donate_argnums=0).lower(state0).compile()
    box = [jax.tree.map(jnp.copy, state0)]

    def once():
        box[0] = jax.block_until_ready(compiled(box[0])[0])

    return once, compiled, chunk, "I-CFM training steps"


def op_class(name: str, hlo: str) -> str:
    """A traced op's class, from its HLO instruction (XLA's CPU matmuls are ``dot`` thunks or
    YNNPACK ``ynn_fusion`` custom fusions)."""
    op = re.sub(r"[.\d]+$", "", name)
    if op in ("while", "cond", "conditional", "call"):
        return "control flow"
    if op in ("dot", "convolution", "custom-call") or op.startswith("ynn_fusion"):
        return "matrix products"
    if "fusion" in op:
        return "fused elementwise / reductions"
    if op in ("copy", "transpose", "bitcast", "slice", "dynamic-slice", "dynamic-update-slice", "concatenate", "pad",
              "gather", "scatter"):
        return "copies, slices, layout"
    return "other"


def hlo_lines(compiled) -> dict:
    """HLO instruction name -> its line in the optimised module, to say what each traced op is."""
    lines = {}
    for line in compiled.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=", line)
        if m:
            lines[m.group(1)] = line.strip()[:300]
    return lines


def main():
    threads = ARGS.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    once, compiled, units, what = {"gdss-train": gdss_train, "gdss-pc": gdss_pc, "euler": euler, "icfm": icfm}[ARGS.target]()
    once()
    walls = []
    for _ in range(ARGS.repeats):
        t0 = time.perf_counter()
        once()
        walls.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            t0 = time.perf_counter()
            for _ in range(ARGS.repeats):
                once()
            traced_wall = (time.perf_counter() - t0) / ARGS.repeats
        paths = glob.glob(os.path.join(tmp, "**", "*perfetto_trace.json.gz"), recursive=True)
        if not paths:
            raise SystemExit("jax.profiler wrote no Perfetto trace")
        with gzip.open(paths[0]) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    lines = hlo_lines(compiled)
    per_op = collections.defaultdict(float)
    count = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        name = e.get("name", "")
        if name in lines:  # an HLO instruction of this program (XLA's CPU thunks)
            per_op[name] += e["dur"] * 1e-6 / ARGS.repeats
            count[name] += 1
    if not per_op:
        raise SystemExit("no trace event names an instruction of the compiled program")
    total = sum(per_op.values())
    classes = collections.defaultdict(float)
    for name, s in per_op.items():
        classes[op_class(name, lines[name])] += s
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[: ARGS.top]
    wall = float(np.median(walls))
    res = {"target": ARGS.target, "threads": threads, "jax": jax.__version__, "matmul_peak_flops_per_s": matmul_peak(),
           "units_per_run": units, "unit": what, "wall_s_per_run": wall, "wall_runs_s": walls,
           "traced_ops_s_per_run": total, "traced_wall_s_per_run": traced_wall,
           "note": "traced op times are inclusive: a while loop's or call's event contains its body's ops; shares are of "
                   "the top-level sum of leaf classes (control-flow events excluded below)",
           "classes_s_per_run": dict(classes), "top_ops": [
               {"name": n, "s_per_run": s, "events_per_run": count[n] / ARGS.repeats, "hlo": lines[n]} for n, s in top]}
    leaf = {k: v for k, v in classes.items() if k != "control flow"}
    leaf_total = sum(leaf.values())
    leaf_ops = {n: t for n, t in per_op.items() if op_class(n, lines[n]) != "control flow"}
    events = sum(count[n] for n in leaf_ops) / ARGS.repeats
    res["leaf_ops"] = {"distinct": len(leaf_ops), "events_per_run": events,
                       "mean_event_us": 1e6 * leaf_total / events if events else None,
                       "share_of_time_in_ops_under_20us_per_event": sum(
                           t for n, t in leaf_ops.items() if t / (count[n] / ARGS.repeats) < 20e-6) / leaf_total}
    res["leaf_share"] = {k: v / leaf_total for k, v in leaf.items()} if leaf_total else {}
    res["tracing_overhead"] = traced_wall / wall
    if leaf_total > 1.2 * wall:
        print(f"warning: the traced ops sum to {leaf_total / wall:.1f}x the untraced run: the profiler's own cost per "
              "event dominates these shares (many ops of a few us); read them with care")
    print(f"{ARGS.target}: {wall * 1e3:.2f} ms per run ({units} {what}); traced leaf ops {leaf_total * 1e3:.2f} ms "
          f"in {events:.0f} events ({res['leaf_ops']['mean_event_us']:.1f} us each on average, "
          f"{res['leaf_ops']['share_of_time_in_ops_under_20us_per_event']:.0%} of the time in ops under 20 us)")
    for k, v in sorted(res["leaf_share"].items(), key=lambda kv: -kv[1]):
        print(f"  {k}: {v:.1%}")
    for r in res["top_ops"][:10]:
        print(f"  {r['s_per_run'] * 1e3:8.3f} ms  {r['name']}: {r['hlo'][:110]}")
    write_result(ARGS.out, f"profile-{ARGS.target}", threads, False, res)


if __name__ == "__main__":
    main()
