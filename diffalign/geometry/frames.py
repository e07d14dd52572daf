"""Residue frames and their diffusion: Str2Str's (and FrameDiff's) state for protein backbones.

A backbone of L residues is L rigid frames T_i = (R_i, x_i): x_i the C-alpha position, R_i
from (N, C-alpha, C) by Gram-Schmidt with the first axis along C - C-alpha and N in the
(x, y) plane at y > 0 (AlphaFold 2's backbone frame). The forward
noise factorises over residues and over R^3 x SO(3):

* positions: the VP SDE (beta 0.1 -> 20) on C-alpha coordinates scaled by 0.1 (nm);
* rotations: Brownian motion on SO(3), R_t = R_0 IGSO3(sigma(t)), with the logarithmic
  schedule sigma(t) = log(t e^sigma_max + (1 - t) e^sigma_min), sigma 0.1 -> 1.5, whose
  squared diffusion is g(t)^2 = d sigma(t)^2 / dt.

The reverse process (SDE or probability-flow ODE) moves a rotation in its own body frame,
R <- R exp(v) with v = g^2 s dt (+ g sqrt(dt) z for the SDE; half the drift for the ODE), s
the score as a body-frame rotation vector (``IGSO3.score``); positions take an Euler(-Maruyama)
step of the reverse VP SDE and are re-centred. ``heat_anneal_frames`` is Str2Str's
heating-annealing sampler on frames.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..sde import get_sde
from ..sde.base import SDE
from .so3 import IGSO3, exp_map

# ideal backbone atoms in the residue frame (Angstrom; AlphaFold 2's literature values for
# alanine): N and C; C-alpha is the origin
IDEAL_N = (-0.525, 1.363, 0.0)
IDEAL_C = (1.526, 0.0, 0.0)


def rigid_from_3_points(n, ca, c):
    """Frames (R (..., 3, 3), x (..., 3)) from N, C-alpha, C positions (..., 3): the first axis
    along C - C-alpha, the second in the N-C-alpha-C plane, the third their cross product."""
    e1 = c - ca
    e1 = e1 / jnp.linalg.norm(e1, axis=-1, keepdims=True)
    u2 = n - ca
    e2 = u2 - jnp.sum(u2 * e1, -1, keepdims=True) * e1
    e2 = e2 / jnp.linalg.norm(e2, axis=-1, keepdims=True)
    e3 = jnp.cross(e1, e2)
    return jnp.stack([e1, e2, e3], axis=-1), ca


def frames_to_backbone(rots, trans):
    """N, C-alpha, C positions (..., 3, 3) of frames with ideal geometry."""
    local = jnp.asarray([IDEAL_N, (0.0, 0.0, 0.0), IDEAL_C], trans.dtype)
    return jnp.einsum("...ij,aj->...ai", rots, local) + trans[..., None, :]


@dataclasses.dataclass(frozen=True)
class FrameDiffusion:
    """The forward and reverse processes on SE(3)^L of Str2Str.

    Arrays: ``rots`` (B, L, 3, 3), ``trans`` (B, L, 3) in Angstrom; scores are
    (B, L, 3) body-frame rotation vectors and (B, L, 3) scores of the *scaled* positions.
    """

    sigma_min: float = 0.1
    sigma_max: float = 1.5
    trans_scale: float = 0.1
    t_min: float = 0.01
    sde: SDE = dataclasses.field(default_factory=lambda: get_sde("vp", beta_min=0.1, beta_max=20.0))
    igso3: IGSO3 | None = None

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not 0 < self.t_min < 1:
            raise ValueError(f"t_min must be in (0, 1), got {self.t_min}")
        if not self.trans_scale > 0:
            raise ValueError(f"trans_scale must be > 0, got {self.trans_scale}")
        if self.igso3 is None:
            object.__setattr__(self, "igso3", IGSO3(self.sigma_min, self.sigma_max))
        elif not (self.igso3.sigmas[0] <= self.sigma_min * (1 + 1e-6) and self.igso3.sigmas[-1] >= self.sigma_max * (1 - 1e-6)):
            raise ValueError(f"the IGSO3 tables cover sigma {self.igso3.sigmas[0]:.3g} - {self.igso3.sigmas[-1]:.3g}, "
                             f"not the schedule's {self.sigma_min} - {self.sigma_max}")

    def sigma(self, t):
        """The rotation noise level sigma(t) (logarithmic schedule)."""
        return jnp.log(t * np.exp(self.sigma_max) + (1 - t) * np.exp(self.sigma_min))

    def rot_g2(self, t):
        """g(t)^2 = d sigma(t)^2 / dt of the rotation Brownian motion."""
        a = np.exp(self.sigma_max) - np.exp(self.sigma_min)
        return 2.0 * self.sigma(t) * a / (t * np.exp(self.sigma_max) + (1 - t) * np.exp(self.sigma_min))

    def forward_marginal(self, key, rots, trans, t):
        """(R_t, x_t) ~ q(. | R_0, x_0) at times ``t`` (B,)."""
        k_rot, k_trans = jax.random.split(key)
        b, l = trans.shape[:2]
        noise = self.igso3.sample(k_rot, self.sigma(t)[:, None], (b, l))
        x_t, _ = self.sde.marginal_sample(k_trans, trans * self.trans_scale, t)
        return rots @ noise, x_t / self.trans_scale

    def reverse_step(self, key, rots, trans, rot_score, trans_score, t, dt, *, method: str = "sde",
                     center: bool = True):
        """One Euler(-Maruyama) step of the reverse process from t to t - dt (t: (B,))."""
        k_rot, k_trans = jax.random.split(key)
        x = trans * self.trans_scale
        g2_rot = self.rot_g2(t)[:, None, None]
        g2 = self.sde.diffusion(t)[:, None, None] ** 2
        f = self.sde.drift(x, t)
        if method == "sde":
            v = g2_rot * rot_score * dt + jnp.sqrt(g2_rot * dt) * jax.random.normal(k_rot, rot_score.shape, rot_score.dtype)
            x = x - (f - g2 * trans_score) * dt + jnp.sqrt(g2 * dt) * jax.random.normal(k_trans, x.shape, x.dtype)
        elif method == "ode":
            v = 0.5 * g2_rot * rot_score * dt
            x = x - (f - 0.5 * g2 * trans_score) * dt
        else:
            raise ValueError(f"unknown reverse method {method!r}; expected 'sde' or 'ode'")
        if center:
            x = x - jnp.mean(x, axis=1, keepdims=True)
        return rots @ exp_map(v), x / self.trans_scale


def heat_anneal_frames(key, score_fn: Callable, diffusion: FrameDiffusion, rots0, trans0, t_delta: float,
                       steps: int, *, method: str = "sde", center: bool = True, replicas: int | None = None):
    """Str2Str's heating-annealing on frames: heat (R_0, x_0) (B, L, ...), or ``replicas`` copies of
    one structure (L, ...), to ``t_delta`` with the exact forward marginal, then ``steps`` reverse
    steps on a uniform grid down to ``t_min``; returns the frames at t_min.

    ``score_fn(rots, trans, t) -> (rot_score, trans_score)`` (see ``FrameDiffusion``). Str2Str
    outputs its network's denoised frames at the last step; with a denoiser at hand, apply it
    to the result.
    """
    if not diffusion.t_min < t_delta <= 1.0:
        raise ValueError(f"t_delta must be in ({diffusion.t_min}, 1], got {t_delta}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if replicas is not None:
        rots0 = jnp.broadcast_to(rots0, (replicas, *jnp.shape(rots0)))
        trans0 = jnp.broadcast_to(trans0, (replicas, *jnp.shape(trans0)))
    b = trans0.shape[0]
    k_heat, k_anneal = jax.random.split(key)
    rots, trans = diffusion.forward_marginal(k_heat, rots0, trans0, jnp.full((b,), t_delta, trans0.dtype))
    if center:
        trans = trans - jnp.mean(trans, axis=1, keepdims=True)
    ts = jnp.linspace(t_delta, diffusion.t_min, steps + 1, dtype=trans0.dtype)

    def body(carry, inp):
        r, x = carry
        t, t_next, k = inp
        tb = jnp.full((b,), t, trans0.dtype)
        s_rot, s_trans = score_fn(r, x, tb)
        return diffusion.reverse_step(k, r, x, s_rot, s_trans, tb, t - t_next, method=method, center=center), None

    (rots, trans), _ = jax.lax.scan(body, (rots, trans), (ts[:-1], ts[1:], jax.random.split(k_anneal, steps)))
    return rots, trans
