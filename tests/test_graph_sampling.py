"""The graph samplers (GDSS's PC and S4, ``diffalign.sampling.graph``) driven by exact scores, and the
sampler / predictor / corrector registries.

Target: X entries i.i.d. N(MX, SX^2) on real nodes; A's upper-triangle entries between real nodes
i.i.d. N(MA, SA^2), symmetric, zero diagonal. Its perturbed marginal at t is Gaussian per entry,
score -(v - alpha_t m) / (alpha_t^2 s^2 + sigma_t^2).

What the old sampler (``graphs/sampling.py``, before the move) gave on exactly these runs:
* sub-VP, PC reverse + Langevin: X var 0.0706, A var 0.0480 (targets 0.09, 0.0625: -22%, -24%),
  because it used VP's DDPM discretisation for sub-VP;
* sub-VP, S4: X var 0.2011, A var 0.162 (+123%, +160%): VP's transition std for sub-VP;
* VE(sigma_max=5), zero score: X var 28.4, A var 28.7 (expected 52.7): a unit-variance prior.
VP and VE numbers are unchanged by the move (bit-identical samples on the same keys).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffalign.graphs.system import GraphSDE
from diffalign.paths import Predictor
from diffalign.sampling import (
    SAMPLERS,
    graph,
    predictors,
    register_corrector,
    register_predictor,
    register_sampler,
    sample,
)
from diffalign.sampling.api import SAMPLER_REGISTRY
from diffalign.sde import VESDE, VPSDE, SubVPSDE

NODES, FEAT, B = 6, 3, 2000
MX, SX = 0.5, 0.3
MA, SA = -0.4, 0.25
SDES = {
    "vp": VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": SubVPSDE(beta_min=0.1, beta_max=20.0),
    # sigma_min small against SX, SA: the end of the chain adds sigma_min^2 (<= 0.2% of the variance)
    "ve": VESDE(sigma_min=0.01, sigma_max=5.0),
}


def flags_for(b):
    """Graphs of 4, 5 and 6 real nodes (padding to 6)."""
    sizes = 4 + np.arange(b) % 3
    return jnp.asarray((np.arange(NODES)[None] < sizes[:, None]).astype(np.float32))


def exact_scores(gsde):
    def entry_score(sde, v, t, m, s):
        a, sig = sde.coeffs(t)
        a, sig = a[:, None, None], sig[:, None, None]
        return -(v - a * m) / (a**2 * s**2 + sig**2)

    def score_x(x, adj, fl, t):
        return entry_score(gsde.sde_x, x, t, MX, SX) * fl[..., None]

    def score_a(x, adj, fl, t):
        mask = fl[:, :, None] * fl[:, None, :] * (1.0 - jnp.eye(fl.shape[-1]))
        return entry_score(gsde.sde_a, adj, t, MA, SA) * mask

    return score_x, score_a


def real_entries(x, a, fl):
    x, a, fl = map(np.asarray, (x, a, fl))
    iu = np.triu_indices(NODES, 1)
    pair = (fl[:, :, None] * fl[:, None, :])[:, iu[0], iu[1]] > 0
    return x[fl > 0], a[:, iu[0], iu[1]][pair]


def assert_moments(v, m, s, name):
    """Mean within 4 standard errors + 1% of s; variance within 4 standard errors (sqrt(2/n)
    relative) + 3%: the fixed-step chains' discretisation error and the unadjusted Langevin
    corrector's bias (about snr^2 relative), measured at most 2.1% (4.1% for S4 at snr 0.05)."""
    n = v.size
    assert abs(v.mean() - m) <= 4 * s / np.sqrt(n) + 0.01 * s, (name, v.mean(), m)
    assert abs(v.var() / s**2 - 1) <= 4 * np.sqrt(2 / n) + 0.03, (name, v.var(), s**2)


@pytest.mark.parametrize("kind", list(SDES))
@pytest.mark.parametrize("solver,predictor,corrector",
                         [("pc", "reverse", "langevin"), ("pc", "euler", "none"), ("s4", "euler", "langevin")])
def test_graph_samplers_reproduce_a_gaussian_target(kind, solver, predictor, corrector):
    """300 steps, 2000 graphs; snr 0.1 and scale_eps 1 (a smaller scale_eps is not an exact
    Langevin chain)."""
    gsde = GraphSDE(SDES[kind], SDES[kind], num_scales=300)
    sx, sa = exact_scores(gsde)
    fl = flags_for(B)
    x, a = jax.jit(lambda k: graph.sample_graphs(k, gsde, sx, sa, fl, FEAT, solver=solver, predictor=predictor,
                                                 corrector=corrector, snr=0.1, scale_eps=1.0))(jax.random.key(0))
    np.testing.assert_array_equal(a, jnp.swapaxes(a, 1, 2))
    assert float(jnp.abs(graph.mask_adj(a, 1 - fl)).max()) == 0.0 and float(jnp.abs(graph.mask_x(x, 1 - fl)).max()) == 0.0
    xe, ae = real_entries(x, a, fl)
    assert_moments(xe, MX, SX, "X")
    assert_moments(ae, MA, SA, "A")


