"""The standard 2-D data sets, each defined once, by name, with its exact generator.

Every sampler is pure JAX, ``sample(key, n, stratified=False) -> (n, 2)``, so training
batches are drawn on device inside the compiled training loop. ``stratified=True`` gives
the reference sets used for evaluation: equal counts per mixture component (component
``i % K`` for point ``i``) and, for the moons, the evenly spaced arc positions of the
original generators.

Sets of the two published comparisons:

* Tong et al. (TMLR 2024) runner: ``tong_8gaussians`` (torchdyn ``generate_gaussians``:
  8 modes at angles 2 pi i / 8 on a circle of radius 5, std 1) and ``tong_moons``
  (scikit-learn ``make_moons(noise=0.05)``, times 2, first coordinate minus 1).
* torchcfm's tutorial: ``8gaussians`` (``sample_8gaussians``: radius 5, covariance
  sqrt(0.1) I, i.e. std 0.1 ** 0.25 = 0.562) and ``moons`` (torchdyn ``generate_moons``:
  points at evenly spaced angles on each arc, each shifted by one U[0, 0.2) draw added to
  both coordinates, then x * 3 - 1).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Toy2D:
    name: str
    sampler: Callable
    description: str
    num_modes: int | None = None

    def sample(self, key, n: int, stratified: bool = False, dtype=jnp.float32):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"number of points must be a positive integer, got {n!r}")
        return self.sampler(key, n, stratified).astype(dtype)


def _components(key, n, k, stratified):
    if stratified:
        return jnp.arange(n) % k
    return jax.random.randint(key, (n,), 0, k)


def _ring_mixture(radius, std, k=8):
    def sample(key, n, stratified):
        kc, kn = jax.random.split(key)
        c = _components(kc, n, k, stratified)
        ang = 2 * math.pi * c / k
        centers = radius * jnp.stack([jnp.cos(ang), jnp.sin(ang)], -1)
        return centers + std * jax.random.normal(kn, (n, 2))

    return sample


def _torchcfm_8gaussians(key, n, stratified):
    # torchcfm.utils.sample_8gaussians: centres (+-1, 0), (0, +-1), (+-1/sqrt2, +-1/sqrt2) times 5,
    # MultivariateNormal covariance sqrt(var) I with var = 0.1.
    kc, kn = jax.random.split(key)
    s = 1.0 / math.sqrt(2.0)
    centers = 5.0 * jnp.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (-s, s), (s, -s), (-s, -s)])
    c = _components(kc, n, 8, stratified)
    return centers[c] + 0.1**0.25 * jax.random.normal(kn, (n, 2))


def _arc_angles(key, n_out, n_in, stratified):
    if stratified:
        return jnp.linspace(0, math.pi, n_out), jnp.linspace(0, math.pi, n_in)
    k1, k2 = jax.random.split(key)
    return jax.random.uniform(k1, (n_out,)) * math.pi, jax.random.uniform(k2, (n_in,)) * math.pi


def _moons_base(key, n, stratified):
    """The two arcs of scikit-learn's and torchdyn's make_moons, before noise."""
    n_out = n // 2
    a_out, a_in = _arc_angles(key, n_out, n - n_out, stratified)
    outer = jnp.stack([jnp.cos(a_out), jnp.sin(a_out)], -1)
    inner = jnp.stack([1 - jnp.cos(a_in), 1 - jnp.sin(a_in) - 0.5], -1)
    return jnp.concatenate([outer, inner])


def _torchdyn_moons(key, n, stratified):
    ka, kn = jax.random.split(key)
    x = _moons_base(ka, n, stratified) + 0.2 * jax.random.uniform(kn, (n, 1))
    x = x * 3.0 - 1.0
    return x if stratified else jax.random.permutation(jax.random.fold_in(key, 7), x)


def _sklearn_moons(key, n, stratified):
    ka, kn = jax.random.split(key)
    x = _moons_base(ka, n, stratified) + 0.05 * jax.random.normal(kn, (n, 2))
    x = (x * 2.0).at[:, 0].add(-1.0)
    return x if stratified else jax.random.permutation(jax.random.fold_in(key, 7), x)


def _checkerboard(key, n, stratified):
    # FFJORD (Grathwohl et al. 2019): x1 ~ U[-2, 2), x2 in alternating unit squares, times 2.
    del stratified
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,)) * 4 - 2
    x2 = jax.random.uniform(k2, (n,)) - jax.random.randint(k3, (n,), 0, 2) * 2
    x2 = x2 + jnp.floor(x1) % 2
    return jnp.stack([x1, x2], -1) * 2


def _swissroll(key, n, stratified):
    # FFJORD: scikit-learn make_swiss_roll(noise=1.0), coordinates (x, z), divided by 5.
    del stratified
    k1, k2 = jax.random.split(key)
    t = 1.5 * math.pi * (1 + 2 * jax.random.uniform(k1, (n,)))
    x = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], -1) + jax.random.normal(k2, (n, 2))
    return x / 5.0


def _grid25(key, n, stratified):
    kc, kn = jax.random.split(key)
    c = _components(kc, n, 25, stratified)
    centers = 2.0 * jnp.stack([c // 5 - 2, c % 5 - 2], -1).astype(jnp.float32)
    return centers + 0.2 * jax.random.normal(kn, (n, 2))


def _gaussian(key, n, stratified):
    del stratified
    return jax.random.normal(key, (n, 2))


DATASETS: dict[str, Toy2D] = {
    d.name: d
    for d in [
        Toy2D("gaussian", _gaussian, "standard normal N(0, I): the noise source"),
        Toy2D("8gaussians", _torchcfm_8gaussians, "torchcfm: 8 modes, radius 5, std 0.562", 8),
        Toy2D("moons", _torchdyn_moons, "torchdyn/torchcfm moons: arcs + U[0,0.2) shift, x*3-1", 2),
        Toy2D("tong_8gaussians", _ring_mixture(5.0, 1.0), "torchdyn: 8 modes, radius 5, std 1", 8),
        Toy2D("tong_moons", _sklearn_moons, "scikit-learn make_moons(noise=0.05)*2, x0-1", 2),
        Toy2D("ring", _ring_mixture(4.0, 0.3), "8 modes on a circle of radius 4, std 0.3", 8),
        Toy2D("25gaussians", _grid25, "5x5 grid of modes at spacing 2, std 0.2", 25),
        Toy2D("checkerboard", _checkerboard, "FFJORD checkerboard on [-4, 4]^2"),
        Toy2D("swissroll", _swissroll, "FFJORD swiss roll (make_swiss_roll noise 1, /5)"),
    ]
}


def get_dataset(name: str) -> Toy2D:
    if name not in DATASETS:
        raise ValueError(f"unknown 2-D data set {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name]


def mode_centers(name: str):
    """(centres (K, 2), std) of a mixture data set's modes, or None for the others."""
    if name == "8gaussians":
        r = 1.0 / math.sqrt(2.0)
        c = 5.0 * jnp.array([(1, 0), (-1, 0), (0, 1), (0, -1), (r, r), (-r, r), (r, -r), (-r, -r)])
        return c, 0.1**0.25
    if name in ("ring", "tong_8gaussians"):
        radius, std = (4.0, 0.3) if name == "ring" else (5.0, 1.0)
        ang = 2 * math.pi * jnp.arange(8) / 8
        return radius * jnp.stack([jnp.cos(ang), jnp.sin(ang)], -1), std
    if name == "25gaussians":
        c = jnp.arange(25)
        return 2.0 * jnp.stack([c // 5 - 2, c % 5 - 2], -1).astype(jnp.float32), 0.2
    return None


def mode_statistics(x, name: str) -> dict | None:
    """Mode coverage of samples ``x`` on a mixture data set (None for the others).

    Each point goes to its nearest centre. Returns the fraction per mode, the fraction of
    points within 3 standard deviations of their centre, the number of modes holding
    at least a fifth of their share of such points ("covered"), and the total-variation
    distance between the mode weights (of all points) and the data's equal weights.
    """
    mc = mode_centers(name)
    if mc is None:
        return None
    import numpy as np

    centers, std = np.asarray(mc[0]), float(mc[1])
    x = np.asarray(x)
    d2 = np.sum((x[:, None, :] - centers[None]) ** 2, -1)
    nearest = d2.argmin(1)
    close = np.sqrt(d2.min(1)) <= 3.0 * std
    k = len(centers)
    frac = np.bincount(nearest, minlength=k) / len(x)
    close_frac = np.bincount(nearest[close], minlength=k) / len(x)
    return {
        "mode_fractions": frac.tolist(),
        "min_mode_fraction": float(frac.min()),
        "max_mode_fraction": float(frac.max()),
        "within_3std": float(close.mean()),
        "modes_covered": int(np.sum(close_frac >= 0.2 / k)),
        "num_modes": k,
        "mode_tv": float(0.5 * np.abs(frac - 1.0 / k).sum()),
    }


def reference_set(name: str, n: int, seed: int = 12345):
    """A fixed evaluation set: ``n`` points, equal counts per mode, from a fixed seed."""
    return get_dataset(name).sample(jax.random.key(seed), n, stratified=True)
