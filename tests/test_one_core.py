"""Every method on one core: what the shared update, step and loop give each of them.

These are the tests the per-method slices could not pass: distillation on a model-sharded mesh
and through a SIGKILL, GDSS with gradient accumulation, and the layering of the package.
"""

import ast
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from diffalign.distill import Distiller
from diffalign.distributed import make_mesh, model_init
from diffalign.models import MLP, functional
from diffalign.training import make_optimizer, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _dmd2(mesh=None):
    with model_init(mesh):
        model = MLP(2, (32, 32), activation="silu", time_features=8, shard_model=mesh is not None, rngs=nnx.Rngs(0))
    apply_fn, teacher = functional(model)
    d = Distiller("dmd2", apply_fn, teacher, make_optimizer(1e-3, clip_norm=10.0), make_optimizer(1e-3),
                  student_steps=2, fake_updates=2, batch_size=32, ema_decay=0.9)
    return d, train(d.init(jax.random.key(0)), d.make_step(), lambda s: {}, num_steps=6, steps_per_call=3,
                    log_every=3, progress=False, mesh=mesh).state


def test_dmd2_on_a_model_sharded_4x2_mesh_equals_one_device():
    _, base = _dmd2()
    d, state = _dmd2(make_mesh(4, 2))
    gen, fake = state.params["generator"], state.params["fake"]
    # the stacked experts keep the layer's annotation on their trailing axes; fake score, EMA and
    # both groups' Adam moments are laid out like the parameters they follow
    assert gen["layers"][0]["kernel"].sharding.spec == P(None, None, "model")
    assert fake["layers"][0]["kernel"].sharding.spec == P(None, "model")
    assert state.ema_params["generator"]["layers"][1]["kernel"].sharding.spec == P(None, "model", None)
    adam = [s for s in jax.tree.leaves(state.opt_state["fake"], is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu")]
    assert adam[0].mu["layers"][1]["kernel"].sharding.spec == P("model", None)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(base.params)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.max(np.abs(a - b)) <= 1e-5 * max(1.0, np.max(np.abs(b)))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(base.params["generator"]), jax.tree.leaves(d.init(jax.random.key(0)).params["generator"])))


def _distill_run(out, steps, env=None):
    return subprocess.run([sys.executable, str(ROOT / "tests" / "distill_run.py"), str(out), str(steps)], cwd=ROOT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}, capture_output=True, text=True,
                          timeout=600)


def test_a_distillation_killed_in_a_save_resumes_bit_identical(tmp_path):
    ref, killed = tmp_path / "reference", tmp_path / "killed"
    r = _distill_run(ref, 8)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _distill_run(killed, 8, {"DIFFALIGN_TEST_KILL_IN_SAVE": "6"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    names = os.listdir(killed / "checkpoints")
    assert "4" in names and "6" not in names  # step 6's save was cut; step 4's is the newest complete one
    r = _distill_run(killed, 8)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from the checkpoint of step 4" in r.stderr
    a, b = np.load(ref / "final.npz"), np.load(killed / "final.npz")
    assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


# --- the layering ------------------------------------------------------------------------------

# each package may import only from the layers below it (kernels <- losses and transforms <-
# training <- methods <- experiments <- command line); a module may not import a layer above
LAYERS = [
    {"paths", "sde", "models", "geometry", "data", "metrics", "theory"},  # kernels
    {"sampling", "losses"},  # samplers and per-example losses, the loss-transform contract
    {"distributed", "checkpoint", "config", "results", "viz"},  # infrastructure the loop uses
    {"training"},
    {"align", "distill", "gcrl", "symmflow"},  # methods
    {"graphs"},  # GDSS, and the methods carried over to graphs (graph AWM, graph DMD2)
    {"experiments"},
    {"cli"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
METHODS = LAYERS[4]  # methods do not import each other


def _imports(path: pathlib.Path, package: str):
    """The diffalign top-level names a module imports (absolute or relative)."""
    tree = ast.parse(path.read_text())
    parts = path.relative_to(ROOT).with_suffix("").parts  # ("diffalign", "graphs", "gdss")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                bits = a.name.split(".")
                if bits[0] == package and len(bits) > 1:
                    yield node.lineno, bits[1]
                elif bits[0] == "experiments":
                    yield node.lineno, "experiments"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[: len(parts) - node.level]) + (node.module.split(".") if node.module else [])
            else:
                base = node.module.split(".")
            if base[0] == "experiments":
                yield node.lineno, "experiments"
            elif base[0] == package:
                if len(base) > 1:
                    yield node.lineno, base[1]
                else:
                    for a in node.names:
                        yield node.lineno, a.name


def _module_layer(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).parts
    if rel[0] == "experiments":
        return "experiments"
    return pathlib.Path(rel[1]).stem


def test_the_package_imports_only_downwards():
    files = sorted((ROOT / "diffalign").rglob("*.py")) + sorted((ROOT / "experiments").glob("*.py"))
    unknown, violations = set(), []
    for f in files:
        own = _module_layer(f)
        if own == "__init__":
            continue
        if own not in LAYER_OF:
            unknown.add(own)
            continue
        for line, target in _imports(f, "diffalign"):
            if target == "__version__" or target == own:
                continue
            if target not in LAYER_OF:
                unknown.add(target)
            elif LAYER_OF[target] > LAYER_OF[own] or (LAYER_OF[target] == LAYER_OF[own] and own in METHODS):
                violations.append(f"{f.relative_to(ROOT)}:{line} ({own}) imports {target}")
    assert not unknown, f"modules missing from the layer table: {sorted(unknown)}"
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_no_module_reaches_into_another_modules_private_names():
    files = sorted((ROOT / "diffalign").rglob("*.py")) + sorted((ROOT / "experiments").glob("*.py")) + \
        sorted((ROOT / "tests").glob("*.py"))
    bad = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                bad += [f"{f.relative_to(ROOT)}:{node.lineno} imports {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_one_definition_of_the_update():
    hits = [str(f.relative_to(ROOT)) for f in (ROOT / "diffalign").rglob("*.py") if "optax.apply_updates" in f.read_text()]
    assert hits == ["diffalign/training/update.py"], hits
