"""Conversions between the four ways a network can parametrise an affine path.

For x_t = alpha x0 + sigma x1 (see ``paths.base``) a network may predict

* ``"x0"``: the clean sample E[x0 | x_t],
* ``"eps"``: the source sample E[x1 | x_t] (the noise, for Gaussian sources),
* ``"velocity"``: E[alpha' x0 + sigma' x1 | x_t], the flow-matching / probability-flow field,
* ``"score"``: grad log p_t(x_t) = -E[x1 | x_t] / sigma, valid when x1 ~ N(0, I) is
  independent of x0 (the diffusion SDEs).

Any two of (x_t, x0, eps) determine the third, and (x0, eps) determine the velocity, so every
conversion goes through the pair (x0, eps). This is the one place those formulas live.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from .base import AffinePath, bcast

PARAMETRIZATIONS = ("x0", "eps", "velocity", "score")


def _check(name: str) -> None:
    if name not in PARAMETRIZATIONS:
        raise ValueError(f"unknown parametrization {name!r}; expected one of {PARAMETRIZATIONS}")


def to_x0_eps(pred, parametrization: str, x, t, path: AffinePath):
    """(E[x0 | x_t], E[x1 | x_t]) from a prediction in ``parametrization``."""
    _check(parametrization)
    alpha, sigma, dalpha, dsigma = path.coeffs_and_derivs(t)
    a, s = bcast(alpha, x), bcast(sigma, x)
    if parametrization == "x0":
        return pred, (x - a * pred) / s
    if parametrization == "eps":
        return (x - s * pred) / a, pred
    if parametrization == "score":
        eps = -s * pred
        return (x - s * eps) / a, eps
    # velocity: solve [x; v] = [[a, s], [a', s']] [x0; eps]
    da, ds = bcast(dalpha, x), bcast(dsigma, x)
    det = a * ds - s * da
    return (ds * x - s * pred) / det, (a * pred - da * x) / det


def convert(pred, frm: str, to: str, x, t, path: AffinePath):
    """Convert a prediction between parametrizations at (x_t, t) on ``path``."""
    _check(to)
    if frm == to:
        return pred
    x0, eps = to_x0_eps(pred, frm, x, t, path)
    if to == "x0":
        return x0
    if to == "eps":
        return eps
    alpha, sigma, dalpha, dsigma = path.coeffs_and_derivs(t)
    if to == "score":
        return -eps / bcast(sigma, x)
    return bcast(dalpha, x) * x0 + bcast(dsigma, x) * eps


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A model function ``fn(x, t[, cond]) -> prediction`` with the views every sampler needs.

    ``t`` is a vector of per-example times of shape (B,); ``cond`` is optional per-example
    conditioning (class labels, ...) passed through to ``fn``. Build one from a network with
    ``Predictor(lambda x, t: apply_fn(params, x, t), path, "eps")`` and hand it to any sampler.
    """

    fn: Callable
    path: AffinePath
    parametrization: str = "eps"

    def __post_init__(self):
        _check(self.parametrization)

    def _as(self, to, x, t, *cond):
        t = _times(t, x)
        return convert(self.fn(x, t, *cond), self.parametrization, to, x, t, self.path)

    def x0(self, x, t, *cond):
        return self._as("x0", x, t, *cond)

    def eps(self, x, t, *cond):
        return self._as("eps", x, t, *cond)

    def score(self, x, t, *cond):
        return self._as("score", x, t, *cond)

    def velocity(self, x, t, *cond):
        return self._as("velocity", x, t, *cond)


def _times(t, x):
    """Per-example times: a scalar t is broadcast to shape (B,)."""
    t = jax.numpy.asarray(t, dtype=x.dtype)
    if t.ndim == 0:
        t = jax.numpy.full((x.shape[0],), t, dtype=x.dtype)
    return t
