"""Reward alignment of a pretrained flow model: AWM, the DDPO / Flow-GRPO baseline, and preference
objectives on the same rollouts.

Tasks:
* ``ring``: a flow model pretrained on 8 gaussians (radius 4, std 0.3); reward 1 for a sample
  in one of two chosen modes (within 4 std), base rate about 0.24.
* ``digits``: a flow model pretrained on scikit-learn's 8x8 digits; reward = a logistic-regression
  classifier's probability of one class.
* ``qm9``: a GDSS model trained on QM9 (``diffalign graphs train``); reward = QED (RDKit) of
  molecules valid without correction (``experiments/align_qm9.py``).

Each epoch: ``samples_per_epoch`` rollouts (14-step Euler ODE; the DDPO SDE for ``ddpo``), rewards,
one optimizer update. Writes ``results.json`` (``final_reward``, ``epochs_to_target``, per-epoch
``curves`` of reward and drift), ``samples.npz`` and ``alignment.png``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffalign import align
from diffalign.align import rl
from diffalign.align.lora import lora
from diffalign.align.tasks import RingReward
from diffalign.metrics.digits import DigitClass, DigitClassifier
from diffalign.losses import flow_matching_loss
from diffalign.models import MLP, functional
from diffalign.training import NonFiniteLossError, init_train_state, make_optimizer, make_train_step, train

from diffalign.config import LoopConfig, as_dict, field, replace, require_positive, validate_choices
from diffalign.results import begin, write_results

NAME = "align"
DESCRIPTION = (
    "Align a pretrained flow model with a reward: AWM (advantage weighted matching), the DDPO / "
    "Flow-GRPO policy gradient, or a preference objective (rwr, kto, bco) on the same rollouts; "
    "reward and drift curves per epoch."
)
METHODS = ("awm", "ddpo", "rwr", "kto", "bco")
TASKS = ("ring", "digits", "qm9")
TASK_DEFAULTS = {
    "epochs": {"ring": 100, "digits": 100, "qm9": 200},
    "samples_per_epoch": {"ring": 512, "digits": 512, "qm9": 64},
    "lr": {"ring": 1e-3, "digits": 1e-3, "qm9": 1e-4},
    "rollout_steps": {"ring": 14, "digits": 14, "qm9": 1000},
    "eval_samples": {"ring": 4096, "digits": 4096, "qm9": 10_000},
}


@dataclasses.dataclass(frozen=True)
class Config:
    task: str = field("ring", "what to align", choices=TASKS)
    method: str = field("awm", "objective (qm9: awm only)", choices=METHODS)
    epochs: int = field(0, "RL epochs, one update each (0: the task's, ring/digits 100, qm9 200)")
    samples_per_epoch: int = field(0, "rollouts per epoch, one group (0: the task's, ring/digits 512, qm9 64)")
    rollout_steps: int = field(0, "sampler steps of a rollout (0: the task's, ring/digits 14 Euler steps, qm9 the GDSS "
                                  "config's 1000)")
    num_times: int = field(6, "AWM: re-noising times per sample (stratified)")
    lr: float = field(0.0, "learning rate, Adam with clipped gradient norm (0: the task's, ring/digits 1e-3, qm9 1e-4)")
    clip_norm: float = field(1.0, "global gradient-norm clip")
    weighting: str = field("ghuber", "AWM log-likelihood surrogate", choices=align.WEIGHTINGS)
    beta: float = field(1e-3, "AWM: weight of ||v - v_ref||^2 to the frozen pretrained model")
    beta_ema: float = field(1.0, "AWM: weight of ||v - v_ema||^2 to the EMA anchor (0 = off: diverges)")
    pref_beta: float = field(100.0, "kto / bco: beta on g = l_ref - l_theta")
    rwr_temperature: float = field(0.2, "rwr: softmax temperature on rewards")
    target: float = field(0.0, "fraction in target for epochs_to_target (0: the task's own, ring 0.9, digits 0.8)")
    target_class: int = field(3, "digits: the rewarded class")
    eval_samples: int = field(0, "samples of the final evaluation (0: the task's, ring/digits 4096, qm9 10000)")
    pretrain_steps: int = field(4000, "flow-matching pretraining steps (ring; digits uses 4x)")
    gdss_run: str = field("", "qm9: a `diffalign graphs train --dataset QM9` run directory (with --smoke and none "
                              "given, a tiny model is trained)")
    base_samples: str = field("", "qm9: the base model's quantized samples (samples_seed0.npz of `graphs sample` on "
                                  "gdss_run) to score instead of sampling the base model again")
    lora_rank: int = field(0, "train LoRA adapters of this rank on every weight matrix (0 = all parameters)")
    pretrain_dir: str = field("", "ring/digits: reuse the pretraining in this directory (an earlier run's OUT/pretrain)")
    pretrain_seed: int = field(0, "pretraining seed (shared by runs that compare methods)")
    loop: LoopConfig = field(
        LoopConfig(steps_per_call=1, log_every=1, checkpoint_every=25), "the RL loop (one step is one epoch)",
        nested_help={"seed": "RL seed (rollouts, re-noising)", "steps_per_call": "RL epochs per compiled chunk",
                     "log_every": "log interval in epochs (one row of the curves per log)",
                     "checkpoint_every": "checkpoint interval in epochs"})

    def __post_init__(self):
        validate_choices(self)
        for name, per_task in TASK_DEFAULTS.items():  # 0 = the task's default, resolved here
            if not getattr(self, name):
                object.__setattr__(self, name, per_task[self.task])
        if self.task == "qm9" and self.method != "awm":
            raise ValueError(f"the qm9 task runs awm only, got --method {self.method}")
        require_positive(self, "epochs", "samples_per_epoch", "num_times", "eval_samples", "pretrain_steps")
        if self.rollout_steps < 2:
            raise ValueError(f"rollout_steps must be >= 2, got {self.rollout_steps}")
        if self.lr <= 0 or self.clip_norm <= 0:
            raise ValueError(f"lr and clip_norm must be positive, got {self.lr}, {self.clip_norm}")
        if self.beta < 0 or self.beta_ema < 0:
            raise ValueError(f"beta and beta_ema must be >= 0, got {self.beta}, {self.beta_ema}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        if self.task == "qm9" and self.lora_rank:
            raise ValueError("the qm9 task trains all parameters (no --lora-rank)")
        if not 0 <= self.target_class < 10:
            raise ValueError(f"target_class must be a digit 0-9, got {self.target_class}")

    @property
    def target_level(self) -> float:
        return self.target or {"ring": 0.9, "digits": 0.8, "qm9": 1.0}[self.task]

    def smoke(self) -> "Config":
        small = {"epochs": 6, "samples_per_epoch": 64, "eval_samples": 256, "pretrain_steps": 200, "checkpoint_every": 3}
        if self.task == "qm9":
            small.update(epochs=3, samples_per_epoch=8, eval_samples=64, rollout_steps=50)
        return replace(self, **small)


# ----------------------------------------------------------------------------- tasks


class Task:
    """A pretrained model's definition, its data and its reward, for one task."""

    def __init__(self, cfg: Config):
        if cfg.task == "ring":
            from diffalign.data.toy2d import get_dataset

            self.shape = (2,)
            self.hidden, self.time_features = (256, 256, 256), 16
            self.pretrain_steps, self.batch = cfg.pretrain_steps, 512
            ring = get_dataset("ring")
            self.data = lambda key, n: ring.sample(key, n)
            self.reward = RingReward()
            self.metrics_fn = self.reward.metrics
        else:
            from diffalign.data import digits as D

            train_set, _ = D.load_digits()
            self.levels, self.labels = train_set["k"].reshape(-1, 64), train_set["y"]
            self.shape = (64,)
            self.hidden, self.time_features = (512, 512, 512), 16
            self.pretrain_steps, self.batch = 4 * cfg.pretrain_steps, 256
            levels = jnp.asarray(self.levels)
            self.data = lambda key, n: D.dequantize(key, levels[jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, len(levels))])
            self.classifier = DigitClassifier(self.levels, self.labels)
            self.reward = self.classifier.reward(cfg.target_class)
            self.metrics_fn = self.classifier.metrics(cfg.target_class)

    def model(self, seed: int):
        return functional(MLP(self.shape[0], self.hidden, activation="silu", time_features=self.time_features,
                              rngs=nnx.Rngs(seed)))


