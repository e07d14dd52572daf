"""Denoising score matching as regression with noisy labels, and early stopping of GD.

Han, Razaviyayn, Xu, "Neural Network-Based Score Estimation in Diffusion Models: Optimization
and Generalization" (ICLR 2024). With the OU forward path x_t = alpha_t x0 + sigma_t z,
alpha_t = e^{-t}, sigma_t^2 = 1 - e^{-2t}, and the parametrisation
s(t, x) = (alpha_t f(t, x) - x) / sigma_t^2, DSM with weight sigma_t^4 / alpha_t^2 is the
regression E ||f(t, X_t) - X_0||^2: inputs (t, x_t), labels x0, regression function
f*(t, x) = E[X_0 | X_t = x], and label noise X_0 - f*(t, X_t) that is not small. A fixed set of
n training triples (t_i, x_{t,i}, x_{0,i}) is a regression data set; (kernel) gradient descent on
it overfits the label noise, so the test excess risk E (f_k - f*)^2 is U-shaped in k.

What is here (all of it checked against exact references in ``tests/test_score_theory.py``):

* closed forms for a 1-D Gaussian mixture: f*, Var(X_0 | X_t), the label-noise floor
  E Var(X_0 | X_t) and Var f* (by Gauss-Legendre x Gauss-Hermite quadrature);
* fixed training triples and the input features z = (x / 2.5, 2t - 1, 1);
* the analytic NTK of a two-layer ReLU network and the *empirical* tangent kernel of any
  network ``apply_fn(params, z) -> (B,)``, computed with ``jax.vjp`` (Jacobian rows) and
  ``jax.jvp`` (matrix-free products);
* kernel GD in closed form through one eigendecomposition (every iteration k at once);
* (in ``two_layer``) a wide two-layer ReLU network (NTK parametrisation, symmetric init so
  f_0 = 0) trained by full-batch GD inside one jitted ``lax.scan``;
* the held-out-loss stopping rule.

Precision: closed forms, kernels and eigendecompositions are numpy float64 (the kernel's
spectrum spans many decades and k goes to 1e7); the empirical kernel is computed by JAX inside
a ``jax.enable_x64(True)`` context in float64; the network is trained in float32.

The OU path is the VP SDE with constant beta = 2 (alpha_t = exp(-1/2 int_0^t beta)). The
library's ``diffalign.sde.VPSDE`` has a strictly linear beta (beta_min < beta_max), so the
constant-beta coefficients are written in closed form in :func:`ou_coeffs`; the tests check
them against ``VPSDE(beta_min=2, beta_max=2 + 1e-9)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

# ----------------------------------------------------------------------------- the data model


@dataclasses.dataclass(frozen=True)
class GaussianMixture1D:
    """p0 = sum_k weights[k] N(means[k], stds[k]^2) on the real line."""

    weights: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]

    def __post_init__(self):
        k = len(self.weights)
        if k < 1 or len(self.means) != k or len(self.stds) != k:
            raise ValueError(
                f"GaussianMixture1D needs equally many (>= 1) weights, means and stds, got "
                f"{len(self.weights)}, {len(self.means)}, {len(self.stds)}"
            )
        if min(self.weights) <= 0 or abs(sum(self.weights) - 1.0) > 1e-9:
            raise ValueError(f"mixture weights must be positive and sum to 1, got {self.weights}")
        if min(self.stds) <= 0:
            raise ValueError(f"mixture stds must be positive, got {self.stds}")

    def arrays(self):
        return (np.asarray(self.weights, np.float64), np.asarray(self.means, np.float64),
                np.asarray(self.stds, np.float64))

    @property
    def mean(self) -> float:
        w, m, _ = self.arrays()
        return float(w @ m)

    @property
    def variance(self) -> float:
        w, m, s = self.arrays()
        return float(w @ (s**2 + m**2) - (w @ m) ** 2)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        w, m, s = self.arrays()
        k = rng.choice(len(w), size=n, p=w)
        return m[k] + s[k] * rng.standard_normal(n)


#: the note's mixture 0.5 N(-2, 0.5^2) + 0.5 N(2, 0.5^2)
BIMODAL = GaussianMixture1D((0.5, 0.5), (-2.0, 2.0), (0.5, 0.5))


def ou_coeffs(t):
    """(alpha_t, sigma_t) of the OU path: alpha = e^{-t}, sigma^2 = 1 - e^{-2t} (VP, beta = 2)."""
    t = np.asarray(t, np.float64)
    if np.any(t < 0) or not np.all(np.isfinite(t)):
        raise ValueError("OU times must be finite and >= 0")
    return np.exp(-t), np.sqrt(-np.expm1(-2.0 * t))


def _component_posteriors(mix: GaussianMixture1D, t, x):
    """Responsibilities r_k(t, x), per-component posterior means m_k and variances v_k."""
    t, x = np.broadcast_arrays(np.asarray(t, np.float64), np.asarray(x, np.float64))
    alpha, sigma = ou_coeffs(t)
    w, mu, s = mix.arrays()
    a, sg, xx = alpha[..., None], sigma[..., None] ** 2, x[..., None]
    var = a**2 * s**2 + sg                                   # Var(X_t | component k)
    logr = np.log(w) - 0.5 * np.log(2 * np.pi * var) - (xx - a * mu) ** 2 / (2 * var)
    logr -= logr.max(axis=-1, keepdims=True)
    r = np.exp(logr)
    r /= r.sum(axis=-1, keepdims=True)
    m = (mu * sg + a * s**2 * xx) / var                       # E[X_0 | X_t = x, k]
    v = s**2 * sg / var                                       # Var(X_0 | X_t = x, k)
    return r, m, v


def posterior_mean(mix: GaussianMixture1D, t, x) -> np.ndarray:
    """f*(t, x) = E[X_0 | X_t = x] under the OU path (the regression function of DSM)."""
    r, m, _ = _component_posteriors(mix, t, x)
    return (r * m).sum(-1)


def posterior_variance(mix: GaussianMixture1D, t, x) -> np.ndarray:
    """Var(X_0 | X_t = x): the conditional label-noise variance at (t, x)."""
    r, m, v = _component_posteriors(mix, t, x)
    f = (r * m).sum(-1)
    return (r * (v + m**2)).sum(-1) - f**2


def _check_t_range(t_min: float, t_max: float) -> None:
    if not (0.0 < t_min < t_max) or not math.isfinite(t_max):
        raise ValueError(f"need 0 < t_min < t_max < inf, got t_min={t_min}, t_max={t_max}")


def _expect_over_path(mix, fn, t_min, t_max, n_t, n_x):
    """E_{t ~ U[t_min, t_max]} E_{x ~ p_t} fn(t, x) by Gauss-Legendre (t) x Gauss-Hermite (x)."""
    _check_t_range(t_min, t_max)
    tn, tw = np.polynomial.legendre.leggauss(n_t)
    t = 0.5 * (t_max - t_min) * tn + 0.5 * (t_max + t_min)
    tw = 0.5 * tw                                             # weights of the uniform density
    hn, hw = np.polynomial.hermite_e.hermegauss(n_x)          # probabilists' Hermite: N(0, 1)
    hw = hw / hw.sum()
    alpha, sigma = ou_coeffs(t)
    w, mu, s = mix.arrays()
    total = 0.0
    for wk, mk, sk in zip(w, mu, s):
        sd = np.sqrt(alpha**2 * sk**2 + sigma**2)
        x = alpha[:, None] * mk + sd[:, None] * hn[None, :]
        total += wk * np.sum(tw[:, None] * hw[None, :] * fn(t[:, None], x))
    return float(total)


def label_noise_floor(mix: GaussianMixture1D = BIMODAL, t_min: float = 0.05, t_max: float = 1.0,
                      n_t: int = 64, n_x: int = 96) -> float:
    """E (X_0 - f*(t, X_t))^2 = E Var(X_0 | X_t): the DSM loss of the exact denoiser."""
    return _expect_over_path(mix, lambda t, x: posterior_variance(mix, t, x), t_min, t_max, n_t, n_x)


def var_posterior_mean(mix: GaussianMixture1D = BIMODAL, t_min: float = 0.05, t_max: float = 1.0,
                       n_t: int = 64, n_x: int = 96) -> float:
    """Var f*(t, X_t): the excess risk of the zero predictor (f_0 = 0) is this plus (E X_0)^2."""
    m2 = _expect_over_path(mix, lambda t, x: posterior_mean(mix, t, x) ** 2, t_min, t_max, n_t, n_x)
    return m2 - mix.mean**2


def sample_triples(rng: np.random.Generator | int, n: int, mix: GaussianMixture1D = BIMODAL,
                   t_min: float = 0.05, t_max: float = 1.0):
    """n fixed training triples (t, x_t, x0), t ~ U[t_min, t_max]; the noise is drawn once."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    _check_t_range(t_min, t_max)
    rng = np.random.default_rng(rng)
    t = rng.uniform(t_min, t_max, n)
    x0 = mix.sample(rng, n)
    alpha, sigma = ou_coeffs(t)
    xt = alpha * x0 + sigma * rng.standard_normal(n)
    return t, xt, x0


