"""Loss transforms: from per-example quantities to the scalar a training step minimises.

Shaped like an optax ``GradientTransformation``: a NamedTuple of two pure functions.

    state = transform.init()
    loss, state, metrics = transform.apply(out, state, step)

``out`` is what the loss function returned: a dict with ``"per_example"`` (shape (B,)) and
whatever else an objective needs (a reference model's losses at the same t and noise,
rewards, labels, weights). ``apply`` runs inside ``jax.value_and_grad``, so gradients flow
through the per-example losses; anything that must not be differentiated (weights,
advantages, running statistics) is wrapped in ``stop_gradient``. The transform's state lives
in the train state and in checkpoints, so a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class LossTransform(NamedTuple):
    """A pair of pure functions ``init() -> state`` and ``apply(out, state, step) -> (loss, state, metrics)``."""

    init: Callable[[], Any]
    apply: Callable[[dict, Any, jax.Array], tuple[jax.Array, Any, dict]]


def per_example_of(out: dict) -> jax.Array:
    pe = out.get("per_example") if isinstance(out, dict) else None
    if pe is None:
        raise TypeError(
            "a loss function must return a dict with a 'per_example' array of shape (batch,); "
            f"got {type(out).__name__} with keys {sorted(out) if isinstance(out, dict) else '-'}"
        )
    if pe.ndim != 1:
        raise ValueError(f"'per_example' must have shape (batch,), got {pe.shape}")
    return pe


def masked_mean(values, out):
    """Mean over the batch, or over the examples with ``out["mask"] == 1`` when a mask is given
    (fixed-shape batches padded at the end of an epoch)."""
    if "mask" not in out:
        return jnp.mean(values)
    m = jax.lax.stop_gradient(out["mask"]).astype(values.dtype)
    return jnp.sum(values * m) / jnp.maximum(jnp.sum(m), 1.0)


def mean() -> LossTransform:
    """The pretraining objective: the batch mean of the per-example losses."""

    def apply(out, state, step):
        del step
        return masked_mean(per_example_of(out), out), state, {}

    return LossTransform(lambda: (), apply)


def weighted(key: str = "weight") -> LossTransform:
    """mean_i w_i l_i with per-example weights ``out[key]`` treated as constants.

    With all weights equal to 1 this is exactly ``mean()``, gradients included; this is the
    base of advantage- and reward-weighted objectives.
    """

    def apply(out, state, step):
        del step
        pe = per_example_of(out)
        if key not in out:
            raise KeyError(f"the weighted transform reads per-example weights from out[{key!r}], which is missing")
        w = jax.lax.stop_gradient(out[key]).astype(pe.dtype)
        if w.shape != pe.shape:
            raise ValueError(f"weights out[{key!r}] have shape {w.shape}, per-example losses {pe.shape}")
        return masked_mean(w * pe, out), state, {"mean_weight": masked_mean(w, out)}

    return LossTransform(lambda: (), apply)


def combine(*terms) -> LossTransform:
    """sum_k c_k L_k over ``(c_k, transform_k)`` pairs: objectives compose by weighted sums.

    Each transform reads the same ``out``; their states are kept as a tuple and their metrics
    are prefixed with the term's index (``"0/..."``). RPO, for instance, is
    ``combine((1.0, dpo(beta)), (eta, chosen_mean()))``.
    """
    if not terms:
        raise ValueError("combine needs at least one (coefficient, transform) pair")
    for term in terms:
        if not (isinstance(term, tuple) and len(term) == 2 and isinstance(term[1], LossTransform)):
            raise TypeError(f"combine takes (coefficient, LossTransform) pairs, got {term!r}")

    def init():
        return tuple(tr.init() for _, tr in terms)

    def apply(out, state, step):
        total, states, metrics = 0.0, [], {}
        for i, ((coef, tr), s) in enumerate(zip(terms, state)):
            loss, s, m = tr.apply(out, s, step)
            total = total + coef * loss
            states.append(s)
            metrics.update({f"{i}/{k}": v for k, v in m.items()})
            metrics[f"{i}/loss"] = loss
        return total, tuple(states), metrics

    return LossTransform(init, apply)


class RewardTransform(NamedTuple):
    """A reward-side transform: ``init() -> state``, ``apply(out, state, step) -> (out, state, metrics)``.

    It rewrites ``out["reward"]`` (shape (B,) or (B, objectives)) before a loss transform turns
    rewards into advantages; chain it in front of one with ``with_rewards``. Its state (a
    Lagrange multiplier, objective weights) lives in the train state like a loss transform's.
    """

    init: Callable[[], Any]
    apply: Callable[[dict, Any, jax.Array], tuple[dict, Any, dict]]


def with_rewards(*reward_transforms: RewardTransform, then: LossTransform) -> LossTransform:
    """Apply reward transforms in order, then the loss transform ``then``: one LossTransform."""
    for rt in reward_transforms:
        if not isinstance(rt, RewardTransform):
            raise TypeError(f"with_rewards takes RewardTransforms before then=, got {type(rt).__name__}")

    def init():
        return tuple(rt.init() for rt in reward_transforms), then.init()

    def apply(out, state, step):
        rstates, lstate = state
        metrics, new = {}, []
        for rt, s in zip(reward_transforms, rstates):
            out, s, m = rt.apply(out, s, step)
            new.append(s)
            metrics.update(m)
        loss, lstate, m = then.apply(out, lstate, step)
        return loss, (tuple(new), lstate), {**metrics, **m}

    return LossTransform(init, apply)


def penalties(**weights: float) -> LossTransform:
    """sum_k w_k mean(out[k]): per-row regularisers the loss function provides, each by its name
    (``drift_ref`` = ||v - v_ref||^2, ``drift_ema``, ``kl_ref``...), masked like the loss.
    Zero weights are skipped (their keys need not exist). Add it to an objective with
    ``combine``; every alignment method takes the same switches this way."""
    for k, w in weights.items():
        if w < 0:
            raise ValueError(f"penalty weight {k} must be >= 0, got {w}")
    active = {k: w for k, w in weights.items() if w}

    def apply(out, state, step):
        del step
        total, metrics = 0.0, {}
        for k, w in active.items():
            if k not in out:
                raise KeyError(f"a penalty on {k!r} reads out[{k!r}], which the loss function did not return")
            term = masked_mean(out[k], out)
            total = total + w * term
            metrics[k] = term
        return jnp.asarray(total, jnp.float32), state, metrics

    return LossTransform(lambda: (), apply)


def regularised(objective: LossTransform, **weights: float) -> LossTransform:
    """``objective`` plus ``penalties(**weights)``, the penalties' terms in its metrics by name."""
    extra = penalties(**weights)
    if not any(weights.values()):
        return objective

    def apply(out, state, step):
        loss, state, metrics = objective.apply(out, state, step)
        penalty, _, terms = extra.apply(out, (), step)
        return loss + penalty, state, {**metrics, **terms}

    return LossTransform(objective.init, apply)
