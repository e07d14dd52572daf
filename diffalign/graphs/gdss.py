"""GDSS end to end: networks from a data set's config, batches, the train step, sampling, decoding."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..data.shuffle import epoch_batch
from ..models import functional
from ..training import make_optimizer, make_train_step, per_module
from .configs import GDSSConfig
from .data import EdgeLists
from .networks import ScoreNetworkA, ScoreNetworkX
from ..sampling.graph import sample_graphs
from .system import GraphSDE, batch_flags, bucketed, fits_layout, gdss_loss, score_from_output, size_buckets


@dataclasses.dataclass(frozen=True)
class GDSSModel:
    """The two networks of a config as pure functions, and their initial parameters."""

    config: GDSSConfig
    apply_x: object
    apply_a: object
    params: dict

    @property
    def gsde(self) -> GraphSDE:
        return self.config.graph_sde()


def build_model(cfg: GDSSConfig, seed: int, *, remat: bool = False) -> GDSSModel:
    """``remat``: rematerialise every layer of both networks (same values, less memory)."""
    rngs = nnx.Rngs(seed)
    netx = ScoreNetworkX(cfg.max_feat, cfg.x_depth, cfg.x_nhid, remat=remat, rngs=rngs)
    neta = ScoreNetworkA(cfg.max_feat, cfg.a_nhid, cfg.a_layers, cfg.a_linears, cfg.c_init, cfg.c_hid,
                         cfg.c_final, cfg.adim, cfg.heads, remat=remat, rngs=rngs)
    apply_x, px = functional(netx)
    apply_a, pa = functional(neta)
    return GDSSModel(cfg, apply_x, apply_a, {"x": px, "a": pa})


def steps_per_epoch(num_graphs: int, batch_size: int) -> int:
    return math.ceil(num_graphs / batch_size)


def make_batch_fn(x: np.ndarray, adj: np.ndarray, batch_size: int, seed: int):
    """Pure ``batch_fn(step)``: epochs of shuffled batches without replacement, as a data loader
    with ``drop_last=False`` gives them (``diffalign.data.shuffle.epoch_batch``). Batches have a
    fixed shape ``min(batch_size, G)``; the last of an epoch is padded and its padding is masked
    out of the loss (``batch["mask"]``).
    """
    g = x.shape[0]
    xs, adjs = jnp.asarray(x), jnp.asarray(adj)
    base = jax.random.key(seed)

    def batch_fn(step):
        idx, mask = epoch_batch(base, step, g, batch_size)
        return {"x": xs[idx], "adj": adjs[idx], "mask": mask.astype(xs.dtype)}

    return batch_fn


def make_molecule_batch_fn(types: np.ndarray, bonds: np.ndarray, num_types: int, batch_size: int, seed: int):
    """As ``make_batch_fn`` for molecules kept compactly as int8 atom types (-1 = padding) and
    bond orders; one-hot X and float A are made on device per batch."""
    g = types.shape[0]
    t_dev, a_dev = jnp.asarray(types), jnp.asarray(bonds)
    base = jax.random.key(seed)

    def batch_fn(step):
        idx, mask = epoch_batch(base, step, g, batch_size)
        x = (t_dev[idx][..., None] == jnp.arange(num_types)).astype(jnp.float32)
        return {"x": x, "adj": a_dev[idx].astype(jnp.float32), "mask": mask}

    return batch_fn


def make_step(model: GDSSModel, train_flags, *, num_buckets: int = 4, accumulate: int = 1):
    """GDSS's optimisation on these training graphs' node flags (G, N): per network, clip to norm
    1, L2 1e-4 (PyTorch Adam), Adam, lr decayed by 0.999 per epoch; EMA 0.999 with warm-up
    min(0.999, (1+n)/(10+n)). The loss evaluates the networks in ``num_buckets`` size buckets
    (``system.size_buckets``: the same loss, less work on padding); 1 turns that off.
    ``accumulate=k``: gradient accumulation over k microbatches (the padded loss: size buckets
    are laid out for whole batches)."""
    cfg = model.config
    num_graphs = len(train_flags)
    spe = steps_per_epoch(num_graphs, min(cfg.batch_size, num_graphs))
    opt = per_module(
        make_optimizer(cfg.lr, schedule="exponential", decay_rate=cfg.lr_decay, decay_steps=spe,
                       l2=cfg.weight_decay, clip_norm=cfg.grad_clip),
        ("x", "a"),
    )

    def train_step(layout):
        loss = gdss_loss(model.gsde, model.apply_x, model.apply_a, layout)
        return make_train_step(loss, opt, ema_decay=cfg.ema, ema_warmup=True, accumulate=accumulate)

    padded = train_step(None)
    layout = size_buckets(train_flags, cfg.batch_size, num_buckets) if num_buckets > 1 and accumulate == 1 else None
    if layout is None or all(cap >= cfg.max_nodes for _, cap in layout):
        return opt, padded
    by_buckets = train_step(layout)

    def step(state, batch):
        return jax.lax.cond(fits_layout(layout, batch_flags(batch)), by_buckets, padded, state, batch)

    return opt, step


def score_fns(model: GDSSModel, params: dict, layout: tuple | None = None):
    """The X and A score functions; with a ``layout`` the networks are evaluated in size buckets
    (``system.bucketed``), for flags that fit it."""
    gsde = model.gsde
    apply_x, apply_a = model.apply_x, model.apply_a
    if layout is not None:
        apply_x, apply_a = bucketed(apply_x, layout, False), bucketed(apply_a, layout, True)

    def score_x(x, adj, flags, t):
        return score_from_output(gsde.sde_x, apply_x(params["x"], x, adj, flags), t)

    def score_a(x, adj, flags, t):
        return score_from_output(gsde.sde_a, apply_a(params["a"], x, adj, flags), t)

    return score_x, score_a


def sample_flags(key, train_flags: np.ndarray, n: int):
    """Node flags of ``n`` training graphs drawn uniformly with replacement (GDSS ``init_flags``)."""
    idx = jax.random.randint(key, (n,), 0, train_flags.shape[0])
    return jnp.asarray(train_flags)[idx]


def sampler(model: GDSSModel, params: dict, *, solver=None, predictor=None, corrector=None, snr=None,
            scale_eps=None, num_scales=None, num_buckets: int = 4):
    """``f(key, flags) -> (X, A)`` with the config's sampler (keyword overrides).

    The node flags are fixed for a whole trajectory, so ``f`` reads them once on the host and
    evaluates the networks in ``num_buckets`` size buckets fitted to them (``system.size_buckets``;
    the same samples, less work on padding nodes; 1 turns it off), through a jitted sampler
    compiled once per bucket layout (caps rounded up to multiples of N/16, so that successive
    draws of flags mostly share one). ``f.lower(key, flags)`` lowers that jitted sampler.
    """
    cfg = model.config
    gsde = model.gsde if num_scales is None else dataclasses.replace(model.gsde, num_scales=num_scales)
    kw = dict(
        solver=solver or cfg.solver, predictor=predictor or cfg.predictor, corrector=corrector or cfg.corrector,
        snr=cfg.snr if snr is None else snr, scale_eps=cfg.scale_eps if scale_eps is None else scale_eps,
    )
    compiled = {}

    def for_layout(flags):
        layout = None
        if num_buckets > 1:
            try:
                host_flags = np.asarray(flags)
            except jax.errors.TracerArrayConversionError:  # inside a caller's jit: evaluate whole
                host_flags = None
            if host_flags is not None:
                n = host_flags.shape[1]  # caps rounded to N/16: fewer distinct layouts to compile
                layout = size_buckets(host_flags, len(host_flags), num_buckets, round_to=max(1, n // 16))
                layout = layout if any(cap < flags.shape[1] for _, cap in layout) else None
        if layout not in compiled:
            sx, sa = score_fns(model, params, layout)
            compiled[layout] = jax.jit(lambda key, fl: sample_graphs(key, gsde, sx, sa, fl, cfg.max_feat, **kw))
        return compiled[layout]

    def f(key, flags):
        return for_layout(flags)(key, flags)

    f.lower = lambda key, flags: for_layout(flags).lower(key, flags)
    return f


def quantize_generic(adj: np.ndarray, flags: np.ndarray) -> EdgeLists:
    """A >= 0.5 -> edges; self-loops and isolated nodes dropped; an empty graph becomes one node."""
    adj = np.asarray(adj)
    flags = np.asarray(flags) > 0.5
    nums, edges = [], []
    for a, f in zip(adj, flags):
        keep = np.where(f)[0]
        sub = a[np.ix_(keep, keep)] >= 0.5
        np.fill_diagonal(sub, False)
        iu, ju = np.nonzero(np.triu(sub, 1))
        nodes = np.unique(np.concatenate([iu, ju]))
        remap = -np.ones(len(keep), np.int64)
        remap[nodes] = np.arange(len(nodes))
        nums.append(max(len(nodes), 1))
        edges.append(np.stack([remap[iu], remap[ju]], 1) if len(iu) else np.zeros((0, 2), np.int64))
    return EdgeLists(np.asarray(nums), tuple(edges), 0)
