"""Str2Str's ensemble metrics on C-alpha coordinates (Lu et al., ICLR 2024, ``src/metrics``).

Every function takes ensembles as arrays (N, L, 3) in Angstrom; the reference ensemble (a
molecular-dynamics trajectory, in time order) sets the histogram ranges, the bond bound and
the TICA projection.

* ``val_clash``: fraction of conformations with no C-alpha pair closer than 2 x 1.7 - 0.4 = 3.0 A;
* ``val_bond``: fraction with every adjacent C-alpha distance below the reference's largest;
* ``js_pwd`` / ``js_rg`` / ``js_tic``: Jensen-Shannon *distances* (natural log) of 50-bin
  histograms over the reference's range (+1e-6 to every bin), of the pairwise distances
  (|i - j| >= 3, mean over pairs), of the radius of gyration, and of the two slowest TICA
  components (lag 20, fitted on the reference's pairwise distances; mean of the two).
  A histogram whose values all fall outside the reference's range is uniform after the
  pseudocount (a quirk of the published formula, kept).
"""

from __future__ import annotations

import numpy as np

CLASH_DISTANCE = 2 * 1.7 - 0.4
BINS = 50
PSEUDOCOUNT = 1e-6


def _check(ca, name="ensemble") -> np.ndarray:
    ca = np.asarray(ca, np.float64)
    if ca.ndim != 3 or ca.shape[-1] != 3 or ca.shape[0] < 1:
        raise ValueError(f"{name} must have shape (N, L, 3) with N >= 1, got {ca.shape}")
    if not np.all(np.isfinite(ca)):
        raise ValueError(f"{name} has non-finite coordinates")
    return ca


def _check_pair(ca, reference, min_residues: int = 2):
    ca, reference = _check(ca), _check(reference, "reference")
    if ca.shape[1] != reference.shape[1]:
        raise ValueError(f"ensembles have {ca.shape[1]} and {reference.shape[1]} residues")
    if ca.shape[1] < min_residues:
        raise ValueError(f"need at least {min_residues} residues, got {ca.shape[1]}")
    return ca, reference


def pair_distances(ca, offset: int) -> np.ndarray:
    """Distances of the pairs i < j with j - i >= offset, (N, P)."""
    i, j = np.triu_indices(ca.shape[1], k=offset)
    return np.linalg.norm(ca[:, i] - ca[:, j], axis=-1)


def val_clash(ca, threshold: float = CLASH_DISTANCE) -> float:
    """Fraction of conformations without a steric clash (every C-alpha pair at >= ``threshold`` A)."""
    ca = _check(ca)
    if ca.shape[1] < 2:
        raise ValueError(f"need at least 2 residues, got {ca.shape[1]}")
    return float(np.mean(pair_distances(ca, 1).min(axis=1) >= threshold))


def val_bond(ca, reference) -> float:
    """Fraction of conformations whose adjacent C-alpha distances all stay below the reference's
    largest one (+1e-6): no chain break."""
    ca, reference = _check_pair(ca, reference)
    bound = np.linalg.norm(np.diff(reference, axis=1), axis=-1).max() + 1e-6
    return float(np.mean(np.linalg.norm(np.diff(ca, axis=1), axis=-1).max(axis=1) < bound))


