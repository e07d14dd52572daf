"""Distillation cost and pay-off: training step time per method, and sampling speed-up at equal quality.

    python benchmarks/distill.py --sweep runs/distill-sweep         # both cores (XLA's default)
    taskset -c 0 python benchmarks/distill.py --threads 1 --sweep runs/distill-sweep
    python benchmarks/distill.py --quick                             # fewer repeats, no sweep

Writes benchmarks/results/distill-<N>thread(s).json.

1. Step time: one ``Distiller`` step (its fake-score updates and the generator update) for each
   method on the 8-gaussian network (3x256 SiLU MLP, 16 time features, batch 256): compile time
   apart, median of ``--repeats`` timed chunks of 20 steps after a warm-up.
2. Speed-up at equal quality (needs a finished ``diffalign distill-sweep``; its 8-gaussian runs
   of seed 0): for each student, the cheapest teacher sampler (Euler, Heun, DPM-Solver++(2M) over
   a grid of step counts) whose W2 on 10,000 samples is at most the student's; both generate the
   same 10,000 samples, timed as medians after compilation. If no teacher setting reaches the
   student's W2 the teacher's best is reported instead, and said so.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEP_GRID = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 100)


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0, help="0 = XLA default (all cores); 1 = one core (pin with taskset)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--sweep", default=None, help="a finished `diffalign distill-sweep` output directory")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return p.parse_args()


def step_times(repeats: int) -> dict:
    import jax
    from flax import nnx

    from benchmarks.common import time_train_chunks
    from diffalign.distill import METHODS, Distiller
    from diffalign.models import MLP, functional
    from diffalign.training import make_optimizer

    apply_fn, teacher = functional(MLP(2, (256, 256, 256), activation="silu", time_features=16, rngs=nnx.Rngs(0)))
    out = {}
    for method in METHODS:
        kw = {"student_steps": 1 if method in ("dmd", "dmd2") else 4}
        if method == "phased-dmd":
            kw.update(phases=2, steps_per_phase=10_000)
        d = Distiller(method, apply_fn, teacher, make_optimizer(1e-4, clip_norm=10.0), make_optimizer(1e-4, clip_norm=10.0),
                      batch_size=256, ema_decay=0.99, **kw)
        batch_fn = (lambda s: {}) if method != "dmd" else (
            lambda s: {"z": jax.random.normal(jax.random.fold_in(jax.random.key(1), s), (256, 2)),
                       "y": jax.random.normal(jax.random.fold_in(jax.random.key(2), s), (256, 2))})
        compile_s, per_step = time_train_chunks(d.make_step(), batch_fn, d.init(jax.random.key(0)), 20, repeats)
        out[method] = {"student_steps": d.student_steps, "fake_updates_per_step": d.num_fake_updates,
                       "compile_s": compile_s, "median_step_s": statistics.median(per_step), "runs_s": per_step}
        print(f"{method:11s} step {out[method]['median_step_s'] * 1e3:6.2f} ms ({d.num_fake_updates} fake updates + 1 generator "
              f"update, {d.student_steps}-step generator); compile {compile_s:.1f} s")
    return out


def speedups(sweep: str, repeats: int) -> dict:
    import jax
    import numpy as np

    from benchmarks.common import timed
    from diffalign.metrics import wasserstein2
    from diffalign.paths import Predictor
    from diffalign.sampling import sample
    from diffalign.experiments import distill as D

    out = {}
    teacher_table = None
    for method in ("dmd", "dmd2", "phased-dmd", "tdm"):
        run_dir = os.path.join(sweep, "runs", f"8gaussians_{method}_s0")
        if not os.path.exists(os.path.join(run_dir, "results.json")):
            print(f"(no run {run_dir}: skipped)")
            continue
        cfg, task, teacher, d, state = D.load_run(run_dir)
        z = jax.random.normal(jax.random.key(31337), (cfg.num_samples, 2))
        ref = task.reference
        _, s_time, _ = timed(lambda z: d.sample(d.generator_params(state), z, jax.random.key(2)), z, repeats=repeats)
        xs = np.asarray(jax.jit(lambda z: d.sample(d.generator_params(state), z, jax.random.key(2)))(z))
        s_w2 = wasserstein2(xs, ref)
        if teacher_table is None:
            pred = Predictor(lambda x, t: task.apply_fn(teacher, x, t), d.path, "velocity")
            teacher_table = []
            for name in ("euler", "heun", "dpm++2m"):
                for steps in STEP_GRID:
                    if name == "dpm++2m" and steps < 2:
                        continue
                    fn = lambda z, name=name, steps=steps: sample(None, pred, z, name, steps)[0]  # noqa: E731
                    x = np.asarray(jax.jit(fn)(z))
                    teacher_table.append({"sampler": name, "steps": steps, "nfe": 2 * steps if name == "heun" else steps,
                                          "w2": wasserstein2(x, ref), "fn": fn})
            for row in teacher_table:
                row["median_s"] = timed(row["fn"], z, repeats=repeats)[1]
        ok = [r for r in teacher_table if r["w2"] <= s_w2]
        reached = bool(ok)
        best = min(ok, key=lambda r: r["median_s"]) if ok else min(teacher_table, key=lambda r: r["w2"])
        out[method] = {"student_nfe": d.nfe, "student_w2": s_w2, "student_sample_s": s_time,
                       "teacher_matched": {k: v for k, v in best.items() if k != "fn"}, "teacher_reaches_student_w2": reached,
                       "speedup": best["median_s"] / s_time}
        print(f"{method:11s} {d.nfe} NFE W2 {s_w2:.3f} in {s_time * 1e3:.2f} ms; teacher {best['sampler']} {best['nfe']} NFE "
              f"W2 {best['w2']:.3f} in {best['median_s'] * 1e3:.2f} ms{'' if reached else ' (never as good)'}: "
              f"{best['median_s'] / s_time:.1f}x")
    out["teacher_grid"] = [{k: v for k, v in r.items() if k != "fn"} for r in (teacher_table or [])]
    return out


def main():
    args = parse()
    import jax

    from benchmarks.common import write_result

    repeats = 3 if args.quick else args.repeats
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads or "default",
              "repeats": repeats, "jax": jax.__version__, "batch": 256, "network": "MLP 3x256 SiLU, 16 time features"}
    result["step_time"] = step_times(repeats)
    if args.sweep:
        result["sweep"] = os.path.abspath(args.sweep)
        result["speedup_at_equal_w2"] = speedups(args.sweep, repeats)
    write_result(args.out, "distill", args.threads or 2, args.quick, result)


if __name__ == "__main__":
    main()
