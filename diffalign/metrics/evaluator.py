"""The evaluator interface: what every judge of generated samples offers.

An evaluator holds its reference (held-out points, a classifier, a test set of graphs or
molecules) and reports the metrics named in ``keys``: ``score(samples)`` for one set of
samples, ``summarise(per_seed)`` for the mean and spread over sampling seeds. Experiments,
notebooks and benchmarks call only these (and the documented extras of an evaluator), so a new
data set brings its evaluator and every experiment can report it.
"""

from __future__ import annotations

import abc

import numpy as np


class Evaluator(abc.ABC):
    """A judge of generated samples against a fixed reference."""

    keys: tuple[str, ...] = ()  # the scalar metrics ``score`` reports (summarised over seeds)

    @abc.abstractmethod
    def score(self, samples) -> dict:
        """The metrics of one set of samples (``keys`` and any non-scalar extras)."""

    def summarise(self, per_seed: dict) -> dict:
        """Mean and standard deviation (ddof 1; 0 for one seed) over sampling seeds of each of
        ``keys``, with the per-seed rows under ``per_seed``."""
        out = {}
        for k in self.keys:
            vals = [m[k] for m in per_seed.values() if k in m]
            if vals:
                out[k] = float(np.mean(vals))
                out[f"{k}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        out["per_seed"] = {str(s): m for s, m in per_seed.items()}
        return out


class PointCloud(Evaluator):
    """Low-dimensional samples (the 2-D toys) against reference points: W2 (exact, POT) and, on a
    mixture data set, its mode statistics (``diffalign.data.toy2d.mode_statistics``)."""

    keys = ("w2", "min_mode_fraction", "within_3std", "mode_tv")

    def __init__(self, reference, task: str | None = None):
        self.reference, self.task = np.asarray(reference), task

    def score(self, samples) -> dict:
        from ..data.toy2d import mode_statistics
        from .distances import wasserstein2

        out = {"w2": wasserstein2(np.asarray(samples), self.reference)}
        modes = mode_statistics(samples, self.task) if self.task else None
        if modes is not None:
            out.update(modes)
        return out