def js_distance(p, q) -> float:
    """Jensen-Shannon distance sqrt(JS(p || q)) of two histograms (normalised here), natural log."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    kl = lambda a: np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / m), 0.0))  # noqa: E731
    return float(np.sqrt(max(0.5 * (kl(p) + kl(q)), 0.0)))


def _js_1d(x, ref) -> float:
    lo, hi = float(np.min(ref)), float(np.max(ref))
    p = np.histogram(x, bins=BINS, range=(lo, hi))[0] + PSEUDOCOUNT
    q = np.histogram(ref, bins=BINS, range=(lo, hi))[0] + PSEUDOCOUNT
    return js_distance(p, q)


def js_pwd(ca, reference, offset: int = 3) -> float:
    """Mean over C-alpha pairs (|i - j| >= ``offset``) of the JS distance of their distance histograms."""
    ca, reference = _check_pair(ca, reference, offset + 1)
    d, d_ref = pair_distances(ca, offset), pair_distances(reference, offset)
    return float(np.mean([_js_1d(d[:, k], d_ref[:, k]) for k in range(d.shape[1])]))


def radius_of_gyration(ca) -> np.ndarray:
    """C-alpha radius of gyration of each conformation, (N,)."""
    ca = _check(ca)
    return np.sqrt(np.mean(np.sum((ca - ca.mean(axis=1, keepdims=True)) ** 2, -1), axis=1))


def js_rg(ca, reference) -> float:
    """JS distance of the radius-of-gyration histograms."""
    _check_pair(ca, reference)
    return _js_1d(radius_of_gyration(ca), radius_of_gyration(reference))


class TICA:
    """Time-lagged independent component analysis with the reversible (symmetrised) estimator.

    Fitted on a time series X (T, D): mean over all frames, C00 and C0tau symmetrised over both
    time directions, C00's eigenvalues below ``epsilon`` (absolute) dropped, then the generalised
    eigenproblem C0tau v = lambda C00 v; components sorted by |lambda| (as deeptime, which
    Str2Str uses; a fast oscillating mode with lambda near -1 counts as slow). Kinetic-map
    scaling and signs are left out: the JS distances of the projections do not depend on them.
    """

    def __init__(self, lagtime: int = 20, dim: int = 2, epsilon: float = 1e-6):
        if lagtime < 1 or dim < 1:
            raise ValueError(f"lagtime and dim must be >= 1, got {lagtime}, {dim}")
        self.lagtime, self.dim, self.epsilon = lagtime, dim, epsilon

    def fit(self, x) -> "TICA":
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[0] <= self.lagtime:
            raise ValueError(f"need a time series (T, D) with T > lagtime={self.lagtime}, got {x.shape}")
        x0, xt = x[: -self.lagtime], x[self.lagtime:]
        self.mean = 0.5 * (x0.mean(0) + xt.mean(0))
        x0, xt = x0 - self.mean, xt - self.mean
        n = x0.shape[0]
        c00 = (x0.T @ x0 + xt.T @ xt) / (2 * n)
        c0t = (x0.T @ xt + xt.T @ x0) / (2 * n)
        s, u = np.linalg.eigh(c00)
        keep = s > self.epsilon
        whiten = u[:, keep] / np.sqrt(s[keep])
        lam, v = np.linalg.eigh(whiten.T @ c0t @ whiten)
        order = np.argsort(np.abs(lam), kind="stable")[::-1]
        self.eigenvalues = lam[order]
        self.components = whiten @ v[:, order]
        if self.components.shape[1] < self.dim:
            raise ValueError(f"the data has only {self.components.shape[1]} independent directions, fewer than dim={self.dim}")
        return self

    def transform(self, x) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) @ self.components[:, : self.dim]


def js_tic(ca, reference, lagtime: int = 20, offset: int = 3) -> float:
    """Mean over the two slowest TICA components (fitted on the reference's pairwise distances)
    of the JS distance of their histograms."""
    ca, reference = _check_pair(ca, reference, offset + 2)  # two TICA components need two pairs
    tica = TICA(lagtime, 2).fit(pair_distances(reference, offset))
    p, q = tica.transform(pair_distances(ca, offset)), tica.transform(pair_distances(reference, offset))
    return float(np.mean([_js_1d(p[:, k], q[:, k]) for k in range(2)]))


def ensemble_metrics(ca, reference) -> dict:
    """All five of Str2Str's metrics of an ensemble against a reference trajectory."""
    return {
        "val_clash": val_clash(ca),
        "val_bond": val_bond(ca, reference),
        "js_pwd": js_pwd(ca, reference),
        "js_rg": js_rg(ca, reference),
        "js_tic": js_tic(ca, reference),
    }