# ----------------------------------------------------------------------------- stages


def pretrain(task: Task, cfg: Config, workdir: str | None):
    """Flow-matching pretraining of the task's model (checkpointed and resumable in ``workdir``)."""
    apply_fn, params = task.model(cfg.pretrain_seed)
    opt = make_optimizer(1e-3)
    state = init_train_state(params, opt, jax.random.key(cfg.pretrain_seed), ema=False)
    step = make_train_step(flow_matching_loss(apply_fn), opt)
    data_key = jax.random.key(cfg.pretrain_seed + 1_000_003)
    result = train(
        state, step, lambda s: {"x": task.data(jax.random.fold_in(data_key, s), task.batch)},
        num_steps=task.pretrain_steps, workdir=workdir, steps_per_call=500, log_every=500,
        checkpoint_every=task.pretrain_steps, desc="pretrain",
        config={"task": cfg.task, "pretrain_steps": task.pretrain_steps, "pretrain_seed": cfg.pretrain_seed},
    )
    return apply_fn, result.state.params, result.summary


def objective(cfg: Config, apply_fn, task: Task):
    """(prepare, loss_fn, transform) of one method on the task's rollouts: the rollout stage and
    the rows the method trains on."""
    stochastic = cfg.method == "ddpo"
    rollout = rl.flow_rollout(cfg.samples_per_epoch, task.shape, steps=cfg.rollout_steps,
                              sampler="sde" if stochastic else "euler")
    prepare = rl.rollout_stage(apply_fn, rollout, task.reward, metrics_fn=task.metrics_fn)
    if stochastic:  # the DDPO baseline: every transition but the deterministic last, on-policy
        return prepare, rl.flow_grpo_rows(apply_fn), align.awm(weighting="uniform")
    loss_fn = rl.matching_rows(rl.flow_matching(apply_fn), num_times=cfg.num_times)
    if cfg.method == "awm":
        return prepare, loss_fn, align.awm(weighting=cfg.weighting, beta=cfg.beta, beta_ema=cfg.beta_ema)
    if cfg.method == "rwr":
        return prepare, loss_fn, align.rwr(cfg.rwr_temperature)

    # kto / bco: a sample is desirable when its reward beats its group's mean
    def labelled(params, batch, key, aux):
        out = loss_fn(params, batch, key, aux)
        return {**out, "label": (align.advantages(out) > 0).astype(jnp.float32)}

    return prepare, labelled, (align.kto if cfg.method == "kto" else align.bco)(cfg.pref_beta)


