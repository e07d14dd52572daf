"""Conditional flow matching, per example (Lipman et al. 2023; Tong et al., TMLR 2024; Liu et al. 2023).

With a coupling (x0, x1) of data and source, t ~ U[0, 1] and the path
x_t = alpha_t x0 + sigma_t x1 (+ sigma_min * e, e ~ N(0, I), torchcfm's constant-width
tube), the network regresses the conditional velocity u_t = alpha'_t x0 + sigma'_t x1:

    E || v_theta(x_t, t) - u_t ||^2.

Variants are arguments: the coupling (independent = I-CFM, exact_ot = OT-CFM, sinkhorn =
entropic OT-CFM, paired = rectified-flow reflow) and the path (linear = rectified flow /
CFM, cosine = trigonometric VP interpolant, or an SDE's marginal path such as "vp").
Time runs from data (t = 0) to source (t = 1), so samplers integrate from 1 down to 0.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ..paths.base import AffinePath, LinearPath
from ..paths.coupling import couple
from .common import batch_data, drop_labels, reduce_per_example, uniform_times


def flow_matching_loss(
    apply_fn: Callable,
    *,
    path: AffinePath = LinearPath(),
    coupling: str = "independent",
    sigma_min: float = 0.0,
    reduce: str = "mean",
    ot_epsilon: float = 0.05,
    label_dropout: float = 0.0,
    num_classes: int | None = None,
) -> Callable:
    """Build ``loss_fn(params, batch, key) -> {"per_example": (B,), "t": (B,), "prediction": v}``.

    The batch holds data under "x", optionally labels "y", a source batch "x_source"
    (standard normal noise is drawn when it is absent) and times "t" (drawn uniformly when
    absent). Given (x, x_source, t) the loss is a deterministic function of the parameters: the
    unit that AWM's and the preference objectives' rows reuse. ``apply_fn(params, x_t, t, y)``
    predicts the velocity.
    """
    if sigma_min < 0:
        raise ValueError(f"sigma_min must be >= 0, got {sigma_min}")

    def loss_fn(params, batch, key):
        x0, y = batch_data(batch)
        k_src, k_cpl, k_t, k_e, k_y = jax.random.split(key, 5)
        if "x_source" in batch:
            x1 = batch["x_source"]
        elif coupling == "paired":
            raise ValueError("the 'paired' coupling needs the source partners in batch['x_source']")
        else:
            x1 = jax.random.normal(k_src, x0.shape, x0.dtype)
        x1 = couple(k_cpl, x0, x1, coupling, epsilon=ot_epsilon)
        t = batch["t"] if "t" in batch else uniform_times(k_t, x0.shape[0], path.t_min, path.t_max, x0.dtype)
        x_t = path.interpolate(x0, x1, t)
        if sigma_min > 0:
            x_t = x_t + sigma_min * jax.random.normal(k_e, x0.shape, x0.dtype)
        target = path.velocity(x0, x1, t)
        pred = apply_fn(params, x_t, t, drop_labels(k_y, y, label_dropout, num_classes))
        return {"per_example": reduce_per_example((pred - target) ** 2, reduce), "t": t, "prediction": pred}

    return loss_fn


def reflow_pairs(sample_fn: Callable, x_source: jax.Array) -> dict:
    """A reflow batch (Liu et al. 2023): source points and the data points the current flow
    maps them to. ``sample_fn(x_source) -> x_data`` is any deterministic ODE sampler; train on
    the result with ``coupling="paired"``.
    """
    x0 = jax.lax.stop_gradient(sample_fn(x_source))
    if not bool(jnp.all(jnp.isfinite(x0))):
        raise FloatingPointError("reflow: the sampler returned non-finite points")
    return {"x": x0, "x_source": x_source}
