"""Epochs of shuffled mini-batches as a pure function of the step, for device-side data.

``epoch_batch(key, step, num_examples, batch_size)`` returns the example indices of batch
``step`` and a mask: batch i of epoch e holds positions ``i*b .. i*b+b-1`` of that epoch's
permutation, without replacement, and the last batch of an epoch is padded (mask 0), as a data
loader with ``drop_last=False`` gives them.

Small sets (up to ``EXACT_LIMIT`` examples) use ``jax.random.permutation``: a uniform
permutation, recomputed each step, which is cheap at that size. Large sets (QM9's 120k
molecules) would pay a sort of the whole set every step, so they use a keyed bijection of
``range(num_examples)`` instead: a 4-round Feistel network on the smallest even number of bits
covering the set, with cycle-walking back into range, evaluated only at the batch's positions
(O(batch) work). It is a pseudo-random permutation, not a uniform draw over all of them, which
is all that shuffling needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EXACT_LIMIT = 4096


def _mix32(x):
    """A 32-bit integer hash (lowbias32)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def feistel_permutation(key, positions, n: int, rounds: int = 4):
    """perm[positions] for a keyed pseudo-random permutation ``perm`` of ``range(n)``."""
    if n < 1:
        raise ValueError("n must be >= 1")
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = jnp.uint32((1 << half) - 1)
    round_keys = jax.random.bits(key, (rounds,), jnp.uint32)

    def encrypt(v):
        left, right = v >> half, v & mask
        for r in range(rounds):
            left, right = right, left ^ (_mix32(right ^ round_keys[r]) & mask)
        return (left << half) | right

    def walk(v):  # cycle-walking: re-encrypt until back in range; ends since encrypt permutes
        return jax.lax.while_loop(lambda u: jnp.any(u >= n), lambda u: jnp.where(u >= n, encrypt(u), u), encrypt(v))

    return walk(positions.astype(jnp.uint32)).astype(jnp.int32)


def epoch_batch(key, step, num_examples: int, batch_size: int):
    """(indices, mask) of batch ``step``: shuffled epochs of ``min(batch_size, n)`` examples."""
    if num_examples < 1:
        raise ValueError(f"cannot draw batches from an empty data set (num_examples={num_examples})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = num_examples
    b = min(batch_size, n)
    per_epoch = -(-n // b)
    epoch, i = step // per_epoch, step % per_epoch
    ekey = jax.random.fold_in(key, epoch)
    pos = i * b + jnp.arange(b)
    clipped = jnp.minimum(pos, n - 1)
    if n <= EXACT_LIMIT:
        idx = jax.random.permutation(ekey, n)[clipped]
    else:
        idx = feistel_permutation(ekey, clipped, n)
    return idx, (pos < n).astype(jnp.float32)
