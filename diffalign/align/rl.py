"""Online reward alignment of flow models: rollouts, and the per-row losses of AWM and DDPO.

One alignment epoch is one call of the ordinary training step (``training.make_train_step``):
the loss function samples with the current parameters (no gradient), scores the samples,
and returns per-row quantities that a loss transform (``awm``) turns into the objective. So
checkpoints, exact resumption, logging and non-finite detection are the training loop's.

Time runs from data (t = 0) to noise (t = 1) on the rectified-flow path
x_t = (1 - t) x0 + t eps, velocity target eps - x0 (SD3's convention, AWM's notation).

* ``awm_loss``: each clean rollout sample is re-noised at K times stratified over
  [t_lo, t_hi] (shared by the batch) with fresh noise; rows carry the flow-matching error, the
  time, the sample's reward and group, and the velocity gaps to the frozen reference and the
  EMA anchor at the same (x_t, t) (Xue et al. 2025, the released recipe).
* ``ddpo_loss``: the DDPO / Flow-GRPO policy gradient: per-step Gaussian log-probabilities of
  the stored transitions of a stochastic sampler (Flow-GRPO's marginal-preserving SDE), with
  the same advantages. Train it with ``awm(weighting="uniform")``: on per-row losses
  -log pi(x_{t-dt} | x_t) that transform is exactly the PPO-clipped policy gradient.

The frozen reference and the anchor are parameter pytrees in ``TrainState.aux``
(``awm_aux``), evaluated with the policy's own ``apply_fn``; ``ema_anchor_update`` moves the
anchor after every update with decay min(0.3, 0.001 n).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ..losses.common import stratified_times
from ..losses.flow_matching import flow_matching_loss
from ..paths.base import AffinePath, LinearPath
from ..paths.conversions import Predictor
from ..sampling import deterministic
from ..sampling.flow_sde import GRPO_NOISE, flow_grpo_sde, flow_sde_step_moments
from .awm import ema_anchor_decay

def _apply(apply_fn, params, x, t, y):
    return apply_fn(params, x, t) if y is None else apply_fn(params, x, t, y)


def rollout_grid(steps: int) -> jax.Array:
    """The uniform sampling grid 1 = t_0 > ... > t_steps = 0."""
    if steps < 2:
        raise ValueError(f"rollouts need at least 2 steps, got {steps}")
    return jnp.linspace(1.0, 0.0, steps + 1)


def gaussian_log_prob(x, mean, std):
    """log N(x; mean, std^2 I), averaged (not summed) over the non-batch dimensions, as DDPO."""
    z = (x - mean) / std
    lp = -0.5 * z**2 - jnp.log(std) - 0.5 * jnp.log(2.0 * jnp.pi)
    return jnp.mean(lp.reshape(lp.shape[0], -1), axis=-1)


def sample_flow(key, apply_fn, params, x1, steps: int, *, y=None, stochastic: bool = False, a: float = GRPO_NOISE):
    """Integrate from noise ``x1`` (t = 1) to t = 0 on the uniform grid of ``steps`` steps.

    Deterministic: Euler on the probability-flow ODE (``sampling.deterministic.euler``); returns
    the final samples.
    Stochastic: Flow-GRPO's SDE for every step but the last (which is Euler); returns
    (samples, trajectory of steps + 1 states). ``key`` is unused when deterministic.
    """
    ts = rollout_grid(steps)
    if not stochastic:
        pred = Predictor(lambda x, t: _apply(apply_fn, params, x, t, y), LinearPath(), "velocity")
        return deterministic.euler(pred, x1, steps, ts=ts)

    return flow_grpo_sde(key, lambda x, t: _apply(apply_fn, params, x, t, y), x1, ts, a)


def flow_rollout(num_samples: int, shape: tuple[int, ...], *, steps: int = 14, stochastic: bool = False,
                 a: float = GRPO_NOISE) -> Callable:
    """``rollout(apply_fn, params, batch, key)``: ``num_samples`` samples per condition.

    Unconditional when the batch has no ``"y"``: one group of ``num_samples``. With conditions
    ``batch["y"]`` of shape (P,), each is repeated ``num_samples`` times and is its own group.
    Returns ``{"x", "y", "group"}`` (and ``"trajectory"`` when stochastic).
    """
    if num_samples < 2:
        raise ValueError(f"a group needs at least 2 samples, got {num_samples}")

    def rollout(apply_fn, params, batch, key):
        cond = batch.get("y") if isinstance(batch, dict) else None
        n_groups = 1 if cond is None else cond.shape[0]
        y = None if cond is None else jnp.repeat(cond, num_samples)
        group = jnp.repeat(jnp.arange(n_groups), num_samples)
        k_noise, k_sde = jax.random.split(key)
        x1 = jax.random.normal(k_noise, (n_groups * num_samples, *shape))
        res = {"y": y, "group": group}
        if stochastic:
            res["x"], res["trajectory"] = sample_flow(k_sde, apply_fn, params, x1, steps, y=y, stochastic=True, a=a)
        else:
            res["x"] = sample_flow(None, apply_fn, params, x1, steps, y=y)
        return res

    return rollout


def _sq(a, b):
    return jnp.mean((a - b).reshape(a.shape[0], -1) ** 2, axis=-1)


def _common_metrics(apply_fn, params, aux, x0, y, r, key, metrics_fn, drift_t, path=LinearPath()):
    """Per-epoch diagnostics: mean reward, drift E||v - v_ref||^2 at t = drift_t, task metrics."""
    m = {"reward": jnp.mean(r)}
    if aux is not None and "ref" in aux:
        eps = jax.random.normal(key, x0.shape, x0.dtype)
        t = jnp.full((x0.shape[0],), drift_t, x0.dtype)
        xt = path.interpolate(x0, eps, t)
        m["drift"] = jnp.mean(_sq(_apply(apply_fn, params, xt, t, y), _apply(apply_fn, aux["ref"], xt, t, y)))
    if metrics_fn is not None:
        m.update(metrics_fn(x0))
    return m


def _rows(a, k):
    return None if a is None else jnp.repeat(a, k, axis=0)


def awm_loss(apply_fn: Callable, rollout: Callable, reward_fn: Callable, *, num_times: int = 6,
             t_range: tuple[float, float] = (0.02, 0.98), metrics_fn: Callable | None = None,
             drift_t: float = 0.5, path: AffinePath = LinearPath()) -> Callable:
    """AWM's per-row quantities for ``make_train_step`` with the ``awm`` transform.

    ``loss_fn(params, batch, key, aux=None)``: rollout with the current parameters (no gradient),
    ``reward_fn(x, y) -> (B,)`` (pure JAX, or a ``jax.pure_callback``), then K = ``num_times``
    stratified times shared by the batch with fresh noise per (sample, time). Each row's loss is
    the pretraining loss itself (``losses.flow_matching_loss`` on ``path`` at the row's (x0,
    noise, t)), so with unit advantages AWM's gradient is the pretraining gradient by
    construction. Rows are sample-major (B K of them). With ``aux`` (``awm_aux``) it adds
    ``drift_ref`` and ``drift_ema``, the squared velocity gaps to the reference and the anchor
    at the same (x_t, t), and ``ref_loss``, the reference's matching loss at the same draws
    (what the preference objectives read).
    """
    matching = flow_matching_loss(apply_fn, path=path)

    def loss_fn(params, batch, key, aux=None):
        k_roll, k_t, k_eps, k_m = jax.random.split(key, 4)
        frozen = jax.lax.stop_gradient(params)
        roll = rollout(apply_fn, frozen, batch, k_roll)
        x0, y = roll["x"], roll["y"]
        r = jnp.asarray(reward_fn(x0, y), jnp.float32)
        t = jnp.tile(stratified_times(k_t, num_times, *t_range), x0.shape[0]).astype(x0.dtype)
        x0r, yr = _rows(x0, num_times), _rows(y, num_times)
        rows = {"x": x0r, "x_source": jax.random.normal(k_eps, x0r.shape, x0.dtype), "t": t}
        if yr is not None:
            rows["y"] = yr
        fm = matching(params, rows, k_eps)
        v = fm["prediction"]
        out = {
            "per_example": fm["per_example"],
            "t": t,
            "reward": _rows(r, num_times),
            "group": _rows(roll["group"], num_times),
            "metrics": _common_metrics(apply_fn, frozen, aux, x0, y, r, k_m, metrics_fn, drift_t, path),
        }
        if aux is not None and "ref" in aux:
            ref = matching(aux["ref"], rows, k_eps)
            out["drift_ref"] = _sq(v, ref["prediction"])
            out["ref_loss"] = ref["per_example"]  # the reference's loss at the same draws
        if aux is not None and "anchor" in aux:
            out["drift_ema"] = _sq(v, matching(aux["anchor"], rows, k_eps)["prediction"])
        return out

    return loss_fn


def ddpo_loss(apply_fn: Callable, rollout: Callable, reward_fn: Callable, *, a: float = GRPO_NOISE,
              metrics_fn: Callable | None = None, drift_t: float = 0.5) -> Callable:
    """DDPO / Flow-GRPO rows: ``per_example`` = -log pi_theta(x_{t-dt} | x_t) (per-dimension mean)
    for every stochastic transition of a stored SDE trajectory (``flow_rollout(stochastic=True)``;
    the final deterministic step is not trained), with the sample's reward and group.
    Train with ``awm(weighting="uniform")``: the clipped policy gradient.
    """

    def loss_fn(params, batch, key, aux=None):
        k_roll, k_m = jax.random.split(key)
        frozen = jax.lax.stop_gradient(params)
        roll = rollout(apply_fn, frozen, batch, k_roll)
        if "trajectory" not in roll:
            raise ValueError("ddpo_loss needs a stochastic rollout (flow_rollout(..., stochastic=True))")
        traj, x0, y = roll["trajectory"], roll["x"], roll["y"]
        r = jnp.asarray(reward_fn(x0, y), jnp.float32)
        ts = rollout_grid(traj.shape[0] - 1)
        n, b = traj.shape[0] - 2, traj.shape[1]  # stochastic transitions, samples
        x, x_next = traj[:n].reshape(n * b, *x0.shape[1:]), traj[1 : n + 1].reshape(n * b, *x0.shape[1:])
        t, t_next = jnp.repeat(ts[:n], b), jnp.repeat(ts[1 : n + 1], b)
        yr = None if y is None else jnp.tile(y, n)
        v = _apply(apply_fn, params, x, t.astype(x.dtype), yr)
        mean, std = flow_sde_step_moments(v, x, t, t_next, ts[1], a)
        out = {
            "per_example": -gaussian_log_prob(x_next, mean, std),
            "reward": jnp.tile(r, n),
            "group": jnp.tile(roll["group"], n),
            "metrics": _common_metrics(apply_fn, frozen, aux, x0, y, r, k_m, metrics_fn, drift_t),
        }
        return out

    return loss_fn


def awm_aux(ref_params) -> dict:
    """``TrainState.aux`` for AWM: the frozen reference and the EMA anchor, both starting at the
    pretrained parameters (the policy's initial value)."""
    return {"ref": ref_params, "anchor": ref_params}


def ema_anchor_update(aux: dict, params, step) -> dict:
    """After update ``step`` (0-based): anchor <- d anchor + (1 - d) params, d = min(0.3, 0.001 (step + 1))."""
    d = ema_anchor_decay(step + 1)
    anchor = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, aux["anchor"], params)
    return {**aux, "anchor": anchor}
