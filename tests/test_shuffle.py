"""Shuffled epochs: every example exactly once per epoch, in both regimes, as a pure function of the step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffalign.data.shuffle import EXACT_LIMIT, epoch_batch, feistel_permutation


@pytest.mark.parametrize("n", [1, 2, 5, 1000, 4097, 120_803])
def test_feistel_is_a_permutation(n):
    perm = np.asarray(feistel_permutation(jax.random.key(3), jnp.arange(n), n))
    assert perm.min() >= 0 and perm.max() < n
    assert len(np.unique(perm)) == n
    if n > 100:  # and it shuffles: few fixed points, other keys give other orders
        assert np.mean(perm == np.arange(n)) < 0.01
        other = np.asarray(feistel_permutation(jax.random.key(4), jnp.arange(n), n))
        assert np.mean(perm == other) < 0.01


@pytest.mark.parametrize("n,b", [(80, 128), (160, 128), (EXACT_LIMIT + 1000, 1024), (10_001, 1000)])
def test_each_epoch_covers_every_example_once(n, b):
    key = jax.random.key(0)
    f = jax.jit(lambda s: epoch_batch(key, s, n, b))
    per_epoch = -(-n // min(b, n))
    epochs = []
    for e in range(2):
        idx, mask = zip(*[f(e * per_epoch + i) for i in range(per_epoch)])
        idx, mask = np.concatenate(idx), np.concatenate(mask) > 0
        assert mask.sum() == n and np.array_equal(np.sort(idx[mask]), np.arange(n))
        epochs.append(idx)
    assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch
    again = np.concatenate([f(i)[0] for i in range(per_epoch)])
    assert np.array_equal(again, epochs[0])  # a pure function of the step


def test_small_sets_use_the_uniform_permutation():
    key = jax.random.key(5)
    idx, _ = epoch_batch(key, 3, 50, 10)  # epoch 0, batch 3
    want = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), 50))[30:40]
    assert np.array_equal(np.asarray(idx), want)
