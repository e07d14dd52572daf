"""Samplers (lax.scan fixed-step, diffrax adaptive, graph PC/S4), likelihoods and guidance."""

from .adaptive import SOLVERS as SOLVERS, solve_ode as solve_ode
from .deterministic import (
    ddim as ddim,
    dpm_solver_pp_2m as dpm_solver_pp_2m,
    edm_heun as edm_heun,
    euler as euler,
    heun as heun,
)
from .grids import GRIDS as GRIDS, time_grid as time_grid
from .guidance import guided as guided
from .likelihood import bits_per_dim as bits_per_dim, log_likelihood as log_likelihood
from .stochastic import (
    euler_maruyama as euler_maruyama,
    langevin_corrector as langevin_corrector,
    predictor_corrector as predictor_corrector,
)
from .predictors import (
    available_correctors as available_correctors,
    available_predictors as available_predictors,
    get_corrector as get_corrector,
    get_predictor as get_predictor,
    register_corrector as register_corrector,
    register_predictor as register_predictor,
)
from .api import (
    SAMPLERS as SAMPLERS,
    available_samplers as available_samplers,
    get_sampler as get_sampler,
    register_sampler as register_sampler,
    sample as sample,
)
from . import graph as graph
