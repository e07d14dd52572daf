"""Reward functions of the alignment demonstrations, pure JAX.

``RingReward``: the 2-D test of the AWM notes (section 3.2): a model of 8 gaussians on a circle
(radius 4, std 0.3); reward 1 for a sample whose nearest mode is one of the rewarded modes and
lies within ``within`` standard deviations of it, else 0 (base rate about 2/8 x 0.97).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class RingReward:
    modes: tuple[int, ...] = (0, 1)
    radius: float = 4.0
    std: float = 0.3
    num_modes: int = 8
    within: float = 4.0

    def __post_init__(self):
        if not self.modes or any(not 0 <= m < self.num_modes for m in self.modes):
            raise ValueError(f"rewarded modes must be in [0, {self.num_modes}), got {self.modes}")

    @property
    def centres(self):
        ang = 2 * math.pi * jnp.arange(self.num_modes) / self.num_modes
        return self.radius * jnp.stack([jnp.cos(ang), jnp.sin(ang)], -1)

    def assign(self, x):
        """(nearest mode, on-manifold flag: within ``within`` std of it) per sample."""
        d = jnp.linalg.norm(x[:, None, :] - self.centres[None], axis=-1)
        return jnp.argmin(d, -1), jnp.min(d, -1) <= self.within * self.std

    def __call__(self, x, y=None):
        del y
        mode, near = self.assign(x)
        return (jnp.isin(mode, jnp.asarray(self.modes)) & near).astype(jnp.float32)

    def metrics(self, x) -> dict:
        """Fraction rewarded, off-manifold mass, each rewarded mode's share of all samples."""
        mode, near = self.assign(x)
        out = {"in_target": jnp.mean(self(x)), "off_manifold": 1.0 - jnp.mean(near.astype(jnp.float32))}
        for m in self.modes:
            out[f"mode{m}_share"] = jnp.mean(((mode == m) & near).astype(jnp.float32))
        return out
