"""Rotations and IGSO(3), the isotropic Gaussian on SO(3) (Brownian motion on the group).

Convention (Str2Str / FrameDiff): the angle density of IGSO(3)(sigma), axis uniform, is

    f(w; sigma) = (1 - cos w) / pi * sum_{l>=0} (2l + 1) exp(-l (l+1) sigma^2 / 2)
                  * sin((l + 1/2) w) / sin(w / 2),       w in [0, pi],

so sigma is sqrt(2) times Leach et al.'s scale and IGSO(3)(sigma) is Brownian motion on SO(3)
at time sigma^2: composing independent draws adds sigma^2. The series is summed on the host in
float64 (it needs many terms at small sigma); sampling (inverse CDF) and the score use tables
over a grid of sigmas, interpolated in JAX, as FrameDiff does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NUM_TERMS = 1000


def igso3_series(omega, sigma: float, num_terms: int = NUM_TERMS) -> np.ndarray:
    """The density of IGSO(3)(sigma) with respect to the (normalised) Haar measure, as a function
    of the rotation angle w: sum_l (2l + 1) exp(-l (l+1) sigma^2 / 2) sin((l + 1/2) w) / sin(w / 2),
    summed in float64."""
    w = np.asarray(omega, np.float64)
    l = np.arange(num_terms, dtype=np.float64)[:, None]
    half = np.sin(w / 2.0)
    # sin((l + 1/2) w) / sin(w / 2) -> 2l + 1 as w -> 0
    ratio = np.where(half > 1e-12, np.sin((l + 0.5) * w) / np.where(half > 1e-12, half, 1.0), 2 * l + 1)
    return np.sum((2 * l + 1) * np.exp(-l * (l + 1) * sigma**2 / 2.0) * ratio, axis=0)


def igso3_angle_density(omega, sigma: float, num_terms: int = NUM_TERMS) -> np.ndarray:
    """f(w; sigma) on [0, pi] (a density in w, integrating to 1): the series times the Haar
    measure's angle density (1 - cos w) / pi."""
    w = np.asarray(omega, np.float64)
    return (1.0 - np.cos(w)) / np.pi * igso3_series(w, sigma, num_terms)


def igso3_mean_angle(sigma: float, num_points: int = 20_001) -> float:
    """E[w] under IGSO(3)(sigma), by quadrature of the series."""
    w = np.linspace(0.0, np.pi, num_points)
    f = igso3_angle_density(w, sigma)
    return float(np.trapezoid(w * f, w) / np.trapezoid(f, w))


def exp_map(v):
    """Rotation vectors (..., 3) -> rotation matrices (..., 3, 3) (Rodrigues)."""
    theta = jnp.linalg.norm(v, axis=-1, keepdims=True)[..., None]
    k = _hat(v / jnp.maximum(theta[..., 0], 1e-12))
    eye = jnp.eye(3, dtype=v.dtype)
    small = theta < 1e-6
    sin_t = jnp.where(small, theta, jnp.sin(theta))
    one_minus_cos = jnp.where(small, theta**2 / 2.0, 1.0 - jnp.cos(theta))
    return eye + sin_t * k + one_minus_cos * (k @ k)


