"""A two-state C-alpha chain with a time-ordered "molecular dynamics" trajectory: the toy
reference ensemble for Str2Str's metrics (which need a trajectory for TICA).

Two templates of ``num_residues`` C-alpha atoms 3.8 A apart: an alpha helix (radius 2.3 A,
rise 1.5 A, 100 degrees per residue) and a beta hairpin (two straight strands 4.8 A apart
joined by one turn residue). The state is a two-state Markov chain (switching probabilities
per frame ``p_ab`` and ``p_ba``: stationary share of the hairpin p_ab / (p_ab + p_ba)); each
coordinate carries AR(1) noise (correlation ``rho`` per frame, stationary std ``noise``) on
top of the current template. Slow mode: the state switches; fast mode: the noise.
"""

from __future__ import annotations

import numpy as np


def helix(num_residues: int) -> np.ndarray:
    """An ideal alpha helix's C-alpha trace (num_residues, 3), centred (adjacent distance ~3.8 A)."""
    k = np.arange(num_residues)
    ang = np.deg2rad(100.0) * k
    ca = np.stack([2.3 * np.cos(ang), 2.3 * np.sin(ang), 1.5 * k], -1)
    return ca - ca.mean(0)


def hairpin(num_residues: int) -> np.ndarray:
    """A beta hairpin's C-alpha trace (num_residues, 3), centred: two straight strands (3.8 A per
    residue) 4.8 A apart, joined by one turn residue 3.8 A from both strand ends."""
    n1 = (num_residues - 1) // 2
    n2 = num_residues - 1 - n1
    s1 = np.stack([3.8 * np.arange(n1), np.zeros(n1), np.zeros(n1)], -1)
    turn = np.array([[3.8 * (n1 - 1) + np.sqrt(3.8**2 - 2.4**2), 2.4, 0.0]])
    s2 = np.stack([3.8 * (n1 - 1) - 3.8 * np.arange(n2), np.full(n2, 4.8), np.zeros(n2)], -1)
    ca = np.concatenate([s1, turn, s2])
    return ca - ca.mean(0)


def two_state_trajectory(num_frames: int, num_residues: int = 10, *, p_ab: float = 0.002, p_ba: float = 0.003,
                         rho: float = 0.9, noise: float = 0.35, seed: int = 0):
    """(trajectory (num_frames, num_residues, 3), state (num_frames,) 0 = helix, 1 = hairpin), starting
    in the helix."""
    if num_frames < 2 or num_residues < 4:
        raise ValueError(f"need num_frames >= 2 and num_residues >= 4, got {num_frames}, {num_residues}")
    if not (0 < p_ab < 1 and 0 < p_ba < 1 and 0 <= rho < 1 and noise >= 0):
        raise ValueError("need 0 < p_ab, p_ba < 1, 0 <= rho < 1 and noise >= 0")
    rng = np.random.default_rng(seed)
    u = rng.random(num_frames)
    state = np.zeros(num_frames, np.int64)
    for k in range(1, num_frames):
        flip = u[k] < (p_ab if state[k - 1] == 0 else p_ba)
        state[k] = 1 - state[k - 1] if flip else state[k - 1]
    eps = rng.standard_normal((num_frames, num_residues, 3))
    xi = np.empty_like(eps)
    xi[0] = noise * eps[0]
    c = noise * np.sqrt(1 - rho**2)
    for k in range(1, num_frames):
        xi[k] = rho * xi[k - 1] + c * eps[k]
    templates = np.stack([helix(num_residues), hairpin(num_residues)])
    traj = templates[state] + xi
    return traj - traj.mean(1, keepdims=True), state


def nearest_state(ca, num_residues: int | None = None) -> np.ndarray:
    """0 (helix) or 1 (hairpin): the nearer template by RMSD after centring (no rotation: the toy
    ensemble has a fixed orientation)."""
    ca = np.asarray(ca, np.float64)
    n = ca.shape[1] if num_residues is None else num_residues
    ca = ca - ca.mean(1, keepdims=True)
    d = [np.sqrt(np.mean(np.sum((ca - t) ** 2, -1), -1)) for t in (helix(n), hairpin(n))]
    return np.argmin(np.stack(d, -1), -1)
