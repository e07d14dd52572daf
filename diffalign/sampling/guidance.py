"""Classifier-free guidance (Ho & Salimans 2022).

A class-conditional network trained with label dropout also models the unconditional
distribution (label = the null label). At sampling time the guided prediction is

    out = out_uncond + w * (out_cond - out_uncond),

w = 1 the conditional model, w = 0 the unconditional one, w > 1 sharper class samples
(Ho & Salimans' (1 + w') eps_c - w' eps_u with w = 1 + w'). The combination is linear, so
it is the same for eps, x0, velocity and score predictions.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp


def guided(model_fn: Callable, y, *, null_label: int, scale: float) -> Callable:
    """``fn(x, t)`` giving the guided prediction of ``model_fn(x, t, y)`` for fixed labels ``y``.

    Conditional and unconditional passes are one network call on a doubled batch.
    """
    y = jnp.asarray(y)
    if scale == 1.0:
        return lambda x, t: model_fn(x, t, y)

    def fn(x, t):
        xx = jnp.concatenate([x, x])
        tt = jnp.concatenate([t, t])
        yy = jnp.concatenate([y, jnp.full_like(y, null_label)])
        out = model_fn(xx, tt, yy)
        cond, uncond = out[: x.shape[0]], out[x.shape[0] :]
        return uncond + scale * (cond - uncond)

    return fn
