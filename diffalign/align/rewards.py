"""Reward-side transforms: they rewrite ``out["reward"]`` before an objective turns rewards into
advantages or weights (chain them with ``transforms.with_rewards``).

* ``log_sigmoid_reward``: LSC (Wang et al., ICML 2024), r -> sum_k log sigmoid(r_k - r_ref,k);
  summing transformed rewards acts as a soft AND of the properties.
* ``dynamic_weights``: several objectives combined as r = sum_k w_k r_k with w adapted online by
  exponentiated gradient on the objectives' gradient influence (Lu et al. 2025).
* ``lagrangian``: a cost kept under a threshold (Safe RLHF, Dai et al., ICLR 2024),
  r -> (r - lambda c) / (1 + lambda), with log lambda a dual-ascent state.

Formulas: ``shared/reference/awm-and-preference-objectives.md`` sections 4.6-4.8.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..losses.transforms import RewardTransform


def _rewards(out, ndim: int | None = None):
    if "reward" not in out:
        raise KeyError("a reward transform reads out['reward'], which the loss function did not return")
    r = jax.lax.stop_gradient(jnp.asarray(out["reward"], jnp.float32))
    if ndim is not None and r.ndim != ndim:
        shape = "(batch,)" if ndim == 1 else "(batch, objectives)"
        raise ValueError(f"out['reward'] must have shape {shape}, got {r.shape}")
    return r


def log_sigmoid_reward(reference=None) -> RewardTransform:
    """r -> sum over objectives of log sigmoid(r_k - r_ref,k).

    ``reference``: the reference rewards (a scalar or one per objective), or ``None`` to read
    per-example references from ``out["reward_ref"]`` (e.g. a quantile of the base model's
    rewards for the sample's condition). Rewards of shape (B,) are one objective.
    """

    def apply(out, state, step):
        del step
        r = _rewards(out)
        if reference is None:
            if "reward_ref" not in out:
                raise KeyError("log_sigmoid_reward() without a reference reads out['reward_ref'], which is missing")
            ref = jax.lax.stop_gradient(jnp.asarray(out["reward_ref"], jnp.float32))
        else:
            ref = jnp.asarray(reference, jnp.float32)
        if r.ndim == 2 and ref.ndim == 1 and reference is None:
            ref = ref[:, None]  # one reference per example, shared by its objectives
        u = jax.nn.log_sigmoid(r - ref)
        u = u.sum(-1) if u.ndim == 2 else u
        return {**out, "reward": u}, state, {"reward_raw": jnp.mean(r), "reward_lsc": jnp.mean(u)}

    return RewardTransform(lambda: (), apply)


def dynamic_weights(num_objectives: int, *, rate: float = 0.1, scale: float = 1.0) -> RewardTransform:
    """r = sum_k w_k r_k, then w <- softmax(log w + rate I / scale) with influence
    I_k = sum_j <g_k, g_j> (Lu et al. 2025, the gradient-based variant).

    The paper takes the gradients on a chosen subset of layers; here they are taken at the
    outermost layer every objective shares, the per-example weights of the matching loss, where
    objective k's (reward-weighted) gradient is its centred reward vector a_k = r_k - mean r_k:
    I_k = sum_j <a_k, a_j> / B, a covariance. An objective whose rewards vary more, or agree with
    the others', gains weight; one in conflict loses it (``rate`` is in units of that
    covariance). ``out["reward"]`` has shape (B, num_objectives); log w lives in the transform state.
    """
    if num_objectives < 2:
        raise ValueError(f"dynamic_weights needs >= 2 objectives, got {num_objectives}")

    def init():
        return {"log_w": jnp.full((num_objectives,), -jnp.log(float(num_objectives)), jnp.float32)}

    def apply(out, state, step):
        del step
        r = _rewards(out, 2)
        if r.shape[1] != num_objectives:
            raise ValueError(f"out['reward'] has {r.shape[1]} objectives, dynamic_weights was built for {num_objectives}")
        w = jnp.exp(state["log_w"])
        combined = r @ w
        a = r - r.mean(0)
        gram = a.T @ a / r.shape[0]
        log_w = jax.nn.log_softmax(state["log_w"] + rate * gram.sum(1) / scale)
        metrics = {f"weight_{k}": w[k] for k in range(num_objectives)}
        return {**out, "reward": combined}, {"log_w": log_w}, metrics

    return RewardTransform(init, apply)


def lagrangian(threshold: float, *, rate: float = 0.05, init_multiplier: float = 1.0) -> RewardTransform:
    """Keep the mean cost ``out["cost"]`` at or below ``threshold``: r -> (r - lambda c) / (1 + lambda),
    then the dual step ln lambda <- ln lambda + rate lambda (mean c - threshold) (Safe RLHF).

    The step's reward uses the multiplier from before its own dual update; lambda (as its log)
    lives in the transform state, so a resumed run continues with the same multiplier.
    """
    if init_multiplier <= 0:
        raise ValueError(f"init_multiplier must be positive, got {init_multiplier}")

    def init():
        return {"log_lambda": jnp.log(jnp.asarray(init_multiplier, jnp.float32))}

    def apply(out, state, step):
        del step
        r = _rewards(out, 1)
        if "cost" not in out:
            raise KeyError("lagrangian reads the per-example cost out['cost'], which the loss function did not return")
        c = jax.lax.stop_gradient(jnp.asarray(out["cost"], jnp.float32))
        lam = jnp.exp(state["log_lambda"])
        violation = jnp.mean(c) - threshold
        new = {"log_lambda": state["log_lambda"] + rate * lam * violation}
        return {**out, "reward": (r - lam * c) / (1.0 + lam)}, new, {"multiplier": lam, "constraint_violation": violation}

    return RewardTransform(init, apply)
