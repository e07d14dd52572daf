"""Time to quality for GDSS on community_small: sampler x steps against MMD and seconds.

    diffalign graphs train --dataset community_small --seed 1 --sample-seeds 0 --out runs/ttq/gdss-cs-seed1
    diffalign distill-graphs --gdss-run runs/ttq/gdss-cs-seed1 --student-steps 1 --teacher-scales 4 --out runs/ttq/student1
    diffalign distill-graphs --gdss-run runs/ttq/gdss-cs-seed1 --student-steps 4 --teacher-scales 4 --out runs/ttq/student4
    python benchmarks/gdss_time_to_quality.py --gdss-run runs/ttq/gdss-cs-seed1 \\
        --students runs/ttq/student1 runs/ttq/student4 --reference GDSS

Every row generates 128 graphs per sampling seed (one round of GDSS's sampling batch, node counts
drawn from the training graphs exactly as ``graphs train`` / ``graphs sample`` draw them) and
scores them as GDSS does: the first test-set-size graphs (20) against the test graphs, MMD of
degree, clustering and orbit counts, and their average; also over all 128 graphs (less noisy).
Seconds are the generation of the 128 graphs, compilation apart, median over the seeds. Rows: the
trained model's PC (Euler + Langevin) and S4 samplers at each of ``--steps``, and the DMD2
students of ``--students``. With ``--reference`` the official code's PC sampler at 1000 steps is
timed on the same node counts in the same run (its networks untrained: the time of a run does not
depend on the weights; its quality is the paper's, not measured here). The quality bar is 1.2x
our PC sampler's average MMD at 1000 steps; the speed bar 10x the official 1000-step run.
Writes benchmarks/results/gdss-time-to-quality-<N>thread(s).json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gdss-run", required=True, help="a `diffalign graphs train` output directory (community_small)")
    p.add_argument("--students", nargs="*", default=[], help="`diffalign distill-graphs` output directories")
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 500, 200, 100], help="reverse steps of PC and S4")
    p.add_argument("--solvers", nargs="+", default=["pc", "s4"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds")
    p.add_argument("--graphs", type=int, default=128, help="graphs generated per seed")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--reference", help="a checkout of the official GDSS code: its 1000-step PC run timed here")
    p.add_argument("--reference-python", default=sys.executable)
    p.add_argument("--reference-version", help="its commit, when the checkout has no .git")
    p.add_argument("--quality-bar", type=float, default=1.2, help="allowed average MMD over PC at 1000 steps")
    p.add_argument("--speed-bar", type=float, default=10.0, help="required speed-up over the official PC run")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return p.parse_args()


ARGS = parse()
if ARGS.threads == 1 and hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:
    sys.exit("--threads 1 measures one core: run it as `taskset -c 0 python benchmarks/gdss_time_to_quality.py --threads 1 ...`")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import write_result  # noqa: E402
from peers import gdss_official  # noqa: E402

from diffalign.checkpoint import Checkpointer  # noqa: E402
from diffalign.graphs.configs import get_config  # noqa: E402
from diffalign.graphs.distill import GraphDistiller  # noqa: E402
from diffalign.graphs.evaluation import load_trained, trained_config  # noqa: E402
from diffalign.graphs.gdss import quantize_generic, sample_flags, sampler  # noqa: E402
from diffalign.sampling.graph import evaluations_per_step  # noqa: E402
from diffalign.training import make_optimizer  # noqa: E402

def draws(data, seed: int, n: int):
    """(generation key, node flags) of seed ``seed``'s first sampling round, as ``graphs sample``."""
    k = jax.random.fold_in(jax.random.key(seed), 0)
    return jax.random.fold_in(k, 1), sample_flags(jax.random.fold_in(k, 0), data.flags, n)


def scored_row(gen, data, seeds, n, **about) -> dict:
    """Generate ``n`` graphs per seed with ``gen(key, flags) -> (X, A)`` (a jitted function whose
    ``lower`` compiles it for those flags), time the generation with compilation apart, and score."""
    secs, compile_s, paper, full = [], [], {}, {}
    for s in seeds:
        key, flags = draws(data, s, n)
        t0 = time.perf_counter()
        compiled = gen.lower(key, flags).compile()
        compile_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, adj = compiled(key, flags)
        adj = np.asarray(jax.block_until_ready(adj))
        secs.append(time.perf_counter() - t0)
        graphs = quantize_generic(adj, np.asarray(flags))
        paper[s] = data.score(graphs.subset(range(len(data.test))))  # GDSS: as many as the test set
        full[s] = data.score(graphs)
    row = {**about, "seconds": statistics.median(secs), "seconds_per_seed": secs, "compile_s": compile_s,
           "mmd": data.summarise(paper), "mmd_all_generated": data.summarise(full)}
    print(f"{about['name']}: average MMD {row['mmd']['average']:.4f} (all {n}: {row['mmd_all_generated']['average']:.4f}), "
          f"{row['seconds']:.2f} s for {n} graphs", flush=True)
    return row


