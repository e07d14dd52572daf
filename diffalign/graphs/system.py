"""The GDSS system of SDEs on node features X and adjacency A, its score parametrisation and loss.

Jo, Lee & Hwang, "Score-based Generative Modeling of Graphs via the System of Stochastic
Differential Equations", ICML 2022. Two forward SDEs share one time t:

    dX = f_X(X, t) dt + g_X(t) dW_X,        dA = f_A(A, t) dt + g_A(t) dW_A,

with A's noise symmetric with a zero diagonal, and every noise and perturbed input masked
by the node flags. The score networks take no time input: for a VP (or sub-VP) component
the score is -net / sigma_t, for a VE component the network output itself. The loss per
graph is 1/2 sum over entries of (sigma_t s + z)^2 for each component, the same t for both.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..sde import SDE, VESDE
from ..sampling.graph import mask_adj, mask_x, sym_noise, x_noise


@dataclasses.dataclass(frozen=True)
class GraphSDE:
    """The pair of SDEs and GDSS's discretisation settings.

    Attributes:
      sde_x, sde_a: the SDEs on X and on A.
      num_scales: N, the number of reverse steps (and of the discrete DDPM/SMLD schedules).
      train_eps: smallest training time (t ~ U(train_eps, 1)).
      sample_eps: last time of the sampling grid linspace(1, sample_eps, N).
    """

    sde_x: SDE
    sde_a: SDE
    num_scales: int = 1000
    train_eps: float = 1e-5
    sample_eps: float = 1e-4

    def __post_init__(self):
        if self.num_scales < 2:
            raise ValueError(f"num_scales must be >= 2, got {self.num_scales}")


def node_flags(adj):
    """A node is real iff its row of the clean adjacency is non-zero (GDSS's ``node_flags``)."""
    return (jnp.abs(adj).sum(-1) > 1e-5).astype(adj.dtype)


def _b(v, x):
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def score_from_output(sde: SDE, out, t):
    """GDSS's parametrisation: VE -> the output itself; VP and sub-VP -> -output / sigma_t."""
    if isinstance(sde, VESDE):
        return out
    return -out / _b(sde.coeffs(t)[1], out)


def perturb(gsde: GraphSDE, key, x0, a0, flags, t):
    """(X_t, A_t, z_X, z_A): masked perturbations of a clean batch at per-graph times t."""
    kx, ka = jax.random.split(key)
    zx = x_noise(kx, x0.shape, flags, x0.dtype)
    za = sym_noise(ka, a0.shape, flags, a0.dtype)
    return (*perturb_with(gsde, x0, a0, flags, t, zx, za), zx, za)


def perturb_with(gsde: GraphSDE, x0, a0, flags, t, zx, za):
    """(X_t, A_t) = (alpha_t X0 + sigma_t z_X, alpha_t A0 + sigma_t z_A), masked, for given noise."""
    ax, sx = gsde.sde_x.coeffs(t)
    aa, sa = gsde.sde_a.coeffs(t)
    xt = mask_x(_b(ax, x0) * x0 + _b(sx, x0) * zx, flags)
    at = mask_adj(_b(aa, a0) * a0 + _b(sa, a0) * za, flags)
    return xt, at


def batch_flags(batch: dict):
    """The node flags of a training batch; graphs with mask 0 (an epoch's padding) are empty."""
    flags = node_flags(batch["adj"])
    if "mask" in batch:
        flags = flags * (batch["mask"][:, None] > 0)
    return flags


def node_extent(flags):
    """Per graph, one past the index of its last real node (its size when real nodes come first)."""
    n = flags.shape[-1]
    return jnp.max(jnp.where(flags > 0, jnp.arange(1, n + 1, dtype=jnp.int32), 0), axis=-1)


def size_buckets(train_flags, batch_size: int, num_buckets: int = 4, round_to: int = 1) -> tuple:
    """A static layout ``((count, cap), ...)`` for evaluating the networks on batches drawn from
    these training graphs, largest graphs first, each bucket truncated to ``cap`` nodes.

    A batch of b graphs drawn without replacement from a set has its k-th largest graph no
    larger than the set's k-th largest, so bucket j (sorted positions [j b / K, (j+1) b / K))
    can be cut to the set's size at its first position. The networks ignore padding nodes (every
    input, output and noise is masked by the flags), so cutting them changes no result; it saves
    the quadratic work on the padding, the more so the more the sizes vary (ego_small: 4 to 16 of
    18 nodes). Caps are rounded up to a multiple of ``round_to`` (at most N), so that nearby
    size mixes share one layout. Returns a single bucket when cutting would save nothing.
    """
    ext = np.sort(np.asarray(node_extent(jnp.asarray(train_flags))))[::-1]
    b = min(batch_size, len(ext))
    bounds = np.linspace(0, b, max(1, num_buckets) + 1).round().astype(int)
    layout = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi <= lo:
            continue
        cap = min(-(-max(int(ext[lo]), 1) // round_to) * round_to, np.shape(train_flags)[-1])
        if layout and layout[-1][1] == cap:
            layout[-1] = (layout[-1][0] + int(hi - lo), cap)
        else:
            layout.append((int(hi - lo), cap))
    return tuple(layout)


def fits_layout(layout: tuple, flags):
    """Whether every graph of this batch fits its bucket of ``layout`` (as a traced bool)."""
    caps = np.repeat([c for _, c in layout], [n for n, _ in layout])
    if flags.shape[0] != len(caps):
        return jnp.asarray(False)
    return jnp.all(jnp.sort(node_extent(flags))[::-1] <= caps)


def bucketed(apply: Callable, layout: tuple, adjacency_output: bool) -> Callable:
    """``apply(params, x, adj, flags)`` evaluated bucket by bucket (``size_buckets``), with the
    same result as one evaluation of the whole batch when the batch fits the layout
    (``fits_layout``; graphs beyond their bucket's cap would be cut). Its output is (B, N, F)
    node values, or (B, N, N) with ``adjacency_output``."""

    def f(params, x, adj, flags):
        order = jnp.argsort(-node_extent(flags), stable=True)
        xs, adjs, fs = x[order], adj[order], flags[order]
        n, outs, lo = x.shape[1], [], 0
        for count, cap in layout:
            sl = slice(lo, lo + count)
            o = apply(params, xs[sl, :cap], adjs[sl, :cap, :cap], fs[sl, :cap])
            outs.append(jnp.pad(o, ((0, 0), (0, n - cap), (0, n - cap) if adjacency_output else (0, 0))))
            lo += count
        return jnp.concatenate(outs)[jnp.argsort(order)]

    return f


def scaled_scores(gsde: GraphSDE, apply_x: Callable, apply_a: Callable, params, xt, at, flags, t):
    """(sigma_t s_X, sigma_t s_A): the networks' scores times each SDE's marginal std, the
    quantity DSM regresses onto -z (GDSS's loss is 1/2 ||sigma s + z||^2 per network)."""
    sx = score_from_output(gsde.sde_x, apply_x(params["x"], xt, at, flags), t)
    sa = score_from_output(gsde.sde_a, apply_a(params["a"], xt, at, flags), t)
    return _b(gsde.sde_x.coeffs(t)[1], sx) * sx, _b(gsde.sde_a.coeffs(t)[1], sa) * sa


def half_sq(r):
    """1/2 the squared norm of each graph's entries: (B, ...) -> (B,)."""
    return 0.5 * jnp.sum(r.reshape(r.shape[0], -1) ** 2, -1)


def gdss_loss(gsde: GraphSDE, apply_x: Callable, apply_a: Callable, layout: tuple | None = None) -> Callable:
    """``loss_fn(params, batch, key)`` for params ``{"x": ..., "a": ...}`` and a batch
    ``{"x": (B, N, F), "adj": (B, N, N)[, "mask": (B,)][, "t": (B,)][, "noise_x", "noise_a"][, "flags": (B, N)]}``.

    Returns per-graph ``loss_x``, ``loss_a`` and their sum ``per_example``, and the scaled
    scores (sigma_t s_X, sigma_t s_A) as ``scaled_scores``: each network's parameters only enter
    its own term, so one gradient of the sum trains both exactly as GDSS's two separate
    backward passes do. Times are drawn from U(train_eps, 1) and noise from ``key`` unless the
    batch gives them (``noise_x``: standard normal, ``noise_a``: symmetric with a zero diagonal;
    both are masked here): given (graphs, t, noise) the loss is the unit that graph AWM and the
    graph distiller's fake score reuse. Node flags are read from the adjacency unless
    given. With a ``layout`` (``size_buckets``) the networks are evaluated in size buckets: the
    same loss, less work on padding nodes, for batches that fit it (``fits_layout``: the caller
    checks). Graphs with mask 0 (the padding of an epoch's last batch) are emptied: their loss
    is not counted anyway.
    """
    if layout is not None:
        apply_x, apply_a = bucketed(apply_x, layout, False), bucketed(apply_a, layout, True)

    def loss_fn(params, batch, key):
        x0, a0 = batch["x"], batch["adj"]
        flags = batch["flags"] if "flags" in batch else batch_flags(batch)
        if "t" in batch:
            t, kn = batch["t"], key
        else:
            kt, kn = jax.random.split(key)
            t = jax.random.uniform(kt, (x0.shape[0],), x0.dtype, gsde.train_eps, 1.0)
        if "noise_x" in batch:
            zx, za = mask_x(batch["noise_x"], flags), mask_adj(batch["noise_a"], flags)
            xt, at = perturb_with(gsde, x0, a0, flags, t, zx, za)
        else:
            xt, at, zx, za = perturb(gsde, kn, x0, a0, flags, t)
        sx, sa = scaled_scores(gsde, apply_x, apply_a, params, xt, at, flags, t)
        lx, la = half_sq(sx + zx), half_sq(sa + za)
        out = {"per_example": lx + la, "loss_x": lx, "loss_a": la, "t": t, "scaled_scores": (sx, sa)}
        if "mask" in batch:
            out["mask"] = batch["mask"]
        return out

    return loss_fn
