"""Geometry for structure diffusion: rotations, IGSO(3) and residue frames on SE(3)^L."""

from .frames import (
    FrameDiffusion as FrameDiffusion,
    frames_to_backbone as frames_to_backbone,
    heat_anneal_frames as heat_anneal_frames,
    rigid_from_3_points as rigid_from_3_points,
)
from .so3 import (
    IGSO3 as IGSO3,
    exp_map as exp_map,
    igso3_angle_density as igso3_angle_density,
    igso3_mean_angle as igso3_mean_angle,
    igso3_series as igso3_series,
    log_map as log_map,
)