def first_epoch_at(curve, target):
    """1-based epoch at which ``curve`` first reaches ``target`` (None if never)."""
    hit = np.flatnonzero(np.asarray(curve) >= target)
    return int(hit[0]) + 1 if hit.size else None


def stability(curve, tolerance: float = 0.1) -> bool:
    """No NaN, and the reward never falls more than ``tolerance`` below its best so far."""
    c = np.asarray(curve, float)
    return bool(np.all(np.isfinite(c)) and np.all(np.maximum.accumulate(c) - c <= tolerance))


class AlignResult(NamedTuple):
    state: object  # the final TrainState (None if the run diverged); its params are adapters under LoRA
    params: object  # the aligned network's full parameters (None if it diverged)
    rows: list  # per-epoch metrics
    summary: dict


def align_run(cfg: Config, task: Task, apply_fn, ref_params, workdir: str | None, progress: bool = True) -> AlignResult:
    """The RL epochs, on all parameters or, with ``lora_rank``, on LoRA adapters of the pretrained model."""
    merge = None
    if cfg.lora_rank:
        apply_fn, init = lora(apply_fn, ref_params, jax.random.key(cfg.loop.seed + 99), rank=cfg.lora_rank)
        merge = apply_fn.merged
    else:
        init = ref_params
    prepare, loss_fn, transform = objective(cfg, apply_fn, task)
    opt = make_optimizer(cfg.lr, clip_norm=cfg.clip_norm)
    aux = rl.awm_aux(init)  # under LoRA the reference is the adapters' initial value: the base model
    state = init_train_state(init, opt, jax.random.key(cfg.loop.seed), transform, ema=False, aux=aux)
    step = make_train_step(loss_fn, opt, transform, prepare=prepare, aux_update=rl.ema_anchor_update)
    rows: list[dict] = []
    try:
        result = train(
            state, step, lambda s: {}, num_steps=cfg.epochs, workdir=workdir, config=as_dict(cfg), progress=progress,
            desc=f"{cfg.method}", on_log=lambda s, m: rows.append(m), resume_ignore=("eval_samples", "pretrain_dir"),
            **cfg.loop.train_kwargs(),
        )
        state, summary = result.state, result.summary
    except NonFiniteLossError as e:  # a diverging objective is a result, not a crash
        state, summary = None, {"diverged_at": e.step + 1, "message": str(e), "compile_s": None, "train_s": None}
    if workdir is not None:  # a resumed run: the earlier epochs' rows come from the log
        from diffalign.training.logger import read_log

        rows = [{k: v for k, v in r.items() if k != "step"} for r in read_log(workdir)][-cfg.epochs:]
    params = None if state is None else (merge(state.params) if merge else state.params)
    return AlignResult(state, params, rows, summary)


