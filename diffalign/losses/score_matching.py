"""Denoising score matching, per example (Vincent 2011; Song et al. 2021).

For x_t = alpha_t x0 + sigma_t z with z ~ N(0, I), the score of the perturbation kernel is
-z / sigma_t, and the continuous-time objective is

    E_t E_{x0, z} [ lambda(t) || s_theta(x_t, t) + z / sigma_t ||^2 ].

Weightings: ``"none"`` is lambda = sigma_t^2, i.e. || sigma_t s_theta + z ||^2, the plain
epsilon-prediction error (score_sde's ``likelihood_weighting=False``, DDPM's "simple" loss);
``"likelihood"`` is lambda = g(t)^2, which makes the objective an upper bound on the negative
log-likelihood (Song et al., "Maximum Likelihood Training of Score-Based Diffusion Models",
NeurIPS 2021).
"""

from __future__ import annotations

from typing import Callable

import jax

from ..paths.base import bcast
from ..paths.conversions import convert
from ..sde.base import SDE
from .common import batch_data, drop_labels, reduce_per_example, uniform_times

WEIGHTINGS = ("none", "likelihood")


def dsm_loss(
    sde: SDE,
    apply_fn: Callable,
    *,
    parametrization: str = "eps",
    weighting: str = "none",
    reduce: str = "half_sum",
    t_min: float | None = None,
    label_dropout: float = 0.0,
    num_classes: int | None = None,
) -> Callable:
    """Build ``loss_fn(params, batch, key) -> {"per_example": (B,), "t": (B,)}``.

    Args:
      sde: the forward SDE (its marginals give x_t).
      apply_fn: ``apply_fn(params, x_t, t, y) -> prediction`` in ``parametrization``.
      parametrization: what the network predicts: "eps", "score", "x0" or "velocity".
      weighting: "none" (lambda = sigma^2) or "likelihood" (lambda = g^2).
      reduce: over data dimensions: "half_sum" (score_sde), "sum" or "mean".
      t_min: smallest training time (defaults to the SDE's t_min).
      label_dropout: probability of replacing a label by the null label (classifier-free guidance).
      num_classes: number of classes; the null label is ``num_classes``.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown DSM weighting {weighting!r}; expected one of {WEIGHTINGS}")
    t_lo = sde.t_min if t_min is None else t_min

    def loss_fn(params, batch, key):
        x, y = batch_data(batch)
        k_t, k_z, k_y = jax.random.split(key, 3)
        t = uniform_times(k_t, x.shape[0], t_lo, sde.t_max, x.dtype)
        x_t, z = sde.marginal_sample(k_z, x, t)
        pred = apply_fn(params, x_t, t, drop_labels(k_y, y, label_dropout, num_classes))
        _, sigma = sde.coeffs(t)
        if parametrization == "eps":
            residual = z - pred  # sigma * score + z with score = -pred / sigma, exactly
        else:
            residual = bcast(sigma, x) * convert(pred, parametrization, "score", x_t, t, sde) + z
        per_example = reduce_per_example(residual**2, reduce)
        if weighting == "likelihood":
            per_example = per_example * (sde.diffusion(t) / sigma) ** 2
        return {"per_example": per_example, "t": t}

    return loss_fn
