"""Affine probability paths x_t = alpha(t) x0 + sigma(t) x1 and prediction conversions."""

from .base import (
    AffinePath as AffinePath,
    CosinePath as CosinePath,
    LinearPath as LinearPath,
    bcast as bcast,
    get_path as get_path,
)
from .conversions import (
    PARAMETRIZATIONS as PARAMETRIZATIONS,
    Predictor as Predictor,
    convert as convert,
    to_x0_eps as to_x0_eps,
)
