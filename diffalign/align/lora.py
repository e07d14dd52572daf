"""LoRA adapters (Hu et al., ICLR 2022) on any pure ``apply_fn(params, ...)``.

Each selected weight matrix W (a 2-D leaf of the parameter tree, by default every one) becomes
W + (alpha / r) A B with A (in, r) Gaussian and B (r, out) zero, so the adapted model starts as
the base model exactly. Only the adapters are trained; the base parameters are closed over.
With adapters, AWM's frozen reference is the base model, i.e. the adapters' initial value, so
``rl.awm_aux(initial_adapters)`` works unchanged (AWM's released configs train LoRA r = 32,
alpha = 64 on the attention projections).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def _name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def lora(apply_fn: Callable, base_params, key, *, rank: int = 8, alpha: float | None = None,
         select: Callable[[str, jax.Array], bool] | None = None):
    """Return ``(adapted_apply_fn, adapters)``; ``adapted_apply_fn(adapters, *args)`` runs the base
    network with W + (alpha / rank) A B on the selected matrices.

    ``select(name, leaf)`` picks the matrices (default: every 2-D leaf); ``name`` is the leaf's
    path joined by "/". ``alpha`` defaults to 2 rank (scale 2, as AWM's r = 32, alpha = 64).
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    scale = (2.0 * rank if alpha is None else alpha) / rank
    select = select or (lambda name, leaf: leaf.ndim == 2)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(base_params)
    adapters = {}
    for i, (path, leaf) in enumerate(leaves):
        name = _name(path)
        if select(name, leaf):
            if leaf.ndim != 2:
                raise ValueError(f"LoRA adapts matrices; {name} has shape {leaf.shape}")
            d_in, d_out = leaf.shape
            a = jax.random.normal(jax.random.fold_in(key, i), (d_in, rank), leaf.dtype) / jnp.sqrt(d_in)
            adapters[name] = {"a": a, "b": jnp.zeros((rank, d_out), leaf.dtype)}
    if not adapters:
        raise ValueError("LoRA selected no weight matrix")
    names = [_name(p) for p, _ in leaves]
    base = [leaf for _, leaf in leaves]

    def merged(ad):
        return treedef.unflatten([w + scale * ad[n]["a"] @ ad[n]["b"] if n in ad else w for n, w in zip(names, base)])

    def adapted_apply_fn(ad, *args, **kwargs):
        return apply_fn(merged(ad), *args, **kwargs)

    adapted_apply_fn.merged = merged
    return adapted_apply_fn, adapters
