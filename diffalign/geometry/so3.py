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


def igso3_angle_density(omega, sigma: float, num_terms: int = NUM_TERMS) -> np.ndarray:
    """f(w; sigma) on [0, pi] (a density in w, integrating to 1), summed in float64."""
    w = np.asarray(omega, np.float64)
    l = np.arange(num_terms, dtype=np.float64)[:, None]
    half = np.sin(w / 2.0)
    # sin((l + 1/2) w) / sin(w / 2) -> 2l + 1 as w -> 0
    ratio = np.where(half > 1e-12, np.sin((l + 0.5) * w) / np.where(half > 1e-12, half, 1.0), 2 * l + 1)
    series = np.sum((2 * l + 1) * np.exp(-l * (l + 1) * sigma**2 / 2.0) * ratio, axis=0)
    return (1.0 - np.cos(w)) / np.pi * series


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
    """Rotation matrices (..., 3, 3) -> rotation vectors (..., 3) with angle in [0, pi)."""
    cos = jnp.clip((jnp.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    theta = jnp.arccos(cos)
    w = jnp.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    sin = jnp.sin(theta)
    scale = jnp.where(sin > 1e-6, theta / (2.0 * jnp.where(sin > 1e-6, sin, 1.0)), 0.5 + theta**2 / 12.0)
    return w * scale[..., None]


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
        self.sigmas = np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), num_sigmas))
        w = np.linspace(0.0, np.pi, num_omegas + 1)[1:]  # w = 0 has zero density; start just above
        dens = np.stack([igso3_angle_density(w, s) for s in self.sigmas])
        cdf = np.cumsum(dens, axis=1) * (w[1] - w[0])
        cdf /= cdf[:, -1:]
        # the score is the log-derivative of the density with respect to the Haar measure, i.e.
        # of the series f / ((1 - cos w) / pi): d/dw log f - cot(w / 2)
        cot = 1.0 / np.tan(w / 2.0)
        dlogf = np.gradient(np.log(np.maximum(dens, 1e-300)), w, axis=1) - cot[None, :]
        # far in the tail the series cancels to noise (float64); there the angle density is the
        # small-angle Gaussian's, f ~ w^2 exp(-w^2 / (2 sigma^2)), whose log-derivative is 2/w - w/sigma^2
        tail = dens < 1e-10 * dens.max(axis=1, keepdims=True)
        gauss = 2.0 / w[None, :] - w[None, :] / self.sigmas[:, None] ** 2 - cot[None, :]
        dlogf = np.where(tail, gauss, dlogf)
        self.omegas = jnp.asarray(w, jnp.float32)
        self._cdf = jnp.asarray(cdf, jnp.float32)
        self._score_norm = jnp.asarray(dlogf, jnp.float32)
        self._log_sigmas = jnp.asarray(np.log(self.sigmas), jnp.float32)

    def _sigma_weights(self, sigma):
        """(index, weight) for linear interpolation in log sigma."""
        ls = jnp.clip(jnp.log(sigma), self._log_sigmas[0], self._log_sigmas[-1])
        i = jnp.clip(jnp.searchsorted(self._log_sigmas, ls) - 1, 0, len(self.sigmas) - 2)
        a = (ls - self._log_sigmas[i]) / (self._log_sigmas[i + 1] - self._log_sigmas[i])
        return i, a

    def sample_angle(self, key, sigma, shape=()):
        """Rotation angles w ~ f(w; sigma) by inverse CDF (``sigma`` a scalar or broadcastable to shape)."""
        u = jax.random.uniform(key, shape)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), shape)

        def one(u, sigma):
            i, a = self._sigma_weights(sigma)
            return jnp.interp(u, (1 - a) * self._cdf[i] + a * self._cdf[i + 1], self.omegas)

        return jax.vmap(one)(u.ravel(), sigma.ravel()).reshape(shape)

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
        the table. This is the score the reverse SDE on SO(3) needs; near w = 0 it is about
        -w / sigma^2 for small sigma."""
        omega, sigma = jnp.broadcast_arrays(jnp.asarray(omega, jnp.float32), jnp.asarray(sigma, jnp.float32))

        def one(omega, sigma):
            i, a = self._sigma_weights(sigma)
            return jnp.interp(omega, self.omegas, (1 - a) * self._score_norm[i] + a * self._score_norm[i + 1])

        return jax.vmap(one)(omega.ravel(), sigma.ravel()).reshape(omega.shape)

    def score(self, r_t, r_0, sigma):
        """The score of IGSO(3)(sigma) centred at ``r_0`` at ``r_t``: a rotation vector v such that
        moving along r_t exp(eps v) raises log p fastest (the body frame of r_t; the axis of
        r_0^T r_t is the same in the frames of r_0 and r_t), v = axis * score_norm(w)."""
        v = log_map(jnp.swapaxes(r_0, -1, -2) @ r_t)
        w = jnp.linalg.norm(v, axis=-1, keepdims=True)
        return v / jnp.maximum(w, 1e-12) * self.score_norm(w[..., 0], sigma)[..., None]
