"""A small DMD2 distillation run with checkpoints, for the SIGKILL test (run as a script).

python tests/distill_run.py OUT STEPS: trains (resuming from OUT/checkpoints when present) and
writes the final state's leaves to OUT/final.npz."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from diffalign.distill import Distiller  # noqa: E402
from diffalign.models import MLP, functional  # noqa: E402
from diffalign.training import make_optimizer, train  # noqa: E402


def main(out: str, steps: int) -> None:
    apply_fn, teacher = functional(MLP(2, (32, 32), activation="silu", time_features=8, rngs=nnx.Rngs(0)))
    d = Distiller("dmd2", apply_fn, teacher, make_optimizer(1e-3, clip_norm=10.0), make_optimizer(1e-3),
                  student_steps=2, fake_updates=2, batch_size=32, ema_decay=0.9)
    res = train(d.init(jax.random.key(0)), d.make_step(), lambda s: {}, num_steps=steps, workdir=out,
                steps_per_call=2, log_every=2, checkpoint_every=2, progress=False, config={"method": "dmd2"})
    leaves = jax.tree.leaves(jax.tree.map(lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key) else x, res.state))
    np.savez(os.path.join(out, "final.npz"), *[np.asarray(x) for x in leaves])


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
