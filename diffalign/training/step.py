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
    accumulate: int = 1,
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

    ``accumulate=k`` (gradient accumulation) evaluates the batch as k microbatches (rows
    j, j + k, j + 2k, ... form microbatch j, so a batch split over devices stays split), one
    at a time, so activation memory is that of B/k examples. The gradient is that of the
    transform of the whole batch's per-example quantities, for any transform (pairwise DPO,
    group advantages...): a first pass computes them without gradients, the transform's
    cotangent is taken on the whole batch, and a second pass back-propagates it microbatch by
    microbatch (about one extra forward pass). Microbatch j draws its noise from
    ``fold_in(key, j)``: the same distribution as without accumulation, other draws. This
    assumes what the library's losses do: ``loss_fn`` treats rows independently (no batch
    statistics inside it; the transform may use any), returns per-example arrays and scalars
    that are batch means, and every batch leaf has the batch as its leading axis.
    """
    transform = transform or mean()
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        raise ValueError(f"accumulate must be a positive integer (microbatches per step), got {accumulate!r}")

    def call_loss(params, batch, key, aux):
        return loss_fn(params, batch, key) if aux is None else loss_fn(params, batch, key, jax.lax.stop_gradient(aux))

    def objective(params, batch, key, tstate, step, aux):
        out = call_loss(params, batch, key, aux)
        loss, tstate, tmetrics = transform.apply(out, tstate, step)
        return loss, (tstate, tmetrics, out)

    def loss_and_grads(params, batch, key, tstate, step, aux):
        if accumulate == 1:
            return jax.value_and_grad(objective, has_aux=True)(params, batch, key, tstate, step, aux)
        return _accumulated(call_loss, transform, accumulate, params, batch, key, tstate, step, aux)

    def step_fn(state: TrainState, batch):
        key = jax.random.fold_in(state.key, state.step)
        (loss, (tstate, tmetrics, out)), grads = loss_and_grads(
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


def _microbatches(batch, k: int):
    """Leaves (B, ...) -> (k, B/k, ...), microbatch j holding rows j, j + k, ..."""

    sizes = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(batch)}
    if len(sizes) > 1:
        raise ValueError(
            f"gradient accumulation splits every batch leaf by rows, but the leaves have different leading "
            f"sizes {sorted(map(str, sizes))}; pass shared arrays through the loss function's closure instead"
        )

    def split(x):
        if x.ndim == 0 or x.shape[0] % k:
            raise ValueError(
                f"gradient accumulation over {k} microbatches needs batch leaves whose leading size is a "
                f"multiple of {k}, got shape {tuple(x.shape)}"
            )
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def _join(stacked, k: int, m: int):
    """Inverse of ``_microbatches`` for per-example leaves (k, m, ...); scalars (k,) -> mean."""

    def join(x):
        if x.ndim >= 2 and x.shape[1] == m:
            return jnp.swapaxes(x, 0, 1).reshape(k * m, *x.shape[2:])
        if x.ndim == 1:
            return jnp.mean(x, axis=0) if jnp.issubdtype(x.dtype, jnp.inexact) else x[0]
        raise ValueError(f"loss output of shape {tuple(x.shape[1:])} per microbatch is neither per-example nor scalar")

    return jax.tree.map(join, stacked)


def _accumulated(call_loss, transform, k, params, batch, key, tstate, step, aux):
    """(loss, (tstate, tmetrics, out)), grads of ``transform(out(batch))`` over k microbatches."""
    micro = _microbatches(batch, k)
    m = jax.tree.leaves(micro)[0].shape[1]
    keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(k))
    stacked = jax.lax.map(lambda xs: call_loss(params, xs[0], xs[1], aux), (micro, keys))
    out = _join(jax.lax.stop_gradient(stacked), k, m)
    leaves, treedef = jax.tree.flatten(out)
    diff = [jnp.issubdtype(x.dtype, jnp.inexact) for x in leaves]

    def rebuild(float_leaves):
        it = iter(float_leaves)
        return jax.tree.unflatten(treedef, [next(it) if d else x for x, d in zip(leaves, diff)])

    def of_out(float_leaves):
        loss, new_tstate, tmetrics = transform.apply(rebuild(float_leaves), tstate, step)
        return loss, (new_tstate, tmetrics)

    float_leaves = [x for x, d in zip(leaves, diff) if d]
    loss, vjp_out, (new_tstate, tmetrics) = jax.vjp(of_out, float_leaves, has_aux=True)
    (cotangent,) = vjp_out(jnp.ones_like(loss))
    # per-example cotangents go back to their microbatch rows; a scalar's is split evenly (it was a mean)
    ct_micro = [
        _microbatches(c, k) if c.ndim >= 1 and c.shape[0] == k * m else jnp.broadcast_to(c / k, (k, *c.shape))
        for c in cotangent
    ]

    def body(grads, xs):
        mb, mkey, ct = xs

        def floats(p):
            return [x for x, d in zip(jax.tree.leaves(call_loss(p, mb, mkey, aux)), diff) if d]

        _, vjp_p = jax.vjp(floats, params)
        (g,) = vjp_p(ct)
        return jax.tree.map(jnp.add, grads, g), None

    grads, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), (micro, keys, ct_micro))
    return (loss, (new_tstate, tmetrics, out)), grads


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
    batches. After a non-finite step the remaining steps' updates are discarded, so the
    returned state is the last good one and the stacked metrics say where it stopped.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")

    def body(carry, batch):
        state, halted = carry
        if batch is None:
            batch = batch_fn(state.step)
        new, metrics = step_fn(state, batch)
        # a select, not lax.cond: collectives inside a conditional inside loops can deadlock
        # XLA's CPU runtime (seen with gradient accumulation on 8 simulated devices)
        state = jax.tree.map(lambda a, b: jnp.where(halted, a, b), state, new)
        metrics = {**metrics, "nonfinite": metrics["nonfinite"] | halted}
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
