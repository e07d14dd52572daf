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


def _per_example(out: dict) -> jax.Array:
    pe = out.get("per_example") if isinstance(out, dict) else None
    if pe is None:
        raise TypeError(
            "a loss function must return a dict with a 'per_example' array of shape (batch,); "
            f"got {type(out).__name__} with keys {sorted(out) if isinstance(out, dict) else '-'}"
        )
    if pe.ndim != 1:
        raise ValueError(f"'per_example' must have shape (batch,), got {pe.shape}")
    return pe


def _masked_mean(values, out):
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
        return _masked_mean(_per_example(out), out), state, {}

    return LossTransform(lambda: (), apply)


def weighted(key: str = "weight") -> LossTransform:
    """mean_i w_i l_i with per-example weights ``out[key]`` treated as constants.

    With all weights equal to 1 this is exactly ``mean()``, gradients included; this is the
    base of advantage- and reward-weighted objectives.
    """

    def apply(out, state, step):
        del step
        pe = _per_example(out)
        if key not in out:
            raise KeyError(f"the weighted transform reads per-example weights from out[{key!r}], which is missing")
        w = jax.lax.stop_gradient(out[key]).astype(pe.dtype)
        if w.shape != pe.shape:
            raise ValueError(f"weights out[{key!r}] have shape {w.shape}, per-example losses {pe.shape}")
        return _masked_mean(w * pe, out), state, {"mean_weight": _masked_mean(w, out)}

    return LossTransform(lambda: (), apply)
