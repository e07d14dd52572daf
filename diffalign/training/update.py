"""The one update of a parameter group: value-and-grad of (transform o loss), optimizer, apply.

Every training step in the library (pretraining, alignment, each distillation method's
generator and fake score, GDSS's two networks) reaches its parameters through ``update``: this
is the only place where gradients are taken of an objective and ``optax.apply_updates`` runs.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from ..losses.transforms import LossTransform


def update(loss_fn: Callable, transform: LossTransform, optimizer: optax.GradientTransformation, params, opt_state,
           tstate, batch, key, step, aux=None, *, accumulate: int = 1):
    """One optimizer update of ``params`` on ``transform(loss_fn(params, batch, key[, aux]))``.

    Returns ``(params, opt_state, tstate, loss, grad_norm, tmetrics, out)``. ``aux`` (read-only
    context: other parameter groups, a frozen reference) is passed to the loss under
    ``stop_gradient`` when it is not ``None``. ``accumulate=k`` takes the gradient over k
    microbatches (see ``make_train_step``).
    """

    def call_loss(p, b, k, a):
        return loss_fn(p, b, k) if a is None else loss_fn(p, b, k, jax.lax.stop_gradient(a))

    if accumulate == 1:
        def objective(p):
            out = call_loss(p, batch, key, aux)
            loss, new_tstate, tmetrics = transform.apply(out, tstate, step)
            return loss, (new_tstate, tmetrics, out)

        (loss, (tstate, tmetrics, out)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    else:
        (loss, (tstate, tmetrics, out)), grads = _accumulated(call_loss, transform, accumulate, params, batch, key,
                                                              tstate, step, aux)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, tstate, loss, optax.tree.norm(grads), tmetrics, out


def split_rows(batch, k: int):
    """Leaves (B, ...) -> (k, B/k, ...), part j holding rows j, j + k, ... (gradient accumulation's
    microbatches, and the minibatches of several updates on one prepared batch)."""

    sizes = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(batch)}
    if len(sizes) > 1:
        raise ValueError(
            f"splitting a batch into {k} parts (gradient accumulation, minibatch updates) splits every leaf by "
            f"rows, but the leaves have different leading "
            f"sizes {sorted(map(str, sizes))}; pass shared arrays through the loss function's closure instead"
        )

    def split(x):
        if x.ndim == 0 or x.shape[0] % k:
            raise ValueError(
                f"splitting a batch into {k} parts (gradient accumulation, minibatch updates) needs batch leaves "
                f"whose leading size is a multiple of {k}, got shape {tuple(x.shape)}"
            )
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def _join(stacked, k: int, m: int):
    """Inverse of ``split_rows`` for per-example leaves (k, m, ...); scalars (k,) -> mean."""

    def join(x):
        if x.ndim >= 2 and x.shape[1] == m:
            return jnp.swapaxes(x, 0, 1).reshape(k * m, *x.shape[2:])
        if x.ndim == 1:
            return jnp.mean(x, axis=0) if jnp.issubdtype(x.dtype, jnp.inexact) else x[0]
        raise ValueError(f"loss output of shape {tuple(x.shape[1:])} per microbatch is neither per-example nor scalar")

    return jax.tree.map(join, stacked)


def _accumulated(call_loss, transform, k, params, batch, key, tstate, step, aux):
    """(loss, (tstate, tmetrics, out)), grads of ``transform(out(batch))`` over k microbatches."""
    micro = split_rows(batch, k)
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
        split_rows(c, k) if c.ndim >= 1 and c.shape[0] == k * m else jnp.broadcast_to(c / k, (k, *c.shape))
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


def loss_terms(out: dict) -> dict:
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
