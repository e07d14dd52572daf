"""Scale-out overhead on CPU: training throughput on 1, 2, 4, 8 simulated devices and 1, 2
processes, and peak memory as the model and the batch grow.

    python benchmarks/scaling.py            # writes benchmarks/results/scaling-<N>threads.json
    python benchmarks/scaling.py --quick    # fewer chunks: a check, not a result

Simulated CPU devices share this machine's cores, so more devices cannot be faster here: the
rows measure what sharding costs (collectives, partitioned programs), not speed-up. Each
device count runs in a fresh process (``jax_num_cpu_devices`` is fixed at start-up); the
2-process rows run through ``diffalign launch`` (gloo collectives over 127.0.0.1). Throughput is
the median over timed chunks of steps per second after a warm-up chunk, compile time apart.
Memory is XLA's own account of one compiled training step (arguments + outputs + temporaries,
``memory_analysis``) on one device, at growing width and batch, and with each memory lever.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def throughput(quick: bool) -> dict:
    """Steps/s of the toy and the GDSS training steps on all devices of this process group."""
    import jax
    from flax import nnx

    from diffalign.data.toy2d import get_dataset
    from diffalign.distributed import make_mesh
    from diffalign.graphs import data as gdata
    from diffalign.graphs.configs import get_config
    from diffalign.graphs.gdss import build_model, make_batch_fn, make_step
    from diffalign.losses import flow_matching_loss
    from diffalign.models import MLP, functional
    from diffalign.training import init_train_state, make_optimizer, make_train_step, train

    mesh = make_mesh() if jax.device_count() > 1 else None
    chunks = 3 if quick else 7

    def measure(state, step, batch_fn, chunk):
        rates = []
        result = train(state, step, batch_fn, num_steps=chunk * (chunks + 1), steps_per_call=chunk, log_every=chunk,
                       progress=False, mesh=mesh, on_log=lambda s, m: rates.append(m["steps_per_sec"]))
        timed = rates[1:]
        return {"steps_per_sec": statistics.median(timed), "steps_per_sec_runs": timed,
                "compile_s": result.summary["compile_s"], "chunk": chunk}

    out = {"processes": jax.process_count(), "devices": jax.device_count()}
    apply_fn, params = functional(MLP(2, (256, 256, 256), rngs=nnx.Rngs(0)))
    opt = make_optimizer(1e-3)
    data = get_dataset("8gaussians")
    key = jax.random.key(0)
    out["toy_mlp3x256_batch1024"] = measure(
        init_train_state(params, opt, jax.random.key(1)),
        make_train_step(flow_matching_loss(apply_fn, sigma_min=0.1), opt),
        lambda s: {"x": data.sample(jax.random.fold_in(key, s), 1024)}, 20)
    cfg = get_config("community_small")
    graphs, _ = gdata.load_generic("community_small", os.path.join(ROOT, "tests", "data"))
    x, adj, flags = gdata.to_dense(graphs, cfg.max_nodes, cfg.max_feat)
    model = build_model(cfg, 0)
    gopt, gstep = make_step(model, flags, num_buckets=1)
    out["gdss_community_small_batch80"] = measure(
        init_train_state(model.params, gopt, jax.random.key(1)), gstep, make_batch_fn(x, adj, cfg.batch_size, 1), 5)
    return out


def memory(quick: bool) -> dict:
    """XLA's memory account of one training step (bytes) over width x batch and the levers."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from diffalign.losses import flow_matching_loss
    from diffalign.models import MLP, functional
    from diffalign.training import init_train_state, make_optimizer, make_train_step

    def account(width, batch, depth=4, **kw):
        accumulate = kw.pop("accumulate", 1)
        apply_fn, params = functional(MLP(2, (width,) * depth, rngs=nnx.Rngs(0), **kw))
        opt = make_optimizer(1e-3)
        state = init_train_state(params, opt, jax.random.key(0))
        step = make_train_step(flow_matching_loss(apply_fn, sigma_min=0.1), opt, accumulate=accumulate)
        m = jax.jit(step).lower(state, {"x": jnp.zeros((batch, 2))}).compile().memory_analysis()
        return {"width": width, "batch": batch, "depth": depth, "accumulate": accumulate,
                **{k: str(v) if k == "dtype" else v for k, v in kw.items()},
                "argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
                "temp_bytes": m.temp_size_in_bytes,
                "peak_bytes": m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes}

    widths = (64, 256, 1024)
    batches = (256, 4096) if quick else (256, 1024, 4096, 16384)
    grid = [account(w, b) for w in widths for b in batches]
    big = dict(width=1024, batch=batches[-1])
    levers = {
        "none": account(**big),
        "remat": account(**big, remat=True),
        "accumulate_4": account(**big, accumulate=4),
        "bf16_compute": account(**big, dtype=jnp.bfloat16),
        "all_three": account(**big, remat=True, accumulate=4, dtype=jnp.bfloat16),
    }
    return {"grid": grid, "levers_at_width_1024": levers}


def _worker(args):
    if args.worker == "throughput":
        from diffalign.distributed import initialize_from_env

        initialize_from_env()
        result = throughput(args.quick)
    else:
        result = memory(args.quick)
    import jax

    if jax.process_index() == 0:
        with open(args.json, "w") as f:
            json.dump(result, f)


def _run_worker(cmd, env_extra=None):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "row.json")
        env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
        subprocess.run([*cmd, "--json", path], check=True, cwd=ROOT, env=env)
        with open(path) as f:
            return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--worker", choices=("throughput", "memory"), help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(args)
    me = [sys.executable, os.path.abspath(__file__)] + (["--quick"] if args.quick else [])
    rows = []
    for n in (1, 2, 4, 8):
        print(f"== 1 process, {n} device(s)", flush=True)
        rows.append(_run_worker([*me, "--worker", "throughput"], {"JAX_NUM_CPU_DEVICES": str(n)}))
    print("== 2 processes, 1 device each", flush=True)
    rows.append(_run_worker([sys.executable, "-m", "diffalign.cli", "launch", "--processes", "2", "--",
                             *me, "--worker", "throughput"]))
    print("== 2 processes, 4 devices each", flush=True)
    rows.append(_run_worker([sys.executable, "-m", "diffalign.cli", "launch", "--processes", "2", "--local-devices", "4",
                             "--", *me, "--worker", "throughput"]))
    print("== memory", flush=True)
    mem = _run_worker([*me, "--worker", "memory"])
    import jax

    threads = os.cpu_count()
    result = {"threads": threads, "quick": args.quick, "platform": platform.platform(), "jax": jax.__version__,
              "throughput": rows, "memory": mem}
    from benchmarks.common import write_result

    for r in rows:
        print(f"{r['processes']} process(es) x {r['devices'] // r['processes']} device(s): "
              f"toy {r['toy_mlp3x256_batch1024']['steps_per_sec']:.0f} steps/s, "
              f"GDSS {r['gdss_community_small_batch80']['steps_per_sec']:.1f} steps/s")
    for name, row in mem["levers_at_width_1024"].items():
        print(f"memory, width 1024, batch {row['batch']}, {name}: {row['peak_bytes'] / 2**20:.1f} MiB")
    write_result(args.out, "scaling", threads, args.quick, result)


if __name__ == "__main__":
    main()