def student(run: str, model, teacher, data):
    """The generator of a ``distill-graphs`` run, restored from its checkpoint, jitted."""
    with open(os.path.join(run, "results.json")) as f:
        c = json.load(f)["config"]
    opt = make_optimizer(c["lr"], clip_norm=c["clip_norm"])
    d = GraphDistiller(model, teacher, data.flags, opt, opt, student_steps=c["student_steps"],
                       fake_updates=c["fake_updates"], batch_size=c["batch_size"], ema_decay=c["ema_decay"])
    with Checkpointer(os.path.join(run, "distill", "checkpoints")) as ck:
        state, _ = ck.restore(d.init(jax.random.key(0)))
    params = d.generator_params(state)
    return jax.jit(lambda k, fl: d.sample(params, k, fl)), c


def main():
    threads = ARGS.threads or os.cpu_count()
    tc = trained_config(ARGS.gdss_run)
    if get_config(tc["dataset"]).kind != "generic":
        raise SystemExit(f"time to quality is scored by MMD: {tc['dataset']} is a molecule set")
    tc, gcfg, data, model, teacher = load_trained(ARGS.gdss_run)
    res = {"threads": threads, "jax": jax.__version__, "dataset": tc["dataset"], "gdss_run": os.path.abspath(ARGS.gdss_run),
           "training_seed": tc.get("seed"), "graphs": ARGS.graphs, "seeds": ARGS.seeds, "test_graphs": len(data.test),
           "command": "python " + " ".join(sys.argv), "rows": []}

    peer = None
    if ARGS.reference:
        peer = gdss_official.info(ARGS.reference, ARGS.reference_python, ARGS.reference_version)
        _, flags = draws(data, ARGS.seeds[0], ARGS.graphs)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "sample.npz")
            b, n = flags.shape
            np.savez(path, x=np.zeros((b, n, gcfg.max_feat), np.float32), adj=np.zeros((b, n, n), np.float32),
                     flags=np.asarray(flags))
            secs = gdss_official.timed_run(ARGS.reference, ARGS.reference_python, "pc", path, threads,
                                           dataset=tc["dataset"], steps=1000)
        res["official_pc_1000"] = {**peer, "seconds": secs, "graphs": ARGS.graphs, "steps": 1000}
        print(f"official PC, 1000 steps: {secs:.1f} s for {ARGS.graphs} graphs", flush=True)

    for solver in ARGS.solvers:
        for steps in ARGS.steps:
            f = sampler(model, teacher, solver=solver, num_scales=steps)
            evals = evaluations_per_step(solver, gcfg.corrector)
            res["rows"].append(scored_row(f, data, ARGS.seeds, ARGS.graphs, name=f"{solver.upper()}, {steps} steps",
                                          kind=solver, steps=steps, nfe_per_graph=steps * evals))
    for run in ARGS.students:
        gen, c = student(run, model, teacher, data)
        k = c["student_steps"]
        res["rows"].append(scored_row(gen, data, ARGS.seeds, ARGS.graphs, name=f"DMD2 student, {k} step{'s' * (k > 1)}",
                                      kind="student", steps=k, nfe_per_graph=2 * k, run=os.path.abspath(run),
                                      generator_updates=c["steps"]))

    ref = next((r for r in res["rows"] if r["kind"] == "pc" and r["steps"] == 1000), None)
    official = res.get("official_pc_1000", {}).get("seconds")
    for r in res["rows"]:
        r["mmd_over_pc_1000"] = r["mmd"]["average"] / ref["mmd"]["average"] if ref else None
        r["speedup_over_official_pc_1000"] = official / r["seconds"] if official else None
        r["speedup_over_our_pc_1000"] = ref["seconds"] / r["seconds"] if ref else None
        r["meets"] = bool(r["mmd_over_pc_1000"] is not None and r["mmd_over_pc_1000"] <= ARGS.quality_bar
                          and r["speedup_over_official_pc_1000"] and r["speedup_over_official_pc_1000"] >= ARGS.speed_bar)
    ok = [r for r in res["rows"] if r["meets"]]
    res["bars"] = {"quality": ARGS.quality_bar, "speed": ARGS.speed_bar}
    res["fastest_within_bars"] = min(ok, key=lambda r: r["seconds"])["name"] if ok else None
    print("fastest configuration within both bars:", res["fastest_within_bars"] or "none")
    write_result(ARGS.out, "gdss-time-to-quality", threads, False, res)


if __name__ == "__main__":
    main()
