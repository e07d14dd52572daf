"""The pure training step, for one parameter group or several, and its multi-step ``lax.scan`` form.

A step is ``step(state, batch) -> (state, metrics)``. With one group (``make_train_step``) the
state's ``params`` are the model's; with several (``make_group_step``: a distillation's
generator and fake score) ``params`` is a dict of groups updated in order, each by its own
loss, transform, optimizer and number of updates per step (DMD2's two time-scale rule), each
reading the others' current values. Either way every update is ``update.update``; the EMA,
the non-finite guard and the step counter are applied here, once.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..losses.transforms import LossTransform, mean
from .state import TrainState
from .update import loss_terms, split_rows, update


def ema_decay_at(step, decay: float, warmup: bool):
    """EMA decay at ``step``; with warm-up min(decay, (1 + n) / (10 + n)) as in score_sde and
    GDSS, where n counts updates including this one (n = 1 at step 0)."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    n = step.astype(jnp.float32) + 1.0
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


class Group(NamedTuple):
    """One parameter group's part of a step (``make_group_step``).

    ``loss_fn(params, batch, key, aux)`` gets every group's current parameters (a dict; only
    this group's are differentiated, the others arrive under ``stop_gradient``) and the state's
    ``aux``. ``updates_per_step``: ``None`` for one update with the group's key; ``k`` for k
    updates in a ``lax.scan`` with keys ``split(key, k)`` (0 skips the group). ``ema_decay`` > 0
    keeps an EMA of this group in ``state.ema_params[name]``.
    """

    loss_fn: Callable
    optimizer: optax.GradientTransformation
    transform: LossTransform | None = None
    updates_per_step: int | None = None
    ema_decay: float = 0.0


def _check(ema_decay, accumulate):
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        raise ValueError(f"accumulate must be a positive integer (microbatches per step), got {accumulate!r}")


