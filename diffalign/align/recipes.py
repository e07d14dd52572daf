"""Each alignment method's published recipe, as one training step on the shared core.

A recipe is data: the rollout sampler and who samples, the rows and their times, the objective
and its constants, the regularisers, the lagged copies and the updates per epoch. ``build``
turns one into ``(step, state)`` for ``training.train`` (``make_train_step`` with the rollout
stage as its ``prepare``). Sources: ``shared/reference/alignment-methods-2.md`` (section 5's
table) and ``awm-and-preference-objectives.md``; the images-scale constants that do not
transfer to small models (learning rate, DPO's beta) are the benchmark's to tune.

* ``awm``: 14-step Euler ODE rollouts by the current policy; 6 stratified re-noising times;
  ghuber surrogate; beta 1e-3 to the reference and 1 to the EMA anchor (min(0.3, 0.001 n)).
* ``flow_grpo``: 10-step SDE rollouts (a = 0.7, every step stochastic) with stored
  log-probabilities; the first 9 transitions trained; clip 1e-4; advantages clip(A, -5, 5); the
  code's KL to the reference, 0.04; two updates per epoch (the halves of the batch).
* ``nft``: 10-step DPM-Solver++(2M) rollouts by the old policy (min(0.5, 0.001 n) lag); 9 of
  the 10 grid times per sample; mixing beta 1; the code's x0-normalised branches times 5
  (``objective={"weighting": "velocity", "scale": 1.0}`` is the paper's form); KL 1e-4 to the
  reference.
* ``dpo``: online Diffusion-DPO as Flow-GRPO's port: 40-step SDE rollouts by the current
  policy, each group's best vs worst sample (tied groups skipped), 39 logit-normal times per
  pair with shared noise, beta 100, the reference frozen.
* ``kto``: Diffusion-KTO online on the same rollouts: desirable = reward above the group mean
  (tied groups unlabelled), one logit-normal time per sample, beta 100.
* ``rwr``: reward-weighted regression (softmax over the batch's rewards at temperature 0.2) on
  AWM's rows and rollouts, no regulariser: the simplest baseline.

``regime="equalised"`` gives every method the same regularisers, AWM's (1e-3 to the reference,
1 to the EMA anchor, in the velocity gap), in place of its own; the sampler, rows and objective
stay the method's.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ..losses.transforms import regularised
from ..training import init_train_state, make_optimizer, make_train_step
from . import rl
from .awm import awm, ema_anchor_decay, flow_grpo
from .nft import nft
from .preference import dpo, kto, rwr

METHODS = ("awm", "flow_grpo", "nft", "dpo", "kto", "rwr")
REGIMES = ("own", "equalised")
EQUALISED = {"drift_ref": 1e-3, "drift_ema": 1.0}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One method's settings. ``penalties``: weights of per-row regularisers by name (see
    ``rl``); ``objective``: the transform's own constants."""

    method: str
    sampler: str
    rollout_steps: int
    policy: str = "params"
    noisy_last: bool = False
    rows: str = "matching"  # or "flow_grpo"
    times: str = "stratified"
    num_times: int = 6
    grid_steps: int = 10
    train_steps: int | None = None
    pairs: bool = False
    minibatches: int = 1
    objective: tuple = ()
    penalties: tuple = ()

    @property
    def frozen(self) -> tuple[str, ...]:
        """The frozen parameter sets the rows evaluate (aux entries)."""
        need = {"ref"} if self.method in ("dpo", "kto") else set()
        names = {"drift_ref": "ref", "kl_ref": "ref", "drift_ema": "anchor", "kl_ema": "anchor"}
        need |= {names[k] for k, w in self.penalties if w}
        if self.method == "nft":
            need.add("old")
        return tuple(n for n in ("ref", "anchor", "old") if n in need)


def recipe(method: str, regime: str = "own", **overrides) -> Recipe:
    """The published recipe of ``method`` (``METHODS``), with its regularisers or, under
    ``regime="equalised"``, AWM's; ``overrides`` replace fields (``objective`` and ``penalties``
    are dicts here)."""
    if method not in METHODS:
        raise ValueError(f"unknown alignment method {method!r}; expected one of {METHODS}")
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; expected one of {REGIMES}")
    own = {
        "awm": dict(sampler="euler", rollout_steps=14, objective={"weighting": "ghuber"},
                    penalties={"drift_ref": 1e-3, "drift_ema": 1.0}),
        "flow_grpo": dict(sampler="sde", rollout_steps=10, noisy_last=True, rows="flow_grpo", train_steps=9,
                          minibatches=2, objective={"clip_eps": 1e-4}, penalties={"kl_ref": 0.04}),
        "nft": dict(sampler="dpm2", rollout_steps=10, policy="old", times="grid", num_times=9, grid_steps=10,
                    objective={"beta": 1.0, "weighting": "x0", "scale": 5.0}, penalties={"drift_ref": 1e-4}),
        "dpo": dict(sampler="sde", rollout_steps=40, noisy_last=True, times="logit_normal", num_times=39, pairs=True,
                    objective={"beta": 100.0}),
        "kto": dict(sampler="sde", rollout_steps=40, noisy_last=True, times="logit_normal", num_times=1,
                    objective={"beta": 100.0}),
        "rwr": dict(sampler="euler", rollout_steps=14, objective={"temperature": 0.2}),
    }[method]
    if regime == "equalised":
        own["penalties"] = dict(EQUALISED)
    own.update(overrides)
    own["objective"] = tuple(sorted(dict(own.get("objective", {})).items()))
    own["penalties"] = tuple(sorted(dict(own.get("penalties", {})).items()))
    return Recipe(method=method, **own)


