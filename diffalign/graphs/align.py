"""Reward alignment of GDSS: a graph diffusion model fine-tuned on its own molecules.

The flows' structure with the score model's own pretraining loss: ``graph_rollout_stage`` (the
step's ``prepare``) samples molecules with the model's sampler (no gradient), quantizes them to
atom types and bond orders (what the reward and the training data see), scores them on the host
(RDKit, through ``jax.pure_callback``) and forms group advantages; ``rl.matching_rows`` on
``gdss_matching(model)`` re-noises every molecule with fresh noise and returns per-row GDSS
losses 1/2 ||sigma s_X + z_X||^2 + 1/2 ||sigma s_A + z_A||^2 with the gaps to the frozen sets
(1/2 ||sigma s - sigma s_ref||^2, the same scale) at the same draws, for any matching-loss
transform (``awm``, ``nft``, ``rwr``, ``kto``, ``dpo``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..align import rl
from ..align.awm import group_advantages
from ..paths.base import bcast
from ..sampling.graph import (graph_log_prob, graph_step_moments, sample_graph_trajectories, sample_graphs, sym_noise,
                              x_noise)
from .gdss import GDSSModel, score_fns
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


def qed_reward(dataset: str, *, novel_against: set | None = None, unique: bool = False) -> Callable:
    """Host function ``(X one-hot, A bond orders) -> (reward, valid without correction)``, for
    ``jax.pure_callback`` on ``quantize_jax``'s output: the QED of each molecule
    (``qed_scores``). A diversity-aware variant, against the collapse onto a few QED-rich
    training molecules: with ``novel_against`` (canonical SMILES, the training set's) a molecule
    found there scores 0; with ``unique`` a molecule repeated in the batch scores only at its
    first occurrence (canonical SMILES of the largest fragment, as uniqueness and novelty count)."""
    from . import molecules as M

    def fn(x, adj):
        x, adj = np.asarray(x), np.asarray(adj)
        types = np.where(x.any(-1), x.argmax(-1), -1).astype(np.int8)
        bonds = np.rint(adj).astype(np.int8)
        reward, valid = qed_scores(types, bonds, dataset)
        if novel_against is not None or unique:
            seen: set = set()
            for i, smi in enumerate(M.decode(types, bonds, dataset).smiles):
                if smi is None or (novel_against is not None and smi in novel_against) or (unique and smi in seen):
                    reward[i] = 0.0
                seen.add(smi)
        return reward, valid

    return fn


def gdss_matching(model: GDSSModel) -> rl.Matching:
    """GDSS's pretraining loss as ``align.rl.Matching``: rows ``{"x", "adj", "t"}`` with masked
    noise ``noise_x`` and symmetric ``noise_a``, per-row loss 1/2 ||sigma s_X + z_X||^2 +
    1/2 ||sigma s_A + z_A||^2, prediction (sigma s_X, sigma s_A), gap the same 1/2 squared norm;
    times in [train_eps, 1]. Every matching-loss method (AWM, DiffusionNFT, RWR, KTO, DPO) then
    trains GDSS through ``rl.matching_rows`` exactly as it trains a flow."""
    gsde = model.gsde
    loss = gdss_loss(gsde, model.apply_x, model.apply_a)

    def fit(params, rows, key):
        out = loss(params, rows, key)
        return {"per_example": out["per_example"], "prediction": out["scaled_scores"]}

    def noise(key, rows):  # unmasked: the loss masks it by each row's own flags (a DPO pair shares it)
        kx, ka = jax.random.split(key)
        everyone = jnp.ones(rows["adj"].shape[:2], rows["adj"].dtype)
        return {"noise_x": x_noise(kx, rows["x"].shape, everyone, rows["x"].dtype),
                "noise_a": sym_noise(ka, rows["adj"].shape, everyone, rows["adj"].dtype)}

    def gap(a, b):
        return half_sq(a[0] - b[0]) + half_sq(a[1] - b[1])

    return rl.Matching(fit, noise, gap, ("x", "adj"), gsde.train_eps)


def graph_rollout_stage(model: GDSSModel, train_flags, reward_host: Callable, *, num_samples: int,
                        group_size: int | None = None, policy: str = "params", sampler_kw: dict | None = None,
                        num_scales: int | None = None, drift_t: float = 0.5, trajectories: bool = False) -> Callable:
    """The ``prepare`` of a GDSS alignment step (``rl.rollout_stage`` for graphs).

    ``num_samples`` molecules per epoch from the model's sampler (no gradient; node counts drawn
    from ``train_flags`` as GDSS samples; ``sampler_kw`` overrides the config's solver,
    predictor, ..., ``num_scales`` its number of steps), by the current parameters or
    ``aux["old"]``; quantized (``quantize_jax``) and scored on the host through
    ``jax.pure_callback`` (``reward_host(x, adj) -> (reward, valid)``); group advantages over
    pseudo-groups of ``group_size`` (default: one group). Reports the mean reward, validity
    without correction, atoms per molecule and, with ``aux["ref"]``, the drift
    E 1/2 ||sigma s - sigma s_ref||^2 at t = ``drift_t``. With ``trajectories`` the rollouts are
    the predictor-only sampler as a Gaussian policy (``sampling.graph.sample_graph_trajectories``,
    the config's predictor, no corrector), and the batch carries ``traj_x``, ``traj_a``,
    ``log_probs`` and ``flags`` for ``graph_grpo_rows``.
    """
    cfg, gsde = model.config, model.gsde
    if num_scales is not None:
        gsde = dataclasses.replace(gsde, num_scales=num_scales)
    group_size = group_size or num_samples
    if group_size < 2 or num_samples % group_size:
        raise ValueError(f"group_size must be >= 2 and divide the {num_samples} samples, got {group_size}")
    train_flags = jnp.asarray(train_flags)
    kw = dict(solver=cfg.solver, predictor=cfg.predictor, corrector=cfg.corrector, snr=cfg.snr,
              scale_eps=cfg.scale_eps)
    kw.update(sampler_kw or {})
    ax, aa = model.apply_x, model.apply_a
    shapes = (jax.ShapeDtypeStruct((num_samples,), jnp.float32),) * 2

    def prepare(params, batch, key, aux=None):
        del batch
        k_fl, k_s, k_d = jax.random.split(key, 3)
        if policy == "old" and (aux is None or "old" not in aux):
            raise KeyError("rollouts with policy='old' need aux['old'] (the lagged policy)")
        sampler_params = params if policy == "params" else aux["old"]
        fl = train_flags[jax.random.randint(k_fl, (num_samples,), 0, train_flags.shape[0])]
        sx, sa = score_fns(model, sampler_params)
        extra = {}
        if trajectories:
            x, adj, tx, ta, lps = sample_graph_trajectories(k_s, gsde, sx, sa, fl, cfg.max_feat,
                                                            predictor=kw["predictor"])
            extra = {"traj_x": tx, "traj_a": ta, "log_probs": lps, "flags": fl}
        else:
            x, adj = sample_graphs(k_s, gsde, sx, sa, fl, cfg.max_feat, **kw)
        x0, a0 = quantize_jax(x, adj)
        reward, valid = jax.pure_callback(reward_host, shapes, x0, a0)
        group = jnp.arange(num_samples) // group_size
        metrics = {"reward": jnp.mean(reward), "valid_wo_correction": jnp.mean(valid),
                   "atoms": jnp.mean(jnp.sum(x0.any(-1), -1).astype(jnp.float32))}
        if aux is not None and "ref" in aux:
            f0 = node_flags(a0)
            td = jnp.full((num_samples,), drift_t)
            xd, ad, _, _ = perturb(gsde, k_d, x0, a0, f0, td)
            cx, ca = scaled_scores(gsde, ax, aa, params, xd, ad, f0, td)
            qx, qa = scaled_scores(gsde, ax, aa, aux["ref"], xd, ad, f0, td)
            metrics["drift"] = jnp.mean(half_sq(cx - qx) + half_sq(ca - qa))
        return {"x": x0, "adj": a0, "reward": reward, "valid": valid, "group": group,
                "advantage": group_advantages(reward, group, num_samples), "metrics": metrics, **extra}

    return prepare


def graph_grpo_rows(model: GDSSModel, *, train_steps: int, num_scales: int | None = None) -> Callable:
    """Flow-GRPO's rows on the graph sampler: for ``train_steps`` transitions per molecule, drawn
    without replacement from its stored trajectory (``graph_rollout_stage(trajectories=True)``)
    but the last (the reward scores the last step's mean, so its draw is no action),
    ``per_example`` = -log pi_theta(state_{k+1} | state_k) (``sampling.graph.graph_log_prob``:
    the mean over the free entries of X and A) against the stored ``logp_old``; with frozen sets
    in ``aux``, ``kl_<name>`` (the per-entry Gaussian KL of the two steps, their common std: the
    paper's KL per entry, where the flows' ``kl_ref`` is the released code's, without the step
    size) and
    ``drift_<name>`` (1/2 ||sigma s - sigma s_name||^2 at the state, the matching rows' gap).
    ``num_scales`` must be the rollout's."""
    cfg, gsde = model.config, model.gsde
    if num_scales is not None:
        gsde = dataclasses.replace(gsde, num_scales=num_scales)

    def loss_fn(params, batch, key, aux=None):
        tx, ta, fl = batch["traj_x"], batch["traj_a"], batch["flags"]
        b, steps = tx.shape[0], tx.shape[1] - 1
        if not 1 <= train_steps <= steps - 1:
            raise ValueError(f"train_steps must be in [1, {steps - 1}], got {train_steps}")
        pick = jax.vmap(lambda k: jax.random.permutation(k, steps - 1)[:train_steps])(jax.random.split(key, b))
        rows_of = lambda v, j: jnp.take_along_axis(v, j.reshape(j.shape + (1,) * (v.ndim - 2)), 1)  # noqa: E731
        flat = lambda v: v.reshape(b * train_steps, *v.shape[2:])  # noqa: E731
        x, adj = flat(rows_of(tx, pick)), flat(rows_of(ta, pick))
        x_next, a_next = flat(rows_of(tx, pick + 1)), flat(rows_of(ta, pick + 1))
        flags = jnp.repeat(fl, train_steps, axis=0)
        t = jnp.linspace(1.0, gsde.sample_eps, steps)[pick.reshape(-1)]

        sigma_x, sigma_a = (bcast(sde.coeffs(t)[1], v) for sde, v in ((gsde.sde_x, x), (gsde.sde_a, adj)))

        def evaluate(p):  # the step's moments and the scaled scores, from one evaluation of both networks
            fx, fa = score_fns(model, p)
            sx, sa = fx(x, adj, flags, t), fa(x, adj, flags, t)
            moments = graph_step_moments(gsde, cfg.predictor, lambda *_: sx, lambda *_: sa, x, adj, flags, t)
            return moments, (sigma_x * sx, sigma_a * sa)

        (mx, sdx, ma, sda), (cx, ca) = evaluate(params)
        out = {"per_example": -graph_log_prob(x_next, mx, sdx, a_next, ma, sda, flags),
               "logp_old": jnp.take_along_axis(batch["log_probs"], pick, 1).reshape(-1), "t": t,
               **{k: jnp.repeat(batch[k], train_steps, axis=0) for k in ("reward", "advantage", "group")}}
        for name, tag in rl.FROZEN.items():
            if aux is not None and name in aux:
                (fx, _, fa, _), (qx, qa) = evaluate(aux[name])
                # KL(N(mu, s^2) || N(mu_f, s^2)) per free entry = log N(mu; mu, s) - log N(mu; mu_f, s)
                out[f"kl_{tag}"] = (graph_log_prob(mx, mx, sdx, ma, ma, sda, flags)
                                    - graph_log_prob(mx, fx, sdx, ma, fa, sda, flags))
                out[f"drift_{tag}"] = half_sq(cx - qx) + half_sq(ca - qa)
        return out

    return loss_fn


def build(r, model: GDSSModel, params, train_flags, reward_host: Callable, *, samples: int, group_size: int,
          lr: float, rollout_steps: int, seed: int = 0, clip_norm: float = 1.0, num_times: int | None = None):
    """One epoch of an alignment recipe (``align.recipes.recipe``) on a GDSS model: the graph
    rollout stage (the model's own sampler at ``rollout_steps`` steps for every method; the old
    policy samples for DiffusionNFT), ``rl.matching_rows`` on ``gdss_matching`` with the recipe's
    times (over [train_eps, 1]) and pairs, and the recipe's transform, regularisers and lags
    (``recipes.assemble``). Flow-GRPO rolls out the predictor-only sampler as a Gaussian policy
    and trains ``train_steps`` random transitions of each trajectory (``graph_grpo_rows``); its
    rows count one pass of both networks each, and its rollout passes one per step (no
    corrector), the matching methods' two with the config's corrector."""
    from ..align import recipes

    if num_times is not None:
        r = dataclasses.replace(r, num_times=num_times)
    if dict(r.objective).get("weighting") == "x0":  # an x0 space is the flows': GDSS takes the paper's form
        r = dataclasses.replace(r, objective=tuple((k, v) for k, v in r.objective if k not in ("weighting", "scale")))
    grpo = r.rows == "flow_grpo"
    prepare = graph_rollout_stage(model, train_flags, reward_host, num_samples=samples, group_size=group_size,
                                  policy=r.policy, num_scales=rollout_steps, trajectories=grpo)
    if grpo:  # the predictor-only sampler as the policy; train_steps transitions of each trajectory
        steps = min(r.train_steps or rollout_steps - 1, rollout_steps - 1)
        loss_fn = graph_grpo_rows(model, train_steps=steps, num_scales=rollout_steps)
        rows, passes = samples * steps, samples * rollout_steps
    else:
        loss_fn = rl.matching_rows(gdss_matching(model), num_times=r.num_times, times=r.times,
                                   grid_steps=r.grid_steps, t_range=(model.gsde.train_eps, 1.0),
                                   pair_group_size=group_size if r.pairs else 0)
        rows = recipes.matching_row_count(r, samples, group_size)
        passes = samples * rollout_steps * (2 if model.config.corrector != "none" else 1)
    return recipes.assemble(r, prepare, loss_fn, params, rows=rows, rollout_evals=passes, lr=lr, seed=seed,
                            clip_norm=clip_norm)
