"""Time grids for fixed-step samplers, from t_start (noise) down to t_end (data side)."""

from __future__ import annotations

import jax.numpy as jnp

from ..paths.base import AffinePath

GRIDS = ("uniform", "log_snr", "edm")

# EDM's sigma_max (Karras et al. 2022): grids that are uniform in noise level start no
# higher than this noise-to-signal ratio sigma/alpha, where the data component is negligible.
EDM_SIGMA_MAX = 80.0
# and EDM's sigma_min: on a path that ends at sigma = 0 (rectified flow's t = 0, where the
# log-SNR is infinite) the grid is spaced down to this level, and its last point is the end
# (finite ends are kept as they are).
EDM_SIGMA_MIN = 0.002


def time_grid(
    path: AffinePath,
    steps: int,
    kind: str = "uniform",
    *,
    t_start: float | None = None,
    t_end: float | None = None,
    rho: float = 7.0,
    keep_start: bool = True,
) -> jnp.ndarray:
    """(steps + 1,) decreasing times from t_start (default path.t_max) to t_end (path.t_min).

    kinds:
      * "uniform": equal steps in t.
      * "log_snr": equal steps in lambda = log(alpha / sigma) (DPM-Solver's recommendation).
      * "edm": Karras et al. 2022, eq. 5, on sigma~ = sigma / alpha with rho = 7.
    For "log_snr" and "edm" the noisy end is clipped at sigma~ = 80 (EDM's sigma_max); with
    ``keep_start`` the first grid point is still t_start (the first step is then longer),
    without it the grid starts at the clipped time.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"the number of sampling steps must be a positive integer, got {steps!r}")
    if kind not in GRIDS:
        raise ValueError(f"unknown time grid {kind!r}; expected one of {GRIDS}")
    hi = path.t_max if t_start is None else t_start
    lo = path.t_min if t_end is None else t_end
    if not lo < hi:
        raise ValueError(f"time grid needs t_end < t_start, got t_end={lo}, t_start={hi}")
    if kind == "uniform":
        return jnp.linspace(hi, lo, steps + 1)
    lam_hi = jnp.maximum(path.log_snr(jnp.asarray(hi)), -jnp.log(EDM_SIGMA_MAX))
    lam_lo = path.log_snr(jnp.asarray(lo))
    lam_lo = jnp.where(jnp.isfinite(lam_lo), lam_lo, -jnp.log(EDM_SIGMA_MIN))
    if kind == "log_snr":
        lam = jnp.linspace(lam_hi, lam_lo, steps + 1)
    else:
        s_hi, s_lo = jnp.exp(-lam_hi), jnp.exp(-lam_lo)
        i = jnp.arange(steps + 1) / steps
        s = (s_hi ** (1 / rho) + i * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho
        lam = -jnp.log(s)
    t = path.t_of_log_snr(lam)
    t = t.at[-1].set(lo)
    return t.at[0].set(hi) if keep_start else t
