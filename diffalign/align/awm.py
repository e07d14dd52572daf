"""Advantage Weighted Matching (Xue et al., arXiv 2509.25050): advantages and the loss transform.

AWM trains the policy on its own samples with the *pretraining* matching loss, each sample
weighted by its advantage. The released recipe (method notes:
``shared/reference/awm-and-preference-objectives.md`` section 1):

* advantages: A_i = clip((r_i - mean of r over i's group) / (std of r over the batch + 1e-4),
  -5, 5) / 5 (``group_advantages``);
* per sample and re-noising time, a log-likelihood surrogate log p = -(t/p)[(l + d)^p - d^p]
  with p = 0.25, d = 1e-10 ("ghuber"; ``"uniform"`` is -l);
* the objective: mean over samples and times of max(-A rho, -A clip(rho, 1 - eps, 1 + eps)),
  rho = exp(log p - stopgrad(log p_old)) (on-policy, log p_old is log p itself: rho = 1 and
  grad rho = grad log p), plus beta ||v - v_ref||^2 and beta_ema ||v - v_ema||^2, read as
  per-example ``drift_ref`` and ``drift_ema`` when the loss function provides them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..losses.transforms import LossTransform, masked_mean, penalties, per_example_of, regularised

WEIGHTINGS = ("ghuber", "uniform")


def group_advantages(rewards, groups, num_groups: int, *, clip: float = 5.0, eps: float = 1e-4):
    """AWM / GRPO advantages: reward minus its group's mean, over the whole batch's std (+ eps),
    clipped to [-clip, clip] and divided by ``clip`` (so in [-1, 1]).

    ``groups`` holds each sample's group index in [0, num_groups). A group whose rewards are all
    equal gets zero advantage; so does a batch with one reward value.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1 or jnp.shape(groups) != rewards.shape:
        raise ValueError(f"rewards and groups must be (B,) arrays, got {rewards.shape} and {jnp.shape(groups)}")
    total = jax.ops.segment_sum(rewards, groups, num_groups)
    count = jax.ops.segment_sum(jnp.ones_like(rewards), groups, num_groups)
    centred = rewards - (total / jnp.maximum(count, 1.0))[groups]
    # exactly zero for a group of equal rewards (the rounded mean would leave ~1e-8, which the
    # eps-sized std divides into a visible advantage and Adam into a full step)
    spread = jax.ops.segment_max(rewards, groups, num_groups) - jax.ops.segment_min(rewards, groups, num_groups)
    centred = jnp.where(spread[groups] > 0, centred, 0.0)
    return jnp.clip(centred / (jnp.std(rewards) + eps), -clip, clip) / clip


def log_likelihood_surrogate(loss, t, weighting: str = "ghuber", p: float = 0.25, delta: float = 1e-10):
    """AWM's per-sample log p: -(t/p)[(l + delta)^p - delta^p] ("ghuber") or -l ("uniform")."""
    if weighting == "uniform":
        return -loss
    if weighting != "ghuber":
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    return -(t / p) * ((loss + delta) ** p - delta**p)


def awm(*, weighting: str = "ghuber", clip_eps: float = 1.0, beta: float = 0.0, beta_ema: float = 0.0,
        advantage_scale: float = 1.0) -> LossTransform:
    """The AWM objective as a loss transform.

    Reads from the loss function's output: ``per_example`` (the matching loss l of each
    (sample, time) row), ``advantage`` (its sample's advantage, a constant) or else ``reward``
    and optionally ``group`` (turned into advantages by ``group_advantages``; a reward
    transform chained in front with ``with_rewards`` rewrites them first), ``t`` (the row's
    time, for "ghuber"), optionally ``logp_old`` (off-policy; default: on-policy), ``drift_ref``
    and ``drift_ema`` (per-row ||v - v_ref||^2 and ||v - v_ema||^2, required when beta or
    beta_ema is non-zero). With zero advantages and beta = beta_ema = 0 its gradient is zero.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be positive, got {clip_eps}")
    regularisers = penalties(drift_ref=beta, drift_ema=beta_ema)

    def apply(out, state, step):
        loss = per_example_of(out)
        if weighting == "ghuber" and "t" not in out:
            raise KeyError("the awm transform with ghuber weighting reads the rows' times out['t'], which is missing")
        adv = advantage_scale * jax.lax.stop_gradient(advantages(out)).astype(loss.dtype)
        logp = log_likelihood_surrogate(loss, jax.lax.stop_gradient(out.get("t", 0.0)), weighting)
        old = jax.lax.stop_gradient(out["logp_old"] if "logp_old" in out else logp)
        ratio = jnp.exp(logp - old)
        policy = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps))
        total = masked_mean(policy, out)
        clipped = (jnp.abs(ratio - 1.0) > clip_eps).astype(loss.dtype)
        penalty, _, terms = regularisers.apply(out, (), step)
        metrics = {"policy_loss": total, "ratio_clipped": masked_mean(clipped, out), **terms}
        return total + penalty, state, metrics

    return LossTransform(lambda: (), apply)


def flow_grpo(*, clip_eps: float = 1e-4, beta: float = 0.04) -> LossTransform:
    """Flow-GRPO as released (``yifan123/flow_grpo``): the PPO-clipped policy gradient on the
    per-step log-probabilities of ``rl.flow_grpo_rows`` (read as -per_example against the stored
    ``logp_old``), advantages clip(A, -5, 5), clip range 1e-4, plus ``beta`` times the code's
    KL to the reference (``kl_ref``). It is AWM's clipped objective with the uniform surrogate."""
    return regularised(awm(weighting="uniform", clip_eps=clip_eps, advantage_scale=5.0), kl_ref=beta)


def advantages(out: dict) -> jax.Array:
    """``out["advantage"]``, or the group advantages of ``out["reward"]`` with groups
    ``out["group"]`` (default: one group). Rows may repeat a sample (one row per re-noising
    time): repeating every sample equally leaves group means and the batch std unchanged."""
    if "advantage" in out:
        return out["advantage"]
    if "reward" not in out:
        raise KeyError("the awm transform reads out['advantage'] or out['reward'] (with optional out['group']); neither is there")
    if "mask" in out:
        raise ValueError("advantages from rewards need whole groups: a padded batch (out['mask']) would enter the group "
                         "means; pass out['advantage'] computed without the padding instead")
    r = out["reward"]
    if r.ndim != 1:
        raise ValueError(f"out['reward'] must have shape (rows,) when advantages are formed, got {r.shape}: combine "
                         "several objectives first (rewards.dynamic_weights, or a weighted sum)")
    groups = out.get("group", jnp.zeros(r.shape, jnp.int32))
    return group_advantages(r, groups, r.shape[0])


def ema_anchor_decay(step) -> jax.Array:
    """The decay of AWM's EMA anchor after update ``step``: min(0.3, 0.001 step)."""
    return jnp.minimum(0.3, 0.001 * jnp.asarray(step, jnp.float32))
