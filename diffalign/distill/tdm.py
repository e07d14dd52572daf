"""Trajectory Distribution Matching (TDM): a deterministic K-step student matched step by step.

At a random step k the student's prediction x0_hat is pushed by the DMD gradient evaluated
inside the step's own interval (the student's next point x_{k+1}, re-noised to tau in (t_{k+1},
t_k]), through TDM's pseudo-Huber surrogate; one fake score for all intervals, trained with the
unbiased subinterval target from x_{k+1} (TDM's code uses an x0 loss with importance weights for
the same marginal). With ``steps_choices`` the student is sampling-steps aware ("TDM-unify"): K
is drawn per update and fed, as a label, to the student and the fake score.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..paths.base import bcast
from . import objectives as O
from .base import DistillationMethod


def labels_from_null(params):
    """Every class-embedding row set to the last one (the null label of classifier-free guidance,
    which an unconditionally trained ``MLP`` / ``ResidualMLP`` uses): the init_fn that makes a
    steps-aware student start as the teacher for every K."""

    def fix(path, leaf):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if "class_embed" in names and "embedding" in names:
            return jnp.broadcast_to(leaf[-1], leaf.shape)
        return leaf

    return jax.tree_util.tree_map_with_path(fix, params)


@dataclasses.dataclass(frozen=True)
class TDM(DistillationMethod):
    """``clamp``: the fake score's subinterval weight cap; ``huber_c``: TDM's pseudo-Huber c (None:
    0.00054 sqrt(d)); ``steps_choices``: the steps-aware student's K values (the student and fake
    score get K's index as the label of ``apply_fn(params, x, t, y)``; the teacher is called
    without one; sample with ``steps=K``); ``k_label``: set by ``for_steps``, not to pass."""

    name = "tdm"
    default_fake_updates = 1

    clamp: float = 10.0
    huber_c: float | None = None
    steps_choices: tuple[int, ...] = ()
    k_label: int | None = None

    def __post_init__(self):
        super().__post_init__()
        c = self.steps_choices
        if c and (any(not isinstance(k, int) or k < 1 for k in c) or len(set(c)) != len(c)):
            raise ValueError(f"steps_choices must be distinct positive integers, got {c}")

    @property
    def fake_clamp(self) -> float | None:
        return self.clamp

    def label(self) -> int | None:
        return self.k_label

    def for_steps(self, k: int) -> "TDM":
        """The steps-aware student at K = k steps: the same parameters, label = k's index."""
        if k not in self.steps_choices:
            raise ValueError(f"this steps-aware student was trained for K in {self.steps_choices}, not {k}")
        return dataclasses.replace(self, student_steps=k, k_label=self.steps_choices.index(k), steps_choices=())

    def sample(self, experts, z, key=None, steps: int | None = None):
        if self.steps_choices:
            return self.for_steps(steps or max(self.steps_choices)).sample(experts, z, key)
        return super().sample(experts, z, key)

    def _on_variant(self, key, make):
        """``make(v)()`` for this update's K ~ U(steps_choices) (a steps-aware student), else ``make(self)()``."""
        variants = [self.for_steps(k) for k in self.steps_choices] or [self]
        if len(variants) == 1:
            return make(variants[0])()
        i = jax.random.randint(jax.random.fold_in(key, 7), (), 0, len(variants))
        return jax.lax.switch(i, [make(v) for v in variants])

    def fake_sample(self, experts, phase, key):
        B = self.batch_size
        kz, _, kk = jax.random.split(key, 3)
        z = self.prior_noise(kz, (B,) + self.data_shape)
        states, _ = self.rollout(jax.lax.stop_gradient(experts), z)
        k = jax.random.randint(kk, (B,), 0, self.student_steps)
        ts = self.grid
        return self.pick(states[1:], k), ts[k + 1], ts[k]

    def generator_loss(self, experts, fake, batch, key, phase: int = 0):
        z, _, kk, kt, eps = self.draws(key)
        B = self.batch_size
        states, _ = self.rollout(jax.lax.stop_gradient(experts), z)
        k = jax.random.randint(kk, (B,), 0, self.student_steps)
        ts = self.grid
        x_k, t_k, t_next = jax.lax.stop_gradient(self.pick(states[:-1], k)), ts[k], ts[k + 1]
        x0 = self.predictor(self.expert(experts, 0)).x0(x_k, t_k)
        a_k, s_k = self.path.coeffs(t_k)
        eps_hat = (x_k - bcast(a_k, x_k) * x0) / bcast(s_k, x_k)
        a_n, s_n = self.path.coeffs(t_next)
        x_next = jax.lax.stop_gradient(bcast(a_n, x0) * x0 + bcast(s_n, x0) * eps_hat)
        tau = O.sample_times_above(kt, t_next, t_k, B, z.dtype)
        a_ts, sig_ts = O.transition(self.path, t_next, tau)
        x_tau = bcast(a_ts, x0) * x_next + bcast(sig_ts, x0) * eps
        mu_fake, mu_real = self.denoisers(fake, x_tau, tau)
        g = O.dm_gradient(mu_fake, mu_real, jax.lax.stop_gradient(x0))
        loss = O.pseudo_huber_matching_loss(x0, g, self.huber_c)
        return loss, {"loss_dm": loss}