def features(t, x, x_scale: float = 2.5) -> np.ndarray:
    """z = (x / x_scale, 2t - 1, 1): inputs of order one, and a constant for the bias."""
    t, x = np.asarray(t, np.float64), np.asarray(x, np.float64)
    if t.ndim != 1 or t.shape != x.shape:
        raise ValueError(f"features needs 1-D t and x of equal length, got {t.shape} and {x.shape}")
    return np.stack([x / x_scale, 2.0 * t - 1.0, np.ones_like(t)], axis=1)


# ----------------------------------------------------------------------------- kernels


def _check_pair(z1, z2):
    z1 = np.asarray(z1, np.float64)
    z2 = z1 if z2 is None else np.asarray(z2, np.float64)
    if z1.ndim != 2 or z2.ndim != 2 or z1.shape[1] != z2.shape[1]:
        raise ValueError(f"kernel inputs must be (n, d) and (m, d), got {z1.shape} and {z2.shape}")
    return z1, z2


def analytic_ntk(z1, z2=None) -> np.ndarray:
    """NTK of f(z) = m^{-1/2} sum_r a_r relu(w_r . z), w ~ N(0, I), E a^2 = 1, both layers trained.

    K(z, z') = z.z' (pi - theta) / (2 pi) + |z||z'| (sin theta + (pi - theta) cos theta) / (2 pi)
    (first-layer term, then second-layer term), theta the angle between z and z'. float64.
    """
    z1, z2 = _check_pair(z1, z2)
    n1, n2 = np.linalg.norm(z1, axis=1), np.linalg.norm(z2, axis=1)
    if np.any(n1 == 0) or np.any(n2 == 0):
        raise ValueError("analytic_ntk needs nonzero inputs (the angle is undefined at 0)")
    u1, u2 = z1 / n1[:, None], z2 / n2[:, None]
    out = np.empty((z1.shape[0], z2.shape[0]))
    rows = max(1, 2_000_000 // (z2.shape[0] * z2.shape[1]))
    for i in range(0, z1.shape[0], rows):
        # theta = 2 atan2(|u - u'|, |u + u'|): accurate at small angles, where arccos(cos) loses
        # half the digits (and the diagonal would be off by ~1e-8)
        a = u1[i:i + rows, None, :]
        half_s = np.linalg.norm(a - u2[None], axis=-1)
        half_c = np.linalg.norm(a + u2[None], axis=-1)
        theta = 2.0 * np.arctan2(half_s, half_c)
        cos, sin = np.cos(theta), np.sin(theta)
        nn = np.outer(n1[i:i + rows], n2)
        out[i:i + rows] = nn * (cos * (np.pi - theta) + sin + (np.pi - theta) * cos) / (2 * np.pi)
    return out


def _check_output(apply_fn: Callable, params, z) -> None:
    """apply_fn must map (B, d) inputs to (B,) outputs (checked by shape inference, no compute)."""
    try:
        out = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct((2, z.shape[1]), jnp.float64))
    except Exception as e:  # a network that cannot take (B, d) inputs at all
        raise ValueError(f"apply_fn must map (B, {z.shape[1]}) inputs to (B,) outputs; it failed on (2, {z.shape[1]}): {e}") from e
    if getattr(out, "shape", None) != (2,):
        raise ValueError(f"apply_fn must map (B, d) inputs to (B,) outputs, got {getattr(out, 'shape', out)} for B = 2")


