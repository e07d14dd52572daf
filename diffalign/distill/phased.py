"""Phased DMD: one expert per SNR subinterval, trained phase by phase.

Phase p trains expert p to carry samples from t_p to t_{p+1} (the phase boundaries), earlier
experts frozen; the fake score restarts from the teacher at every phase and learns the diffused
phase output x_s with the unbiased subinterval target (``objectives.subinterval_fm_loss``); the
gradient on x_s is the subinterval DMD gradient (mu_fake - mu_real) / (alpha_s mean|x0_hat -
mu_real|), which is DMD2's at s = 0.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..paths.base import bcast
from ..training import TrainState
from . import objectives as O
from .base import DistillationMethod


@dataclasses.dataclass(frozen=True)
class PhasedDMD(DistillationMethod):
    """``phases`` experts (must divide ``student_steps``), ``steps_per_phase`` generator updates
    each; ``clamp`` caps the subinterval loss's weight."""

    name = "phased-dmd"
    default_fake_updates = 5

    phases: int = 2
    steps_per_phase: int | None = None
    clamp: float = 10.0

    def __post_init__(self):
        super().__post_init__()
        if self.phases < 1 or self.student_steps % self.phases:
            raise ValueError(f"phases must divide student_steps, got {self.phases} phases for {self.student_steps} steps")
        if self.steps_per_phase is None or self.steps_per_phase < 1:
            raise ValueError("phased-dmd needs steps_per_phase (generator updates per phase) >= 1")

    @property
    def num_experts(self) -> int:
        return self.phases

    @property
    def fake_clamp(self) -> float | None:
        return self.clamp

    def phase_bounds(self, p: int) -> tuple[int, int]:
        """Student steps [first, end) of phase p."""
        n = self.student_steps // self.phases
        return p * n, (p + 1) * n

    def initial_aux(self):
        return {"phase": jnp.zeros((), jnp.int32)}

    def prepare(self, state: TrainState) -> TrainState:
        """The phase of this step; at a new phase the fake score restarts from the teacher and both
        optimizers afresh. Earlier experts are frozen and later ones unused, so they get zero
        gradients, and with fresh optimizer moments only the current expert moves."""
        phase = jnp.minimum(state.step // self.steps_per_phase, self.phases - 1).astype(jnp.int32)
        new = phase != state.aux["phase"]
        reset = lambda cur, fresh: jax.tree.map(lambda c, f: jnp.where(new, f, c), cur, fresh)  # noqa: E731
        params, opt = state.params, state.opt_state
        return state.replace(
            params={**params, "fake": reset(params["fake"], self.teacher)},
            opt_state={"fake": reset(opt["fake"], self.fake_optimizer.init(self.teacher)),
                       "generator": reset(opt["generator"], self.generator_optimizer.init(params["generator"]))},
            aux={**state.aux, "phase": phase},
        )

    def _phase_output(self, experts, phase, z):
        """(x_s, its last x0 prediction, s) for phase ``phase`` (static): the frozen earlier experts
        bring z to the phase's start, its own expert (with gradient) to its end s."""
        first, end = self.phase_bounds(phase)
        x = self.rollout(jax.lax.stop_gradient(experts), z, upto=first)[0][-1]
        params = self.expert(experts, phase)
        x0 = None
        for k in range(first, end):
            x, x0 = self._advance(params, x, k)
        return x, x0, self.grid[end]

    def fake_sample(self, experts, phase, key):
        B = self.batch_size
        kz, _, _ = jax.random.split(key, 3)
        z = self.prior_noise(kz, (B,) + self.data_shape)
        x_s, _, s = self._phase_output(jax.lax.stop_gradient(experts), phase, z)
        return jax.lax.stop_gradient(x_s), jnp.full((B,), s), jnp.ones((B,))

    def generator_loss(self, experts, fake, batch, key, phase: int = 0):
        z, _, _, kt, eps = self.draws(key)
        lo, hi = self.t_range
        x_s, x0_last, s = self._phase_output(experts, phase, z)
        t = O.sample_times_above(kt, jnp.maximum(s, lo), hi, self.batch_size, z.dtype)
        a_ts, sig_ts = O.transition(self.path, s, t)
        x_t = bcast(a_ts, x_s) * jax.lax.stop_gradient(x_s) + bcast(sig_ts, x_s) * eps
        mu_fake, mu_real = self.denoisers(fake, x_t, t)
        a_s, _ = self.path.coeffs(s)
        g = O.dm_gradient(mu_fake, mu_real, jax.lax.stop_gradient(x0_last)) / a_s
        loss = O.matching_loss(x_s, g)
        return loss, {"loss_dm": loss}
