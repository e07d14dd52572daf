"""From a stateful flax.nnx module to the pure ``apply_fn(params, x, t, y)`` the core uses."""

from __future__ import annotations

from flax import nnx


def functional(model: nnx.Module):
    """Split ``model`` once into (apply_fn, params).

    ``params`` is the pytree of ``nnx.Param`` leaves that training updates;
    ``apply_fn(params, x, t, y=None)`` merges them back inside the traced function (free at
    run time). Any non-parameter state is held fixed in the closure.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply_fn(params, x, t, y=None):
        return nnx.merge(graphdef, params, rest)(x, t, y)

    return apply_fn, params