_JACOBIANS: dict = {}  # (apply_fn, params structure) -> the compiled Jacobian, built once


def _jacobian_fn(apply_fn: Callable, params):
    """z (B, d) -> J (B, P): rows d f(params, z_b) / d params, one ``jax.vjp`` per input.

    The jitted function takes the flat parameters as an argument, so it is built once per
    (apply_fn, parameter structure) and reused across calls (draws, blocks)."""
    flat, unravel = ravel_pytree(params)
    key = (apply_fn, jax.tree.structure(params), tuple((a.shape, a.dtype) for a in jax.tree.leaves(params)))
    if key not in _JACOBIANS:
        def rows(flat_p, z):
            def row(zb):
                _, pull = jax.vjp(lambda p: apply_fn(unravel(p), zb[None])[0], flat_p)
                return pull(jnp.ones((), flat_p.dtype))[0]

            return jax.vmap(row)(z)

        _JACOBIANS[key] = jax.jit(rows)
    jac = _JACOBIANS[key]
    return (lambda z: jac(flat, z)), flat


def _as_x64(params):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)


def tangent_features(apply_fn: Callable, params, z, block: int = 1024) -> np.ndarray:
    """J(z): (n, P) float64 rows d f(params, z_i) / d params, by ``jax.vjp`` (vmapped, in blocks).

    K(z1, z2) = J(z1) J(z2)^T; predictions K(z, X) alpha = J(z) (J(X)^T alpha) are cheaper
    through J than through the kernel when P is smaller than the number of points."""
    z, _ = _check_pair(z, None)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    with jax.enable_x64(True):
        _check_output(apply_fn, _as_x64(params), z)
        jac, _ = _jacobian_fn(apply_fn, _as_x64(params))
        rows = [np.asarray(jac(jnp.asarray(z[i:i + block]))) for i in range(0, z.shape[0], block)]
    return np.concatenate(rows)


