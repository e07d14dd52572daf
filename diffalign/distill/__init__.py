"""Distillation of a many-step teacher into a one- or few-step generator: DMD, DMD2, Phased DMD, TDM."""

from .methods import METHODS as METHODS, Distiller as Distiller, labels_from_null as labels_from_null
from .objectives import (
    dm_gradient as dm_gradient,
    matching_loss as matching_loss,
    pseudo_huber_matching_loss as pseudo_huber_matching_loss,
    subinterval_fm_loss as subinterval_fm_loss,
    subinterval_targets as subinterval_targets,
    transition as transition,
)
