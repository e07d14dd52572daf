"""Samplers (lax.scan fixed-step, diffrax adaptive), likelihoods and guidance."""

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
from .api import SAMPLERS as SAMPLERS, sample as sample
