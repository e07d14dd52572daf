"""Symmetrical Flow Matching on labelled two moons and on scikit-learn's 8x8 digits.

One network on [x; m] (m = the class embedding) is trained with the SymmFlow loss
(``diffalign.symmflow``); the same network then generates class-conditionally (integrating
[noise, m] to the data end) and classifies (integrating [x, noise] the other way; one Euler
step = one-step classification). Per training seed it measures: W2 of the generated points of
each moon to fresh points of that moon (and the finite-sample floor: W2 between two independent
draws of the same size); per-class Frechet distance of generated digits to the held-out digits
of the class (floor: training digits of the class against the same held-out digits); one-step
and multi-step classification accuracy on held-out data (digits: beside a logistic regression);
and the round trip, classify(generate(m)) == m. Headline numbers are means and standard
deviations over the training seeds.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffalign import symmflow as S
from diffalign.data import digits as D
from diffalign.metrics.digits import DigitClassifier
from diffalign.metrics import frechet_distance, wasserstein2
from diffalign.models import MLP, ResidualMLP, functional
from diffalign.training import init_train_state, make_optimizer, make_train_step, train

from diffalign.config import field, require_positive, validate_choices
from diffalign.results import begin, write_results

NAME = "symmflow"
DESCRIPTION = (
    "Symmetrical Flow Matching: one flow on [image; label] for class-conditional generation and "
    "one-step classification, on labelled two moons and 8x8 digits, over training seeds."
)
TASKS = ("both", "moons", "digits")


@dataclasses.dataclass(frozen=True)
class Config:
    task: str = field("both", "which data: moons, digits or both", choices=TASKS)
    seeds: tuple[int, ...] = field((0, 1, 2), "training seeds (headline numbers: mean and std over them)")
    image_weight: float = field(0.5, "lambda: weight of the image term (1 - lambda on the mask term)")
    sigma_min: float = field(1e-4, "sigma_min of the paths (the reference code's 1e-4)")
    mask_noise: float = field(2 / 255, "width of the uniform dequantisation noise on the label embedding")
    label_scale: float = field(4.0, "scale of the label embeddings (moons: -s/+s; digits: signed one-hot +-s)")
    lr: float = field(1e-3, "peak learning rate (cosine decay)")
    ema_decay: float = field(0.999, "EMA decay of the evaluated parameters")
    method: str = field("euler", "integrator for generation and multi-step classification", choices=S.METHODS)
    gen_steps: int = field(25, "integration steps for generation (the paper's 25)")
    cls_steps: int = field(10, "integration steps for the multi-step classification")
    moons_steps: int = field(4000, "training steps on the moons")
    moons_batch: int = field(256, "batch size on the moons")
    moons_width: int = field(128, "moons MLP width (3 hidden layers)")
    moons_eval: int = field(1000, "generated points per moon (and held-out points per moon)")
    digits_steps: int = field(5000, "training steps on the digits")
    digits_batch: int = field(128, "batch size on the digits")
    digits_width: int = field(256, "digits residual MLP width")
    digits_depth: int = field(3, "digits residual blocks")
    digits_eval: int = field(150, "generated digits per class")
    steps_per_call: int = field(500, "training steps per compiled chunk")

    def __post_init__(self):
        validate_choices(self)
        require_positive(self, "gen_steps", "cls_steps", "moons_steps", "moons_batch", "moons_width",
                         "moons_eval", "digits_steps", "digits_batch", "digits_width", "digits_depth",
                         "digits_eval", "steps_per_call")
        if not self.seeds:
            raise ValueError("seeds must name at least one training seed")
        if not 0.0 <= self.image_weight <= 1.0:
            raise ValueError(f"image_weight must be in [0, 1], got {self.image_weight}")
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(f"sigma_min must be in [0, 1), got {self.sigma_min}")
        if self.mask_noise < 0:
            raise ValueError(f"mask_noise must be >= 0, got {self.mask_noise}")
        for name in ("label_scale", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.digits_eval < 2:
            raise ValueError(f"digits_eval must be >= 2 (a covariance per class), got {self.digits_eval}")

    def smoke(self) -> "Config":
        return dataclasses.replace(
            self, seeds=self.seeds[:1], moons_steps=300, moons_eval=200, digits_steps=300, digits_eval=20,
            digits_width=64, digits_depth=1, moons_width=64, gen_steps=10, cls_steps=4, steps_per_call=100,
        )


# ----------------------------------------------------------------------------- labelled moons


def labelled_moons(key, n: int):
    """(x (n, 2), y (n,)): scikit-learn's make_moons(noise=0.05) times 2 with the first coordinate
    minus 1 (the library's ``tong_moons``), with its labels (0 = upper moon, 1 = lower moon) and
    uniform random arc positions; classes are drawn with probability 1/2 each."""
    k_y, k_a, k_n = jax.random.split(key, 3)
    y = jax.random.bernoulli(k_y, 0.5, (n,)).astype(jnp.int32)
    ang = jax.random.uniform(k_a, (n,)) * math.pi
    upper = jnp.stack([jnp.cos(ang), jnp.sin(ang)], -1)
    lower = jnp.stack([1.0 - jnp.cos(ang), 0.5 - jnp.sin(ang)], -1)
    x = jnp.where(y[:, None] == 0, upper, lower) + 0.05 * jax.random.normal(k_n, (n, 2))
    return (x * 2.0).at[:, 0].add(-1.0), y


def _moons_class(key, c: int, n: int):
    """n fresh points of moon c alone (the class-conditional reference set)."""
    k_a, k_n = jax.random.split(key)
    ang = jax.random.uniform(k_a, (n,)) * math.pi
    arc = (jnp.stack([jnp.cos(ang), jnp.sin(ang)], -1) if c == 0
           else jnp.stack([1.0 - jnp.cos(ang), 0.5 - jnp.sin(ang)], -1))
    pts = arc + 0.05 * jax.random.normal(k_n, (n, 2))
    return (pts * 2.0).at[:, 0].add(-1.0)


# ----------------------------------------------------------------------------- training


def _train(cfg: Config, model, emb, batch_fn, steps: int, seed: int, desc: str):
    """Train ``model`` on z = [x; m] with the SymmFlow loss; (velocity fn(z, t) of the EMA
    parameters, the loop's summary). In memory: these runs are short, no checkpoints."""
    apply_fn, params = functional(model)
    loss_fn = S.symmflow_loss(lambda p, z, t: apply_fn(p, z, t), emb, image_weight=cfg.image_weight,
                              sigma_min=cfg.sigma_min, mask_noise=cfg.mask_noise)
    opt = make_optimizer(cfg.lr, schedule="cosine", num_steps=steps, clip_norm=1.0)
    state = init_train_state(params, opt, jax.random.key(seed))
    step = make_train_step(loss_fn, opt, ema_decay=cfg.ema_decay, ema_warmup=True)
    result = train(state, step, batch_fn, num_steps=steps, workdir=None, steps_per_call=min(cfg.steps_per_call, steps),
                   log_every=steps, progress=False, desc=desc)
    p = result.state.eval_params()
    return (lambda z, t: apply_fn(p, z, t)), result.summary


def _evaluate(cfg, fn, emb, x_dim, key, x_test, y_test, y_gen):
    """One compiled program: one-step (Euler) and multi-step classification of the held-out
    points, generation for the labels ``y_gen``, and the round trip (classification of the
    generated points, one-step and multi-step)."""

    def ev(key, x_test, y_test, y_gen):
        k1, k2, k3 = jax.random.split(key, 3)
        acc = lambda x, y, k, n, meth: jnp.mean(S.classify(k, fn, x, emb, n, meth)[0] == y)
        x_gen = S.generate(k2, fn, emb[y_gen], x_dim, cfg.gen_steps, cfg.method)
        return {
            "one_step_accuracy": acc(x_test, y_test, k1, 1, "euler"),
            "multi_step_accuracy": acc(x_test, y_test, k1, cfg.cls_steps, cfg.method),
            "round_trip_accuracy": acc(x_gen, y_gen, k3, 1, "euler"),
            "round_trip_accuracy_multi_step": acc(x_gen, y_gen, k3, cfg.cls_steps, cfg.method),
        }, x_gen

    m, x_gen = jax.jit(ev)(key, x_test, y_test, y_gen)
    return {k: float(v) for k, v in m.items()}, x_gen


def run_moons(cfg: Config, seed: int) -> tuple[dict, dict]:
    """Train on labelled moons with one seed; (metrics, generated points and their labels)."""
    emb = S.label_embeddings(2, cfg.label_scale)
    model = MLP(3, (cfg.moons_width,) * 3, activation="selu", rngs=nnx.Rngs(seed))
    base = jax.random.key(10_000 + seed)

    def batch_fn(step):
        x, y = labelled_moons(jax.random.fold_in(base, step), cfg.moons_batch)
        return {"x": x, "y": y}

    fn, summary = _train(cfg, model, emb, batch_fn, cfg.moons_steps, seed, f"moons seed {seed}")
    n = cfg.moons_eval
    key = jax.random.key(20_000 + seed)
    x_test, y_test = labelled_moons(jax.random.fold_in(key, 0), 2 * n)
    y_gen = jnp.repeat(jnp.arange(2), n)
    acc, x_gen = _evaluate(cfg, fn, emb, 2, jax.random.fold_in(key, 1), x_test, y_test, y_gen)
    w2 = [wasserstein2(np.asarray(x_gen[y_gen == c]), np.asarray(_moons_class(jax.random.fold_in(key, 3 + c), c, n)))
          for c in range(2)]
    m = {
        **acc, "w2_per_class": w2, "w2_mean": float(np.mean(w2)),
        "final_loss": summary["final_metrics"].get("loss"), "train_s": summary["train_s"],
    }
    return m, {"x": np.asarray(x_gen), "y": np.asarray(y_gen)}


def _frechet(a, b):
    """Frechet distance in pixel-level space; ~30 held-out digits per class make the 64 x 64
    covariances singular (rank <= 29), so scipy's sqrtm warns: the number is still the formula's."""
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")
        return frechet_distance(a, b)


def _digit_space(x):
    """Model space -> pixel levels 0..16 as floats (the space of the Frechet distances)."""
    return np.asarray(D.to_levels(x)).reshape(len(x), -1).astype(np.float64)


def run_digits(cfg: Config, seed: int, train_set, test_set, clf) -> tuple[dict, dict]:
    """Train on the digits with one seed; (metrics, generated pixel levels and their labels).
    ``clf`` labels pixel levels (``metrics.digits.DigitClassifier.predict``)."""
    emb = S.label_embeddings(D.NUM_CLASSES, cfg.label_scale, signed=True)
    model = ResidualMLP(64 + D.NUM_CLASSES, cfg.digits_width, cfg.digits_depth, rngs=nnx.Rngs(seed))
    batch_fn = D.make_batch_fn(train_set, cfg.digits_batch, 10_000 + seed)
    fn, summary = _train(cfg, model, emb, batch_fn, cfg.digits_steps, seed, f"digits seed {seed}")
    key = jax.random.key(20_000 + seed)
    x_test = D.dequantize(jax.random.fold_in(key, 0), jnp.asarray(test_set["k"])).reshape(len(test_set["k"]), -1)
    y_test = jnp.asarray(test_set["y"])
    y_gen = jnp.repeat(jnp.arange(D.NUM_CLASSES), cfg.digits_eval)
    acc, x_gen = _evaluate(cfg, fn, emb, 64, jax.random.fold_in(key, 1), x_test, y_test, y_gen)
    gen = _digit_space(x_gen)
    yg = np.asarray(y_gen)
    real = test_set["k"].reshape(len(test_set["k"]), -1).astype(np.float64)
    fd = [_frechet(gen[yg == c], real[test_set["y"] == c]) for c in range(D.NUM_CLASSES)]
    m = {
        **acc, "frechet_per_class": fd, "frechet_mean": float(np.mean(fd)),
        "generated_class_accuracy_logreg": float(np.mean(clf(gen) == yg)),
        "final_loss": summary["final_metrics"].get("loss"), "train_s": summary["train_s"],
    }
    return m, {"levels": gen.reshape(-1, 8, 8), "y": yg}


# ----------------------------------------------------------------------------- references and summaries


def moons_references(cfg: Config) -> dict:
    """W2 between two independent draws of each moon of the evaluation size: the finite-sample floor."""
    n = cfg.moons_eval
    floors = []
    for c in range(2):
        a = _moons_class(jax.random.key(30_000 + 2 * c), c, n)
        b = _moons_class(jax.random.key(30_001 + 2 * c), c, n)
        floors.append(wasserstein2(np.asarray(a), np.asarray(b)))
    return {"w2_floor_per_class": floors, "w2_floor_mean": float(np.mean(floors))}


def digits_references(train_set, test_set, clf) -> dict:
    """Frechet distance of the training digits of each class to its held-out digits (the real
    data's own score), and a logistic regression's held-out accuracy."""
    tr = train_set["k"].reshape(len(train_set["k"]), -1).astype(np.float64)
    te = test_set["k"].reshape(len(test_set["k"]), -1).astype(np.float64)
    fd = [_frechet(tr[train_set["y"] == c], te[test_set["y"] == c]) for c in range(D.NUM_CLASSES)]
    return {
        "frechet_floor_per_class": fd, "frechet_floor_mean": float(np.mean(fd)),
        "logreg_test_accuracy": float(np.mean(clf(te) == test_set["y"])),
        "test_images": int(len(te)),
        "train_images_per_class": [int(np.sum(train_set["y"] == c)) for c in range(D.NUM_CLASSES)],
    }


def summarise(per_seed: list[dict]) -> dict:
    """Mean under each metric's name and the sample standard deviation over seeds (ddof 1, as the
    other experiments; 0 for one seed) under NAME_std (elementwise for per-class lists); the raw
    values under "per_seed"."""
    out: dict = {}
    for k in per_seed[0]:
        vals = [r[k] for r in per_seed]
        if any(v is None for v in vals):
            continue
        arr = np.asarray(vals, np.float64)
        out[k] = arr.mean(0).tolist() if arr.ndim > 1 else float(arr.mean())
        std = arr.std(0, ddof=1) if len(arr) > 1 else np.zeros_like(arr[0])
        out[f"{k}_std"] = std.tolist() if arr.ndim > 1 else float(std)
    out["per_seed"] = per_seed
    return out


def _moons_picture(path, x, y, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for c, colour in ((0, "tab:blue"), (1, "tab:orange")):
        ax.scatter(*x[y == c].T, s=2, alpha=0.5, c=colour, label=f"generated, class {c}")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7, markerscale=4)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(cfg: Config, out: str, smoke: bool = False) -> dict:
    cfg, out, timer = begin(cfg, out, smoke)
    metrics: dict = {}
    samples: dict = {}
    pictures: list[str] = []
    if cfg.task in ("both", "moons"):
        rows = []
        for seed in cfg.seeds:
            with timer("moons"):
                m, s = run_moons(cfg, seed)
            rows.append(m)
            samples.setdefault("moons", s)
        metrics["moons"] = {**summarise(rows), **moons_references(cfg)}
    if cfg.task in ("both", "digits"):
        train_set, test_set = D.load_digits()
        clf = DigitClassifier(train_set["k"], train_set["y"]).predict
        rows = []
        for seed in cfg.seeds:
            with timer("digits"):
                m, s = run_digits(cfg, seed, train_set, test_set, clf)
            rows.append(m)
            samples.setdefault("digits", s)
        metrics["digits"] = {**summarise(rows), **digits_references(train_set, test_set, clf)}

    np.savez(os.path.join(out, "samples.npz"), **{f"{k}_{n}": v for k, s in samples.items() for n, v in s.items()})
    try:
        if "moons" in samples:
            mm = metrics["moons"]
            pictures.append(_moons_picture(
                os.path.join(out, "moons_generated.png"), samples["moons"]["x"], samples["moons"]["y"],
                f"SymmFlow moons, seed {cfg.seeds[0]}: W2 {mm['per_seed'][0]['w2_mean']:.3f} "
                f"(floor {mm['w2_floor_mean']:.3f}), 1-step acc {mm['per_seed'][0]['one_step_accuracy']:.3f}"))
        if "digits" in samples:
            from diffalign.viz import image_grid

            lv, yg = samples["digits"]["levels"], samples["digits"]["y"]
            per = min(10, cfg.digits_eval)
            grid = np.concatenate([lv[yg == c][:per] for c in range(D.NUM_CLASSES)])
            md = metrics["digits"]
            pictures.append(image_grid(
                os.path.join(out, "digits_generated.png"), grid, rows=D.NUM_CLASSES, row_labels=range(D.NUM_CLASSES),
                vmax=D.NUM_LEVELS - 1,
                title=f"SymmFlow digits, seed {cfg.seeds[0]}: 1-step acc {md['per_seed'][0]['one_step_accuracy']:.3f}"))
    except ImportError as e:
        print(f"note: no pictures written ({e})")
    timings = timer.timings()
    write_results(out, experiment=NAME, config=cfg, metrics=metrics, timings=timings,
                  extra={"smoke": smoke, "pictures": pictures, "seeds": list(cfg.seeds),
                         "time_convention": "library: image data at t=0, noise at t=1; paper's s = 1 - t"})
    headline = {}
    for task, keys in (("moons", ("one_step_accuracy", "w2_mean", "w2_floor_mean", "round_trip_accuracy")),
                       ("digits", ("one_step_accuracy", "frechet_mean", "frechet_floor_mean", "logreg_test_accuracy",
                                   "round_trip_accuracy"))):
        for k in keys:
            if task in metrics:
                headline[f"{task}_{k}"] = metrics[task][k]
    return headline
