"""The one pytree that training carries: params, optimizer state, EMA params, step, key, transform state."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ..losses.transforms import LossTransform, mean


@struct.dataclass
class TrainState:
    """Everything a training run needs to continue exactly, as one pytree.

    Attributes:
      params: model parameters (any pytree).
      opt_state: optax state.
      ema_params: exponential moving average of ``params`` (``None`` when EMA is off);
        sample and evaluate with these.
      step: number of completed updates (int32 scalar).
      key: base PRNG key; step ``n`` uses ``fold_in(key, n)``.
      transform_state: the loss transform's own state (multipliers, running means, ...).
      aux: parameter-shaped pytrees an objective reads beside ``params`` and carries between
        steps (AWM's frozen reference and its EMA anchor: ``{"ref": ..., "anchor": ...}``), or
        ``None``. They share the policy's network definition; only ``params`` is optimised.
    """

    params: Any
    opt_state: Any
    ema_params: Any
    step: jax.Array
    key: jax.Array
    transform_state: Any
    aux: Any = None

    def eval_params(self):
        """The parameters to sample and evaluate with: the EMA when there is one (for a group
        state, the groups that keep an EMA, else all groups' parameters)."""
        return self.params if self.ema_params is None else self.ema_params


def init_train_state(
    params,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    transform: LossTransform | None = None,
    *,
    ema: bool = True,
    aux=None,
) -> TrainState:
    """A fresh TrainState at step 0. ``key`` must be a typed key (``jax.random.key(seed)``).

    ``aux``: extra parameter pytrees the loss reads (see ``TrainState.aux``); copied here so the
    state never aliases the caller's arrays.
    """
    if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        raise TypeError("TrainState needs a typed PRNG key: use jax.random.key(seed), not PRNGKey")
    transform = transform or mean()
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        step=jnp.zeros((), jnp.int32),
        key=key,
        transform_state=transform.init(),
        aux=None if aux is None else jax.tree.map(jnp.copy, aux),
    )


def init_group_state(params: dict, groups: dict, key: jax.Array, *, aux=None) -> TrainState:
    """A fresh TrainState at step 0 for ``make_group_step``: ``params`` maps each group's name to
    its parameters; every group gets its optimizer state and transform state, and those with
    ``ema_decay`` > 0 an EMA (``state.ema_params[name]``; ``None`` when no group keeps one)."""
    if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        raise TypeError("TrainState needs a typed PRNG key: use jax.random.key(seed), not PRNGKey")
    if set(params) != set(groups):
        raise ValueError(f"parameter groups {sorted(params)} do not match the step's groups {sorted(groups)}")
    params = {n: jax.tree.map(jnp.copy, params[n]) for n in groups}
    ema = {n: jax.tree.map(jnp.copy, params[n]) for n, g in groups.items() if g.ema_decay > 0}
    return TrainState(
        params=params,
        opt_state={n: g.optimizer.init(params[n]) for n, g in groups.items()},
        ema_params=ema or None,
        step=jnp.zeros((), jnp.int32),
        key=key,
        transform_state={n: (g.transform or mean()).init() for n, g in groups.items()},
        aux=None if aux is None else jax.tree.map(jnp.copy, aux),
    )
