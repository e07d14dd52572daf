"""One entry point over every sampler: ``sample(key, predictor, x_T, method, steps) -> (x, nfe)``.

Methods are looked up in a registry; a user adds one without editing the library:

    @register_sampler("my_sampler")
    def my_sampler(key, pred, x_T, steps, **kwargs):
        ...
        return x, nfe
"""

from __future__ import annotations

import jax.numpy as jnp

from ..paths.conversions import Predictor
from ..sde.base import SDE
from . import adaptive, deterministic, flow_sde, stochastic
from .registry import Registry

SAMPLER_REGISTRY = Registry("sampler")
register_sampler = SAMPLER_REGISTRY.register
get_sampler = SAMPLER_REGISTRY.get
SAMPLERS = SAMPLER_REGISTRY.names  # live tuple-like view of the registered names


def available_samplers() -> tuple[str, ...]:
    return tuple(SAMPLER_REGISTRY.names)


def sample(key, pred: Predictor, x_T, method: str = "euler", steps: int = 100, **kwargs):
    """Draw samples from x_T (at the path's t_max) with ``method``; returns (samples, nfe).

    ``nfe`` counts network evaluations per sample: an int for fixed-step methods, the mean
    over samples for "adaptive". Extra keyword arguments go to the method (``grid``, ``eta``,
    ``snr``, ``n_corrector``, ``rtol``, ``atol``, ``solver``).
    """
    return get_sampler(method)(key, pred, x_T, steps, **kwargs)


def check_steps(steps):
    """Refuse a step count that is not a positive int (for fixed-step samplers)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"the number of sampling steps must be a positive integer, got {steps!r}")


def _fixed_step(fn, per_step: int):
    def run(key, pred, x_T, steps, **kwargs):
        check_steps(steps)
        return fn(pred, x_T, steps, **kwargs), per_step * steps

    return run


register_sampler("euler")(_fixed_step(deterministic.euler, 1))
register_sampler("heun")(_fixed_step(deterministic.heun, 2))


@register_sampler("ddim")
def _ddim(key, pred, x_T, steps, **kwargs):
    check_steps(steps)
    if kwargs.get("eta", 0.0) > 0:
        kwargs = {**kwargs, "key": key}
    return deterministic.ddim(pred, x_T, steps, **kwargs), steps


register_sampler("dpm++2m")(_fixed_step(deterministic.dpm_solver_pp_2m, 1))
register_sampler("edm")(_fixed_step(deterministic.edm_heun, 2))


def _sde_of(method, pred):
    if not isinstance(pred.path, SDE):
        raise ValueError(f"the {method!r} sampler needs an SDE, got the path {pred.path!r}")
    return pred.path


@register_sampler("euler_maruyama")
def _euler_maruyama(key, pred, x_T, steps, **kwargs):
    check_steps(steps)
    sde = _sde_of("euler_maruyama", pred)
    return stochastic.euler_maruyama(key, pred.score, sde, x_T, steps, **kwargs), steps


@register_sampler("pc")
def _pc(key, pred, x_T, steps, **kwargs):
    check_steps(steps)
    sde = _sde_of("pc", pred)
    n_corr = kwargs.get("n_corrector", 1)
    return stochastic.predictor_corrector(key, pred.score, sde, x_T, steps, **kwargs), steps * (1 + n_corr)


@register_sampler("adaptive")
def _adaptive(key, pred, x_T, steps, **kwargs):
    x, stats = adaptive.solve_ode(pred.velocity, x_T, pred.path.t_max, pred.path.t_min, **kwargs)
    return x, jnp.mean(stats["nfe"])


@register_sampler("flow_grpo")
def _flow_grpo(key, pred, x_T, steps, *, a: float = flow_sde.GRPO_NOISE):
    """Flow-GRPO's SDE on the uniform grid (a rectified-flow model's velocity); NFE = steps."""
    check_steps(steps)
    ts = jnp.linspace(pred.path.t_max, pred.path.t_min, steps + 1)
    return flow_sde.flow_grpo_sde(key, pred.velocity, x_T, ts, a)[0], steps
