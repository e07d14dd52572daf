"""The harness of the bad-inputs table (``bad_inputs_cases.py``): the CLI run in-process with its
outcome as a ``CliExit``, the finished runs the cases point at, and the small builders the cases
call. Used by ``test_bad_inputs.py`` and ``make_bad_inputs_table.py``."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffalign import training
from diffalign.data import toy2d
from diffalign.graphs import configs as gconfigs
from diffalign.graphs import data as gdata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")

# the tiny toy2d run the CLI cases point at (well under 10 s)
SMALL = ["--method", "icfm", "--steps", "20", "--batch-size", "32", "--hidden", "16", "--num-samples", "64",
         "--nll-points", "0", "--sample-steps", "4", "--steps-per-call", "10", "--log-every", "10",
         "--checkpoint-every", "10"]
LIB_CONFIG = {"lr": 1e-3, "hidden": 8, "data": "moons", "batch_size": 16}
LIB_STEPS = 10


# ----------------------------------------------------------------------------- the CLI, in-process


class CliExit(Exception):
    """``diffalign ...`` ended with a non-zero status; ``message`` is the line the user reads."""

    def __init__(self, code: int, stderr: str):
        self.code, self.stderr = code, stderr
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error:" in ln]
        self.message = errors[-1] if errors else (lines[0] if lines else "")
        super().__init__(f"exit {code}: {self.message}")


def cli(*argv: str) -> int:
    """Run ``diffalign ARGV`` in this process; raise ``CliExit`` on a non-zero exit status."""
    from diffalign.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse (2), or SystemExit("error: ...") which Python prints, status 1
            if isinstance(e.code, str):
                err.write(e.code + "\n")
                code = 1
            else:
                code = e.code or 0
    if code:
        raise CliExit(code, err.getvalue())
    return code


# ----------------------------------------------------------------------------- finished runs


def tree_hashes(root: str) -> dict:
    """sha256 of every file under ``root``, by relative path."""
    out = {}
    for base, _, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def lib_training(hidden: int = 8):
    """(state, step) of the tiny library run: an MLP flow-matching model of the moons."""
    from flax import nnx

    from diffalign.losses import flow_matching_loss
    from diffalign.models import MLP, functional

    apply_fn, params = functional(MLP(2, (hidden,), rngs=nnx.Rngs(0)))
    opt = training.make_optimizer(LIB_CONFIG["lr"])
    state = training.init_train_state(params, opt, jax.random.key(0))
    return state, training.make_train_step(flow_matching_loss(apply_fn), opt)


def moon_batches(step):
    return {"x": toy2d.get_dataset("moons").sample(jax.random.fold_in(jax.random.key(1), step), LIB_CONFIG["batch_size"])}


def nan_batches(step):
    return {"x": jnp.full((LIB_CONFIG["batch_size"], 2), jnp.nan)}


def lib_train(workdir: str, batch_fn=moon_batches, num_steps: int = LIB_STEPS, config=LIB_CONFIG, hidden: int = 8):
    state, step = lib_training(hidden)
    return training.train(state, step, batch_fn, num_steps=num_steps, workdir=workdir, config=config, steps_per_call=5,
                 log_every=5, checkpoint_every=5, progress=False)


class FinishedRuns:
    """Two finished runs under ``base``, made on first use: ``toy2d`` (``diffalign toy2d``) and
    ``lib`` (``diffalign.training.train`` with checkpoints); ``hashes`` are taken right after."""

    def __init__(self, base: str):
        self.base = base
        self.hashes: dict | None = None

    def _make(self) -> None:
        if self.hashes is None:
            cli("toy2d", "--out", os.path.join(self.base, "toy2d"), *SMALL)
            lib_train(os.path.join(self.base, "lib"))
            self.hashes = tree_hashes(self.base)

    @property
    def toy2d(self) -> str:
        self._make()
        return os.path.join(self.base, "toy2d")

    @property
    def lib(self) -> str:
        self._make()
        return os.path.join(self.base, "lib")


@dataclasses.dataclass
class Ctx:
    """What a case may use: a fresh scratch folder and the shared finished runs."""

    tmp: str
    runs: FinishedRuns

    def path(self, *parts: str) -> str:
        return os.path.join(self.tmp, *parts)


# ----------------------------------------------------------------------------- helpers of the cases


def truncated_npz(ctx: Ctx) -> str:
    path = ctx.path("truncated.npz")
    with open(os.path.join(DATA, "graphs", "community_small.npz"), "rb") as f:
        blob = f.read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])
    return path


def edge_list(ctx: Ctx, num_nodes, offsets, edges) -> str:
    path = ctx.path("graphs.npz")
    np.savez(path, num_nodes=np.asarray(num_nodes), edge_offsets=np.asarray(offsets), edges=np.asarray(edges))
    return path


def oversized_graph(ctx: Ctx):
    cfg = gconfigs.get_config("community_small")  # GDSS pads community_small to 20 nodes
    path = edge_list(ctx, [25], [0, 24], np.stack([np.arange(24), np.arange(1, 25)], 1))
    return gdata.to_dense(gdata.read_edge_lists(path), cfg.max_nodes, cfg.max_feat)


def molecule_files(ctx: Ctx, rows, valid_idx) -> str:
    os.makedirs(ctx.path("molecules"))
    with open(ctx.path("molecules", "qm9.csv"), "w") as f:
        f.write(",SMILES1\n" + "".join(f"{i},{s}\n" for i, s in enumerate(rows)))
    with open(ctx.path("molecules", "valid_idx_qm9.json"), "w") as f:
        json.dump({"valid_idxs": [str(i) for i in valid_idx]}, f)
    return ctx.tmp


def csv_file(ctx: Ctx, text: str) -> str:
    path = ctx.path("smiles.csv")
    with open(path, "w") as f:
        f.write(text)
    return path


def tiny_mlp(dim: int = 2):
    from flax import nnx

    from diffalign.models import MLP, functional

    return functional(MLP(dim, (8,), rngs=nnx.Rngs(0)))


def fm_loss(batch, **kw):
    from diffalign.losses import flow_matching_loss

    apply_fn, params = tiny_mlp()
    return flow_matching_loss(apply_fn, **kw)(params, batch, jax.random.key(0))


def linear_predictor(fn=None, parametrization="velocity"):
    from diffalign.paths import LinearPath, Predictor

    if fn is None:
        apply_fn, params = tiny_mlp()
        fn = lambda x, t: apply_fn(params, x, t)  # noqa: E731
    return Predictor(fn, LinearPath(), parametrization)


def sample_points(x_T, method="euler", steps=4, pred=None):
    from diffalign.sampling import sample

    return sample(jax.random.key(0), pred or linear_predictor(), x_T, method, steps)


def train_in_memory(batch_fn, num_steps=2):
    state, step = lib_training()
    return training.train(state, step, batch_fn, num_steps=num_steps, steps_per_call=1, log_every=1, progress=False)


def distiller(method="dmd2", **kw):
    from diffalign.distill import Distiller

    apply_fn, params = tiny_mlp()
    return Distiller(method, apply_fn, params, optax.adam(1e-3), optax.adam(1e-3), **kw)


def make_transform(name, out):
    from diffalign.losses import transforms

    tr = getattr(transforms, name)()
    return tr.apply(out, tr.init(), jnp.zeros((), jnp.int32))


def checkpoint_path_is_a_file(ctx: Ctx):
    os.makedirs(ctx.path("run", "round0"))
    open(ctx.path("run", "round0", "checkpoints"), "w").close()
    return cli("toy2d", "--out", ctx.path("run"), *SMALL)


def make_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
