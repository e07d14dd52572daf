"""Class-conditional diffusion on scikit-learn's 8x8 digits, with classifier-free guidance.

Trains a residual MLP with label dropout (so one network is both conditional and
unconditional), then writes a sample grid per class with and without guidance, the
accuracy of a logistic-regression digit classifier (fitted on the training images) on the
samples of each guidance scale, and bits/dim of the held-out digits from the
probability-flow ODE likelihood (dequantised, K = 17 pixel levels).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffalign.data import digits as D
from diffalign.metrics.digits import DigitClassifier
from diffalign.losses import dsm_loss, flow_matching_loss
from diffalign.models import ResidualMLP, functional
from diffalign.paths import Predictor, get_path
from diffalign.sampling import SAMPLERS, bits_per_dim, guided, log_likelihood, sample
from diffalign.sde import SDE
from diffalign.training import init_train_state, make_optimizer, make_train_step, train

from diffalign.config import LoopConfig, as_dict, field, replace, require_positive, validate_choices
from diffalign.results import begin, write_results

NAME = "digits"
DESCRIPTION = (
    "Class-conditional diffusion or flow model of scikit-learn's 8x8 digits with classifier-free "
    "guidance: sample grids per class (with and without guidance), sample class accuracy, and "
    "held-out bits/dim."
)


@dataclasses.dataclass(frozen=True)
class Config:
    process: str = field("vp", "the SDE (DSM training) or flow path (flow matching)", choices=("vp", "subvp", "ve", "linear", "cosine"))
    steps: int = field(20_000, "training steps")
    batch_size: int = field(128, "batch size")
    lr: float = field(1e-3, "peak learning rate (cosine decay)")
    width: int = field(256, "residual MLP width")
    depth: int = field(4, "residual blocks")
    label_dropout: float = field(0.1, "probability of training a label as the null label")
    ema_decay: float = field(0.999, "EMA decay of the sampled parameters")
    clip_norm: float = field(1.0, "gradient clipping by global norm")
    guidance: float = field(3.0, "classifier-free guidance scale for the guided grid (1 = none)")
    sampler: str = field("dpm++2m", "sampler", choices=SAMPLERS)
    sample_steps: int = field(50, "sampler steps")
    per_class: int = field(10, "samples per class in each grid")
    eval_samples_per_class: int = field(100, "samples per class for the accuracy metric")
    bpd_images: int = field(299, "held-out images for bits/dim (all 299 by default)")
    divergence: str = field("exact", "trace estimator for the likelihood", choices=("exact", "hutchinson"))
    ve_sigma_max: float = field(10.0, "VE sigma_max")
    loop: LoopConfig = field(LoopConfig(steps_per_call=250, log_every=1000, checkpoint_every=5000), "training loop")

    def __post_init__(self):
        validate_choices(self)
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        require_positive(self, "steps", "batch_size", "sample_steps", "per_class", "eval_samples_per_class", "bpd_images")
        for name in ("lr", "clip_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def smoke(self) -> "Config":
        return replace(
            self, steps=200, per_class=4, eval_samples_per_class=10, bpd_images=16, sample_steps=10,
            log_every=100, steps_per_call=100, checkpoint_every=200, divergence="hutchinson",
        )


def _process(cfg: Config):
    if cfg.process in ("linear", "cosine"):
        return get_path(cfg.process), "velocity"
    kw = {"sigma_max": cfg.ve_sigma_max} if cfg.process == "ve" else {}
    return get_path(cfg.process, **kw), "eps"


def run(cfg: Config, out: str, smoke: bool = False) -> dict:
    cfg, out, timer = begin(cfg, out, smoke)
    train_set, test_set = D.load_digits()
    process, parametrization = _process(cfg)
    model = ResidualMLP(64, cfg.width, cfg.depth, num_classes=D.NUM_CLASSES, rngs=nnx.Rngs(cfg.loop.seed))
    apply_fn, params = functional(model)
    common = {"label_dropout": cfg.label_dropout, "num_classes": D.NUM_CLASSES}
    if isinstance(process, SDE):
        loss_fn = dsm_loss(process, apply_fn, parametrization="eps", **common)
    else:
        loss_fn = flow_matching_loss(apply_fn, path=process, **common)
    opt = make_optimizer(cfg.lr, schedule="cosine", num_steps=cfg.steps, clip_norm=cfg.clip_norm)
    state = init_train_state(params, opt, jax.random.key(cfg.loop.seed))
    step = make_train_step(loss_fn, opt, ema_decay=cfg.ema_decay, ema_warmup=True)
    batch_fn = D.make_batch_fn(train_set, cfg.batch_size, cfg.loop.seed + 1)
    with timer("train"):
        result = train(
            state, step, batch_fn, num_steps=cfg.steps, workdir=out, config=as_dict(cfg), **cfg.loop.train_kwargs(),
        )
    params = result.state.eval_params()

    def model_fn(x, t, y):
        return apply_fn(params, x.reshape(x.shape[0], 8, 8), t, y).reshape(x.shape[0], -1)

    def sampler_for(labels, scale, key):
        pred = Predictor(guided(model_fn, labels, null_label=D.NUM_CLASSES, scale=scale), process, parametrization)
        x_T = process.prior_sample(key, (labels.shape[0], 64))
        return sample(key, pred, x_T, cfg.sampler, cfg.sample_steps)

    metrics: dict = {}
    grids = {}
    scales = (1.0, cfg.guidance)
    with timer("sample"):
        for scale in scales:
            labels = jnp.repeat(jnp.arange(D.NUM_CLASSES), cfg.per_class)
            x, nfe = jax.jit(lambda k, y: sampler_for(y, scale, k))(jax.random.key(cfg.loop.seed + 17), labels)
            grids[scale] = np.asarray(D.to_levels(x.reshape(-1, 8, 8)))
    # a guided evaluation is one network call on a doubled batch: twice the work of an unguided one
    metrics["nfe"] = int(nfe)
    metrics["nfe_guided"] = 2 * int(nfe)
    with timer("accuracy"):
        clf = DigitClassifier(train_set["k"], train_set["y"])
        for scale in scales:
            labels = jnp.repeat(jnp.arange(D.NUM_CLASSES), cfg.eval_samples_per_class)
            x, _ = jax.jit(lambda k, y: sampler_for(y, scale, k))(jax.random.key(cfg.loop.seed + 23), labels)
            levels = np.asarray(D.to_levels(x)).reshape(len(labels), -1)
            metrics[f"class_accuracy_guidance_{scale:g}"] = float(np.mean(clf.predict(levels) == np.asarray(labels)))
        metrics["classifier_test_accuracy"] = float(
            np.mean(clf.predict(test_set["k"].reshape(len(test_set["k"]), -1)) == test_set["y"])
        )
    with timer("bits_per_dim"):
        n = min(cfg.bpd_images, len(test_set["k"]))
        k = jnp.asarray(test_set["k"][:n])
        x = D.dequantize(jax.random.key(cfg.loop.seed + 99), k).reshape(n, -1)
        null = jnp.full((n,), D.NUM_CLASSES)
        pred = Predictor(model_fn, process, parametrization)
        for name, labels in (("unconditional", null), ("conditional", jnp.asarray(test_set["y"][:n]))):
            lp = _batched_loglik(pred, x, labels, process, cfg.divergence, jax.random.key(cfg.loop.seed + 5))
            metrics[f"bpd_{name}"] = float(jnp.mean(bits_per_dim(lp, 64, scale=D.SCALE, num_levels=D.NUM_LEVELS)))
        metrics["bpd_images"] = n
        metrics["bpd_uniform_baseline"] = float(np.log2(D.NUM_LEVELS))
    metrics["final_loss"] = result.summary["final_metrics"].get("loss")
    metrics["train_steps_per_sec"] = result.summary["steps_per_sec"]

    np.savez(
        os.path.join(out, "samples.npz"),
        samples=np.stack([grids[s] for s in scales]),
        guidance=np.asarray(scales),
        labels=np.repeat(np.arange(D.NUM_CLASSES), cfg.per_class),
    )
    pictures = []
    try:
        from diffalign.viz import image_grid

        for scale in scales:
            pictures.append(image_grid(
                os.path.join(out, f"samples_guidance_{scale:g}.png"), grids[scale], rows=D.NUM_CLASSES,
                row_labels=range(D.NUM_CLASSES), vmax=D.NUM_LEVELS - 1,
                title=f"{cfg.process}, guidance {scale:g}: accuracy {metrics[f'class_accuracy_guidance_{scale:g}']:.2f}",
            ))
    except ImportError as e:
        print(f"note: no pictures written ({e})")
    timings = timer.timings(compile_s=result.summary["compile_s"], train_run_s=result.summary["train_s"])
    write_results(out, experiment=NAME, config=cfg, metrics=metrics, timings=timings,
                  extra={"smoke": smoke, "pictures": pictures, "train": result.summary})
    return metrics


def _batched_loglik(pred, x, labels, process, divergence, key, chunk: int = 64):
    """log p(x | label) through the probability-flow ODE, in chunks of a fixed shape (one compile)."""
    t_lo = min(process.t_min, 1e-5)

    @jax.jit
    def f(xs, ys, kk):
        return log_likelihood(pred.velocity, xs, process.prior_logp, t_lo, process.t_max,
                              divergence=divergence, key=kk, cond=ys)

    out = []
    for i in range(0, x.shape[0], chunk):
        xs, ys = x[i : i + chunk], labels[i : i + chunk]
        pad = chunk - xs.shape[0]
        lp = f(jnp.pad(xs, ((0, pad), (0, 0))), jnp.pad(ys, (0, pad)), jax.random.fold_in(key, i))
        out.append(lp[: chunk - pad])
    return jnp.concatenate(out)
