"""Symmetrical Flow Matching (diffalign.symmflow, `diffalign symmflow`) against exact references.

The references: the paths' time derivatives (the loss's targets), the closed-form optimal
velocity of a Gaussian class model (its one-step classification is the Bayes posterior; its
generation of one class is an affine map), the paper's own parametrisation at s = 1 - t, and
the experiment contract under --smoke. The learning bars (moons >= 95 % one-step accuracy,
digits) are trained here; the three-seed ones are in the slow tier.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffalign import symmflow as S
from clitools import cli, read

SIG = S.SIGMA_MIN

def _draws(key, n=64, dx=3, dm=2):
    k = jax.random.split(key, 5)
    return (jax.random.normal(k[0], (n, dx)), jax.random.normal(k[1], (n, dm)), jax.random.normal(k[2], (n, dx)),
            jax.random.normal(k[3], (n, dm)), jax.random.uniform(k[4], (n,)))


# ----------------------------------------------------------------------------- paths and loss


def test_targets_are_the_time_derivative_of_the_paths_and_match_the_paper():
    x, m, ex, em, t = _draws(jax.random.key(0))
    h = 1e-2  # the paths are linear in t: central differences are exact up to rounding
    xp, mp = S.interpolate(x, m, ex, em, t + h)
    xm, mm = S.interpolate(x, m, ex, em, t - h)
    ux, um = S.targets(x, m, ex, em)
    np.testing.assert_allclose((xp - xm) / (2 * h), ux, atol=2e-4)
    np.testing.assert_allclose((mp - mm) / (2 * h), um, atol=2e-4)
    # the reference code's paths at its time s = 1 - t, and its targets = minus ours
    s = (1.0 - t)[:, None]
    x_t, m_t = S.interpolate(x, m, ex, em, t)
    np.testing.assert_allclose(x_t, (1 - (1 - SIG) * s) * ex + s * x, atol=1e-6)
    np.testing.assert_allclose(m_t, (1 - (1 - SIG) * s) * m + s * em, atol=1e-6)
    np.testing.assert_allclose(ux, -(x - (1 - SIG) * ex), atol=1e-6)
    np.testing.assert_allclose(um, -(em - (1 - SIG) * m), atol=1e-6)
    # endpoints: t = 1 is [noise, mask] (generation starts there), t = 0 is [image, noise]
    one, zero = jnp.ones_like(t), jnp.zeros_like(t)
    x1, m1 = S.interpolate(x, m, ex, em, one)
    np.testing.assert_allclose(x1, ex, atol=1e-6)
    np.testing.assert_allclose(m1, m, atol=1e-6)
    x0, m0 = S.interpolate(x, m, ex, em, zero)
    np.testing.assert_allclose(x0, x + SIG * ex, atol=1e-6)
    np.testing.assert_allclose(m0, em + SIG * m, atol=1e-6)


def _oracle(x, m, sigma_min=SIG):
    """A 'network' that recovers the noise from z_t (knowing the batch) and returns the target."""
    def apply_fn(params, z, t):
        (a, b, c, d), _ = S.coefficients(t[:, None], sigma_min)
        ex = (z[:, : x.shape[1]] - a * x) / b
        em = (z[:, x.shape[1]:] - c * m) / d
        return jnp.concatenate(S.targets(x, m, ex, em, sigma_min), -1) + params
    return apply_fn


def test_loss_is_zero_at_the_conditional_target_and_weights_its_two_terms():
    emb = S.label_embeddings(3)
    y = jax.random.randint(jax.random.key(1), (64,), 0, 3)
    x = jax.random.normal(jax.random.key(2), (64, 2, 2))  # images of any shape are flattened
    m = emb[y]
    key = jax.random.key(3)
    out = S.symmflow_loss(_oracle(x.reshape(64, -1), m), emb)(0.0, {"x": x, "y": y}, key)
    assert out["per_example"].shape == out["t"].shape == (64,)
    assert float(jnp.max(out["per_example"])) < 1e-4
    # the same with the masks given directly
    out_m = S.symmflow_loss(_oracle(x.reshape(64, -1), m))(0.0, {"x": x, "m": m}, key)
    np.testing.assert_allclose(out_m["per_example"], out["per_example"], atol=1e-7)
    # an offset of 1 on every output costs 1 per dimension in both terms: lambda * 1 + (1 - lambda) * 1
    for lam in (0.0, 0.3, 1.0):
        o = S.symmflow_loss(_oracle(x.reshape(64, -1), m), emb, image_weight=lam)(1.0, {"x": x, "y": y}, key)
        np.testing.assert_allclose(o["per_example"], lam * o["loss_x"] + (1 - lam) * o["loss_m"], rtol=1e-6)
        np.testing.assert_allclose(o["loss_x"], 1.0, atol=1e-3)
        np.testing.assert_allclose(o["loss_m"], 1.0, atol=1e-3)
    # image_weight = 1: the mask output does not matter
    def mask_off(params, z, t):
        v = _oracle(x.reshape(64, -1), m)(params, z, t)
        return v.at[:, 4:].add(5.0)
    o = S.symmflow_loss(mask_off, emb, image_weight=1.0)(0.0, {"x": x, "y": y}, key)
    assert float(jnp.max(o["per_example"])) < 1e-4 and float(jnp.min(o["loss_m"])) > 20


def test_mask_dequantisation_stays_in_its_cell():
    m = jnp.tile(jnp.array([[-1.0, 1.0]]), (20_000, 1))
    q = S.dequantize_mask(jax.random.key(0), m, 0.2)
    assert float(jnp.max(jnp.abs(q - m))) <= 0.1 + 1e-6
    np.testing.assert_allclose(jnp.mean(q - m, 0), 0.0, atol=3e-3)
    np.testing.assert_allclose(jnp.std(q - m, 0), 0.2 / np.sqrt(12), rtol=3e-2)
    assert S.dequantize_mask(jax.random.key(0), m, 0.0) is m


def test_label_embeddings_decode_to_their_class():
    e2 = S.label_embeddings(2, 3.0)
    np.testing.assert_array_equal(e2, [[-3.0], [3.0]])
    np.testing.assert_array_equal(S.decode_labels(jnp.array([[-0.1], [0.2], [-7.0]]), e2), [0, 1, 0])
    e5 = S.label_embeddings(5, 2.0, signed=True)
    assert e5.shape == (5, 5) and set(np.unique(e5).tolist()) == {-2.0, 2.0}
    noisy = e5 + 0.5 * jax.random.normal(jax.random.key(0), e5.shape)
    np.testing.assert_array_equal(S.decode_labels(noisy, e5), np.arange(5))


# ----------------------------------------------------------------------------- the exact Gaussian reference


def test_one_step_classification_of_the_exact_field_is_the_bayes_posterior():
    means = jnp.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # overlapping classes, std 1
    for emb in (S.label_embeddings(3), S.label_embeddings(3, 2.0, signed=True)):
        fn = S.gaussian_class_velocity(means, 1.0, emb)
        x = 1.5 * jax.random.normal(jax.random.key(3), (500, 2))
        y_hat, m_hat = S.classify(jax.random.key(4), fn, x, emb, steps=1)
        post = jax.nn.softmax(-0.5 * jnp.sum((x[:, None] - means[None]) ** 2, -1), 1)
        np.testing.assert_allclose(m_hat, post @ emb, atol=3e-3)  # E[m | x], up to sigma_min
        np.testing.assert_array_equal(y_hat, jnp.argmax(post, 1))  # the Bayes classifier
        # exactly: z(0) = [x, eps_m] is read as x_0 = x, m_0 = eps_m = sigma_min m + noise
        eps_m = jax.random.normal(jax.random.key(4), (500, emb.shape[1]))  # classify's own draw
        logp = (-0.5 * jnp.sum((x[:, None] - means[None]) ** 2, -1) / (1 + SIG**2)
                - 0.5 * jnp.sum((eps_m[:, None] - SIG * emb[None]) ** 2, -1))
        np.testing.assert_allclose(m_hat, jax.nn.softmax(logp, 1) @ emb, atol=2e-5)
    # two classes, +-1 embedding: m_hat = p(1 | x) - p(0 | x), its sign the Bayes decision
    emb = S.label_embeddings(2)
    fn = S.gaussian_class_velocity(means[:2], 1.0, emb)
    x = 1.5 * jax.random.normal(jax.random.key(5), (500, 2))
    y_hat, m_hat = S.classify(jax.random.key(6), fn, x, emb)
    p1 = jax.nn.sigmoid(2.0 * x[:, 0])  # log-odds of N(+1, 1) vs N(-1, 1) in the first coordinate
    np.testing.assert_allclose(m_hat[:, 0], 2 * p1 - 1, atol=1e-3)
    clear = np.abs(2 * p1 - 1) > 1e-3  # sigma_min moves the boundary by ~1e-4
    np.testing.assert_array_equal(y_hat[clear], (x[clear, 0] > 0).astype(int))


def test_generation_of_one_gaussian_class_is_the_closed_form_map():
    mu, std = jnp.array([[2.0, -1.0]]), 0.5
    fn = S.gaussian_class_velocity(mu, std, jnp.array([[1.0]]))
    m = jnp.ones((500, 1))
    eps = jax.random.normal(jax.random.key(0), (500, 2))  # generate's own draw of the image noise
    exact = mu + np.sqrt(std**2 + SIG**2) * eps  # the ODE of one Gaussian is affine
    for method, steps, tol in (("euler", 1000, 6e-3), ("heun", 100, 3e-4)):
        x = S.generate(jax.random.key(0), fn, m, 2, steps=steps, method=method)
        np.testing.assert_allclose(x, exact, atol=tol)
    x = S.generate(jax.random.key(0), fn, m, 2, steps=10, method="euler")
    assert float(jnp.max(jnp.abs(x - exact))) > 1e-2  # the tolerance above is not vacuous


def test_generation_of_the_exact_field_is_class_conditional_when_labels_are_strong():
    """With the exact joint field, class-k trajectories stay in class k only as long as the
    label outweighs the image: strong embeddings (scale 3) give p(x | k) (< 0.1 % leak), weak ones
    (scale 1) leak a few per cent into other classes (the flow transports the joint, not each
    conditional)."""
    means, std, n = jnp.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 4.0]]), 0.5, 2000
    y = jnp.repeat(jnp.arange(3), n)
    leak = {}
    for scale in (1.0, 3.0):
        emb = S.label_embeddings(3, scale)
        fn = S.gaussian_class_velocity(means, std, emb)
        x, y_hat = S.round_trip(jax.random.key(0), fn, y, emb, 2, gen_steps=50, method="heun")
        nearest = jnp.argmin(jnp.sum((x[:, None] - means[None]) ** 2, -1), 1)
        leak[scale] = float(jnp.mean(nearest != y))
        if scale == 3.0:
            assert leak[scale] < 1e-3 and float(jnp.mean(y_hat == y)) > 0.999
            for c in range(3):
                xc = np.asarray(x[(y == c) & (nearest == y)])
                np.testing.assert_allclose(xc.mean(0), means[c], atol=4 * std / np.sqrt(n))
                np.testing.assert_allclose(xc.std(0), std, rtol=0.06)
    assert leak[1.0] > 0.01


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_are_refused_clearly():
    fn = S.gaussian_class_velocity(jnp.zeros((2, 2)), 1.0, S.label_embeddings(2))
    with pytest.raises(ValueError, match="image_weight"):
        S.symmflow_loss(fn, image_weight=1.5)
    with pytest.raises(ValueError, match="sigma_min"):
        S.symmflow_loss(fn, sigma_min=-0.1)
    with pytest.raises(ValueError, match="mask_noise"):
        S.symmflow_loss(fn, mask_noise=-1.0)
    with pytest.raises(ValueError, match="embeddings must have shape"):
        S.symmflow_loss(fn, jnp.zeros(3))
    with pytest.raises(ValueError, match="needs the class embeddings"):
        S.symmflow_loss(lambda p, z, t: z)(0.0, {"x": jnp.zeros((4, 2)), "y": jnp.zeros(4, int)}, jax.random.key(0))
    with pytest.raises(TypeError, match="labels 'y' or masks 'm'"):
        S.symmflow_loss(lambda p, z, t: z)(0.0, {"x": jnp.zeros((4, 2))}, jax.random.key(0))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        S.generate(jax.random.key(0), fn, jnp.ones((3, 1)), 2, steps=0)
    with pytest.raises(ValueError, match="unknown integrator"):
        S.classify(jax.random.key(0), fn, jnp.ones((3, 2)), S.label_embeddings(2), method="rk4")
    with pytest.raises(ValueError, match="masks must have shape"):
        S.generate(jax.random.key(0), fn, jnp.ones(3), 2)
    with pytest.raises(ValueError, match="masks must have shape"):
        S.decode_labels(jnp.ones((3, 2)), S.label_embeddings(2))
    with pytest.raises(ValueError, match="num_classes"):
        S.label_embeddings(1)
    with pytest.raises(ValueError, match="agree in K"):
        S.gaussian_class_velocity(jnp.zeros((3, 2)), 1.0, S.label_embeddings(2))
    from diffalign.experiments.symmflow import Config

    with pytest.raises(ValueError, match="task"):
        Config(task="cifar")
    with pytest.raises(ValueError, match="seeds"):
        Config(seeds=())


# ----------------------------------------------------------------------------- learning and the CLI


def _fast_moons_config():
    from diffalign.experiments.symmflow import Config

    return dataclasses.replace(Config(), task="moons", moons_steps=1500, moons_width=64, moons_eval=500,
                               steps_per_call=500, gen_steps=10, cls_steps=4)


def test_moons_one_step_classification_reaches_95_percent():
    """The acceptance bar, one seed, a short run (the three-seed default run is in the slow tier)."""
    from diffalign.experiments.symmflow import moons_references, run_moons

    cfg = _fast_moons_config()
    m, _ = run_moons(cfg, 0)
    assert m["one_step_accuracy"] >= 0.95
    assert m["round_trip_accuracy"] >= 0.9
    floor = moons_references(cfg)["w2_floor_mean"]
    # this short run measures 2.7x the floor (seed 0); a mis-trained flow sits at W2 ~ 1-2. The
    # label-scale leak (W2 0.46 against 0.20 at full length) is the slow tier's 3x bar's job
    assert m["w2_mean"] < 4 * floor


def test_cli_smoke_keeps_the_contract(tmp_path):
    out = str(tmp_path / "run")
    p = cli("symmflow", "--out", out, "--smoke", "--task", "moons")
    assert "moons_one_step_accuracy=" in p.stdout
    r = read(out)
    assert r["experiment"] == "symmflow" and r["smoke"] is True
    assert r["config"]["task"] == "moons" and r["config"]["seeds"] == [0]
    assert {"jax", "flax", "optax"} <= set(r["versions"]) and r["timings"]["total_s"] > 0
    mo = r["metrics"]["moons"]
    for k in ("one_step_accuracy", "multi_step_accuracy", "round_trip_accuracy", "w2_mean"):
        assert np.isfinite(mo[k]) and mo[f"{k}_std"] == 0.0  # one seed under --smoke
    assert np.isfinite(mo["w2_floor_mean"]) and mo["w2_floor_mean"] > 0
    assert len(mo["w2_per_class"]) == 2 and len(mo["per_seed"]) == 1
    assert 0.0 <= mo["one_step_accuracy"] <= 1.0
    assert "digits" not in r["metrics"]
    assert os.path.exists(os.path.join(out, "moons_generated.png"))
    p = cli("symmflow", "--out", out, "--task", "cifar", check=False)
    assert p.returncode == 2 and "invalid choice: 'cifar'" in p.stderr


@pytest.mark.slow  # ~1 min
def test_cli_smoke_both_tasks(tmp_path):
    out = str(tmp_path / "run")
    cli("symmflow", "--out", out, "--smoke")
    r = read(out)
    d = r["metrics"]["digits"]
    assert len(d["frechet_per_class"]) == 10 and np.isfinite(d["frechet_mean"])
    assert 0.0 <= d["one_step_accuracy"] <= 1.0 and d["logreg_test_accuracy"] > 0.9
    assert os.path.exists(os.path.join(out, "digits_generated.png"))


@pytest.mark.slow  # ~1.5 min on 2 cores
def test_moons_default_run_over_three_seeds():
    from diffalign.experiments.symmflow import Config, moons_references, run_moons

    cfg = Config(task="moons")
    floor = moons_references(cfg)["w2_floor_mean"]
    for seed in cfg.seeds:
        m, _ = run_moons(cfg, seed)
        assert m["one_step_accuracy"] >= 0.95, (seed, m)
        assert m["round_trip_accuracy"] >= 0.95, (seed, m)
        assert m["w2_mean"] < 3 * floor, (seed, m, floor)


@pytest.mark.slow  # ~1.5 min on 2 cores
def test_digits_default_run_one_seed():
    from diffalign.data import digits as D
    from diffalign.experiments.symmflow import Config, digits_references, run_digits
    from diffalign.metrics.digits import DigitClassifier

    cfg = Config(task="digits")
    train_set, test_set = D.load_digits()
    clf = DigitClassifier(train_set["k"], train_set["y"]).predict
    ref = digits_references(train_set, test_set, clf)
    m, _ = run_digits(cfg, 0, train_set, test_set, clf)
    assert m["one_step_accuracy"] >= 0.93, m  # the logistic regression gets 0.96
    assert m["generated_class_accuracy_logreg"] >= 0.9, m
    assert m["round_trip_accuracy"] >= 0.9, m
    assert m["frechet_mean"] < 1.5 * ref["frechet_floor_mean"], (m, ref)
