"""Distillation of a many-step teacher into a one- or few-step generator: one module per method
(``dmd.DMD``, ``dmd2.DMD2``, ``phased.PhasedDMD``, ``tdm.TDM``) on ``base.DistillationMethod``,
all trained by the library's one training step; ``Distiller(name, ...)`` picks one by name."""

import dataclasses as _dataclasses

from .base import DistillationMethod as DistillationMethod
from .dmd import DMD as DMD
from .dmd2 import DMD2 as DMD2
from .objectives import (
    dm_gradient as dm_gradient,
    matching_loss as matching_loss,
    pseudo_huber_matching_loss as pseudo_huber_matching_loss,
    subinterval_fm_loss as subinterval_fm_loss,
    subinterval_targets as subinterval_targets,
    transition as transition,
)
from .phased import PhasedDMD as PhasedDMD
from .tdm import TDM as TDM, labels_from_null as labels_from_null

METHOD_CLASSES = {cls.name: cls for cls in (DMD, DMD2, PhasedDMD, TDM)}
METHODS = tuple(METHOD_CLASSES)

# settings that belong to one method, with the value under which another method ignores them
# (None: always ignored elsewhere, as a command line passes its defaults to every method)
_ONLY = {"phases": ("phased-dmd", 1), "steps_per_phase": ("phased-dmd", None), "regression_weight": ("dmd", None),
         "clamp": ("phased-dmd or tdm", None), "huber_c": ("tdm", None), "steps_choices": ("tdm", ())}


def Distiller(method: str, *args, **kwargs) -> DistillationMethod:  # noqa: N802 (builds a method, as a constructor)
    """The distillation method named ``method`` (one of ``METHODS``) with these settings.

    A command line passes every method's settings at once: a setting of another method is
    ignored while it has its neutral value and refused otherwise."""
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; expected one of {METHODS}")
    cls = METHOD_CLASSES[method]
    own = {f.name for f in _dataclasses.fields(cls)}
    for name in [k for k in kwargs if k not in own]:
        where, neutral = _ONLY.get(name, (None, object()))
        value = kwargs.pop(name)
        if neutral is None or value == neutral:
            continue
        if name == "phases":
            raise ValueError(f"only phased-dmd has phases; {method} has 1")
        if name == "steps_choices":
            raise ValueError("steps_choices (the sampling-steps-aware student) is TDM's variant: use method='tdm'")
        if where is None:
            raise TypeError(f"{method} has no setting {name!r}")
        raise ValueError(f"{name} is a setting of {where}, not of {method}")
    return cls(*args, **kwargs)
