"""Judges of generated 8x8 digits: one logistic-regression classifier for every experiment, and
the two evaluators built on it.

The classifier is fitted on the training digits' pixel levels / 16; it labels images, gives the
class probabilities of model samples in JAX (the alignment reward), and the features of the
Frechet distances (its logits; the top 16 principal components of the training images).
``DigitSamples`` scores unconditional samples, ``DigitClass`` samples aligned to one class.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .distances import energy_distance, frechet_distance
from .evaluator import Evaluator


class DigitClassifier:
    """Logistic regression on the pixel levels / 16 (scikit-learn), fitted on training digits:
    ``predict`` labels levels on the host, ``logits`` scores model samples in [-1, 1) in JAX (a
    differentiable reward), ``pca`` gives a second feature space for Frechet distances."""

    def __init__(self, levels, labels):
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        levels = np.asarray(levels, np.float64).reshape(len(levels), -1)
        # one BLAS thread: the fit is tiny, and threads competing for shared cores made it 100x slower
        with threadpool_limits(limits=1):
            self._clf = LogisticRegression(max_iter=2000).fit(levels / 16.0, np.asarray(labels))
        clf = self._clf
        self.w, self.b = jnp.asarray(clf.coef_.T, jnp.float32), jnp.asarray(clf.intercept_, jnp.float32)
        # a second feature space for the Frechet distance: the top 16 principal components of the
        # training images (in the model's [-1, 1] scale)
        x = 2.0 * (np.asarray(levels, np.float64) + 0.5) / 17.0 - 1.0
        self._mu = x.mean(0)
        self._pcs = np.linalg.svd(x - self._mu, full_matrices=False)[2][:16]

    def predict(self, levels):
        """Labels of images given as pixel levels (N, 64) or (N, 8, 8)."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return self._clf.predict(np.asarray(levels, np.float64).reshape(len(levels), -1) / 16.0)

    def pca(self, x):
        return (np.asarray(x, np.float64) - self._mu) @ self._pcs.T

    def logits(self, x):
        # x = 2 (k + u) / 17 - 1  ->  k ~ 17 (x + 1) / 2 - 1/2, fitted on k / 16
        k = jnp.clip(17.0 * (x + 1.0) / 2.0 - 0.5, 0.0, 16.0)
        return (k / 16.0) @ self.w + self.b

    def reward(self, c: int):
        return lambda x, y=None: jax.nn.softmax(self.logits(x))[:, c]

    def metrics(self, c: int):
        def fn(x):
            pred = jnp.argmax(self.logits(x), -1)
            return {"in_target": jnp.mean((pred == c).astype(jnp.float32))}

        return fn


class DigitSamples(Evaluator):
    """Unconditional digit samples against real images ``real`` (in the model's [-1, 1] scale):
    Frechet distances in the classifier's logit space and in the training images' top 16
    principal components, and the histogram of the predicted classes."""

    keys = ("frechet_logits", "frechet_pca16")

    def __init__(self, classifier: DigitClassifier, real):
        self.classifier, self.real = classifier, np.asarray(real)
        # the reference's features, computed once for every score
        self._real_logits = np.asarray(classifier.logits(jnp.asarray(self.real)))
        self._real_pca = classifier.pca(self.real)

    def score(self, samples) -> dict:
        x = np.asarray(samples)
        logits = np.asarray(self.classifier.logits(jnp.asarray(x)))
        return {
            "frechet_logits": frechet_distance(logits, self._real_logits),
            "frechet_pca16": frechet_distance(self.classifier.pca(x), self._real_pca),
            "class_histogram": np.bincount(logits.argmax(-1), minlength=10).tolist(),
        }


class DigitClass(Evaluator):
    """Samples meant to be of class ``c`` (a reward-aligned model) against the real class-c images
    (pixel levels): the class-c fraction; and, among the samples classified as c (10 at least), the
    Frechet distances in logit and PCA space, their diversity (mean pairwise L2 in pixel space)
    over the real class's, and the energy distance."""

    keys = ("class_fraction", "frechet_logits", "frechet_pca16", "diversity_ratio", "energy_distance")

    def __init__(self, classifier: DigitClassifier, real_levels, c: int):
        self.classifier, self.c = classifier, c
        self.real = np.asarray(2.0 * (np.asarray(real_levels) + 0.5) / 17.0 - 1.0, np.float32)
        # the reference's features, computed once for every score
        self._real_logits = np.asarray(classifier.logits(jnp.asarray(self.real)))
        self._real_pca = classifier.pca(self.real)
        self._real_spread = _mean_pairwise(self.real)

    def score(self, samples) -> dict:
        clf, c = self.classifier, self.c
        pred = np.asarray(jnp.argmax(clf.logits(jnp.asarray(samples)), -1))
        mine = np.asarray(samples)[pred == c]
        out = {"class_fraction": float(np.mean(pred == c)), "class_count": int(len(mine))}
        if len(mine) >= 10:
            out["frechet_logits"] = frechet_distance(np.asarray(clf.logits(jnp.asarray(mine))), self._real_logits)
            out["frechet_pca16"] = frechet_distance(clf.pca(mine), self._real_pca)
            out["diversity_ratio"] = _mean_pairwise(mine) / self._real_spread
            out["energy_distance"] = energy_distance(mine, self.real)
        return out


def _mean_pairwise(a, limit: int = 2000):
    a = np.asarray(a, np.float64)[:limit]
    d = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
    return float(d.sum() / (len(a) * (len(a) - 1)))