def evaluate(task: Task, apply_fn, params, n: int, seed: int):
    """40-step Euler ODE samples and the task's metrics on them."""
    x1 = jax.random.normal(jax.random.key(seed), (n, *task.shape))
    x = jax.jit(lambda p, x1: rl.sample_flow(None, apply_fn, p, x1, 40))(params, x1)
    m = {k: float(v) for k, v in task.metrics_fn(x).items()}
    m["reward"] = float(jnp.mean(task.reward(x)))
    return np.asarray(x), m


def run(cfg: Config, out: str, smoke: bool = False) -> dict:
    cfg, out, timer = begin(cfg, out, smoke)
    if cfg.task == "qm9":
        from .align_qm9 import run_qm9

        return run_qm9(cfg, out, timer, smoke)
    task = Task(cfg)
    with timer("pretrain"):
        apply_fn, ref_params, pre_summary = pretrain(task, cfg, cfg.pretrain_dir or os.path.join(out, "pretrain"))
    with timer("align"):
        state, params, rows, summary = align_run(cfg, task, apply_fn, ref_params, os.path.join(out, "align"))
    if state is None:
        print(f"note: {summary['message']}")
        curves = {k: [r.get(k) for r in rows] for k in rows[0]} if rows else {}
        metrics = {"final_reward": None, "epochs_to_target": None, "diverged_at": summary["diverged_at"], "stable": False}
        write_results(out, experiment=NAME, config=cfg, metrics=metrics, timings=timer.times,
                      extra={"smoke": smoke, "curves": curves, "final_reward": None, "epochs_to_target": None,
                             "divergence": summary["message"]})
        return metrics
    with timer("eval"):
        base_x, base = evaluate(task, apply_fn, ref_params, cfg.eval_samples, 777)
        x, final = evaluate(task, apply_fn, params, cfg.eval_samples, 777)
    curve_keys = [k for k in rows[0] if k not in ("steps_per_sec",)] if rows else []
    curves = {k: [r.get(k) for r in rows] for k in curve_keys}
    score = "in_target"
    metrics = {
        "final_reward": final["in_target"] if cfg.task == "ring" else final["reward"],
        "base_reward": base["in_target"] if cfg.task == "ring" else base["reward"],
        "epochs_to_target": first_epoch_at(curves.get(score, []), cfg.target_level),
        "stable": stability(curves.get(score, [])),
        "final_drift": curves["drift"][-1] if curves.get("drift") else None,
        "final": final,
        "base": base,
    }
    if cfg.task == "digits":
        real = task.levels[task.labels == cfg.target_class]
        judge = DigitClass(task.classifier, real, cfg.target_class)
        metrics["base_class"], metrics["final_class"] = judge.score(base_x), judge.score(x)
        metrics["target_fraction"] = metrics["final_class"]["class_fraction"]
        metrics["base_target_fraction"] = metrics["base_class"]["class_fraction"]
        if "frechet_logits" in metrics["final_class"] and "frechet_logits" in metrics["base_class"]:
            metrics["frechet_ratio"] = metrics["final_class"]["frechet_logits"] / metrics["base_class"]["frechet_logits"]
            metrics["frechet_pca16_ratio"] = metrics["final_class"]["frechet_pca16"] / metrics["base_class"]["frechet_pca16"]
            metrics["diversity_ratio"] = metrics["final_class"]["diversity_ratio"]
    if cfg.task == "ring":
        shares = [final[f"mode{m}_share"] for m in task.reward.modes]
        metrics["rewarded_mode_balance"] = shares[0] / max(sum(shares), 1e-9)
        metrics["base_rewarded_mode_balance"] = base["mode0_share"] / max(base["mode0_share"] + base["mode1_share"], 1e-9)
    np.savez(os.path.join(out, "samples.npz"), samples=x, base_samples=base_x)
    picture = _plot(os.path.join(out, "alignment.png"), cfg, task, base_x, x, curves, score)
    metrics["diverged_at"] = None
    timings = timer.timings(**{"pretrain_compile_s": pre_summary["compile_s"], "align_compile_s": summary["compile_s"],
               "align_run_s": summary["train_s"], "epoch_s": summary["train_s"] / max(summary["steps_run"], 1)})
    write_results(out, experiment=NAME, config=cfg, metrics=metrics, timings=timings,
                  extra={"smoke": smoke, "curves": curves, "picture": picture,
                         "final_reward": metrics["final_reward"], "epochs_to_target": metrics["epochs_to_target"]})
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def _plot(path, cfg, task, base_x, x, curves, score):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"note: no picture written ({e})")
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    if cfg.task == "ring":
        for ax, pts, title in ((axes[0], base_x, "pretrained"), (axes[1], x, f"after {cfg.method}")):
            ax.scatter(pts[:2000, 0], pts[:2000, 1], s=2, alpha=0.5)
            c = np.asarray(task.reward.centres)
            ax.scatter(c[list(task.reward.modes), 0], c[list(task.reward.modes), 1], marker="*", s=120, c="red")
            ax.set(title=title, xlim=(-6, 6), ylim=(-6, 6), aspect="equal")
    else:
        for ax, pts, title in ((axes[0], base_x, "pretrained"), (axes[1], x, f"after {cfg.method}")):
            grid = np.clip((pts[:64].reshape(8, 8, 8, 8) + 1) / 2, 0, 1).transpose(0, 2, 1, 3).reshape(64, 64)
            ax.imshow(grid, cmap="gray_r")
            ax.set(title=title, xticks=[], yticks=[])
    ep = np.arange(1, len(curves.get(score, [])) + 1)
    axes[2].plot(ep, curves.get(score, []), label=score)
    if curves.get("drift"):
        ax2 = axes[2].twinx()
        ax2.plot(ep, curves["drift"], color="tab:orange", label="drift")
        ax2.set_ylabel("E||v - v_ref||^2 at t = 0.5")
    axes[2].axhline(cfg.target_level, ls=":", c="gray")
    axes[2].set(xlabel="epoch", ylabel=score, title=f"{cfg.method}, lr {cfg.lr:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.path.basename(path)
