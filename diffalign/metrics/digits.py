"""A judge of generated 8x8 digits: one logistic-regression classifier for every experiment.

Fitted on the training digits' pixel levels / 16; it labels images, gives the class
probabilities of model samples in JAX (the alignment reward), and the features of the Frechet
distances (its logits; the top 16 principal components of the training images).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .distances import energy_distance, frechet_distance


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

    def class_report(self, x, real_levels, c: int) -> dict:
        """For samples ``x``: the class-c fraction, the Frechet distance in logit space between
        the samples classified as c and the real class-c images, and their diversity (mean
        pairwise L2 in pixel space) over the real class's."""

        real = jnp.asarray(2.0 * (real_levels + 0.5) / 17.0 - 1.0, jnp.float32)
        pred = np.asarray(jnp.argmax(self.logits(x), -1))
        mine = np.asarray(x)[pred == c]
        out = {"class_fraction": float(np.mean(pred == c)), "class_count": int(len(mine))}
        if len(mine) >= 10:
            out["frechet_logits"] = frechet_distance(np.asarray(self.logits(jnp.asarray(mine))), np.asarray(self.logits(real)))
            out["frechet_pca16"] = frechet_distance(self.pca(mine), self.pca(np.asarray(real)))
            out["diversity_ratio"] = _mean_pairwise(mine) / _mean_pairwise(np.asarray(real))
            out["energy_distance"] = energy_distance(mine, np.asarray(real))
        return out

    def metrics(self, c: int):
        def fn(x):
            pred = jnp.argmax(self.logits(x), -1)
            return {"in_target": jnp.mean((pred == c).astype(jnp.float32))}

        return fn


def _mean_pairwise(a, limit: int = 2000):
    a = np.asarray(a, np.float64)[:limit]
    d = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
    return float(d.sum() / (len(a) * (len(a) - 1)))
