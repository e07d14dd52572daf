"""Str2Str's ensemble metrics on C-alpha coordinates, against hand-computed values and scipy."""

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import jensenshannon

from diffalign.metrics.conformations import (
    TICA, ensemble_metrics, js_distance, js_pwd, js_rg, js_tic, radius_of_gyration, val_bond, val_clash,
)


def _line(n_res, spacing):
    ca = np.zeros((n_res, 3))
    ca[:, 0] = spacing * np.arange(n_res)
    return ca


def test_validity_fractions_on_hand_made_chains():
    good = _line(6, 3.8)
    clash = good.copy()
    clash[5] = clash[2] + [0.0, 2.9, 0.0]  # residues 2 and 5 at 2.9 A
    broken = good.copy()
    broken[3:] += [1.0, 0.0, 0.0]  # one adjacent distance 4.8 A
    ens = np.stack([good, clash, broken, good])
    assert val_clash(ens) == 0.75
    assert val_clash(ens, threshold=2.0) == 1.0
    assert val_bond(ens, reference=good[None]) == 0.5  # the clash moved residue 5 far from 4, too
    assert val_bond(good[None], reference=good[None]) == 1.0


def test_js_distance_is_scipys_and_radius_of_gyration_is_exact():
    rng = np.random.default_rng(0)
    p, q = rng.random(50), rng.random(50)
    assert js_distance(p, q) == pytest.approx(float(jensenshannon(p, q)), rel=1e-10)
    assert js_distance(p, p) == pytest.approx(0.0, abs=1e-7)
    # two points at +-a: Rg = a; a line of n points spaced d: Rg^2 = d^2 (n^2 - 1) / 12
    assert radius_of_gyration(np.array([[[1.0, 0, 0], [-1.0, 0, 0]]]))[0] == pytest.approx(1.0)
    assert radius_of_gyration(_line(7, 3.8)[None])[0] == pytest.approx(np.sqrt(3.8**2 * 48 / 12))


def test_js_of_an_ensemble_against_itself_and_a_shifted_one():
    rng = np.random.default_rng(1)
    ref = _line(8, 3.8)[None] + 0.5 * rng.standard_normal((2000, 8, 3))
    same = _line(8, 3.8)[None] + 0.5 * rng.standard_normal((2000, 8, 3))
    stretched = 1.3 * same
    assert js_pwd(same, ref) < 0.1 < js_pwd(stretched, ref)
    assert js_rg(same, ref) < 0.1 < js_rg(stretched, ref)
    # values outside the reference's range leave the histogram (np.histogram); with every value outside,
    # the +1e-6 pseudocount makes it uniform: a quirk of the published formula, kept
    far = js_rg(10 * same, ref)
    uniform = js_distance(np.ones(50), np.histogram(radius_of_gyration(ref), bins=50)[0] + 1e-6)
    assert far == pytest.approx(uniform, rel=1e-9)


def test_tica_finds_the_slow_direction_and_solves_the_generalised_eigenproblem():
    rng = np.random.default_rng(2)
    t, lag = 20_000, 20
    z = np.zeros((t, 2))
    for k in range(1, t):  # a slow (rho 0.995) and a fast (rho 0.5) AR(1) coordinate
        z[k] = [0.995, 0.5] * z[k - 1] + rng.standard_normal(2)
    mix = np.array([[1.0, 2.0], [0.5, -1.0]])
    x = np.c_[z @ mix.T, rng.standard_normal(t)]  # plus a white-noise feature
    tica = TICA(lagtime=lag, dim=2).fit(x)
    assert tica.eigenvalues[0] == pytest.approx(0.995**lag, abs=0.05)
    assert abs(np.corrcoef(tica.transform(x)[:, 0], z[:, 0])[0, 1]) > 0.99
    # against scipy's generalised symmetric eigensolver on the same symmetrised covariances
    x0, xt = x[:-lag] - tica.mean, x[lag:] - tica.mean
    c00 = (x0.T @ x0 + xt.T @ xt) / (2 * len(x0))
    c0t = (x0.T @ xt + xt.T @ x0) / (2 * len(x0))
    lam = scipy.linalg.eigh(c0t, c00, eigvals_only=True)[::-1]
    np.testing.assert_allclose(tica.eigenvalues, lam, rtol=1e-8)


def test_tica_ranks_components_by_the_magnitude_of_their_eigenvalue():
    """As deeptime: a mode flipping sign every frame (lambda near -1 at odd lags) outranks a slower
    positive one."""
    rng = np.random.default_rng(4)
    t = 20_000
    z = np.zeros((t, 3))
    for k in range(1, t):
        z[k] = [-0.99, 0.9, 0.0] * z[k - 1] + rng.standard_normal(3)
    tica = TICA(lagtime=1, dim=2).fit(z)
    assert tica.eigenvalues[0] == pytest.approx(-0.99, abs=0.02) and tica.eigenvalues[1] == pytest.approx(0.9, abs=0.02)


def test_js_tic_separates_a_one_state_ensemble_from_a_two_state_reference():
    rng = np.random.default_rng(3)
    a = _line(8, 3.8)
    b = a.copy()
    b[4:, 1] += 3.0  # a second state: the chain's end bent away
    state = np.zeros(6000, int)
    for k in range(1, 6000):  # slow switching: the reference trajectory's slow mode
        state[k] = state[k - 1] if rng.random() > 0.005 else 1 - state[k - 1]
    ref = np.where(state[:, None, None] == 0, a, b) + 0.3 * rng.standard_normal((6000, 8, 3))
    both = np.where(rng.random(3000)[:, None, None] < state.mean(), b, a) + 0.3 * rng.standard_normal((3000, 8, 3))
    only_a = a + 0.3 * rng.standard_normal((3000, 8, 3))
    assert js_tic(both, ref) < 0.15 < js_tic(only_a, ref)
    m = ensemble_metrics(both, ref)
    assert set(m) == {"val_clash", "val_bond", "js_pwd", "js_rg", "js_tic"}


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="shape"):
        val_clash(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        val_clash(np.full((2, 4, 3), np.nan))
    with pytest.raises(ValueError, match="residues"):
        js_pwd(np.zeros((2, 5, 3)), np.zeros((2, 6, 3)))
    with pytest.raises(ValueError, match="residues"):
        js_tic(np.zeros((30, 5, 3)), np.zeros((30, 6, 3)))
    with pytest.raises(ValueError, match="residues"):
        val_bond(np.zeros((2, 5, 3)), np.zeros((2, 6, 3)))
    with pytest.raises(ValueError, match="at least 4 residues"):
        js_pwd(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="at least 2 residues"):
        val_clash(np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match="T > lagtime"):
        TICA(lagtime=20).fit(np.zeros((10, 3)))