def empirical_ntk(apply_fn: Callable, params, z1, z2=None, block: int = 1024) -> np.ndarray:
    """Empirical tangent kernel K(z1, z2) = J(z1) J(z2)^T of ``apply_fn(params, z) -> (B,)``.

    Jacobian rows come from ``jax.vjp`` (vmapped over inputs), computed in float64 under
    ``jax.enable_x64(True)``; z1 is processed in blocks of ``block`` rows to bound memory.
    """
    z1, z2 = _check_pair(z1, z2)
    same = z2 is z1
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    with jax.enable_x64(True):
        _check_output(apply_fn, _as_x64(params), z1)
        jac, _ = _jacobian_fn(apply_fn, _as_x64(params))
        j2 = jac(jnp.asarray(z2))
        if same and z1.shape[0] <= block:
            return np.asarray(j2 @ j2.T)
        out = np.empty((z1.shape[0], z2.shape[0]))
        for i in range(0, z1.shape[0], block):
            out[i:i + block] = np.asarray(jac(jnp.asarray(z1[i:i + block])) @ j2.T)
        return out


def ntk_matvec(apply_fn: Callable, params, z1, z2, v) -> np.ndarray:
    """K(z1, z2) v = J(z1) (J(z2)^T v) without forming J: one ``jax.vjp`` then one ``jax.jvp``."""
    z1, z2 = _check_pair(z1, z2)
    v = np.asarray(v, np.float64)
    if v.shape != (z2.shape[0],):
        raise ValueError(f"v must have shape ({z2.shape[0]},), got {v.shape}")
    with jax.enable_x64(True):
        p = _as_x64(params)
        _check_output(apply_fn, p, z1)
        _, pull = jax.vjp(lambda q: apply_fn(q, jnp.asarray(z2)), p)
        (u,) = pull(jnp.asarray(v))
        _, out = jax.jvp(lambda q: apply_fn(q, jnp.asarray(z1)), (p,), (u,))
        return np.asarray(out)


# ----------------------------------------------------------------------------- kernel GD


