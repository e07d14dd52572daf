"""DMD2 on the GDSS system: a trained graph score model becomes a one- or few-step graph generator.

No published system does this; it is the DMD2 recipe (``diffalign.distill``) carried over to
GDSS's pair of SDEs. The generator is a copy of the teacher's two networks: from GDSS's prior
draw (X_1, A_1) (masked Gaussian node features, symmetric Gaussian adjacency with a zero
diagonal) it predicts the clean (X, A) by Tweedie's formula, mu = (v + sigma_t^2 s(v)) / alpha_t,
at t = 1; a K-step generator re-noises its prediction to the next grid time with fresh noise
(DMD2's backward simulation). The fake score, another copy of the teacher, is trained with
GDSS's own denoising loss on the generator's (detached) graphs; the generator's gradient on its
(X, A) is DMD2's (mu_fake - mu_real) / mean|v - mu_real| per graph and component, with both
components noised at one t ~ U[0.02, 0.98] through each SDE's marginal. Node counts are drawn
from the training graphs, as GDSS samples.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..training import Group, TrainState, init_group_state, make_group_step

from ..distill.objectives import dm_gradient, matching_loss
from .gdss import GDSSModel
from .networks import mask_adj, mask_x
from ..sampling.graph import sym_noise, x_noise
from .system import gdss_loss, perturb, score_from_output


def _b(v, x):
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


@dataclasses.dataclass(frozen=True)
class GraphDistiller:
    """DMD2 for a GDSS model; ``make_step`` works with ``diffalign.training.train``.

    Args:
      model: the GDSS networks and config (``graphs.gdss.build_model``).
      teacher: the trained parameters ``{"x": ..., "a": ...}`` (frozen).
      train_flags: node flags of the training graphs (node counts are drawn from them).
      student_steps: K, the generator's steps (network evaluations of each of X and A).
      fake_updates: fake-score updates per generator update (DMD2: 5).
    """

    model: GDSSModel
    teacher: Any
    train_flags: Any
    generator_optimizer: optax.GradientTransformation
    fake_optimizer: optax.GradientTransformation
    student_steps: int = 1
    fake_updates: int = 5
    batch_size: int = 32
    t_range: tuple[float, float] = (0.02, 0.98)
    ema_decay: float = 0.0

    def __post_init__(self):
        if not isinstance(self.student_steps, int) or self.student_steps < 1:
            raise ValueError(f"student_steps must be a positive integer, got {self.student_steps!r}")
        if self.fake_updates < 1:
            raise ValueError(f"fake_updates must be >= 1, got {self.fake_updates}")

    @property
    def nfe(self) -> int:
        return self.student_steps

    @property
    def grid(self):
        return jnp.linspace(1.0, 0.0, self.student_steps + 1)

    def init(self, key) -> TrainState:
        """Parameter groups ``fake`` and ``generator`` (one expert, stacked), both the teacher."""
        experts = jax.tree.map(lambda p: p[None], self.teacher)
        return init_group_state({"fake": self.teacher, "generator": experts}, self._groups(), key)

    @staticmethod
    def generator_params(state: TrainState):
        return state.eval_params()["generator"]

    # -- the process --------------------------------------------------------------------------
    def denoise(self, params, x, a, flags, t):
        """Tweedie's E[(X0, A0) | (X_t, A_t)] under the score model ``params``."""
        gsde, m = self.model.gsde, self.model
        ax, sx = gsde.sde_x.coeffs(t)
        aa, sa = gsde.sde_a.coeffs(t)
        score_x = score_from_output(gsde.sde_x, m.apply_x(params["x"], x, a, flags), t)
        score_a = score_from_output(gsde.sde_a, m.apply_a(params["a"], x, a, flags), t)
        mu_x = mask_x((x + _b(sx**2, x) * score_x) / _b(ax, x), flags)
        mu_a = mask_adj((a + _b(sa**2, a) * score_a) / _b(aa, a), flags)
        return mu_x, mu_a

    def prior(self, key, flags):
        kx, ka = jax.random.split(key)
        n, f = flags.shape[1], self.model.config.max_feat
        return x_noise(kx, (flags.shape[0], n, f), flags), sym_noise(ka, (flags.shape[0], n, n), flags)

    def flags(self, key, n: int):
        return jnp.asarray(self.train_flags)[jax.random.randint(key, (n,), 0, np.shape(self.train_flags)[0])]

    def rollout(self, experts, key, flags, upto: int | None = None):
        """(inputs, times) of each step from the prior, and the final (X, A), re-noising between steps."""
        params = jax.tree.map(lambda p: p[0], experts)
        gsde, ts = self.model.gsde, self.grid
        x, a = self.prior(jax.random.fold_in(key, 1_000_003), flags)
        inputs = [(x, a)]
        for k in range(self.student_steps if upto is None else upto):
            t = jnp.full((flags.shape[0],), ts[k])
            mx, ma = self.denoise(params, x, a, flags, t)
            if k + 1 == self.student_steps:
                x, a = mx, ma
            else:
                tn = jnp.full((flags.shape[0],), ts[k + 1])
                x, a, _, _ = perturb(gsde, jax.random.fold_in(key, k), mx, ma, flags, tn)
            inputs.append((x, a))
        return inputs

    def sample(self, experts, key, flags):
        """Generated (X, A) (continuous; quantize A at 0.5 as GDSS does)."""
        return self.rollout(experts, key, flags)[-1]

    # -- the losses ---------------------------------------------------------------------------
    def _generated(self, experts, key, flags, with_grad):
        """The prediction at a backward-simulated step k ~ U{0..K-1} (one k per batch)."""
        k_r, k_k = jax.random.split(key)
        ts = self.grid
        frozen = jax.lax.stop_gradient(experts)
        inputs = self.rollout(frozen, k_r, flags, upto=self.student_steps - 1)
        k = jax.random.randint(k_k, (), 0, self.student_steps)
        xs = jnp.stack([i[0] for i in inputs])
        as_ = jnp.stack([i[1] for i in inputs])
        x_in, a_in = jax.lax.stop_gradient(xs[k]), jax.lax.stop_gradient(as_[k])
        params = jax.tree.map(lambda p: p[0], experts if with_grad else frozen)
        return self.denoise(params, x_in, a_in, flags, jnp.full((flags.shape[0],), ts[k]))

    def fake_loss(self, params, batch, key, aux=None):
        """GDSS's denoising loss of the fake score on fresh (detached) generator graphs."""
        del batch, aux
        kf, kg, kl = jax.random.split(key, 3)
        flags = self.flags(kf, self.batch_size)
        x0, a0 = jax.lax.stop_gradient(self._generated(params["generator"], kg, flags, False))
        loss = gdss_loss(self.model.gsde, self.model.apply_x, self.model.apply_a)
        return loss(params["fake"], {"x": x0, "adj": a0, "flags": flags}, kl)

    def generator_loss(self, params, batch, key, aux=None):
        del batch, aux
        experts, fake = params["generator"], params["fake"]
        kf, kg, kt, kn = jax.random.split(key, 4)
        flags = self.flags(kf, self.batch_size)
        x, a = self._generated(experts, kg, flags, True)
        lo, hi = self.t_range
        t = jax.random.uniform(kt, (self.batch_size,), minval=lo, maxval=hi)
        xt, at, _, _ = perturb(self.model.gsde, kn, jax.lax.stop_gradient(x), jax.lax.stop_gradient(a), flags, t)
        rx, ra = self.denoise(self.teacher, xt, at, flags, t)
        fx, fa = self.denoise(fake, xt, at, flags, t)
        sg = jax.lax.stop_gradient
        n = jnp.sum(flags, axis=-1)  # normalise over real entries: padding would shrink the mean
        gx = mask_x(dm_gradient(sg(fx), sg(rx), sg(x), n * x.shape[-1]), flags)
        ga = mask_adj(dm_gradient(sg(fa), sg(ra), sg(a), n * (n - 1)), flags)
        lx, la = matching_loss(x, gx), matching_loss(a, ga)
        return {"per_example": lx + la, "loss_dm_x": lx, "loss_dm_a": la}

    def _groups(self) -> dict:
        return {
            "fake": Group(self.fake_loss, self.fake_optimizer, updates_per_step=self.fake_updates),
            "generator": Group(self.generator_loss, self.generator_optimizer, ema_decay=self.ema_decay),
        }

    def make_step(self) -> Callable:
        """``fake_updates`` fake-score updates, then one generator update (``make_group_step``)."""
        return make_group_step(self._groups())
