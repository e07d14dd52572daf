"""Time per RL epoch on the ring (512 rollouts of 14 steps, one update): AWM against the DDPO /
Flow-GRPO baseline, split into rollout, reward and update.

    python benchmarks/awm.py                      # both cores (XLA's default)
    taskset -c 0 python benchmarks/awm.py --threads 1
    python benchmarks/awm.py --quick              # fewer repeats (a check, not a result)

Writes benchmarks/results/awm-<N>thread(s).json. Each phase is compiled on its own (compile time
reported apart) and timed as the median of ``--repeats`` runs after a warm-up; the whole epoch
(the fused training step ``diffalign align`` runs) is timed the same way, so the phases' sum
can be compared with it. The network is the issue's: a 3x256 SiLU MLP with 16 time features.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0, help="0 = XLA default (all cores); 1 = one core (pin with taskset)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return p.parse_args()


def main():
    args = parse()
    import jax
    from flax import nnx

    from benchmarks.common import timed, write_result
    from diffalign import align
    from diffalign.align import rl
    from diffalign.align.tasks import RingReward
    from diffalign.models import MLP, functional
    from diffalign.training import init_train_state, make_optimizer, make_train_step

    repeats = 3 if args.quick else args.repeats
    apply_fn, params = functional(MLP(2, (256, 256, 256), activation="silu", time_features=16, rngs=nnx.Rngs(0)))
    reward = RingReward()
    key = jax.random.key(0)
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads or "default",
              "samples": args.samples, "rollout_steps": 14, "repeats": repeats, "jax": jax.__version__, "methods": {}}
    for method in ("awm", "ddpo"):
        stochastic = method == "ddpo"
        rollout = rl.flow_rollout(args.samples, (2,), steps=14, sampler="sde" if stochastic else "euler")
        prepare = rl.rollout_stage(apply_fn, rollout, reward, metrics_fn=reward.metrics)
        if stochastic:
            loss_fn, tr = rl.flow_grpo_rows(apply_fn), align.awm(weighting="uniform")
        else:
            loss_fn, tr = rl.matching_rows(rl.flow_matching(apply_fn)), align.awm(beta=1e-3, beta_ema=1.0)
        opt = make_optimizer(1e-3, clip_norm=1.0)
        state = init_train_state(params, opt, key, tr, ema=False, aux=rl.awm_aux(params))
        step = make_train_step(loss_fn, opt, tr, prepare=prepare, aux_update=rl.ema_anchor_update)
        phases = {}
        c, m, _ = timed(lambda p, k: rollout(apply_fn, p, {}, k), params, key, repeats=repeats)
        phases["rollout"] = {"compile_s": c, "median_s": m}
        x = rollout(apply_fn, params, {}, key)["x"]
        c, m, _ = timed(lambda x: reward(x), x, repeats=repeats)
        phases["reward"] = {"compile_s": c, "median_s": m}
        c, m, runs = timed(lambda s: step(s, {})[0], state, repeats=repeats)
        phases["epoch"] = {"compile_s": c, "median_s": m, "runs_s": runs}
        phases["update"] = {"median_s": m - phases["rollout"]["median_s"] - phases["reward"]["median_s"],
                            "note": "epoch minus rollout and reward"}
        result["methods"][method] = phases
        print(f"{method}: epoch {m * 1e3:.1f} ms (rollout {phases['rollout']['median_s'] * 1e3:.1f} ms, "
              f"reward {phases['reward']['median_s'] * 1e3:.2f} ms, update {phases['update']['median_s'] * 1e3:.1f} ms); "
              f"compile {phases['epoch']['compile_s']:.2f} s")
    a, d = result["methods"]["awm"]["epoch"]["median_s"], result["methods"]["ddpo"]["epoch"]["median_s"]
    result["ddpo_over_awm_epoch_time"] = d / a
    print(f"DDPO epoch / AWM epoch: {d / a:.2f}")
    write_result(args.out, "awm", args.threads or 2, args.quick, result)


if __name__ == "__main__":
    main()
