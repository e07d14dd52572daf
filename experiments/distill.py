"""Distil a many-step flow teacher into a one- or few-step generator: DMD, DMD2, Phased DMD, TDM.

Trains (or reuses, ``--teacher-dir``) a flow-matching teacher on the task, distils it with the
chosen method, and compares the student at its NFE with the teacher at 100 steps, at 1 step and
at the student's NFE with the best few-step sampler. Writes ``results.json`` (``teacher_w2``,
``student_w2``, ``teacher_nfe``, ``student_nfe``, mode statistics on the mixtures; the Frechet
distances on digits), ``samples.npz`` and ``samples.png``.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffalign.data.toy2d import get_dataset, reference_set
from diffalign.distill import METHODS, DistillationMethod, Distiller, labels_from_null
from diffalign.losses import flow_matching_loss
from diffalign.metrics import PointCloud
from diffalign.models import MLP, functional
from diffalign.paths import LinearPath, Predictor
from diffalign.sampling import sample
from diffalign.training import init_train_state, make_optimizer, make_train_step, train

from diffalign.config import LoopConfig, as_dict, build, field, replace, require_positive, validate_choices
from diffalign.results import begin, write_results

NAME = "distill"
DESCRIPTION = (
    "Distil a flow-matching teacher into a few-step generator (dmd, dmd2, phased-dmd, tdm) and "
    "compare it with the teacher at 100 steps and at the student's NFE."
)
TASKS = ("8gaussians", "moons", "25gaussians", "digits")
FEW_STEP_SAMPLERS = ("euler", "heun", "dpm++2m")
REFERENCE_SEED = 12345
EVAL_SEED = 31337  # the evaluation noise, shared by the teacher and every student


@dataclasses.dataclass(frozen=True)
class Config:
    task: str = field("8gaussians", "data: a 2-D toy (torchcfm 8 gaussians, moons, 25-mode grid) or 8x8 digits", choices=TASKS)
    method: str = field("dmd2", "distillation method", choices=METHODS)
    student_steps: int | None = field(None, "generator steps = NFE (default 1 for dmd/dmd2, 4 for phased-dmd/tdm)")
    phases: int = field(2, "phased-dmd: number of phases (experts)")
    steps_choices: tuple[int, ...] = field((), "tdm: a sampling-steps-aware student over these K (e.g. 1 2 4); K is an input")
    steps: int = field(4000, "generator updates (phased-dmd: in all, split evenly over the phases)")
    fake_updates: int | None = field(None, "fake-score updates per generator update (default 1 for dmd/tdm, 5 otherwise)")
    batch_size: int = field(256, "generator batch (and fake-score batch)")
    lr: float = field(1e-4, "generator learning rate")
    fake_lr: float | None = field(None, "fake-score learning rate (default: 5 x lr for tdm, as TDM's code; lr otherwise)")
    clip_norm: float = field(10.0, "gradient clipping of both networks (DMD2: 10)")
    ema_decay: float = field(0.99, "EMA of the generator (0: none)")
    regression_weight: float = field(0.25, "dmd: weight of the regression to teacher ODE pairs")
    regression_pairs: int = field(10_000, "dmd: precomputed noise -> teacher sample pairs")
    teacher_steps: int = field(20_000, "teacher flow-matching steps")
    teacher_lr: float = field(1e-3, "teacher learning rate (cosine decay)")
    teacher_sample_steps: int = field(100, "the teacher's reference sampling steps (Euler)")
    teacher_dir: str | None = field(None, "where the teacher is trained or found (default OUT/teacher); shared by runs")
    num_samples: int = field(10_000, "samples for the metrics (and reference size)")
    teacher_seed: int = field(0, "teacher training seed")
    loop: LoopConfig = field(LoopConfig(steps_per_call=200, log_every=200, checkpoint_every=1000), "distillation loop",
                             nested_help={"seed": "seed of the distillation (the teacher has its own, teacher_seed)"})

    def __post_init__(self):
        validate_choices(self)
        require_positive(self, "steps", "batch_size", "teacher_steps", "teacher_sample_steps", "num_samples", "phases")
        for name in ("lr", "fake_lr", "teacher_lr", "clip_norm"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be positive, got {v}")
        if self.student_steps is not None and self.student_steps < 1:
            raise ValueError(f"student_steps must be >= 1, got {self.student_steps}")
        if self.method == "phased-dmd" and (self.num_student_steps % self.phases or self.steps % self.phases):
            raise ValueError(
                f"phased-dmd: phases ({self.phases}) must divide student_steps ({self.num_student_steps}) and steps ({self.steps})"
            )
        if self.steps_choices and (self.method != "tdm" or self.student_steps is not None):
            raise ValueError("--steps-choices is TDM's steps-aware student: use it with --method tdm and without --student-steps")
        if self.method == "dmd" and self.num_student_steps != 1:
            raise ValueError("dmd distils a one-step generator: use --student-steps 1 (or dmd2 / phased-dmd / tdm)")

    @property
    def num_student_steps(self) -> int:
        if self.steps_choices:
            return max(self.steps_choices)
        if self.student_steps is not None:
            return self.student_steps
        return 1 if self.method in ("dmd", "dmd2") else 4

    @property
    def effective_fake_lr(self) -> float:
        if self.fake_lr is not None:
            return self.fake_lr
        return 5 * self.lr if self.method == "tdm" else self.lr

    def smoke(self) -> "Config":
        return replace(
            self, steps=40 * self.phases if self.method == "phased-dmd" else 40, teacher_steps=300, num_samples=1000,
            regression_pairs=500, steps_per_call=20, log_every=20, checkpoint_every=40, batch_size=128,
        )


@dataclasses.dataclass
class Task:
    name: str
    dim: int
    apply_fn: object
    init_params: object
    sample_data: object  # (key, n) -> (n, dim)
    reference: np.ndarray
    evaluate: object  # samples -> dict


def make_task(cfg: Config, n_ref: int) -> Task:
    if cfg.task == "digits":
        from diffalign.data import digits as D

        from diffalign.metrics.digits import DigitClassifier, DigitSamples

        train_set, test_set = D.load_digits()
        levels = np.asarray(train_set["k"]).reshape(-1, 64)
        model = MLP(64, (512, 512, 512), activation="silu", time_features=16, num_classes=len(cfg.steps_choices) or None,
                    rngs=nnx.Rngs(cfg.teacher_seed))
        apply_fn, params = functional(model)
        k = jnp.asarray(levels)
        clf = DigitClassifier(levels, np.asarray(train_set["y"]))
        real = np.asarray(D.dequantize(jax.random.key(REFERENCE_SEED), jnp.asarray(test_set["k"]).reshape(-1, 64)))

        def sample_data(key, n):
            ki, kd = jax.random.split(key)
            return D.dequantize(kd, k[jax.random.randint(ki, (n,), 0, k.shape[0])])

        return Task("digits", 64, apply_fn, params, sample_data, real, DigitSamples(clf, real).score)

    data = get_dataset(cfg.task)
    model = MLP(2, (256, 256, 256), activation="silu", time_features=16, num_classes=len(cfg.steps_choices) or None,
                rngs=nnx.Rngs(cfg.teacher_seed))
    apply_fn, params = functional(model)
    reference = np.asarray(reference_set(cfg.task, n_ref, REFERENCE_SEED))

    return Task(cfg.task, 2, apply_fn, params, lambda key, n: data.sample(key, n), reference,
                PointCloud(reference, cfg.task).score)


TEACHER_FIELDS = ("task", "teacher_steps", "teacher_lr", "teacher_seed")


def teacher_config(cfg: Config) -> dict:
    """What the teacher depends on (a steps-aware student needs a label slot in its network)."""
    out = {k: getattr(cfg, k) for k in TEACHER_FIELDS}
    if cfg.steps_choices:
        out["num_labels"] = len(cfg.steps_choices)
    return out


def train_teacher(cfg: Config, task: Task, workdir: str):
    """Flow matching on the linear path (sigma_min 0): the marginal velocity every method assumes."""
    opt = make_optimizer(cfg.teacher_lr, schedule="cosine", num_steps=cfg.teacher_steps, clip_norm=1.0)
    state = init_train_state(task.init_params, opt, jax.random.key(cfg.teacher_seed), ema=True)
    step = make_train_step(flow_matching_loss(task.apply_fn, path=LinearPath()), opt, ema_decay=0.999)
    data_key = jax.random.key(cfg.teacher_seed + 1_000_003)
    batch_fn = lambda s: {"x": task.sample_data(jax.random.fold_in(data_key, s), 256)}  # noqa: E731
    result = train(
        state, step, batch_fn, num_steps=cfg.teacher_steps, workdir=workdir,
        config=teacher_config(cfg), resume_ignore=(),
        steps_per_call=min(500, cfg.teacher_steps), log_every=min(1000, cfg.teacher_steps),
        checkpoint_every=cfg.teacher_steps, desc="teacher",
    )
    return result.state.eval_params(), result.summary


def run_config(cfg: Config) -> dict:
    """The config saved with the distillation's checkpoints. Fields added later with an empty
    default are left out while empty, so runs written before they existed still resume."""
    out = {**as_dict(cfg), "teacher_dir": None}
    if not cfg.steps_choices:
        del out["steps_choices"]
    return out


def make_distiller(cfg: Config, task: Task, teacher) -> DistillationMethod:
    return Distiller(
        cfg.method, task.apply_fn, teacher,
        generator_optimizer=make_optimizer(cfg.lr, clip_norm=cfg.clip_norm),
        fake_optimizer=make_optimizer(cfg.effective_fake_lr, clip_norm=cfg.clip_norm),
        path=LinearPath(), student_steps=cfg.num_student_steps, phases=cfg.phases if cfg.method == "phased-dmd" else 1,
        steps_per_phase=cfg.steps // cfg.phases if cfg.method == "phased-dmd" else None,
        fake_updates=cfg.fake_updates, batch_size=cfg.batch_size, regression_weight=cfg.regression_weight,
        ema_decay=cfg.ema_decay, data_shape=(task.dim,),
        steps_choices=tuple(cfg.steps_choices), init_fn=labels_from_null if cfg.steps_choices else None,
    )


def load_run(run_dir: str):
    """(config, task, teacher params, distiller, final state) of a finished ``diffalign distill`` run."""
    import json

    from diffalign.checkpoint import Checkpointer

    with open(os.path.join(run_dir, "results.json")) as f:
        saved = json.load(f)["config"]
    cfg = build(Config, **{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    task = make_task(cfg, cfg.num_samples)
    opt = make_optimizer(cfg.teacher_lr, schedule="cosine", num_steps=cfg.teacher_steps, clip_norm=1.0)
    template = init_train_state(task.init_params, opt, jax.random.key(cfg.teacher_seed), ema=True)
    with Checkpointer(os.path.join(cfg.teacher_dir or os.path.join(run_dir, "teacher"), "checkpoints")) as ck:
        teacher = ck.restore(template)[0].eval_params()
    distiller = make_distiller(cfg, task, teacher)
    with Checkpointer(os.path.join(run_dir, "distill", "checkpoints")) as ck:
        state = ck.restore(distiller.init(jax.random.key(cfg.loop.seed)))[0]
    return cfg, task, teacher, distiller, state


def _sampler_nfe(name: str, steps: int) -> int:
    return 2 * steps if name == "heun" else steps


def evaluate_teacher(cfg: Config, task: Task, teacher_pred, z, teacher_dir: str):
    """The teacher at ``teacher_sample_steps`` Euler steps, at 1 step, and at the student's NFE
    with each few-step sampler (the best one named): (metrics, samples). Cached in the teacher's
    directory, since every run on the same teacher and evaluation noise gets the same answer."""
    import json

    K = cfg.num_student_steps
    stem = os.path.join(teacher_dir, f"eval-nfe{K}-n{cfg.num_samples}-ref{cfg.teacher_sample_steps}")
    if os.path.exists(stem + ".json") and os.path.exists(stem + ".npz"):
        with open(stem + ".json") as f:
            metrics = json.load(f)
        return metrics, dict(np.load(stem + ".npz"))

    def teacher_sample(name, steps):
        fn = jax.jit(lambda x: sample(None, teacher_pred, x, name, steps)[0])
        fn.lower(z).compile()
        t0 = time.perf_counter()
        x = np.asarray(jax.block_until_ready(fn(z)))
        return x, time.perf_counter() - t0

    metrics, samples = {}, {}
    x, secs = teacher_sample("euler", cfg.teacher_sample_steps)
    samples["teacher"] = x
    metrics["teacher"] = {**task.evaluate(x), "nfe": cfg.teacher_sample_steps, "sample_s": secs}
    metrics["teacher_nfe"] = cfg.teacher_sample_steps
    x1, _ = teacher_sample("euler", 1)
    metrics["teacher_1step"] = {**task.evaluate(x1), "nfe": 1}
    few = {}
    for name in FEW_STEP_SAMPLERS:
        steps = K // 2 if name == "heun" else K
        if steps < 1 or (name == "dpm++2m" and K < 2):
            continue
        xs, secs = teacher_sample(name, steps)
        few[name] = {**task.evaluate(xs), "nfe": _sampler_nfe(name, steps), "sample_s": secs}
        samples[f"teacher_{name}_{K}nfe"] = xs
    key_metric = "w2" if task.name != "digits" else "frechet_logits"
    best = min(few, key=lambda n: few[n][key_metric])
    metrics["teacher_few_step"] = few
    metrics["teacher_few_step_best"] = {"sampler": best, **few[best]}
    from diffalign.results import write_json

    write_json(stem + ".json", metrics)
    np.savez(stem + ".npz", **samples)
    return metrics, samples


def run(cfg: Config, out: str, smoke: bool = False) -> dict:
    cfg, out, timer = begin(cfg, out, smoke)
    task = make_task(cfg, cfg.num_samples)
    path = LinearPath()
    teacher_dir = cfg.teacher_dir or os.path.join(out, "teacher")
    with timer("teacher_train"):
        teacher, teacher_summary = train_teacher(cfg, task, teacher_dir)
    teacher_pred = Predictor(lambda x, t: task.apply_fn(teacher, x, t), path, "velocity")
    # one evaluation noise for every run (teacher and students see the same z)
    key = jax.random.key(EVAL_SEED)
    z = path.prior_sample(jax.random.fold_in(key, 0), (cfg.num_samples, task.dim))
    K = cfg.num_student_steps
    with timer("teacher_eval"):
        teacher_metrics, samples = evaluate_teacher(cfg, task, teacher_pred, z, teacher_dir)
    metrics: dict = {"task": cfg.task, "method": cfg.method, **teacher_metrics}

    regression = None
    if cfg.method == "dmd" and cfg.regression_weight > 0:
        with timer("regression_pairs"):
            zr = path.prior_sample(jax.random.key(cfg.loop.seed + 4242), (cfg.regression_pairs, task.dim))
            yr = jax.jit(lambda x: sample(None, teacher_pred, x, "euler", cfg.teacher_sample_steps)[0])(zr)
            regression = (zr, yr)

    distiller = make_distiller(cfg, task, teacher)
    state = distiller.init(jax.random.key(cfg.loop.seed))

    def batch_fn(step):
        if regression is None:
            return {}
        idx = jax.random.randint(jax.random.fold_in(jax.random.key(cfg.loop.seed + 77), step), (cfg.batch_size,), 0, cfg.regression_pairs)
        return {"z": regression[0][idx], "y": regression[1][idx]}

    with timer("distill"):
        result = train(
            state, distiller.make_step(), batch_fn, num_steps=cfg.steps, workdir=os.path.join(out, "distill"),
            config=run_config(cfg), resume_ignore=("num_samples", "log_every", "teacher_dir"),
            desc=f"{cfg.method}", **cfg.loop.train_kwargs(),
        )
    state = result.state
    gen = jax.jit(lambda x, k: distiller.sample(distiller.generator_params(state), x, k))
    k_s = jax.random.fold_in(jax.random.key(cfg.loop.seed), 2)
    gen.lower(z, k_s).compile()
    t0 = time.perf_counter()
    xs = np.asarray(jax.block_until_ready(gen(z, k_s)))
    student_secs = time.perf_counter() - t0
    samples["student"] = xs
    metrics["student"] = {**task.evaluate(xs), "nfe": K, "sample_s": student_secs}
    if cfg.steps_choices:  # the steps-aware student at each of its K
        metrics["student_by_steps"] = {}
        for k in cfg.steps_choices:
            xk = np.asarray(jax.jit(lambda x, kk, k=k: distiller.sample(distiller.generator_params(state), x, kk, steps=k))(z, k_s))
            metrics["student_by_steps"][str(k)] = {**task.evaluate(xk), "nfe": k}
            samples[f"student_{k}steps"] = xk
    metrics["student_nfe"] = K
    if task.name != "digits":
        metrics["teacher_w2"] = metrics["teacher"]["w2"]
        metrics["student_w2"] = metrics["student"]["w2"]
        metrics["student_over_teacher_w2"] = metrics["student_w2"] / metrics["teacher_w2"]
        metrics["teacher_few_step_w2"] = metrics["teacher_few_step_best"]["w2"]
    metrics["sampling_speedup"] = metrics["teacher"]["sample_s"] / max(student_secs, 1e-9)
    metrics["fake_updates"] = int(distiller.fake_updates_done(state))
    metrics["final_metrics"] = result.summary["final_metrics"]

    np.savez(os.path.join(out, "samples.npz"), reference=task.reference, noise=np.asarray(z), **samples)
    picture = _picture(out, cfg, task, samples, metrics)
    timings = timer.timings(
        teacher_train_run_s=teacher_summary["train_s"], distill_compile_s=result.summary["compile_s"],
        distill_run_s=result.summary["train_s"], distill_steps_per_sec=result.summary["steps_per_sec"],
    )
    write_results(out, experiment=NAME, config=cfg, metrics=metrics, timings=timings,
                  extra={"smoke": smoke, "teacher_summary": teacher_summary, "distill_summary": result.summary, "picture": picture})
    return metrics


def _picture(out, cfg, task, samples, metrics):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"note: no picture written ({e})")
        return None
    K = metrics["student_nfe"]
    best = metrics["teacher_few_step_best"]["sampler"]
    panels = [
        ("teacher", f"teacher, {metrics['teacher_nfe']} NFE", metrics["teacher"]),
        (f"teacher_{best}_{K}nfe", f"teacher {best}, {metrics['teacher_few_step_best']['nfe']} NFE", metrics["teacher_few_step_best"]),
        ("student", f"{cfg.method} student, {K} NFE", metrics["student"]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    for ax, (key, title, ev) in zip(axes, panels):
        x = samples[key]
        if task.name == "digits":
            tiles = np.pad(np.clip((x[:64].reshape(8, 8, 8, 8) + 1) / 2, 0, 1), ((0, 0), (0, 0), (0, 1), (0, 1)))
            grid = tiles.transpose(0, 2, 1, 3).reshape(72, 72)
            ax.imshow(grid, cmap="gray_r")
            ax.set_title(f"{title}\nFD(logits) {ev['frechet_logits']:.2f}")
            ax.axis("off")
        else:
            ax.scatter(task.reference[:2000, 0], task.reference[:2000, 1], s=1, c="0.8")
            ax.scatter(x[:2000, 0], x[:2000, 1], s=1)
            ax.set_title(f"{title}\nW2 {ev['w2']:.3f}")
            ax.set_aspect("equal")
    fig.tight_layout()
    path = os.path.join(out, "samples.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
