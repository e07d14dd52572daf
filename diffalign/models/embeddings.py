"""Time and class embeddings for score / velocity networks."""

from __future__ import annotations

import math

import jax.numpy as jnp


def sinusoidal_embedding(t, dim: int, max_period: float = 10_000.0, scale: float = 1000.0):
    """Transformer-style features of scale * t (DDPM's time embedding), shape (B, dim)."""
    if dim % 2:
        raise ValueError(f"sinusoidal embedding dimension must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = scale * t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1).astype(t.dtype)
