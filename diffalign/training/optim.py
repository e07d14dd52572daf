"""Optimizers from optax, assembled from a few common settings."""

from __future__ import annotations

import jax
import optax

SCHEDULES = ("constant", "cosine", "warmup_cosine", "exponential")
OPTIMIZERS = ("adam", "adamw")


def make_optimizer(
    lr: float = 1e-3,
    *,
    name: str = "adam",
    schedule: str = "constant",
    num_steps: int | None = None,
    warmup_steps: int = 0,
    decay_rate: float = 1.0,
    decay_steps: int = 1,
    weight_decay: float = 0.0,
    l2: float = 0.0,
    clip_norm: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """clip_by_global_norm (optional) then Adam/AdamW with a learning-rate schedule.

    Schedules: "constant"; "cosine" to 0 over ``num_steps``; "warmup_cosine" (linear warm-up
    for ``warmup_steps``); "exponential": lr * decay_rate ** floor(step / decay_steps).
    ``weight_decay`` is AdamW's decoupled decay; ``l2`` is PyTorch Adam's ``weight_decay``
    (l2 * params added to the clipped gradient before Adam), as GDSS trains.
    """
    if lr <= 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of {SCHEDULES}")
    if schedule in ("cosine", "warmup_cosine") and not num_steps:
        raise ValueError(f"the {schedule!r} schedule needs num_steps")
    if schedule == "constant":
        sched = optax.constant_schedule(lr)
    elif schedule == "cosine":
        sched = optax.cosine_decay_schedule(lr, num_steps)
    elif schedule == "warmup_cosine":
        sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, num_steps)
    else:
        sched = optax.exponential_decay(lr, decay_steps, decay_rate, staircase=True)
    if name == "adam":
        opt = optax.adam(sched, b1=b1, b2=b2, eps=eps)
        if weight_decay:
            raise ValueError("weight_decay with plain Adam is ambiguous: use name='adamw' (decoupled) or l2=")
    else:
        opt = optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    if l2:
        opt = optax.chain(optax.add_decayed_weights(l2), opt)
    if clip_norm is not None:
        if clip_norm <= 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm}")
        opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
    return opt


def per_module(optimizer: optax.GradientTransformation, keys) -> optax.GradientTransformation:
    """The same optimizer applied separately to each top-level entry of a params dict, so
    clipping norms and states are per module (GDSS clips its two networks separately)."""
    keys = tuple(keys)

    def labels(params):
        if set(params) != set(keys):
            raise ValueError(f"params have modules {sorted(params)}, expected {sorted(keys)}")
        return {k: jax.tree.map(lambda _, k=k: k, v) for k, v in params.items()}

    return optax.multi_transform({k: optimizer for k in keys}, labels)