def transform(r: Recipe):
    """The recipe's loss transform: the method's objective plus its penalties."""
    o, pen = dict(r.objective), dict(r.penalties)
    if r.method == "awm":  # its own beta / beta_ema are these penalties
        return regularised(awm(**o), **pen)
    if r.method == "flow_grpo":
        return regularised(flow_grpo(beta=0.0, **o), **pen)
    if r.method == "nft":
        return regularised(nft(**o), **pen)
    if r.method == "dpo":
        return regularised(dpo(**o), **pen)
    if r.method == "kto":
        return regularised(kto(**o), **pen)
    return regularised(rwr(**o), **pen)


class Aligner(NamedTuple):
    step: Callable  # make_train_step(...): one epoch
    state: object  # its initial TrainState
    recipe: Recipe
    evals_per_epoch: dict  # network passes of one epoch: rollout / forward / backward / total


def _labelled(loss_fn):
    """KTO's labels from the group advantages: desirable above the group mean; a sample at its
    group's mean (every sample of a tied group) carries no label (mask 0)."""

    def labelled(params, batch, key, aux=None):
        out = loss_fn(params, batch, key, aux)
        return {**out, "label": (out["advantage"] > 0).astype(jnp.float32),
                "mask": (out["advantage"] != 0).astype(jnp.float32)}

    return labelled


def assemble(r: Recipe, prepare: Callable, loss_fn: Callable, params, *, rows: int, rollout_evals: int, lr: float,
             seed: int = 0, clip_norm: float = 1.0) -> Aligner:
    """The step and initial state of ``r`` from its rollout stage and rows function (any model
    family): the frozen sets the recipe needs in ``aux`` (all at ``params``), their lagged
    updates, the transform, Adam with a clipped gradient norm, ``r.minibatches`` updates per
    epoch; and the epoch's network passes (``rows`` policy rows, ``rollout_evals`` rollout
    forwards)."""
    if r.method == "kto":
        loss_fn = _labelled(loss_fn)
    frozen = r.frozen
    aux = {name: params for name in frozen} or None
    lag = {k: v for k, v in (("anchor", ema_anchor_decay), ("old", rl.nft_old_decay)) if k in frozen}
    tr = transform(r)
    opt = make_optimizer(lr, clip_norm=clip_norm)
    step = make_train_step(loss_fn, opt, tr, prepare=prepare, minibatches=r.minibatches,
                           aux_update=rl.lagged_update(**lag) if lag else None)
    state = init_train_state(params, opt, jax.random.key(seed), tr, ema=False, aux=aux)
    forward = rollout_evals + rows * (1 + len(frozen))
    evals = {"rollout": rollout_evals, "rows": rows, "forward": forward, "backward": rows, "total": forward + rows}
    return Aligner(step, state, r, evals)


def matching_row_count(r: Recipe, samples: int, group_size: int) -> int:
    """Policy rows per epoch of a matching-loss recipe: K per sample, or per paired sample."""
    return (2 * samples // group_size if r.pairs else samples) * r.num_times


def build(r: Recipe, apply_fn: Callable, params, reward_fn: Callable, shape: tuple[int, ...], *, samples: int,
          group_size: int, lr: float, seed: int = 0, clip_norm: float = 1.0,
          metrics_fn: Callable | None = None) -> Aligner:
    """One epoch of ``r`` on a flow model as a training step, and its initial state (the policy
    and every frozen set at ``params``). ``samples`` rollouts per epoch in pseudo-groups of
    ``group_size``."""
    rollout = rl.flow_rollout(samples, shape, steps=r.rollout_steps, sampler=r.sampler, noisy_last=r.noisy_last,
                              group_size=group_size)
    prepare = rl.rollout_stage(apply_fn, rollout, reward_fn, policy=r.policy, metrics_fn=metrics_fn)
    if r.rows == "flow_grpo":
        loss_fn = rl.flow_grpo_rows(apply_fn, train_steps=r.train_steps)
        rows = samples * (r.train_steps or r.rollout_steps - 1)
    else:
        loss_fn = rl.matching_rows(rl.flow_matching(apply_fn), num_times=r.num_times, times=r.times,
                                   grid_steps=r.grid_steps, pair_group_size=group_size if r.pairs else 0,
                                   residuals=dict(r.objective).get("weighting") == "x0")
        rows = matching_row_count(r, samples, group_size)
    return assemble(r, prepare, loss_fn, params, rows=rows, rollout_evals=samples * r.rollout_steps, lr=lr, seed=seed,
                    clip_norm=clip_norm)
