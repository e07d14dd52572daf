"""Alignment objectives as loss transforms (see ``transforms``)."""

from .transforms import LossTransform as LossTransform, mean as mean, weighted as weighted
