"""Build SDEs by name: ``get_sde("vp", beta_max=20.0)``."""

from __future__ import annotations

import dataclasses

_REGISTRY: dict[str, type] = {}


def register_sde(name: str):
    """Class decorator adding an SDE class to the registry under ``name``."""

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"an SDE is already registered as {name!r}")
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_sdes() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_sde(name: str, **kwargs):
    """Instantiate the SDE registered as ``name`` with hyper-parameters ``kwargs``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown SDE {name!r}; available: {', '.join(available_sdes())}")
    cls = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(kwargs) - fields
    if unknown:
        raise ValueError(
            f"SDE {name!r} has no parameter(s) {sorted(unknown)}; its parameters are {sorted(fields)}"
        )
    return cls(**kwargs)
