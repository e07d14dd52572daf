"""AWM for GDSS: a graph diffusion model fine-tuned on its own molecules with a reward.

The same recipe as ``align.rl.matching_rows`` for flows, with the score model's own pretraining loss:
each epoch samples molecules with the model's sampler (no gradient), quantizes them to atom
types and bond orders (what the reward and the training data see), scores them on the host
(RDKit, through ``jax.pure_callback``), then re-noises every molecule at K stratified times
with fresh noise and returns per-row GDSS losses 1/2 ||sigma s_X + z_X||^2 + 1/2 ||sigma s_A + z_A||^2
for the ``awm`` transform, with the gaps to the frozen reference and to the EMA anchor
(1/2 ||sigma s - sigma s_ref||^2, the same scale) at the same draws.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..losses.common import stratified_times
from .gdss import GDSSModel, score_fns
from ..sampling.graph import sample_graphs
from .system import gdss_loss, half_sq, node_flags, perturb, scaled_scores


def quantize_jax(x, adj):
    """``molecules.quantize`` in JAX, in the training representation: one-hot atom types (an
    atom exists when a channel exceeds 0.5 and takes the first such channel) and bond orders
    0-3 by the thresholds 0.5 / 1.5 / 2.5, between existing atoms."""
    on = x > 0.5
    exists = on.any(-1)
    x0 = jax.nn.one_hot(jnp.argmax(on, -1), x.shape[-1], dtype=x.dtype) * exists[..., None]
    order = (adj >= 0.5).astype(x.dtype) + (adj >= 1.5) + (adj >= 2.5)
    order = order * (exists[..., :, None] & exists[..., None, :])
    return x0, order


def qed_scores(types: np.ndarray, bonds: np.ndarray, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(QED, valid without correction) per quantized molecule (atom types, -1 = none; bond orders).

    A molecule that needs valency correction scores 0 (so a reward cannot trade validity for
    QED); otherwise the QED (Bickerton et al. 2012, RDKit) of its largest fragment."""
    from rdkit import RDLogger
    from rdkit.Chem import QED

    from . import molecules as M

    RDLogger.DisableLog("rdApp.*")
    rewards, valid = np.zeros(len(types), np.float32), np.zeros(len(types), np.float32)
    for i, (t, b) in enumerate(zip(types, bonds)):
        if (t >= 0).sum() == 0:
            continue
        mol, ok = M.correct(M.construct(t, b, dataset))
        frag = M.largest_fragment(mol) if ok else None
        if frag is not None:
            rewards[i], valid[i] = QED.qed(frag), 1.0
    return rewards, valid


def qed_reward(dataset: str) -> Callable:
    """Host function ``(X one-hot, A bond orders) -> (QED, valid without correction)``, for
    ``jax.pure_callback`` on ``quantize_jax``'s output (``qed_scores`` per molecule)."""

    def fn(x, adj):
        x, adj = np.asarray(x), np.asarray(adj)
        types = np.where(x.any(-1), x.argmax(-1), -1).astype(np.int8)
        return qed_scores(types, np.rint(adj).astype(np.int8), dataset)

    return fn


def awm_graph_loss(model: GDSSModel, train_flags, reward_host: Callable, *, num_samples: int, num_times: int = 6,
                   sampler_kw: dict | None = None, num_scales: int | None = None, drift_t: float = 0.5) -> Callable:
    """``loss_fn(params, batch, key, aux)`` for ``make_train_step`` with the ``awm`` transform.

    ``num_samples`` molecules per epoch (one group; node counts drawn from ``train_flags`` as
    GDSS samples), ``num_times`` re-noising times stratified over [train_eps, 1] and shared by
    the batch; ``sampler_kw`` overrides the config's sampler (solver, predictor, ...) and
    ``num_scales`` its number of steps (AWM trains on final samples only, so rollouts may be
    cheaper than the evaluation sampler)."""
    cfg, gsde = model.config, model.gsde
    if num_scales is not None:
        gsde = dataclasses.replace(gsde, num_scales=num_scales)
    train_flags = jnp.asarray(train_flags)
    kw = dict(solver=cfg.solver, predictor=cfg.predictor, corrector=cfg.corrector, snr=cfg.snr,
              scale_eps=cfg.scale_eps)
    kw.update(sampler_kw or {})
    ax, aa = model.apply_x, model.apply_a
    loss = gdss_loss(gsde, ax, aa)
    shapes = (jax.ShapeDtypeStruct((num_samples,), jnp.float32),) * 2

    def loss_fn(params, batch, key, aux=None):
        k_fl, k_s, k_t, k_n, k_d = jax.random.split(key, 5)
        frozen = jax.lax.stop_gradient(params)
        fl = train_flags[jax.random.randint(k_fl, (num_samples,), 0, train_flags.shape[0])]
        sx, sa = score_fns(model, frozen)
        x, adj = sample_graphs(k_s, gsde, sx, sa, fl, cfg.max_feat, **kw)
        x0, a0 = quantize_jax(x, adj)
        reward, valid = jax.pure_callback(reward_host, shapes, x0, a0)
        rows = lambda v: jnp.repeat(v, num_times, axis=0)  # noqa: E731
        xr, ar = rows(x0), rows(a0)
        t = jnp.tile(stratified_times(k_t, num_times, gsde.train_eps, 1.0), num_samples)
        graphs = {"x": xr, "adj": ar, "t": t}
        fit = loss(params, graphs, k_n)  # the pretraining loss at these graphs, times and noise
        px, pa = fit["scaled_scores"]
        out = {"per_example": fit["per_example"], "t": t, "reward": rows(reward)}
        metrics = {"reward": jnp.mean(reward), "valid_wo_correction": jnp.mean(valid),
                   "atoms": jnp.mean(jnp.sum(x0.any(-1), -1).astype(jnp.float32))}
        if aux is not None:
            rx, ra = loss(aux["ref"], graphs, k_n)["scaled_scores"]
            out["drift_ref"] = half_sq(px - rx) + half_sq(pa - ra)
            ex, ea = loss(aux["anchor"], graphs, k_n)["scaled_scores"]
            out["drift_ema"] = half_sq(px - ex) + half_sq(pa - ea)
            # drift at t = drift_t on this epoch's molecules, current parameters against the reference
            f0 = node_flags(a0)
            td = jnp.full((num_samples,), drift_t)
            xd, ad, _, _ = perturb(gsde, k_d, x0, a0, f0, td)
            cx, ca = scaled_scores(gsde, ax, aa, frozen, xd, ad, f0, td)
            qx, qa = scaled_scores(gsde, ax, aa, aux["ref"], xd, ad, f0, td)
            metrics["drift"] = jnp.mean(half_sq(cx - qx) + half_sq(ca - qa))
        out["metrics"] = metrics
        return out

    return loss_fn
