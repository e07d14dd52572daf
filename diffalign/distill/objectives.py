"""The math of distribution matching distillation, as pure per-example functions.

Notation (``paths.base``): t = 0 is data, t = 1 noise, x_t = alpha_t x0 + sigma_t eps. A
"denoiser" mu(x_t, t) is a model's E[x0 | x_t]; for two models of p_t the score difference is
s_fake - s_real = alpha_t (mu_fake - mu_real) / sigma_t^2.

* ``transition`` / ``subinterval_targets`` / ``subinterval_fm_loss``: Phased DMD (Fan et al.
  2025): a model of the marginal p_t, t > s, trained from samples x_s only. With
  x_t = alpha_{t|s} x_s + sigma_{t|s} eps, alpha_{t|s} = alpha_t / alpha_s and
  sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2, the marginal score is
  -E[eps | x_t] / sigma_{t|s}, so (sigma_t / sigma_{t|s}) eps is an unbiased target for the
  data-relative noise E[eps0 | x_t], and x_s / alpha_s - alpha_t sigma_s^2 / (alpha_s^2
  sigma_{t|s}) eps one for E[x0 | x_t]. On rectified flow the velocity target is the paper's
  Eq. 13, c eps - x_s / alpha_s with c = (alpha_s^2 sigma_t + alpha_t sigma_s^2) /
  (alpha_s^2 sigma_{t|s}). At s = 0 every formula is the ordinary one.
* ``dm_gradient``: the DMD / DMD2 generator gradient (mu_fake - mu_real) / mean|x - mu_real|
  (DMD2's code; DMD's paper multiplies it by alpha_t).
* ``matching_loss`` / ``pseudo_huber_matching_loss``: losses on the generator output whose
  autodiff gradient is exactly a given vector (DMD2's 1/2 ||x - sg(x - g)||^2) or its
  pseudo-Huber version (TDM).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..paths.base import AffinePath, bcast


def transition(path: AffinePath, s, t):
    """(alpha_{t|s}, sigma_{t|s}) of the Gaussian kernel x_t | x_s for t >= s (elementwise)."""
    a_s, s_s = path.coeffs(s)
    a_t, s_t = path.coeffs(t)
    a = a_t / a_s
    return a, jnp.sqrt(jnp.maximum(s_t**2 - a**2 * s_s**2, 0.0))


def subinterval_targets(path: AffinePath, x_s, eps, s, t) -> dict:
    """x_t diffused from x_s with noise ``eps``, and the unbiased regression targets of the
    marginal at t in every parametrization (``"x0"``, ``"eps"``, ``"velocity"``, ``"score"``).

    ``s`` and ``t`` are per-example times of shape (B,) (or scalars) with t > s. Written
    without dividing by alpha_t, so t = 1 on rectified flow is fine.
    """
    a_s, s_s = path.coeffs(s)
    a_t, s_t, da, ds = path.coeffs_and_derivs(t)
    a_ts, sig_ts = transition(path, s, t)
    b = lambda c: bcast(c, x_s)  # noqa: E731
    x_t = b(a_ts) * x_s + b(sig_ts) * eps
    eps0 = b(s_t / sig_ts) * eps
    x0 = x_s / b(a_s) - b(a_t * s_s**2 / (a_s**2 * sig_ts)) * eps
    return {
        "x_t": x_t,
        "x0": x0,
        "eps": eps0,
        "velocity": b(da) * x0 + b(ds) * eps0,
        "score": -eps / b(sig_ts),
        "sigma_ts": sig_ts,
    }


def subinterval_weight(sigma_ts, clamp: float | None):
    """min(1, clamp sigma_{t|s}^2): the paper's min(1 / sigma_{t|s}^2, clamp) on the
    sigma_{t|s}-scaled residual, which keeps the target's blow-up as t -> s in check."""
    if clamp is None:
        return jnp.ones_like(sigma_ts)
    return jnp.minimum(1.0, clamp * sigma_ts**2)


def sample_times_above(key, s, t_max, n: int, dtype=jnp.float32):
    """t ~ U(s, t_max) per example (s of shape (B,) or a scalar), never equal to s."""
    u = jax.random.uniform(key, (n,), dtype, minval=1e-4, maxval=1.0)
    return s + u * (t_max - s)


def subinterval_fm_loss(apply_fn, path: AffinePath, parametrization: str = "velocity", *, clamp: float | None = 10.0):
    """``loss(params, x_s, s, key, t_max=1.0) -> (B,)``: regress the marginal of x_s diffused
    to t ~ U(s, t_max) with the unbiased target (Phased DMD's fake-score objective).

    ``s`` is a scalar or per-example (B,). With s = 0 and ``clamp=None`` this is ordinary
    flow matching / denoising score matching on x_s (the DMD and DMD2 fake-score loss).
    """

    def loss(params, x_s, s, key, t_max=1.0):
        n = x_s.shape[0]
        s = jnp.broadcast_to(jnp.asarray(s, x_s.dtype), (n,))
        k_t, k_e = jax.random.split(key)
        t = sample_times_above(k_t, s, t_max, n, x_s.dtype)
        eps = jax.random.normal(k_e, x_s.shape, x_s.dtype)
        tg = subinterval_targets(path, x_s, eps, s, t)
        pred = apply_fn(params, tg["x_t"], t)
        sq = jnp.mean(((pred - tg[parametrization]) ** 2).reshape(n, -1), axis=-1)
        return subinterval_weight(tg["sigma_ts"], clamp) * sq

    return loss


def _mean_abs(x):
    return jnp.mean(jnp.abs(x).reshape(x.shape[0], -1), axis=-1)


def dm_gradient(mu_fake, mu_real, x, count=None):
    """DMD2's generator gradient on the clean sample ``x``: (mu_fake - mu_real) /
    mean|x - mu_real| per example (the L1 normaliser of DMD), NaN-free. ``count`` (B,): the
    number of real entries per example when the rest is zero padding (graphs), so the mean is
    over real entries only."""
    if count is None:
        norm = _mean_abs(x - mu_real)
    else:
        norm = jnp.sum(jnp.abs(x - mu_real).reshape(x.shape[0], -1), axis=-1) / jnp.maximum(count, 1.0)
    norm = jnp.maximum(norm, 1e-6)
    return jnp.nan_to_num(bcast(1.0 / norm, x) * (mu_fake - mu_real))


def matching_loss(x, grad):
    """1/2 ||x - sg(x - grad)||^2 per example: its gradient with respect to x is ``grad``."""
    target = jax.lax.stop_gradient(x - grad)
    return 0.5 * jnp.sum(((x - target) ** 2).reshape(x.shape[0], -1), axis=-1)


def pseudo_huber_matching_loss(x, grad, c: float | None = None):
    """sqrt(||x - sg(x - grad)||^2 + c^2) - c per example (TDM's surrogate, iCT's
    c = 0.00054 sqrt(d) by default): the gradient is grad / sqrt(||grad||^2 + c^2)."""
    d = x[0].size
    c = 0.00054 * d**0.5 if c is None else c
    target = jax.lax.stop_gradient(x - grad)
    sq = jnp.sum(((x - target) ** 2).reshape(x.shape[0], -1), axis=-1)
    return jnp.sqrt(sq + c**2) - c