class KernelGD:
    """Kernel gradient descent on sum_i (u_i - y_i)^2 / 2 from zero, in closed form.

    Iteration: alpha_{k+1} = alpha_k + eta (y - K alpha_k), alpha_0 = 0, predictor
    f_k(z) = K(z, X) alpha_k. With K = V diag(lam) V^T, alpha_k = V diag(g_k(lam)) V^T y and
    g_k(lam) = (1 - (1 - eta lam)^k) / lam (= k eta at lam = 0), so one float64 eigendecomposition
    gives every k. ``eta`` defaults to 1 / lam_max and must lie in (0, 1 / lam_max], where every
    factor 1 - eta lam is in [0, 1].
    """

    def __init__(self, k_train, y, eta: float | None = None):
        k = np.asarray(k_train, np.float64)
        y = np.asarray(y, np.float64)
        if k.ndim != 2 or k.shape[0] != k.shape[1]:
            raise ValueError(f"kernel matrix must be square, got shape {k.shape}")
        if y.shape != (k.shape[0],):
            raise ValueError(f"labels must have shape ({k.shape[0]},), got {y.shape}")
        if not (np.all(np.isfinite(k)) and np.all(np.isfinite(y))):
            raise ValueError("kernel matrix and labels must be finite")
        lam, self.vecs = np.linalg.eigh(0.5 * (k + k.T))
        self.lam = np.clip(lam, 0.0, None)                  # round-off negatives of a PSD kernel
        self.lam_max = float(self.lam[-1])
        if self.lam_max <= 0:
            raise ValueError("kernel matrix has no positive eigenvalue")
        self.eta = 1.0 / self.lam_max if eta is None else float(eta)
        if not 0 < self.eta <= (1.0 + 1e-12) / self.lam_max:
            raise ValueError(f"eta must be in (0, 1/lam_max = {1 / self.lam_max:.4g}], got {eta}")
        self.c = self.vecs.T @ y

    def gains(self, ks) -> np.ndarray:
        """g_k(lam) for each k in ``ks``: shape (len(ks), n)."""
        ks = np.asarray(ks, np.float64).reshape(-1)
        if np.any(ks < 0):
            raise ValueError("iterations k must be >= 0")
        el = np.minimum(self.eta * self.lam, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_q = np.log1p(-el)                                # -inf where eta lam = 1
            frac = -np.expm1(ks[:, None] * log_q[None, :])       # 1 - (1 - eta lam)^k
            frac = np.where(ks[:, None] == 0, 0.0, frac)
            g = np.where(self.lam[None, :] > 0, frac / self.lam[None, :], ks[:, None] * self.eta)
        return g

    def coef(self, ks) -> np.ndarray:
        """alpha_k for each k: shape (n, len(ks))."""
        return self.vecs @ (self.gains(ks).T * self.c[:, None])

    def predict(self, k_cross, ks) -> np.ndarray:
        """f_k at new inputs from K(new, train): shape (m, len(ks))."""
        k_cross = np.asarray(k_cross, np.float64)
        if k_cross.ndim != 2 or k_cross.shape[1] != self.c.shape[0]:
            raise ValueError(f"cross kernel must be (m, {self.c.shape[0]}), got {k_cross.shape}")
        return k_cross @ self.coef(ks)

    def predict_features(self, j_cross, j_train, ks) -> np.ndarray:
        """f_k at new inputs for a kernel J J^T given by tangent features: J_new (J_train^T alpha_k)."""
        j_cross, j_train = np.asarray(j_cross, np.float64), np.asarray(j_train, np.float64)
        if j_train.ndim != 2 or j_train.shape[0] != self.c.shape[0] or j_cross.ndim != 2 \
                or j_cross.shape[1] != j_train.shape[1]:
            raise ValueError(f"features must be (m, P) and ({self.c.shape[0]}, P), got {j_cross.shape}, {j_train.shape}")
        return j_cross @ (j_train.T @ self.coef(ks))

    def train_predict(self, ks) -> np.ndarray:
        """f_k on the training inputs, K alpha_k: shape (n, len(ks))."""
        return self.vecs @ ((self.lam[None, :] * self.gains(ks)).T * self.c[:, None])


def kernel_gd_iterates(k_train, y, eta: float, steps: int) -> np.ndarray:
    """The literal GD loop alpha_{k+1} = alpha_k + eta (y - K alpha_k): (steps + 1, n) iterates."""
    k, y = np.asarray(k_train, np.float64), np.asarray(y, np.float64)
    alpha = np.zeros_like(y)
    out = [alpha]
    for _ in range(steps):
        alpha = alpha + eta * (y - k @ alpha)
        out.append(alpha)
    return np.stack(out)


def iteration_grid(k_max: int, points_per_decade: int = 80) -> np.ndarray:
    """Distinct integer iterations from 1 to k_max, log-spaced (both ends included)."""
    if k_max < 1 or points_per_decade < 1:
        raise ValueError(f"need k_max >= 1 and points_per_decade >= 1, got {k_max}, {points_per_decade}")
    num = max(2, int(math.ceil(math.log10(k_max) * points_per_decade)) + 1)
    return np.unique(np.round(np.logspace(0, math.log10(k_max), num)).astype(np.int64))


def excess_risk(pred, f_true) -> np.ndarray:
    """Mean over test points of (pred - f*)^2; ``pred`` is (m,) or (m, K) -> scalar or (K,)."""
    pred, f_true = np.asarray(pred, np.float64), np.asarray(f_true, np.float64)
    if f_true.ndim != 1 or pred.shape[0] != f_true.shape[0]:
        raise ValueError(f"predictions {pred.shape} do not match targets {f_true.shape}")
    d = pred - (f_true if pred.ndim == 1 else f_true[:, None])
    return np.mean(d**2, axis=0)


def held_out_stop(ks, held_out_loss):
    """The held-out-loss stopping rule: (k_hat, index) of the smallest held-out DSM loss."""
    ks, loss = np.asarray(ks), np.asarray(held_out_loss, np.float64)
    if ks.ndim != 1 or ks.shape != loss.shape or ks.size == 0:
        raise ValueError(f"ks and held-out losses must be equal-length 1-D arrays, got {ks.shape}, {loss.shape}")
    if not np.all(np.isfinite(loss)):
        raise ValueError("held-out losses must be finite")
    i = int(np.argmin(loss))
    return int(ks[i]), i