def log_map(r):
    """Rotation matrices (..., 3, 3) -> rotation vectors (..., 3) with angle in [0, pi].

    The angle is atan2(sin, cos) (accurate at every angle in float32); near pi, where the
    antisymmetric part vanishes, the axis comes from the symmetric part R + R^T = 2 cos I +
    2 (1 - cos) n n^T, its sign from the antisymmetric part."""
    w = jnp.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    cos = (jnp.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0
    sin = jnp.linalg.norm(w, axis=-1) / 2.0
    theta = jnp.arctan2(sin, cos)
    scale = jnp.where(sin > 1e-6, theta / (2.0 * jnp.where(sin > 1e-6, sin, 1.0)), 0.5 + theta**2 / 12.0)
    regular = w * scale[..., None]
    # near pi: the column of (R + R^T)/2 - cos I = (1 - cos) n n^T with the largest diagonal entry
    b = 0.5 * (r + jnp.swapaxes(r, -1, -2)) - cos[..., None, None] * jnp.eye(3, dtype=r.dtype)
    k = jnp.argmax(jnp.diagonal(b, axis1=-2, axis2=-1), axis=-1)
    col = jnp.take_along_axis(b, k[..., None, None], axis=-1)[..., 0]
    n = col / jnp.maximum(jnp.linalg.norm(col, axis=-1, keepdims=True), 1e-12)
    n = n * jnp.where(jnp.sum(n * w, -1, keepdims=True) < 0, -1.0, 1.0)
    return jnp.where((cos < -0.9)[..., None], theta[..., None] * n, regular)


def _hat(v):
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = jnp.zeros_like(x)
    return jnp.stack([jnp.stack([zero, -z, y], -1), jnp.stack([z, zero, -x], -1), jnp.stack([-y, x, zero], -1)], -2)


class IGSO3:
    """Tables of IGSO(3) over a grid of sigmas: inverse-CDF sampling and the score, in JAX.

    The grid is log-spaced over [sigma_min, sigma_max] (default Str2Str's range 0.1 - 1.5); a
    sigma between grid points interpolates the tabulated CDF and score norm linearly in
    log sigma (sigmas outside the grid are clipped to it).
    """

    def __init__(self, sigma_min: float = 0.1, sigma_max: float = 1.5, num_sigmas: int = 256, num_omegas: int = 1000):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if num_sigmas < 2 or num_omegas < 2:
            raise ValueError(f"need num_sigmas, num_omegas >= 2, got {num_sigmas}, {num_omegas}")
        self.sigmas = np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), num_sigmas))
        w = np.linspace(0.0, np.pi, num_omegas + 1)
        series = np.stack([igso3_series(w, s) for s in self.sigmas])
        dens = (1.0 - np.cos(w)) / np.pi * series
        # CDF by the trapezoid rule, then the quantile function on a uniform grid of probabilities
        cdf = np.concatenate([np.zeros((num_sigmas, 1)), np.cumsum(0.5 * (dens[:, 1:] + dens[:, :-1]), 1)], 1)
        cdf /= cdf[:, -1:]
        u = np.linspace(0.0, 1.0, num_omegas + 1)
        quantiles = np.stack([np.interp(u, c, w) for c in cdf])
        # the score is the log-derivative of the series (the density with respect to the Haar
        # measure); log(series) is smooth and even in w, so its derivative is 0 at w = 0
        score = np.gradient(np.log(np.maximum(series, 1e-300)), w, axis=1)
        score[:, 0] = 0.0
        # far in the tail the series cancels to noise (float64); there the angle density is the
        # small-angle Gaussian's, f ~ w^2 exp(-w^2 / (2 sigma^2)), so the series' log-derivative is
        # -w/sigma^2 + 2/w - cot(w/2)
        tail = series < 1e-10 * series.max(axis=1, keepdims=True)
        wt = np.maximum(w, 1e-3)
        gauss = -wt[None, :] / self.sigmas[:, None] ** 2 + 2.0 / wt[None, :] - 1.0 / np.tan(wt[None, :] / 2.0)
        score = np.where(tail, gauss, score)
        self.omegas = jnp.asarray(w, jnp.float32)
        self._quantiles = jnp.asarray(quantiles, jnp.float32)
        self._score_norm = jnp.asarray(score, jnp.float32)
        self._log_sigmas = jnp.asarray(np.log(self.sigmas), jnp.float32)

    def _lookup(self, table, x, x_max, sigma):
        """Bilinear interpolation of ``table`` (sigmas x uniform grid on [0, x_max]) at (x, sigma),
        elementwise (gathers four entries per element, whatever the table's size)."""
        x, sigma = jnp.broadcast_arrays(jnp.asarray(x, jnp.float32), jnp.asarray(sigma, jnp.float32))
        ls = jnp.clip(jnp.log(sigma), self._log_sigmas[0], self._log_sigmas[-1])
        i = jnp.clip(jnp.searchsorted(self._log_sigmas, ls) - 1, 0, len(self.sigmas) - 2)
        a = (ls - self._log_sigmas[i]) / (self._log_sigmas[i + 1] - self._log_sigmas[i])
        k = table.shape[1] - 1
        pos = jnp.clip(x / x_max, 0.0, 1.0) * k
        j = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, k - 1)
        f = pos - j
        row = lambda r: (1 - f) * table[r, j] + f * table[r, j + 1]  # noqa: E731
        return (1 - a) * row(i) + a * row(i + 1)

    def sample_angle(self, key, sigma, shape=()):
        """Rotation angles w ~ f(w; sigma) by inverse CDF (``sigma`` a scalar or broadcastable to
        ``shape``: a sigma per batch row of (B, L) is ``sigma[:, None]``)."""
        u = jax.random.uniform(key, shape)
        return self._lookup(self._quantiles, u, 1.0, jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), shape))

    def sample(self, key, sigma, shape=()):
        """Rotation matrices (*shape, 3, 3) ~ IGSO(3)(sigma): a uniform axis times a sampled angle
        (``sigma`` a scalar or broadcastable to ``shape``)."""
        k_axis, k_angle = jax.random.split(key)
        axis = jax.random.normal(k_axis, (*shape, 3))
        axis = axis / jnp.linalg.norm(axis, axis=-1, keepdims=True)
        return exp_map(axis * self.sample_angle(k_angle, sigma, shape)[..., None])

    def score_norm(self, omega, sigma):
        """The score's norm at angle w: d/dw log p with p the density with respect to the Haar
        measure (the series, without the angle measure's (1 - cos w) / pi), interpolated from
        the table. This is the score the reverse SDE on SO(3) needs; it is 0 at w = 0 and about
        -w / sigma^2 for small sigma."""
        return self._lookup(self._score_norm, omega, np.pi, sigma)

    def score(self, r_t, r_0, sigma):
        """The score of IGSO(3)(sigma) centred at ``r_0`` at ``r_t``: a rotation vector v such that
        moving along r_t exp(eps v) raises log p fastest (the body frame of r_t; the axis of
        r_0^T r_t is the same in the frames of r_0 and r_t), v = axis * score_norm(w)."""
        v = log_map(jnp.swapaxes(r_0, -1, -2) @ r_t)
        w = jnp.linalg.norm(v, axis=-1, keepdims=True)
        return v / jnp.maximum(w, 1e-12) * self.score_norm(w[..., 0], sigma)[..., None]
