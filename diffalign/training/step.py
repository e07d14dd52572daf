"""The pure training step and its multi-step ``lax.scan`` form."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from ..align.transforms import LossTransform, mean
from .state import TrainState


def ema_decay_at(step, decay: float, warmup: bool):
    """EMA decay at ``step``; with warm-up min(decay, (1 + n) / (10 + n)) as in score_sde and
    GDSS, where n counts updates including this one (n = 1 at step 0)."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    n = step.astype(jnp.float32) + 1.0
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def make_train_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    transform: LossTransform | None = None,
    *,
    ema_decay: float = 0.999,
    ema_warmup: bool = False,
    aux_update: Callable | None = None,
) -> Callable:
    """Return the pure ``step(state, batch) -> (state, metrics)``.

    ``loss_fn(params, batch, key)`` returns per-example quantities (a dict with
    ``"per_example"``); ``transform`` turns them into the scalar that is differentiated (the
    batch mean by default). The step's key is ``fold_in(state.key, state.step)``. If the loss
    or the gradient is not finite the update is not applied (the state is returned unchanged)
    and ``metrics["nonfinite"]`` is set, so the caller can stop with the last good state.
    The caller chooses ``jax.jit``, shardings and donation.

    When the state carries ``aux`` (parameter pytrees beside ``params``, such as AWM's frozen
    reference and EMA anchor) the loss is called as ``loss_fn(params, batch, key, aux)``, and
    after the update ``aux = aux_update(aux, new_params, step)`` when ``aux_update`` is given.
    Gradients flow to ``params`` only.
    """
    transform = transform or mean()
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")

    def objective(params, batch, key, tstate, step, aux):
        out = loss_fn(params, batch, key) if aux is None else loss_fn(params, batch, key, jax.lax.stop_gradient(aux))
        loss, tstate, tmetrics = transform.apply(out, tstate, step)
        return loss, (tstate, tmetrics, out)

    def step_fn(state: TrainState, batch):
        key = jax.random.fold_in(state.key, state.step)
        (loss, (tstate, tmetrics, out)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, batch, key, state.transform_state, state.step, state.aux
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:
            d = ema_decay_at(state.step, ema_decay, ema_warmup)
            ema = optax.incremental_update(params, ema, 1.0 - d)
        aux = state.aux
        if aux is not None and aux_update is not None:
            aux = aux_update(aux, params, state.step)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = state.replace(
            params=params, opt_state=opt_state, ema_params=ema, step=state.step + 1, transform_state=tstate,
            aux=aux,
        )
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "nonfinite": ~finite, **tmetrics, **_loss_terms(out)}
        return new, metrics

    return step_fn


def _loss_terms(out: dict) -> dict:
    """Batch means of the loss's named terms (keys starting with "loss_"), for the logs, and
    the scalars the loss reports under ``out["metrics"]`` (rewards, drift, ...)."""
    terms = {k: jax.lax.stop_gradient(v) for k, v in out.get("metrics", {}).items()}
    for k, v in out.items():
        if k.startswith("loss_"):
            v = jax.lax.stop_gradient(v)
            if "mask" in out:
                m = out["mask"].astype(v.dtype)
                terms[k] = jnp.sum(v * m) / jnp.maximum(jnp.sum(m), 1.0)
            else:
                terms[k] = jnp.mean(v)
    return terms


def make_multi_step(
    step_fn: Callable, batch_fn: Callable | None, num_steps: int, *, vectorize_batches: bool = False
) -> Callable:
    """``num_steps`` training steps in one ``lax.scan``: ``run(state, batches=None) -> (state, metrics)``.

    With ``batch_fn(step) -> batch`` (pure JAX) batches are made on device from the step
    number, one per step or, with ``vectorize_batches``, all of the chunk at once under
    ``jax.vmap`` (faster for cheap batches, and it hands host callbacks such as the exact OT
    coupling the whole chunk at once). Otherwise ``batches`` holds ``num_steps`` stacked
    batches. After a non-finite step the remaining steps are skipped, so the returned state
    is the last good one and the stacked metrics say where it stopped.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")

    def skip(state, batch):
        metrics = jax.eval_shape(step_fn, state, batch)[1]
        metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics)
        return state, {**metrics, "nonfinite": jnp.asarray(True)}

    def body(carry, batch):
        state, halted = carry
        if batch is None:
            batch = batch_fn(state.step)
        state, metrics = jax.lax.cond(halted, skip, step_fn, state, batch)
        return (state, halted | metrics["nonfinite"]), metrics

    def run(state, batches=None):
        if batches is None:
            if batch_fn is None:
                raise ValueError("make_multi_step needs a batch_fn or stacked batches")
            if vectorize_batches:
                batches = jax.vmap(batch_fn)(state.step + jnp.arange(num_steps, dtype=state.step.dtype))
        (state, _), metrics = jax.lax.scan(body, (state, jnp.asarray(False)), batches, length=num_steps)
        return state, metrics

    return run
