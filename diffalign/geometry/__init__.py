"""Geometry for structure diffusion: rotations and the isotropic Gaussian on SO(3)."""

from .so3 import (
    IGSO3 as IGSO3,
    exp_map as exp_map,
    igso3_angle_density as igso3_angle_density,
    igso3_mean_angle as igso3_mean_angle,
    log_map as log_map,
)
