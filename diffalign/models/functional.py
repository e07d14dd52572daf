"""From a stateful flax.nnx module to the pure ``apply_fn(params, x, t, y)`` the core uses."""

from __future__ import annotations

from flax import nnx


def functional(model: nnx.Module):
    """Split ``model`` once into (apply_fn, params).

    ``params`` is the pytree of ``nnx.Param`` leaves that training updates;
    ``apply_fn(params, *args)`` calls the module on ``args`` (for the score networks
    ``(x, t, y)``, for GDSS's graph networks ``(x, adj, flags)``), merging the parameters back
    inside the traced function (free at run time). Non-parameter state is fixed in the closure.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply_fn(params, *args, **kwargs):
        return nnx.merge(graphdef, params, rest)(*args, **kwargs)

    return apply_fn, params
