"""Sample-quality metrics."""

from .distances import energy_distance as energy_distance, frechet_distance as frechet_distance, wasserstein2 as wasserstein2
