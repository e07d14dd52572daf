"""Network building blocks against their textbook forms."""

import jax
import jax.numpy as jnp
import numpy as np

from diffalign.models.activations import elu, selu


def test_exp_form_activations_match_jax_within_rounding_and_keep_finite_gradients():
    x = jnp.concatenate([jnp.linspace(-30.0, 30.0, 60_001), jnp.array([-1e-7, 0.0, 1e-7, 500.0, -500.0])])
    for ours, textbook in ((selu, jax.nn.selu), (elu, jax.nn.elu)):
        y, want = np.asarray(ours(x)), np.asarray(textbook(x))
        # exp(x) - 1 against expm1: a few float32 ulps of the larger of |result| and 1 (cancellation near 0)
        np.testing.assert_allclose(y, want, rtol=2e-7, atol=3e-7)
        g = np.asarray(jax.vmap(jax.grad(ours))(x))
        assert np.all(np.isfinite(g)), "the discarded branch leaked inf * 0 into the gradient"
        np.testing.assert_allclose(g, np.asarray(jax.vmap(jax.grad(textbook))(x)), rtol=1e-6, atol=3e-7)
    assert selu(jnp.array(1.0)) == jnp.float32(1.0507009873554805)
    np.testing.assert_allclose(float(selu(jnp.array(-jnp.inf))), -1.7580993408473766, rtol=1e-7)
