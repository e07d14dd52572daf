"""Alignment objectives as loss transforms (see ``transforms``); AWM in ``awm``."""

from .awm import awm as awm, group_advantages as group_advantages, log_likelihood_surrogate as log_likelihood_surrogate
from .transforms import LossTransform as LossTransform, mean as mean, weighted as weighted
