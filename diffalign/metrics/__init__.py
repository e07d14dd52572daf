"""Sample-quality metrics, and the evaluators built on them (``Evaluator``)."""

from .distances import energy_distance as energy_distance, frechet_distance as frechet_distance, wasserstein2 as wasserstein2
from .evaluator import Evaluator as Evaluator, PointCloud as PointCloud