def _guard(new, old, finite):
    """The new state where the step was finite, else the old one (a failed step changes nothing)."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def make_train_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    transform: LossTransform | None = None,
    *,
    ema_decay: float = 0.999,
    ema_warmup: bool = False,
    aux_update: Callable | None = None,
    accumulate: int = 1,
    prepare: Callable | None = None,
    minibatches: int = 1,
) -> Callable:
    """Return the pure ``step(state, batch) -> (state, metrics)`` for one parameter group.

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

    ``prepare(params, batch, key, aux) -> batch`` (online RL: sample rollouts with the current
    or a lagged policy, score them, form advantages, pairs or labels) runs first, without
    gradients, on a key split from the step's; a ``"metrics"`` dict in what it returns is
    reported and removed from the batch. ``minibatches=k`` then takes k optimizer updates in
    order, on rows j, j + k, ... of the (prepared) batch (PPO / Flow-GRPO's several updates per
    rollout batch); the metrics are their means, and the EMA and ``aux_update`` run once, after
    the last.
    """
    transform = transform or mean()
    _check(ema_decay, accumulate)
    if not isinstance(minibatches, int) or isinstance(minibatches, bool) or minibatches < 1:
        raise ValueError(f"minibatches must be a positive integer (updates per step), got {minibatches!r}")

    def updates(state, batch, key):
        def one(params, opt_state, tstate, b, k):
            return update(loss_fn, transform, optimizer, params, opt_state, tstate, b, k, state.step, state.aux,
                          accumulate=accumulate)

        if minibatches == 1:
            return one(state.params, state.opt_state, state.transform_state, batch, key)

        def body(carry, xs):
            params, opt_state, tstate = carry
            params, opt_state, tstate, loss, gnorm, tmetrics, out = one(params, opt_state, tstate, *xs)
            return (params, opt_state, tstate), (loss, gnorm, tmetrics, loss_terms(out))

        (params, opt_state, tstate), (loss, gnorm, tmetrics, terms) = jax.lax.scan(
            body, (state.params, state.opt_state, state.transform_state),
            (split_rows(batch, minibatches), jax.random.split(key, minibatches)))
        finite = jnp.all(jnp.isfinite(loss)) & jnp.all(jnp.isfinite(gnorm))
        mean_of = lambda tree: jax.tree.map(jnp.mean, tree)  # noqa: E731
        loss, gnorm = jnp.where(finite, jnp.mean(loss), jnp.nan), jnp.where(finite, jnp.mean(gnorm), jnp.nan)
        return params, opt_state, tstate, loss, gnorm, mean_of(tmetrics), {"metrics": mean_of(terms)}

    def step_fn(state: TrainState, batch):
        key = jax.random.fold_in(state.key, state.step)
        prepared = {}
        if prepare is not None:
            k_prepare, key = jax.random.split(key)
            aux = None if state.aux is None else jax.lax.stop_gradient(state.aux)
            batch = dict(prepare(jax.lax.stop_gradient(state.params), batch, k_prepare, aux))
            prepared = batch.pop("metrics", {})
        params, opt_state, tstate, loss, grad_norm, tmetrics, out = updates(state, batch, key)
        ema = state.ema_params
        if ema is not None:
            ema = optax.incremental_update(params, ema, 1.0 - ema_decay_at(state.step, ema_decay, ema_warmup))
        aux = state.aux
        if aux is not None and aux_update is not None:
            aux = aux_update(aux, params, state.step)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = state.replace(params=params, opt_state=opt_state, ema_params=ema, step=state.step + 1,
                            transform_state=tstate, aux=aux)
        metrics = {"loss": loss, "grad_norm": grad_norm, "nonfinite": ~finite, **prepared, **tmetrics,
                   **loss_terms(out)}
        return _guard(new, state, finite), metrics

    return step_fn


def make_group_step(groups: dict, *, prepare: Callable | None = None, aux_update: Callable | None = None,
                    accumulate: int = 1) -> Callable:
    """Return the pure ``step(state, batch) -> (state, metrics)`` for several parameter groups.

    ``groups`` maps a name of ``state.params`` to its ``Group``; they update in the dict's
    order, each seeing the others' newest values. The step's key is split into one key per
    group. ``prepare(state) -> state`` runs first (Phased DMD restarts a group at a phase
    boundary there); ``aux_update(aux, params, step)`` last. The last group's metrics are
    reported as they are (``loss``, ``grad_norm``, its terms), the others' prefixed with their
    name (``fake_loss``); a group updated k times reports the means over its k updates. The
    non-finite guard covers every update of every group. Build the state with ``init_group_state``.
    """
    if not groups:
        raise ValueError("make_group_step needs at least one parameter group")
    for name, g in groups.items():
        if not isinstance(g, Group):
            raise TypeError(f"group {name!r} must be a training.Group, got {type(g).__name__}")
        _check(g.ema_decay, accumulate)
        if g.updates_per_step is not None and (not isinstance(g.updates_per_step, int) or g.updates_per_step < 0):
            raise ValueError(f"group {name!r}: updates_per_step must be None or an integer >= 0, got {g.updates_per_step!r}")
    names = tuple(groups)

    def group_updates(name, g, params, opt_state, tstate, batch, key, step, aux):
        transform = g.transform or mean()

        def one(carry, k):
            params, opt_state, tstate = carry
            own, opt_state, tstate, loss, gnorm, tmetrics, out = update(
                lambda p, b, kk, a: g.loss_fn({**a["params"], name: p}, b, kk, a["aux"]),
                transform, g.optimizer, params[name], opt_state, tstate, batch, k, step,
                {"params": params, "aux": aux}, accumulate=accumulate,
            )
            metrics = {"loss": loss, "grad_norm": gnorm, **tmetrics, **loss_terms(out)}
            return ({**params, name: own}, opt_state, tstate), metrics

        if g.updates_per_step is None:
            return one((params, opt_state, tstate), key)
        carry, metrics = jax.lax.scan(one, (params, opt_state, tstate), jax.random.split(key, g.updates_per_step))
        return carry, metrics

    def step_fn(state: TrainState, batch):
        old = state
        if prepare is not None:
            state = prepare(state)
        keys = jax.random.split(jax.random.fold_in(state.key, state.step), len(names))
        params, opt_state, tstate = dict(state.params), dict(state.opt_state), dict(state.transform_state)
        finite, metrics = jnp.asarray(True), {}
        for i, name in enumerate(names):
            (params, opt_state[name], tstate[name]), m = group_updates(
                name, groups[name], params, opt_state[name], tstate[name], batch, keys[i], state.step, state.aux)
            finite = finite & jnp.all(jnp.isfinite(m["loss"])) & jnp.all(jnp.isfinite(m["grad_norm"]))
            m = {k: jnp.mean(v) for k, v in m.items()}
            metrics.update(m if i == len(names) - 1 else {f"{name}_{k}": v for k, v in m.items()})
        ema = state.ema_params
        if ema is not None:
            ema = {n: optax.incremental_update(params[n], e, 1.0 - groups[n].ema_decay) for n, e in ema.items()}
        aux = state.aux
        if aux is not None and aux_update is not None:
            aux = aux_update(aux, params, state.step)
        new = state.replace(params=params, opt_state=opt_state, ema_params=ema, step=state.step + 1,
                            transform_state=tstate, aux=aux)
        return _guard(new, old, finite), {**metrics, "nonfinite": ~finite}

    return step_fn


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
