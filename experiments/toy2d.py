"""2-D toys: flow matching (I-CFM, OT-CFM, rectified flow) and DSM (VP, sub-VP, VE), trained and sampled.

Writes ``results.json`` (``w2``: exact W2 between ``num_samples`` samples and a fixed
reference of the same size; ``nfe``; energy distance; one-step W2 for flows; NLL in nats
when the source is Gaussian), ``samples.npz`` (key ``samples``) and ``samples.png``.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffalign.data.toy2d import DATASETS, get_dataset, reference_set
from diffalign.distributed import is_main_process, model_init, parse_mesh, to_host
from diffalign.losses import dsm_loss, flow_matching_loss
from diffalign.metrics import energy_distance, wasserstein2
from diffalign.models import MLP, functional
from diffalign.paths import Predictor, get_path
from diffalign.paths.coupling import coupled_batch_fn
from diffalign.sampling import SAMPLERS, deterministic, log_likelihood, sample
from diffalign.sde import get_sde
from diffalign.training import init_train_state, make_optimizer, make_train_step, train

from diffalign.config import LoopConfig, as_dict, field, replace, require_positive, validate_choices
from diffalign.results import begin, write_results

NAME = "toy2d"
DESCRIPTION = (
    "Train and sample a 2-D toy transport: flow matching (icfm, otcfm, rf) or denoising score "
    "matching (dsm with --sde vp|subvp|ve); report exact W2, energy distance, NFE and NLL."
)
REFERENCE_SEED = 12345  # the fixed seed of every evaluation reference set


@dataclasses.dataclass(frozen=True)
class Config:
    task: str = field("8gaussians->moons", f"SOURCE->TARGET; SOURCE 'noise' is N(0, I); sets: {', '.join(DATASETS)}")
    method: str = field("otcfm", "training method", choices=("icfm", "otcfm", "rf", "dsm"))
    path: str = field("linear", "flow-matching path (icfm/otcfm)", choices=("linear", "cosine", "vp"))
    sde: str = field("vp", "SDE for dsm", choices=("vp", "subvp", "ve"))
    ot_solver: str = field("exact", "otcfm plan: exact (POT) or entropic (ott-jax Sinkhorn)", choices=("exact", "sinkhorn"))
    ot_epsilon: float = field(0.05, "Sinkhorn regularisation, relative to the mean cost")
    sigma_min: float | None = field(None, "width of the CFM tube (default 0.1; 0 for rf)")
    reflow: int = field(1, "rf: number of reflow rounds after the first flow")
    reflow_pairs: int = field(50_000, "rf: noise->sample pairs generated per reflow round")
    ve_sigma_max: float = field(15.0, "VE SDE sigma_max (about the data's diameter)")
    steps: int = field(20_000, "training steps (per round for rf)")
    batch_size: int = field(256, "batch size")
    lr: float = field(1e-3, "learning rate")
    optimizer: str = field("adam", "optimizer", choices=("adam", "adamw"))
    weight_decay: float = field(0.0, "AdamW weight decay")
    hidden: tuple[int, ...] = field((64, 64, 64), "MLP hidden widths")
    activation: str = field("selu", "MLP activation", choices=("selu", "silu", "gelu", "relu", "elu", "tanh"))
    time_features: int = field(0, "0: feed t to the MLP as one input (torchcfm); k: k sinusoidal features of t")
    ema_decay: float = field(0.999, "EMA decay of the sampled parameters (0 = sample the trained ones)")
    sampler: str = field("euler", "sampler", choices=SAMPLERS)
    sample_steps: int = field(100, "sampler steps")
    num_samples: int = field(10_000, "samples drawn and reference size for W2")
    nll_points: int = field(1000, "reference points for the NLL (Gaussian sources only; 0 = skip)")
    loop: LoopConfig = field(LoopConfig(steps_per_call=500, log_every=1000, checkpoint_every=10_000), "training loop")
    mesh: str = field("auto", "device mesh DATAxMODEL (e.g. 4x2); auto: all devices on 'data' in a multi-process run, else one device")
    shard_model: bool = field(False, "split the MLP's hidden layers over the mesh's 'model' axis")
    accumulate: int = field(1, "gradient accumulation: microbatches per step (batch_size must divide)")
    remat: bool = field(False, "rematerialise the MLP's layers in the backward pass (less memory)")
    compute_dtype: str = field("float32", "dtype of the network's compute (parameters stay float32)", choices=("float32", "bfloat16"))

    def __post_init__(self):
        validate_choices(self)
        require_positive(self, "accumulate")
        for name in ("lr", "ve_sigma_max"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden widths must be positive integers, got {self.hidden}")
        if self.sigma_min is not None and self.sigma_min < 0:
            raise ValueError(f"sigma_min must be >= 0, got {self.sigma_min}")
        if self.time_features < 0 or self.time_features % 2:
            raise ValueError(f"time_features must be 0 or a positive even number, got {self.time_features}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size % self.accumulate:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by accumulate={self.accumulate}")
        source, target = parse_task(self.task)
        if self.method == "dsm" and source != "noise":
            raise ValueError(f"dsm needs a Gaussian source ('noise->...'), got task {self.task!r}")
        require_positive(self, "steps", "batch_size", "sample_steps", "num_samples", "reflow", "reflow_pairs")
        if self.nll_points < 0:
            raise ValueError(f"nll_points must be >= 0, got {self.nll_points}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def smoke(self) -> "Config":
        """The same code path at a size that runs in well under a minute."""
        return replace(self, steps=300, num_samples=1000, nll_points=50, reflow_pairs=2000, log_every=100,
                       steps_per_call=100, checkpoint_every=300)

    @property
    def effective_sigma_min(self) -> float:
        if self.sigma_min is not None:
            return self.sigma_min
        return 0.0 if self.method == "rf" else 0.1


def parse_task(task: str) -> tuple[str, str]:
    if "->" not in task:
        raise ValueError(f"task must look like SOURCE->TARGET (e.g. noise->moons), got {task!r}")
    source, target = (s.strip() for s in task.split("->", 1))
    if source != "noise":
        get_dataset(source)
    get_dataset(target)
    return source, target


def _velocity_model(cfg: Config):
    """(process, parametrization): the path or SDE the network is trained on."""
    if cfg.method == "dsm":
        kw = {"sigma_max": cfg.ve_sigma_max} if cfg.sde == "ve" else {}
        return get_sde(cfg.sde, **kw), "eps"
    return (get_path("linear") if cfg.method == "rf" else get_path(cfg.path)), "velocity"


def _batch_fn(cfg: Config, source: str, target: str, seed: int):
    data_key = jax.random.key(seed + 1_000_003)
    tgt = get_dataset(target)
    src = None if source == "noise" else get_dataset(source)

    def batch_fn(step):
        k = jax.random.fold_in(data_key, step)
        batch = {"x": tgt.sample(jax.random.fold_in(k, 0), cfg.batch_size)}
        if src is not None:
            batch["x_source"] = src.sample(jax.random.fold_in(k, 1), cfg.batch_size)
        return batch

    if cfg.method == "otcfm":
        method = "exact_ot" if cfg.ot_solver == "exact" else "sinkhorn"
        return coupled_batch_fn(batch_fn, method, seed + 2_000_003, epsilon=cfg.ot_epsilon)
    return batch_fn


def _source_points(source: str, process, n: int, key):
    if source == "noise":
        return process.prior_sample(key, (n, 2))
    return get_dataset(source).sample(key, n)


# fields that only affect sampling and evaluation: a run may be resumed with other values
EVAL_FIELDS = ("sampler", "sample_steps", "num_samples", "nll_points", "log_every", "checkpoint_every", "steps_per_call",
               "resume")
# layout-only fields: a run may resume on another mesh, with or without rematerialisation
LAYOUT_FIELDS = ("mesh", "shard_model", "remat")
# fields added after runs were written: what their absence stands for
ADDED_DEFAULTS = {"accumulate": 1, "compute_dtype": "float32"}


def _train_round(cfg, apply_fn, params, process, loss_fn, batch_fn, workdir, seed, desc, mesh):
    opt = make_optimizer(cfg.lr, name=cfg.optimizer, weight_decay=cfg.weight_decay)
    state = init_train_state(params, opt, jax.random.key(seed), ema=cfg.ema_decay > 0)
    step = make_train_step(loss_fn, opt, ema_decay=cfg.ema_decay, accumulate=cfg.accumulate)
    return train(
        state, step, batch_fn,
        num_steps=cfg.steps, workdir=workdir, config={**as_dict(cfg), "round": desc},
        resume_ignore=("steps",) + EVAL_FIELDS + LAYOUT_FIELDS, resume_defaults=ADDED_DEFAULTS, mesh=mesh,
        # vmapped Sinkhorn solves run until the slowest converges: per step is faster for it
        vectorize_batches=not (cfg.method == "otcfm" and cfg.ot_solver == "sinkhorn"), desc=desc, **cfg.loop.train_kwargs(),
    )


def run(cfg: Config, out: str, smoke: bool = False) -> dict:
    cfg, out, timer = begin(cfg, out, smoke)
    source, target = parse_task(cfg.task)
    process, parametrization = _velocity_model(cfg)
    mesh = parse_mesh(cfg.mesh)
    if cfg.shard_model and (mesh is None or mesh.shape["model"] == 1):
        raise ValueError("shard_model needs a mesh with a 'model' axis larger than 1, e.g. --mesh 4x2")
    if mesh is not None and mesh.shape["model"] > 1 and not cfg.shard_model:
        raise ValueError(f"mesh {cfg.mesh} has a 'model' axis but no layer is split over it (every 'model' device "
                         "would repeat the same work): add --shard-model or put all devices on 'data'")
    if jax.process_count() > 1 and cfg.method == "otcfm" and cfg.ot_solver == "exact":
        raise ValueError("otcfm's exact plan is solved on the host per batch; in a multi-process run use "
                         "--ot-solver sinkhorn (on device), or icfm, rf or dsm")
    with model_init(mesh if cfg.shard_model else None):
        model = MLP(2, cfg.hidden, activation=cfg.activation, time_features=cfg.time_features,
                    dtype=jnp.dtype(cfg.compute_dtype), remat=cfg.remat, shard_model=cfg.shard_model,
                    rngs=nnx.Rngs(cfg.loop.seed))
    apply_fn, params = functional(model)
    if cfg.method == "dsm":
        loss_fn = dsm_loss(process, apply_fn, parametrization="eps")
    else:
        # OT-CFM is coupled in the data pipeline (vectorised over each chunk), hence "paired".
        coupling = "paired" if cfg.method == "otcfm" else "independent"
        loss_fn = flow_matching_loss(apply_fn, path=process, coupling=coupling, sigma_min=cfg.effective_sigma_min)
    batch_fn = _batch_fn(cfg, source, target, cfg.loop.seed)

    rounds = []
    with timer("train"):
        result = _train_round(cfg, apply_fn, params, process, loss_fn, batch_fn, os.path.join(out, "round0"), cfg.loop.seed, "train", mesh)
    rounds.append(result.summary)
    state = result.state

    def make_pred(p):
        return Predictor(lambda x, t: apply_fn(p, x, t), process, parametrization)

    if cfg.method == "rf":
        paired_loss = flow_matching_loss(apply_fn, path=process, coupling="paired", sigma_min=cfg.effective_sigma_min)
        for r in range(1, cfg.reflow + 1):
            with timer("reflow_pairs"):
                x1 = _source_points(source, process, cfg.reflow_pairs, jax.random.key(cfg.loop.seed + 7919 * r))
                pred = make_pred(to_host(state.eval_params()))
                x0, _ = jax.jit(lambda x: sample(None, pred, x, "adaptive", rtol=1e-4, atol=1e-4))(x1)
                pool = {"x": x0, "x_source": x1}
            if not bool(jnp.all(jnp.isfinite(x0))):
                raise FloatingPointError(f"reflow round {r}: the flow produced non-finite points")
            pool_key = jax.random.key(cfg.loop.seed + 104_729 * r)

            def pool_batches(step, pool=pool, pool_key=pool_key):
                idx = jax.random.randint(jax.random.fold_in(pool_key, step), (cfg.batch_size,), 0, cfg.reflow_pairs)
                return {"x": pool["x"][idx], "x_source": pool["x_source"][idx]}

            with timer("train"):
                result = _train_round(
                    cfg, apply_fn, state.eval_params(), process, paired_loss, pool_batches,
                    os.path.join(out, f"reflow{r}"), cfg.loop.seed + r, f"reflow {r}", mesh,
                )
            rounds.append(result.summary)
            state = result.state

    # the last collective: from here process 0 evaluates and writes on its own copy
    params = to_host(state.eval_params())
    if not is_main_process():
        return {}
    pred = make_pred(params)
    key = jax.random.key(cfg.loop.seed + 31337)
    x_T = _source_points(source, process, cfg.num_samples, jax.random.fold_in(key, 0))
    sampler = jax.jit(lambda k, x: sample(k, pred, x, cfg.sampler, cfg.sample_steps))
    with timer("sample_compile"):
        sampler.lower(key, x_T).compile()
    with timer("sample"):
        samples, nfe = sampler(jax.random.fold_in(key, 1), x_T)
        samples = np.asarray(jax.block_until_ready(samples))
    metrics: dict = {"nfe": float(nfe)}

    with timer("eval"):
        reference = np.asarray(reference_set(target, cfg.num_samples, REFERENCE_SEED))
        metrics["w2"] = wasserstein2(samples, reference)
        metrics["energy_distance"] = energy_distance(samples, reference)
        if cfg.method != "dsm":
            one = jax.jit(lambda x: sample(None, pred, x, "euler", 1)[0])(x_T)
            metrics["w2_1step"] = wasserstein2(np.asarray(one), reference)
        if source == "noise" and cfg.nll_points > 0:
            pts = jnp.asarray(reference[: cfg.nll_points])
            t_lo = min(process.t_min, 1e-5)
            lp = jax.jit(lambda x: log_likelihood(pred.velocity, x, process.prior_logp, t_lo, process.t_max))(pts)
            metrics["nll"] = float(-jnp.mean(lp))
            metrics["nll_points"] = int(pts.shape[0])
    metrics["final_loss"] = rounds[-1]["final_metrics"].get("loss")
    metrics["train_steps_per_sec"] = rounds[0]["steps_per_sec"]
    metrics["num_samples"] = cfg.num_samples

    picture = None
    np.savez(os.path.join(out, "samples.npz"), samples=samples, source=np.asarray(x_T), reference=reference)
    try:
        from diffalign.viz import plot_2d

        traj = jax.jit(lambda x: deterministic.euler(pred, x, 100, trajectory=True))(x_T[:300])
        picture = plot_2d(
            os.path.join(out, "samples.png"), samples, reference, np.asarray(traj),
            title=f"{cfg.task} {cfg.method}: W2 {metrics['w2']:.3f}, NFE {metrics['nfe']:.0f}",
        )
    except ImportError as e:
        print(f"note: no picture written ({e})")
    timings = timer.timings(compile_s=sum(r["compile_s"] for r in rounds), train_run_s=sum(r["train_s"] for r in rounds))
    write_results(out, experiment=NAME, config=cfg, metrics=metrics, timings=timings,
                  extra={"smoke": smoke, "rounds": rounds, "picture": picture})
    return metrics


