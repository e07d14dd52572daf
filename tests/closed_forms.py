"""Closed-form scores and densities used as references by the tests."""

import jax
import numpy as np


def gaussian_score(path, mu, cov):
    """Exact score of p_t when data ~ N(mu, cov): p_t = N(alpha mu, alpha^2 cov + sigma^2 I)."""
    import jax.numpy as jnp

    d = mu.shape[0]

    def score(x, t):
        a, s = path.coeffs(t)
        c = a[:, None, None] ** 2 * cov[None] + s[:, None, None] ** 2 * jnp.eye(d)[None]
        return -jnp.linalg.solve(c, (x - a[:, None] * mu[None])[..., None])[..., 0]

    return score


def gaussian_marginal_logp(path, mu, cov, t):
    import jax.numpy as jnp

    a, s = path.coeffs(jnp.asarray(t))
    c = a**2 * cov + s**2 * jnp.eye(mu.shape[0])
    return lambda z: jax.scipy.stats.multivariate_normal.logpdf(z, a * mu, c)


def mixture_score(path, means, stds, weights):
    """Exact score of p_t for a Gaussian mixture with isotropic components."""
    import jax.numpy as jnp

    means, stds, logw = jnp.asarray(means), jnp.asarray(stds), jnp.log(jnp.asarray(weights))

    def logp_one(x, t):
        a, s = path.coeffs(t)
        var = a**2 * stds**2 + s**2
        d = x.shape[-1]
        sq = jnp.sum((x[None, :] - a * means) ** 2, -1)
        return jax.nn.logsumexp(logw - 0.5 * sq / var - 0.5 * d * jnp.log(2 * jnp.pi * var))

    grad = jax.vmap(jax.grad(logp_one))
    return lambda x, t: grad(x, t)


def mode_fractions(x, means):
    d = np.sum((np.asarray(x)[:, None, :] - np.asarray(means)[None]) ** 2, -1)
    return np.bincount(d.argmin(1), minlength=len(means)) / len(x)