def test_ve_prior_has_std_sigma_max():
    """With a zero score, Euler without a corrector only adds noise: the returned mean has variance
    prior_std^2 + h sum_{k < N-1} g(t_k)^2, exactly (52.7 here; the old unit prior gave 28.4 and 28.7)."""
    sde = SDES["ve"]
    gsde = GraphSDE(sde, sde, num_scales=50)
    fl = flags_for(1000)
    x, a = graph.sample_graphs(jax.random.key(1), gsde, lambda x, a, f, t: jnp.zeros_like(x),
                               lambda x, a, f, t: jnp.zeros_like(a), fl, FEAT, predictor="euler", corrector="none")
    ts = np.linspace(1.0, gsde.sample_eps, gsde.num_scales)[:-1]
    expected = sde.sigma_max**2 + np.sum(np.asarray(sde.diffusion(jnp.asarray(ts))) ** 2) / gsde.num_scales
    for v in real_entries(x, a, fl):
        assert abs(v.var() / expected - 1) <= 4 * np.sqrt(2 / v.size), (v.var(), expected)
    px, pa = graph.graph_prior(jax.random.key(2), jax.random.key(3), sde, SDES["vp"], fl, FEAT)
    assert abs(real_entries(px, pa, fl)[0].std() / sde.sigma_max - 1) < 0.03
    assert abs(real_entries(px, pa, fl)[1].std() - 1) < 0.03


@pytest.fixture
def clean_registries():
    """Undo the test's registrations."""
    regs = (SAMPLER_REGISTRY, predictors.PREDICTOR_REGISTRY, predictors.CORRECTOR_REGISTRY)
    before = [set(r.names) for r in regs]
    yield
    for r, names in zip(regs, before):
        for name in set(r.names) - names:
            r.unregister(name)


def test_a_user_sampler_is_reachable_through_sample(clean_registries):
    @register_sampler("test_prior_mean")
    def prior_mean(key, pred, x_T, steps, **kwargs):
        return jnp.zeros_like(x_T) + kwargs.get("shift", 0.0), 0

    assert "test_prior_mean" in SAMPLERS and SAMPLERS[-1] == "test_prior_mean"
    pred = Predictor(lambda x, t: x, VPSDE(), "eps")
    x, nfe = sample(jax.random.key(0), pred, jnp.ones((4, 2)), "test_prior_mean", shift=2.0)
    np.testing.assert_array_equal(x, 2.0 * np.ones((4, 2)))
    assert nfe == 0
    with pytest.raises(ValueError, match=r"unknown sampler 'nope'; expected one of \('euler', .*'test_prior_mean'\)"):
        sample(jax.random.key(0), pred, jnp.ones((4, 2)), "nope")
    with pytest.raises(ValueError, match="already registered"):
        register_sampler("euler")(prior_mean)


def test_a_user_predictor_and_corrector_are_reachable_through_the_graph_sampler(clean_registries):
    calls = []

    @register_predictor("test_fill")
    def fill(sde, x, score, t, noise, *, h, n):
        return jnp.full_like(x, 2.0), jnp.full_like(x, 3.0)

    @register_corrector("test_count")
    def count(sde, x, score, t, noise, *, n, snr, scale_eps):
        calls.append(n)
        return x, x

    assert graph.PREDICTORS == ("euler", "reverse", "test_fill") and "test_count" in graph.CORRECTORS
    assert ("",) + graph.PREDICTORS == ("", "euler", "reverse", "test_fill")  # as experiments build choices
    gsde = GraphSDE(SDES["vp"], SDES["ve"], num_scales=4)
    sx, sa = exact_scores(gsde)
    fl = flags_for(6)
    x, a = graph.sample_graphs(jax.random.key(0), gsde, sx, sa, fl, FEAT, predictor="test_fill", corrector="test_count")
    np.testing.assert_array_equal(x, 3.0 * graph.mask_x(jnp.ones_like(x), fl))  # the final means, masked
    np.testing.assert_array_equal(a, 3.0 * graph.mask_adj(jnp.ones_like(a), fl))
    assert calls == [4, 4]  # traced once by the scan, for X and for A
    assert graph.evaluations_per_step("pc", "test_count") == 4
    for kw, msg in [({"predictor": "nope"}, r"unknown predictor 'nope'; expected one of \('euler', 'reverse', 'test_fill'\)"),
                    ({"corrector": "nope"}, r"unknown corrector 'nope'; expected one of \('langevin', 'none', 'test_count'\)"),
                    ({"solver": "nope"}, r"unknown graph solver 'nope'; expected one of \('pc', 's4'\)")]:
        with pytest.raises(ValueError, match=msg):
            graph.sample_graphs(jax.random.key(0), gsde, sx, sa, fl, FEAT, **kw)
