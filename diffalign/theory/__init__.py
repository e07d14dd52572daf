"""Small, exactly checkable reproductions of theory papers about score-based models.

``score_estimation``: denoising score matching as regression with noisy labels, trained by
(kernel) gradient descent, and early stopping (Han, Razaviyayn, Xu, ICLR 2024).
"""

from .two_layer import TwoLayerNet, train_two_layer
from .score_estimation import (
    BIMODAL,
    GaussianMixture1D,
    KernelGD,
    analytic_ntk,
    empirical_ntk,
    excess_risk,
    features,
    held_out_stop,
    iteration_grid,
    kernel_gd_iterates,
    label_noise_floor,
    ntk_matvec,
    ou_coeffs,
    posterior_mean,
    posterior_variance,
    sample_triples,
    tangent_features,
    var_posterior_mean,
)

__all__ = [
    "BIMODAL",
    "GaussianMixture1D",
    "KernelGD",
    "TwoLayerNet",
    "analytic_ntk",
    "empirical_ntk",
    "excess_risk",
    "features",
    "held_out_stop",
    "iteration_grid",
    "kernel_gd_iterates",
    "label_noise_floor",
    "ntk_matvec",
    "ou_coeffs",
    "posterior_mean",
    "posterior_variance",
    "sample_triples",
    "tangent_features",
    "train_two_layer",
    "var_posterior_mean",
]
