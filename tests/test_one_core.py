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


NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}


def test_no_module_reaches_into_another_modules_private_names():
    files = sorted((ROOT / "diffalign").rglob("*.py")) + sorted((ROOT / "experiments").glob("*.py")) + \
        sorted((ROOT / "tests").glob("*.py"))
    bad = []
    for f in files:
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                bad += [f"{f.relative_to(ROOT)}:{node.lineno} imports {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
        for node in ast.walk(tree):
            # a private attribute read off anything but the object's own self / cls: a module
            # (`G._helper`) or another object (`data._decode`); namedtuples' public API is allowed
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and node.attr not in NAMEDTUPLE_API
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                bad.append(f"{f.relative_to(ROOT)}:{node.lineno} reads {ast.unparse(node)}")
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_one_definition_of_the_update():
    hits = [str(f.relative_to(ROOT)) for f in (ROOT / "diffalign").rglob("*.py") if "optax.apply_updates" in f.read_text()]
    assert hits == ["diffalign/training/update.py"], hits


# --- one loss body: AWM's rows are the pretraining loss ------------------------------------------

def _grads(fn, params):
    return [np.asarray(g) for g in jax.tree.leaves(jax.grad(fn)(params))]


def test_awm_with_unit_advantages_is_the_pretraining_gradient_on_a_cosine_path():
    import jax.numpy as jnp

    from diffalign.align import awm, rl
    from diffalign.losses import flow_matching_loss, mean
    from diffalign.losses.common import stratified_times
    from diffalign.paths import CosinePath

    apply_fn, params = functional(MLP(2, (32, 32), rngs=nnx.Rngs(0)))
    data = jax.random.normal(jax.random.key(5), (8, 2))
    path, k = CosinePath(), 3
    loss = rl.matching_rows(rl.flow_matching(apply_fn, path), num_times=k)
    batch = {"x": data, "y": None, "group": jnp.zeros(8, jnp.int32), "reward": jnp.zeros(8), "advantage": jnp.ones(8)}
    key = jax.random.key(9)
    # the rows AWM draws: K stratified times shared by the batch, fresh noise per row
    k_t, k_eps = jax.random.split(key)
    rows = {"x": jnp.repeat(data, k, axis=0), "t": jnp.tile(stratified_times(k_t, k), 8)}
    rows["x_source"] = jax.random.normal(k_eps, rows["x"].shape)
    pretrain = flow_matching_loss(apply_fn, path=path)

    def awm_objective(p):
        out = loss(p, batch, key)
        return awm(weighting="uniform").apply(out, (), 0)[0]

    def pretrain_objective(p):
        return mean().apply(pretrain(p, rows, key), (), 0)[0]

    a, b = _grads(awm_objective, params), _grads(pretrain_objective, params)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # bit for bit
    assert max(np.max(np.abs(x)) for x in a) > 0


def _tiny_gdss():
    import dataclasses

    from diffalign.graphs.configs import get_config
    from diffalign.graphs.gdss import build_model

    cfg = dataclasses.replace(get_config("community_small"), max_nodes=6, x_depth=1, x_nhid=4, a_nhid=4, a_layers=2,
                              a_linears=2, adim=4, c_hid=4, c_final=2, heads=2, batch_size=8)
    return build_model(cfg, 0)


def _graph_batch(n=8, nodes=6, feat=None, key=jax.random.key(4)):
    import jax.numpy as jnp

    sizes = np.array([3, 4, 5, 6, 6, 4, 5, 3])[:n]
    flags = (np.arange(nodes)[None] < sizes[:, None]).astype(np.float32)
    a = jax.random.bernoulli(key, 0.6, (n, nodes, nodes)).astype(jnp.float32)
    a = jnp.triu(a, 1)
    a = (a + jnp.swapaxes(a, 1, 2)) * flags[:, :, None] * flags[:, None, :]
    a = a.at[:, 0, 1].set(flags[:, 1]).at[:, 1, 0].set(flags[:, 1])  # every real node joined: flags from A
    a = a.at[:, jnp.arange(1, nodes), jnp.arange(nodes - 1)].set(flags[:, 1:])
    a = a.at[:, jnp.arange(nodes - 1), jnp.arange(1, nodes)].set(flags[:, 1:])
    x = jax.nn.one_hot(jax.random.randint(jax.random.fold_in(key, 1), (n, nodes), 0, feat), feat) * flags[..., None]
    return {"x": x, "adj": a}, flags


def test_graph_awm_with_unit_advantages_is_gdss_pretraining_gradient():
    import jax.numpy as jnp

    from diffalign.align import awm, rl
    from diffalign.graphs.align import gdss_matching, graph_rollout_stage
    from diffalign.graphs.system import gdss_loss
    from diffalign.losses import mean
    from diffalign.losses.common import stratified_times

    model = _tiny_gdss()
    _, flags = _graph_batch(feat=model.config.max_feat)
    n, k = 4, 2
    zeros = lambda x, a: (np.zeros(n, np.float32), np.ones(n, np.float32))  # noqa: E731
    prepare = graph_rollout_stage(model, flags, zeros, num_samples=n, num_scales=3)
    batch = prepare(model.params, {}, jax.random.key(1))
    loss = rl.matching_rows(gdss_matching(model), num_times=k, t_range=(model.gsde.train_eps, 1.0))
    key = jax.random.key(2)
    out0 = loss(model.params, batch, key)
    # the same rows through the pretraining loss: the sampled molecules repeated k times, the
    # stratified times and the masked noise the rows draw
    k_t, k_eps = jax.random.split(key)
    rows = {"x": jnp.repeat(batch["x"], k, axis=0), "adj": jnp.repeat(batch["adj"], k, axis=0),
            "t": jnp.tile(stratified_times(k_t, k, model.gsde.train_eps, 1.0), n)}
    rows.update(gdss_matching(model).noise(k_eps, rows))
    pretrain = gdss_loss(model.gsde, model.apply_x, model.apply_a)

    def awm_objective(p):
        out = {**loss(p, batch, key), "advantage": jnp.ones(n * k)}
        return awm(weighting="uniform").apply(out, (), 0)[0]

    def pretrain_objective(p):
        return mean().apply(pretrain(p, rows, k_eps), (), 0)[0]

    np.testing.assert_array_equal(np.asarray(out0["t"]), np.asarray(rows["t"]))
    a, b = _grads(awm_objective, model.params), _grads(pretrain_objective, model.params)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # bit for bit
    assert max(np.max(np.abs(x)) for x in a) > 0



def test_a_gdss_step_with_accumulate_2_equals_the_full_batch():
    import jax.numpy as jnp

    from diffalign.graphs.gdss import make_step
    from diffalign.training import init_train_state

    model = _tiny_gdss()
    batch, flags = _graph_batch(feat=model.config.max_feat)
    k = jax.random.key(6)
    za = jnp.triu(jax.random.normal(jax.random.fold_in(k, 1), batch["adj"].shape), 1)
    batch = {**batch, "t": jax.random.uniform(k, (8,), minval=0.05, maxval=1.0),  # draws given: same for both
             "noise_x": jax.random.normal(jax.random.fold_in(k, 2), batch["x"].shape),
             "noise_a": za + jnp.swapaxes(za, 1, 2)}
    states = []
    for acc in (1, 2):
        opt, step = make_step(model, flags, num_buckets=1, accumulate=acc)
        state = init_train_state(model.params, opt, jax.random.key(0))
        step = jax.jit(step)
        for _ in range(2):
            state, m = step(state, batch)
        states.append((state, m))
    (s1, m1), (s2, m2) = states
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
    assert not bool(m2["nonfinite"])


def test_the_flow_grpo_rollout_is_a_registered_sampler_and_euler_without_noise():
    import jax.numpy as jnp

    from diffalign.paths import LinearPath, Predictor
    from diffalign.sampling import SAMPLERS, sample

    apply_fn, params = functional(MLP(2, (16,), rngs=nnx.Rngs(0)))
    pred = Predictor(lambda x, t: apply_fn(params, x, t), LinearPath(), "velocity")
    x1 = jax.random.normal(jax.random.key(0), (64, 2))
    assert "flow_grpo" in SAMPLERS
    quiet, nfe = sample(jax.random.key(1), pred, x1, "flow_grpo", 8, a=0.0)
    euler, _ = sample(None, pred, x1, "euler", 8)
    assert nfe == 8
    np.testing.assert_allclose(np.asarray(quiet), np.asarray(euler), rtol=1e-6, atol=1e-6)
    noisy, _ = sample(jax.random.key(1), pred, x1, "flow_grpo", 8)
    assert float(jnp.max(jnp.abs(noisy - euler))) > 1e-2
