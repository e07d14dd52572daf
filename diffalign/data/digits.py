"""scikit-learn's 8x8 handwritten digits (1797 images, values 0..16), shipped with the package.

Alpaydin & Kaynak (1998), UCI "Optical Recognition of Handwritten Digits"; read offline by
``sklearn.datasets.load_digits``. Pixels take K = 17 levels; the model sees dequantised
values x = 2 (k + u) / 17 - 1 in [-1, 1), u ~ U[0, 1), so bits/dim follow from the
continuous density (``sampling.bits_per_dim`` with scale 2 and 17 levels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NUM_LEVELS = 17
NUM_CLASSES = 10
SCALE = 2.0  # x = SCALE * (k + u) / K - 1


def load_digits(test_fraction: float = 1 / 6, seed: int = 0):
    """(train, test) dicts with "k" (int pixel levels, (N, 8, 8)) and "y" (labels).

    The split is a fixed permutation of the 1797 images (seed 0): 1498 train, 299 held out.
    """
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:
        raise ImportError("the digits data set needs scikit-learn: pip install 'diffalign[experiments]'") from e
    d = _load()
    k = d.images.astype(np.int32)
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(k))
    n_test = int(round(test_fraction * len(k)))
    test, train = perm[:n_test], perm[n_test:]
    return {"k": k[train], "y": y[train]}, {"k": k[test], "y": y[test]}


def dequantize(key, k):
    """x = 2 (k + u) / 17 - 1 with u ~ U[0, 1)."""
    u = jax.random.uniform(key, k.shape)
    return SCALE * (k.astype(jnp.float32) + u) / NUM_LEVELS - 1.0


def to_levels(x):
    """Model space back to pixel levels 0..16 (for pictures)."""
    return jnp.clip(jnp.floor((x + 1.0) * NUM_LEVELS / SCALE), 0, NUM_LEVELS - 1)


def make_batch_fn(train: dict, batch_size: int, seed: int):
    """Pure ``batch_fn(step)``: a dequantised batch of images and labels drawn without replacement."""
    k = jnp.asarray(train["k"])
    y = jnp.asarray(train["y"])
    n = k.shape[0]
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} exceeds the {n} training images")
    base = jax.random.key(seed)

    def batch_fn(step):
        key = jax.random.fold_in(base, step)
        idx = jax.random.choice(jax.random.fold_in(key, 0), n, (batch_size,), replace=False)
        return {"x": dequantize(jax.random.fold_in(key, 1), k[idx]), "y": y[idx]}

    return batch_fn
