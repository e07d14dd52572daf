"""A small training run for the multi-process and kill/resume tests (run as a script).

    python tests/train_target.py --out DIR [--steps N] [--host-batches] [--sleep S]

Joins a multi-process run when started by ``diffalign launch`` (the DIFFALIGN_* environment),
trains a flow-matching MLP on the 8 gaussians with checkpoints every 10 steps in DIR, prints
``resumed_from=<step or None>``, and process 0 writes the final parameters to DIR/params.npz.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffalign.distributed import initialize_from_env  # noqa: E402

initialize_from_env()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from diffalign.data.toy2d import get_dataset  # noqa: E402
from diffalign.distributed import is_main_process, to_host  # noqa: E402
from diffalign.losses import flow_matching_loss  # noqa: E402
from diffalign.models import MLP, functional  # noqa: E402
from diffalign.training import init_train_state, make_optimizer, make_train_step, train  # noqa: E402

BATCH = 64


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--host-batches", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep after each 10-step chunk")
    args = p.parse_args()
    with open(os.path.join(args.out, f"pid-{jax.process_index()}"), "w") as f:
        f.write(str(os.getpid()))
    apply_fn, params = functional(MLP(2, (64, 64), rngs=nnx.Rngs(0)))
    opt = make_optimizer(1e-3, clip_norm=1.0)
    state = init_train_state(params, opt, jax.random.key(1))
    step = make_train_step(flow_matching_loss(apply_fn, sigma_min=0.1), opt, ema_decay=0.99)
    data = get_dataset("8gaussians")
    key = jax.random.key(2)
    if args.host_batches:
        rng_table = np.asarray(data.sample(key, BATCH * args.steps)).reshape(args.steps, BATCH, 2)

        def batch_fn(s):
            return {"x": rng_table[s]}
    else:
        def batch_fn(s):
            return {"x": data.sample(jax.random.fold_in(key, s), BATCH)}

    result = train(
        state, step, batch_fn, num_steps=args.steps, workdir=args.out, config={"target": 1},
        batch_on_device=not args.host_batches, steps_per_call=10, log_every=10, checkpoint_every=10,
        progress=False, on_log=(lambda s, m: time.sleep(args.sleep)) if args.sleep else None,
    )
    print(f"resumed_from={result.summary['resumed_from']} processes={jax.process_count()} devices={jax.device_count()}",
          flush=True)
    params = to_host(result.state.params)
    if is_main_process():
        flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        np.savez(os.path.join(args.out, "params.npz"), **flat)


if __name__ == "__main__":
    main()
