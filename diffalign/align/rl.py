"""Online reward alignment of flow models: the rollout stage and the per-row losses.

One alignment epoch is one call of the ordinary training step (``training.make_train_step``)
in two stages:

* ``rollout_stage`` is the step's ``prepare``: it samples with the current parameters, or a
  lagged copy in ``TrainState.aux`` (DiffusionNFT's old policy), without gradients, scores
  the samples, and forms each sample's group advantage on the whole epoch's batch;
* a rows function is the step's ``loss_fn`` on that batch, returning per-row quantities
  that a loss transform turns into the objective (``awm``, ``flow_grpo``, ``nft``, ``dpo``,
  ``kto``, ``rwr``, each with ``penalties`` for the regularisers).

So every method shares the sampler, the update, checkpoints, exact resumption, logging and
non-finite detection; a method is a rollout setting, a rows function and a transform.

Time runs from data (t = 0) to noise (t = 1) on the rectified-flow path
x_t = (1 - t) x0 + t eps, velocity target eps - x0 (SD3's convention, the papers' notation).

* ``matching_rows``: each clean sample re-noised at K times with fresh noise; the row's loss
  is the model family's pretraining loss itself (``Matching``: ``flow_matching`` for flows,
  ``graphs.align.gdss_matching`` for GDSS). With ``pair_group_size`` each group's best and worst
  samples are stacked [chosen; rejected] with shared (t, noise), as Diffusion-DPO's code does.
* ``flow_grpo_rows``: per-step Gaussian log-probabilities of the stored transitions of
  Flow-GRPO's SDE, with the log-probabilities stored at rollout (the PPO ratio's old side).

Frozen parameter sets live in ``TrainState.aux``: ``ref`` (the pretrained model), ``anchor``
(AWM's EMA anchor) and ``old`` (DiffusionNFT's lagged policy); every rows function evaluates
each one present at the same rows and reports ``drift_<name>`` (squared velocity gap) and
``<name>_loss`` (its matching loss at the same draws), with ``ema`` standing for ``anchor``.
``lagged_update`` moves the anchor and the old policy after each epoch.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ..losses.common import stratified_times
from ..losses.flow_matching import flow_matching_loss
from ..paths.base import AffinePath, LinearPath
from ..paths.conversions import Predictor
from ..sampling import deterministic
from ..sampling.flow_sde import GRPO_NOISE, flow_grpo_sde, flow_sde_step_moments
from .awm import ema_anchor_decay, group_advantages

SAMPLERS = ("euler", "sde", "dpm2")
TIMES = ("stratified", "grid", "logit_normal")
# aux entry -> the name its quantities carry in a rows function's output
FROZEN = {"ref": "ref", "anchor": "ema", "old": "old"}


def _apply(apply_fn, params, x, t, y):
    return apply_fn(params, x, t) if y is None else apply_fn(params, x, t, y)


def rollout_grid(steps: int) -> jax.Array:
    """The uniform sampling grid 1 = t_0 > ... > t_steps = 0."""
    if steps < 2:
        raise ValueError(f"rollouts need at least 2 steps, got {steps}")
    return jnp.linspace(1.0, 0.0, steps + 1)


def gaussian_log_prob(x, mean, std):
    """log N(x; mean, std^2 I), averaged (not summed) over the non-batch dimensions, as DDPO
    and Flow-GRPO's code."""
    z = (x - mean) / std
    lp = -0.5 * z**2 - jnp.log(std) - 0.5 * jnp.log(2.0 * jnp.pi)
    return jnp.mean(lp.reshape(lp.shape[0], -1), axis=-1)


