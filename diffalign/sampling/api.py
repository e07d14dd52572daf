"""One entry point over every sampler: ``sample(key, predictor, x_T, method, steps) -> (x, nfe)``."""

from __future__ import annotations

import jax.numpy as jnp

from ..paths.conversions import Predictor
from ..sde.base import SDE
from . import adaptive, deterministic, stochastic

SAMPLERS = ("euler", "heun", "ddim", "dpm++2m", "edm", "euler_maruyama", "pc", "adaptive")


def sample(key, pred: Predictor, x_T, method: str = "euler", steps: int = 100, **kwargs):
    """Draw samples from x_T (at the path's t_max) with ``method``; returns (samples, nfe).

    ``nfe`` counts network evaluations per sample: an int for fixed-step methods, the mean
    over samples for "adaptive". Extra keyword arguments go to the method (``grid``, ``eta``,
    ``snr``, ``n_corrector``, ``rtol``, ``atol``, ``solver``).
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; expected one of {SAMPLERS}")
    if method != "adaptive" and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"the number of sampling steps must be a positive integer, got {steps!r}")
    if method in ("euler_maruyama", "pc"):
        if not isinstance(pred.path, SDE):
            raise ValueError(f"the {method!r} sampler needs an SDE, got the path {pred.path!r}")
        if method == "euler_maruyama":
            return stochastic.euler_maruyama(key, pred.score, pred.path, x_T, steps, **kwargs), steps
        n_corr = kwargs.get("n_corrector", 1)
        return stochastic.predictor_corrector(key, pred.score, pred.path, x_T, steps, **kwargs), steps * (1 + n_corr)
    if method == "adaptive":
        x, stats = adaptive.solve_ode(pred.velocity, x_T, pred.path.t_max, pred.path.t_min, **kwargs)
        return x, jnp.mean(stats["nfe"])
    fn, per_step = {
        "euler": (deterministic.euler, 1),
        "heun": (deterministic.heun, 2),
        "ddim": (deterministic.ddim, 1),
        "dpm++2m": (deterministic.dpm_solver_pp_2m, 1),
        "edm": (deterministic.edm_heun, 2),
    }[method]
    if method == "ddim" and kwargs.get("eta", 0.0) > 0:
        kwargs = {**kwargs, "key": key}
    return fn(pred, x_T, steps, **kwargs), per_step * steps
