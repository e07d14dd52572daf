"""Expected wall time of GDSS's full-budget runs, per data set, on whatever device JAX uses.

    python benchmarks/gdss_datasets.py                       # all six data sets
    python benchmarks/gdss_datasets.py --datasets ENZYMES grid --quick

For each data set, with its released configuration (networks, batch size, sampler):
* one training step (the data set's batch, padded to its N), median over chunks, compile apart;
* the sampler on one evaluation round (generic: the training batch size, as GDSS samples in
  rounds; molecules: all 10,000 in one batch), timed over ``--sample-steps`` reverse steps;
* the full-budget estimate: epochs x steps per epoch x step time for training, and
  rounds x 1000 steps x step time for one sampling seed (scoring not included).
The graphs are random with the data set's shapes (node counts drawn between N/2 and N): the
networks are dense in N, so the time depends on the shapes, not on the values.
Writes benchmarks/results/gdss-datasets-<platform>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffalign.graphs.configs import CONFIGS, get_config
from diffalign.graphs.gdss import build_model, make_step, sampler, steps_per_epoch
from diffalign.sampling.graph import evaluations_per_step
from diffalign.training import init_train_state

from common import time_train_chunks

# Training-set and test-set sizes (GDSS's splits; see ../shared/reference/gdss-method.md).
SPLITS = {"community_small": (80, 20), "ego_small": (160, 40), "ENZYMES": (470, 117), "grid": (80, 20),
          "QM9": (120_803, 13_082), "ZINC250k": (224_568, 24_887)}
MOLECULE_SAMPLES = 10_000


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--quick", action="store_true", help="fewer repeats: a check, not a result")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return p.parse_args()


def random_batch(cfg, graphs, rng):
    """Dense (X, A, flags) of random graphs with the data set's shapes."""
    n = cfg.max_nodes
    counts = rng.integers(max(1, n // 2), n + 1, graphs)
    flags = (np.arange(n)[None] < counts[:, None]).astype(np.float32)
    a = np.triu(rng.random((graphs, n, n)) < min(0.5, 4.0 / n), 1)
    a = (a | np.swapaxes(a, 1, 2)).astype(np.float32) * flags[:, :, None] * flags[:, None, :]
    if cfg.kind == "molecule":
        a = a * rng.integers(1, 4, a.shape)
        a = np.triu(a, 1) + np.swapaxes(np.triu(a, 1), 1, 2)
    x = np.eye(cfg.max_feat, dtype=np.float32)[rng.integers(0, cfg.max_feat, (graphs, n))] * flags[:, :, None]
    return jnp.asarray(x), jnp.asarray(a.astype(np.float32)), jnp.asarray(flags)


def train_row(cfg, chunk, repeats, rng):
    model = build_model(cfg, 0)
    x, a, flags = random_batch(cfg, cfg.batch_size, rng)
    # the whole padded batch: size buckets need the real training set's sizes (a conservative time)
    opt, step = make_step(model, flags, num_buckets=1)
    state = init_train_state(model.params, opt, jax.random.key(0))
    batch = {"x": x, "adj": a, "mask": jnp.ones((cfg.batch_size,), jnp.float32)}
    compile_s, times = time_train_chunks(step, lambda i: batch, state, chunk, repeats)
    return {"batch": cfg.batch_size, "compile_s": compile_s, "step_s": float(np.median(times)), "step_s_runs": times}


def sample_row(cfg, graphs, steps, repeats, rng):
    model = build_model(cfg, 0)
    f = sampler(model, model.params, num_scales=steps)
    _, _, flags = random_batch(cfg, graphs, rng)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = f.lower(key, flags).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(key, flags))
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(jax.random.key(r + 1), flags))
        times.append((time.perf_counter() - t0) / steps)
    return {"graphs": graphs, "solver": cfg.solver, "predictor": cfg.predictor, "corrector": cfg.corrector,
            "network_evaluations_per_step": evaluations_per_step(cfg.solver, cfg.corrector), "steps_timed": steps,
            "compile_s": compile_s, "step_s": float(np.median(times)), "step_s_runs": times}


def main():
    args = parse()
    dev = jax.devices()[0]
    res = {"device": f"{dev.platform}: {getattr(dev, 'device_kind', '')}", "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "jax": jax.__version__, "quick": args.quick, "datasets": {}}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"gdss-datasets-{dev.platform}{'-quick' if args.quick else ''}.json")
    rng = np.random.default_rng(0)
    repeats = 1 if args.quick else 3
    for name in args.datasets:
        cfg = get_config(name)
        num_train, num_test = SPLITS[name]
        spe = steps_per_epoch(num_train, min(cfg.batch_size, num_train))
        chunk = min(spe * 5, 50) if not args.quick else 2
        tr = train_row(cfg, chunk, repeats, rng)
        if cfg.kind == "generic":
            graphs, rounds = cfg.batch_size, -(-num_test // cfg.batch_size)
        else:
            graphs, rounds = MOLECULE_SAMPLES, 1
        steps = 5 if args.quick else args.sample_steps
        sa = sample_row(cfg, graphs, steps, repeats, rng)
        est = {"train_steps": cfg.epochs * spe, "train_s": cfg.epochs * spe * tr["step_s"],
               "sample_rounds_per_seed": rounds, "sample_s_per_seed": rounds * 1000 * sa["step_s"]}
        res["datasets"][name] = {"nodes": cfg.max_nodes, "epochs": cfg.epochs, "steps_per_epoch": spe,
                                 "train": tr, "sample": sa, "full_budget_estimate": est}
        print(f"{name}: train {tr['step_s'] * 1e3:.2f} ms/step (compile {tr['compile_s']:.1f} s) -> "
              f"{est['train_steps']} steps {est['train_s'] / 3600:.2f} h; sample {graphs} graphs "
              f"{sa['step_s'] * 1e3:.2f} ms/step (compile {sa['compile_s']:.1f} s) -> "
              f"{est['sample_s_per_seed'] / 60:.1f} min per seed", flush=True)
        with open(path, "w") as f:  # after each data set: a run cut short keeps what it measured
            json.dump(res, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