def sample_flow(key, apply_fn, params, x1, steps: int, *, y=None, sampler: str = "euler", a: float = GRPO_NOISE,
                noisy_last: bool = False):
    """Integrate from noise ``x1`` (t = 1) to t = 0 on the uniform grid of ``steps`` steps.

    ``"euler"``: the probability-flow ODE (``sampling.deterministic.euler``); ``"dpm2"``:
    DPM-Solver++(2M) on the same grid (DiffusionNFT's rollout sampler; its first and last steps
    are first order); both return the samples (``key`` unused). ``"sde"``: Flow-GRPO's SDE
    (``sampling.flow_sde.flow_grpo_sde``); returns (samples, trajectory (steps + 1, B, ...),
    per-step log-probabilities (steps, B)).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown rollout sampler {sampler!r}; expected one of {SAMPLERS}")
    ts = rollout_grid(steps)
    velocity = lambda x, t: _apply(apply_fn, params, x, t, y)  # noqa: E731
    if sampler == "sde":
        return flow_grpo_sde(key, velocity, x1, ts, a, noisy_last=noisy_last, log_probs=True)
    pred = Predictor(velocity, LinearPath(), "velocity")
    if sampler == "euler":
        return deterministic.euler(pred, x1, steps, ts=ts)
    return deterministic.dpm_solver_pp_2m(pred, x1, steps, ts=ts)


def flow_rollout(num_samples: int, shape: tuple[int, ...], *, steps: int = 14, sampler: str = "euler",
                 a: float = GRPO_NOISE, noisy_last: bool = False, group_size: int | None = None) -> Callable:
    """``rollout(apply_fn, params, batch, key)``: ``num_samples`` samples per condition.

    Unconditional when the batch has no ``"y"``: the samples form pseudo-groups of
    ``group_size`` consecutive samples (default: one group of all), the same for every method,
    since a prompt-free task has no prompts to group by. With conditions ``batch["y"]`` of
    shape (P,), each is repeated ``num_samples`` times and is its own group. Returns
    ``{"x", "y", "group"}``, batch-major; the SDE adds ``"trajectory"`` (B, steps + 1, ...) and
    ``"log_probs"`` (B, steps).
    """
    if num_samples < 2:
        raise ValueError(f"a group needs at least 2 samples, got {num_samples}")
    group_size = group_size or num_samples
    if group_size < 2 or num_samples % group_size:
        raise ValueError(f"group_size must be >= 2 and divide the {num_samples} samples, got {group_size}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown rollout sampler {sampler!r}; expected one of {SAMPLERS}")

    def rollout(apply_fn, params, batch, key):
        cond = batch.get("y") if isinstance(batch, dict) else None
        if cond is None:
            y, group = None, jnp.arange(num_samples) // group_size
        else:
            y, group = jnp.repeat(cond, num_samples), jnp.repeat(jnp.arange(cond.shape[0]), num_samples)
        k_noise, k_sde = jax.random.split(key)
        x1 = jax.random.normal(k_noise, (group.shape[0], *shape))
        res = {"y": y, "group": group}
        if sampler == "sde":
            x, traj, lps = sample_flow(k_sde, apply_fn, params, x1, steps, y=y, sampler="sde", a=a,
                                       noisy_last=noisy_last)
            res.update(x=x, trajectory=jnp.swapaxes(traj, 0, 1), log_probs=lps.T)
        else:
            res["x"] = sample_flow(None, apply_fn, params, x1, steps, y=y, sampler=sampler)
        return res

    return rollout


def _sq(a, b):
    return jnp.mean((a - b).reshape(a.shape[0], -1) ** 2, axis=-1)


def rollout_stage(apply_fn: Callable, rollout: Callable, reward_fn: Callable, *, policy: str = "params",
                  metrics_fn: Callable | None = None, drift_t: float = 0.5, path: AffinePath = LinearPath()) -> Callable:
    """The ``prepare`` of an alignment step: rollouts, rewards and group advantages.

    ``policy``: ``"params"`` samples with the current parameters, ``"old"`` with ``aux["old"]``
    (DiffusionNFT). ``reward_fn(x, y) -> (B,)`` is pure JAX or a ``jax.pure_callback``. The
    advantages (``align.group_advantages``: group mean, whole-batch std, clip 5, over 5) are
    formed here on the whole batch, so minibatch updates see the epoch's statistics. Reports the
    mean reward, the drift E||v - v_ref||^2 at t = ``drift_t`` on the rollouts (with a ``ref`` in
    aux) and ``metrics_fn(x)``.
    """
    if policy not in ("params", "old"):
        raise ValueError(f"policy must be 'params' or 'old', got {policy!r}")

    def prepare(params, batch, key, aux=None):
        k_roll, k_m = jax.random.split(key)
        if policy == "old" and (aux is None or "old" not in aux):
            raise KeyError("rollouts with policy='old' need aux['old'] (the lagged policy)")
        roll = dict(rollout(apply_fn, params if policy == "params" else aux["old"], batch, k_roll))
        x0, y = roll["x"], roll["y"]
        r = jnp.asarray(reward_fn(x0, y), jnp.float32)
        roll["reward"] = r
        roll["advantage"] = group_advantages(r, roll["group"], r.shape[0])
        metrics = {"reward": jnp.mean(r)}
        if aux is not None and "ref" in aux:
            eps = jax.random.normal(k_m, x0.shape, x0.dtype)
            t = jnp.full((x0.shape[0],), drift_t, x0.dtype)
            xt = path.interpolate(x0, eps, t)
            metrics["drift"] = jnp.mean(_sq(_apply(apply_fn, params, xt, t, y), _apply(apply_fn, aux["ref"], xt, t, y)))
        if metrics_fn is not None:
            metrics.update(metrics_fn(x0))
        roll["metrics"] = metrics
        return roll

    return prepare


def best_worst_pairs(reward, num_groups: int):
    """Per group: (index of its best sample, of its worst, whether they differ in reward).

    The groups are ``num_groups`` equal, contiguous blocks (as ``flow_rollout`` makes them); the
    first best and the first worst are taken. A group whose rewards are all equal forms no pair
    (``valid`` False): Flow-GRPO's code would still pair two of its samples, with arbitrary labels.
    """
    reward = jnp.asarray(reward)
    if reward.shape[0] % num_groups:
        raise ValueError(f"{reward.shape[0]} samples are not {num_groups} equal groups")
    size = reward.shape[0] // num_groups
    by_group = reward.reshape(num_groups, size)
    offset = jnp.arange(num_groups) * size
    best, worst = jnp.argmax(by_group, 1) + offset, jnp.argmin(by_group, 1) + offset
    return best, worst, reward[best] > reward[worst]


class Matching(NamedTuple):
    """A model family's pretraining loss, as the rows of every matching-loss method need it.

    ``loss(params, rows, key) -> {"per_example", "prediction"}`` evaluates the loss at given
    rows (samples, times ``"t"`` and noise), ``noise(key, rows) -> dict`` draws the noise entries
    it reads, ``gap(a, b) -> (rows,)`` is the squared norm ``per_example`` uses, applied to two
    predictions (so NFT's identity holds exactly), ``sample_keys`` are the batch's per-sample
    entries the rows repeat, and times are kept >= ``t_min``. ``residual(rows, prediction) ->
    (rows, D)``, where given, is the prediction minus its target (the flows' v - u), which
    DiffusionNFT's x0-normalised weighting reads. ``flow_matching`` is the flows';
    ``graphs.align.gdss_matching`` GDSS's."""

    loss: Callable
    noise: Callable
    gap: Callable
    sample_keys: tuple[str, ...] = ("x", "y")
    t_min: float = 0.0
    residual: Callable | None = None


def flow_matching(apply_fn: Callable, path: AffinePath = LinearPath()) -> Matching:
    """``losses.flow_matching_loss`` on ``path`` (per-dimension mean), noise ``x_source``,
    residual v - u."""

    def residual(rows, prediction):
        r = prediction - path.velocity(rows["x"], rows["x_source"], rows["t"])
        return r.reshape(r.shape[0], -1)

    return Matching(flow_matching_loss(apply_fn, path=path),
                    lambda key, rows: {"x_source": jax.random.normal(key, rows["x"].shape, rows["x"].dtype)}, _sq,
                    residual=residual)


def row_times(key, kind: str, n_samples: int, k: int, t_range, grid_steps: int, dtype, t_min: float = 0.0):
    """(n_samples * k,) sample-major row times: ``"stratified"`` (K stratified times in
    ``t_range`` shared by the batch, AWM), ``"grid"`` (K of the ``grid_steps``-step rollout
    grid's times per sample, without replacement, t = 1 included, DiffusionNFT) or
    ``"logit_normal"`` (sigmoid of N(0, 1) per row, Flow-GRPO's DPO), at least ``t_min``."""
    if kind == "stratified":
        t = jnp.tile(stratified_times(key, k, *t_range), n_samples)
    elif kind == "grid":
        grid = rollout_grid(grid_steps)[:-1]
        pick = jax.vmap(lambda kk: jax.random.permutation(kk, grid_steps)[:k])(jax.random.split(key, n_samples))
        t = grid[pick].reshape(-1)
    elif kind == "logit_normal":
        t = jax.nn.sigmoid(jax.random.normal(key, (n_samples * k,)))
    else:
        raise ValueError(f"unknown time sampling {kind!r}; expected one of {TIMES}")
    return jnp.maximum(t, t_min).astype(dtype)


def matching_rows(matching: Matching, *, num_times: int = 6, times: str = "stratified",
                  t_range: tuple[float, float] = (0.02, 0.98), grid_steps: int = 10,
                  pair_group_size: int = 0, residuals: bool = False) -> Callable:
    """Rows of the pretraining loss on the rollout batch, for AWM, DiffusionNFT, RWR, KTO, DPO.

    ``loss_fn(params, batch, key, aux=None)`` re-noises every sample (``batch[k]`` for the
    ``matching.sample_keys``) at ``num_times`` times (``row_times``) with fresh noise per row.
    Each row's loss is the family's pretraining loss (``matching.loss``; ``flow_matching(apply_fn)``
    for flows), so with unit weights the gradient is the pretraining gradient by construction.
    Rows are sample-major and carry the sample's ``reward``, ``advantage`` and ``group``, the
    time ``t``, and for each frozen set in ``aux`` its ``drift_<name>`` and ``<name>_loss`` at
    the same draws.

    With ``pair_group_size`` = G > 0 the rows are ``[chosen; rejected]``: the best and worst
    sample of each group of G (``best_worst_pairs``; a rollout's groups), the pair sharing its
    times and noise; a group of tied rewards is masked out (``mask`` 0 on both its rows, read by
    ``dpo``). With ``residuals`` the rows also carry ``residual`` (prediction minus target, (rows,
    D)) and ``<name>_residual`` for each frozen set (DiffusionNFT's x0-normalised weighting).
    """
    if not isinstance(matching, Matching):
        raise TypeError(f"matching_rows takes a rl.Matching (rl.flow_matching(apply_fn) for flows), got "
                        f"{type(matching).__name__}")
    if times not in TIMES:
        raise ValueError(f"unknown time sampling {times!r}; expected one of {TIMES}")
    if pair_group_size == 1 or pair_group_size < 0:
        raise ValueError(f"pair_group_size must be 0 (no pairs) or a group size >= 2, got {pair_group_size}")
    pairs = pair_group_size > 0
    if num_times < 1 or (times == "grid" and num_times > grid_steps):
        raise ValueError(f"num_times must be in [1, grid_steps] (grid) or >= 1, got {num_times}")
    if residuals and matching.residual is None:
        raise ValueError("residuals=True needs a Matching with a residual function (the flows' has one)")

    def loss_fn(params, batch, key, aux=None):
        k_t, k_eps = jax.random.split(key)
        k_loss = k_eps  # the losses read their noise from the rows; the key is passed through
        samples = {k: batch[k] for k in matching.sample_keys if batch.get(k) is not None}
        per_sample = {"reward": batch["reward"], "advantage": batch["advantage"], "group": batch["group"]}
        n = batch["reward"].shape[0]
        mask = None
        if pairs:
            if n % pair_group_size:
                raise ValueError(f"{n} samples are not whole groups of {pair_group_size}")
            best, worst, valid = best_worst_pairs(batch["reward"], n // pair_group_size)
            idx = jnp.concatenate([best, worst])
            samples = {k: v[idx] for k, v in samples.items()}
            per_sample = {k: v[idx] for k, v in per_sample.items()}
            mask = jnp.tile(valid, 2).astype(jnp.float32)
            n = idx.shape[0]
        k = num_times
        half = n // 2 if pairs else n  # a pair shares its draws: draw for the chosen half, repeat
        dtype = samples["x"].dtype
        t = row_times(k_t, times, half, k, t_range, grid_steps, dtype, matching.t_min)
        rows = {name: jnp.repeat(v, k, axis=0) for name, v in samples.items()}
        noise = matching.noise(k_eps, {name: v[: half * k] for name, v in rows.items()})
        if pairs:
            t = jnp.tile(t, 2)
            noise = {name: jnp.concatenate([v, v]) for name, v in noise.items()}
        rows = {**rows, **noise, "t": t}
        fit = matching.loss(params, rows, k_loss)
        out = {"per_example": fit["per_example"], "t": t,
               **{name: jnp.repeat(v, k, axis=0) for name, v in per_sample.items()}}
        if mask is not None:
            out["mask"] = jnp.repeat(mask, k)
        if residuals:
            out["residual"] = matching.residual(rows, fit["prediction"])
        for name, tag in FROZEN.items():
            if aux is not None and name in aux:
                frozen = matching.loss(aux[name], rows, k_loss)
                out[f"drift_{tag}"] = matching.gap(fit["prediction"], frozen["prediction"])
                out[f"{tag}_loss"] = frozen["per_example"]
                if residuals:
                    out[f"{tag}_residual"] = matching.residual(rows, frozen["prediction"])
        return out

    return loss_fn


def flow_grpo_rows(apply_fn: Callable, *, a: float = GRPO_NOISE, train_steps: int | None = None) -> Callable:
    """Flow-GRPO rows: ``per_example`` = -log pi_theta(x_{k+1} | x_k) (per-dimension mean) for the
    first ``train_steps`` transitions of each stored SDE trajectory (default: all but the last,
    the released int(0.99 T)), in order; ``logp_old`` the log-probabilities stored at rollout
    (the ratio's old side: on the first minibatch of an epoch the ratio is 1). With frozen sets in
    ``aux``: ``kl_<name>`` = mean_d (mu_theta - mu_name)^2 / (2 sigma_t^2), the released code's
    KL (without the step size of the paper's formula), and ``drift_<name>`` = ||v - v_name||^2
    at the same states. Train with ``align.flow_grpo``.
    """

    def loss_fn(params, batch, key, aux=None):
        del key
        if "trajectory" not in batch:
            raise ValueError("flow_grpo_rows needs SDE rollouts (flow_rollout(..., sampler='sde'))")
        traj, y = batch["trajectory"], batch.get("y")
        b, steps = traj.shape[0], traj.shape[1] - 1
        n = steps - 1 if train_steps is None else train_steps
        if not 1 <= n <= steps:
            raise ValueError(f"train_steps must be in [1, {steps}], got {n}")
        ts = rollout_grid(steps)
        shape = traj.shape[2:]
        x, x_next = traj[:, :n].reshape(b * n, *shape), traj[:, 1 : n + 1].reshape(b * n, *shape)
        t, t_next = jnp.tile(ts[:n], b).astype(x.dtype), jnp.tile(ts[1 : n + 1], b).astype(x.dtype)
        yr = None if y is None else jnp.repeat(y, n, axis=0)
        v = _apply(apply_fn, params, x, t, yr)
        mean, std = flow_sde_step_moments(v, x, t, t_next, ts[1], a)
        out = {
            "per_example": -gaussian_log_prob(x_next, mean, std),
            "logp_old": batch["log_probs"][:, :n].reshape(-1),
            "t": t,
            **{k: jnp.repeat(batch[k], n, axis=0) for k in ("reward", "advantage", "group")},
        }
        sigma2 = (std.reshape(-1) ** 2 / (t - t_next))  # sigma_t^2 (std = sigma_t sqrt(dt))
        for name, tag in FROZEN.items():
            if aux is not None and name in aux:
                vf = _apply(apply_fn, aux[name], x, t, yr)
                mf, _ = flow_sde_step_moments(vf, x, t, t_next, ts[1], a)
                out[f"kl_{tag}"] = _sq(mean, mf) / (2.0 * sigma2)
                out[f"drift_{tag}"] = _sq(v, vf)
        return out

    return loss_fn


def lagged_update(**decays: Callable) -> Callable:
    """``aux_update`` moving lagged copies toward the parameters after each update:
    ``aux[name] <- d aux[name] + (1 - d) params`` with ``d = decays[name](n)``, n the number of
    updates so far (1 after the first). AWM's anchor: ``anchor=ema_anchor_decay``
    (min(0.3, 0.001 n)); DiffusionNFT's old policy: ``old=nft_old_decay`` (min(0.5, 0.001 n))."""

    def update(aux, params, step):
        new = dict(aux)
        for name, decay in decays.items():
            d = decay(step + 1)
            new[name] = jax.tree.map(lambda e, p, d=d: d * e + (1.0 - d) * p, aux[name], params)
        return new

    return update


def nft_old_decay(n) -> jax.Array:
    """DiffusionNFT's old-policy decay after n updates (``decay_type=1``): min(0.5, 0.001 n)."""
    return jnp.minimum(0.5, 0.001 * jnp.asarray(n, jnp.float32))


def awm_aux(ref_params, *, old: bool = False) -> dict:
    """``TrainState.aux`` for alignment: the frozen reference and AWM's EMA anchor (and, with
    ``old``, DiffusionNFT's lagged policy), all starting at the pretrained parameters."""
    aux = {"ref": ref_params, "anchor": ref_params}
    if old:
        aux["old"] = ref_params
    return aux


def ema_anchor_update(aux: dict, params, step) -> dict:
    """After update ``step`` (0-based): anchor <- d anchor + (1 - d) params, d = min(0.3, 0.001 (step + 1))."""
    return lagged_update(anchor=ema_anchor_decay)(aux, params, step)
