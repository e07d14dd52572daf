"""The shared base of the distillation methods: a generator, a fake score and a frozen teacher.

All three networks share one definition ``apply_fn(params, x, t)`` predicting
``parametrization`` on ``path`` (the generator and the fake score start as copies of the
teacher, as in the papers). A K-step generator runs on a fixed grid 1 = t_0 > ... > t_K = 0: at
each point it predicts x0 and moves to the next time either deterministically (DDIM, which is
Euler on rectified flow) or by re-noising the prediction with fresh noise (DMD2). Every
generator is a stack of experts on a leading axis (Phased DMD's phases; one otherwise).

A method is two per-example losses on the shared training step (``training.make_group_step``):
the fake score's, on fresh (detached) generator samples (``fake_sample`` and the unbiased
subinterval target of ``objectives.subinterval_fm_loss``), updated ``num_fake_updates`` times
per step (the two time-scale rule); then the generator's (``generator_loss``). The state is an
ordinary ``TrainState`` with parameter groups ``fake`` and ``generator``, so the training loop
checkpoints, resumes, shards and guards a distillation as any other run. Subclasses:
``dmd.DMD``, ``dmd2.DMD2``, ``phased.PhasedDMD``, ``tdm.TDM``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import optax

from ..paths.base import AffinePath, LinearPath
from ..paths.conversions import Predictor
from ..training import Group, TrainState, init_group_state, make_group_step
from . import objectives as O


@dataclasses.dataclass(frozen=True)
class DistillationMethod:
    """A distillation method with its generator, fake score and frozen teacher.

    Args:
      apply_fn: ``apply_fn(params, x, t)``, the teacher's network (shared by all three).
      teacher: the teacher's parameters (frozen; closed over, not part of the state).
      generator_optimizer / fake_optimizer: the two groups' optimizers.
      path / parametrization: what the network predicts, on which path.
      student_steps: K, the generator's number of steps (= NFE).
      fake_updates: fake-score updates per generator update (None: the method's default).
      batch_size: generator samples per update.
      t_range: noise levels of the generator loss (DMD: [0.02, 0.98]).
      ema_decay: EMA of the generator (0: none).
      data_shape: shape of one sample.
      init_fn: how the generator and fake score start from the teacher's parameters (default: a
        copy), e.g. giving every K's label the embedding of the teacher's null label.
    """

    name: ClassVar[str] = ""
    default_fake_updates: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False  # re-noise between generator steps (DMD2)

    apply_fn: Callable
    teacher: Any
    generator_optimizer: optax.GradientTransformation
    fake_optimizer: optax.GradientTransformation
    path: AffinePath = LinearPath()
    parametrization: str = "velocity"
    student_steps: int = 1
    fake_updates: int | None = None
    batch_size: int = 256
    t_range: tuple[float, float] = (0.02, 0.98)
    ema_decay: float = 0.0
    data_shape: tuple[int, ...] = (2,)
    init_fn: Callable | None = None

    def __post_init__(self):
        k = self.student_steps
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"student_steps must be a positive integer, got {k!r}")
        lo, hi = self.t_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"t_range must satisfy 0 <= lo < hi <= 1, got {self.t_range}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    # -- the fixed parts -------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.name

    @property
    def num_experts(self) -> int:
        return 1

    @property
    def num_fake_updates(self) -> int:
        return self.default_fake_updates if self.fake_updates is None else self.fake_updates

    @property
    def fake_clamp(self) -> float | None:
        """The subinterval loss's weight cap for the fake score (None: no cap)."""
        return None

    @property
    def grid(self) -> jnp.ndarray:
        """The student's K + 1 times, from t_max down to 0."""
        return jnp.linspace(self.path.t_max, 0.0, self.student_steps + 1)

    @property
    def nfe(self) -> int:
        return self.student_steps

    def expert_of_step(self, k: int) -> int:
        return k // (self.student_steps // self.num_experts)

    def label(self) -> int | None:
        """The label the student and fake score are called with (TDM's K index; none here)."""
        return None

    def predictor(self, params, conditioned: bool = True) -> Predictor:
        """The network as a Predictor; a labelled student and its fake score also get their label
        (the teacher never does)."""
        label = self.label() if conditioned else None
        if label is None:
            return Predictor(lambda x, t: self.apply_fn(params, x, t), self.path, self.parametrization)
        return Predictor(lambda x, t: self.apply_fn(params, x, t, jnp.full((x.shape[0],), label, jnp.int32)),
                         self.path, self.parametrization)

    @staticmethod
    def expert(experts, e):
        return jax.tree.map(lambda p: p[e], experts)

    # -- state -----------------------------------------------------------------------------
    def init(self, key) -> TrainState:
        """The run's TrainState: parameter groups ``generator`` (experts stacked on a leading axis)
        and ``fake``, both starting from the teacher (the papers' initialisation). Sample with
        ``generator_params(state)``."""
        if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
            raise TypeError(f"{type(self).__name__}.init needs a typed PRNG key: use jax.random.key(seed)")
        start = self.teacher if self.init_fn is None else self.init_fn(self.teacher)
        experts = jax.tree.map(lambda p: jnp.stack([p] * self.num_experts), start)
        return init_group_state({"fake": start, "generator": experts}, self._groups(), key, aux=self.initial_aux())

    def initial_aux(self):
        """What the method carries in ``state.aux`` (Phased DMD: its phase); nothing here."""
        return None

    @staticmethod
    def generator_params(state: TrainState):
        """The generator's experts to sample with (its EMA when it keeps one)."""
        return state.eval_params()["generator"]

    def fake_updates_done(self, state: TrainState):
        """Fake-score updates so far (``num_fake_updates`` per generator update)."""
        return state.step * self.num_fake_updates

    # -- the generator -----------------------------------------------------------------------
    def _move(self, x0, eps_hat, t_next, noise):
        """From a prediction at t to time t_next: DDIM with the predicted noise, or with ``noise``."""
        a, s = self.path.coeffs(t_next)
        return a * x0 + s * (eps_hat if noise is None else noise)

    def rollout(self, experts, z, *, key=None, upto: int | None = None, stochastic: bool | None = None):
        """Run the generator from z at t_0 for ``upto`` steps (default K).

        Returns (states, x0s): states[k] is the input of step k (``upto`` + 1 of them; the last
        is the output), x0s[k] the prediction at step k. ``stochastic`` re-noises predictions
        with fresh noise from ``key`` (default: the method's own rule).
        """
        stochastic = self.stochastic if stochastic is None else stochastic
        upto = self.student_steps if upto is None else upto
        states, x0s, x = [z], [], z
        for k in range(upto):
            noise = jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype) if stochastic else None
            x, x0 = self._advance(self.expert(experts, self.expert_of_step(k)), x, k, noise)
            states.append(x)
            x0s.append(x0)
        return states, x0s

    def _advance(self, params, x, k: int, noise=None):
        """Step k of the generator: (the state at t_{k+1}, the x0 prediction at t_k). The last
        step returns the prediction itself."""
        ts = self.grid
        pred = self.predictor(params)
        t = jnp.full((x.shape[0],), ts[k], x.dtype)
        x0 = pred.x0(x, t)
        if k + 1 == self.student_steps:
            return x0, x0
        return self._move(x0, pred.eps(x, t), ts[k + 1], noise), x0

    def sample(self, experts, z, key=None, steps: int | None = None):
        """Generator samples from noise z (NFE = K); ``key`` for re-noising generators."""
        del steps
        return self.rollout(experts, z, key=key)[0][-1]

    # -- what the methods share ----------------------------------------------------------------
    def prior_noise(self, key, shape):
        return self.path.prior_sample(key, shape)

    def draws(self, key):
        """This update's draws: (z, rollout key, step key, time key, eps)."""
        kz, kr, kk, kt, ke = jax.random.split(key, 5)
        z = self.prior_noise(kz, (self.batch_size,) + self.data_shape)
        return z, kr, kk, kt, jax.random.normal(ke, z.shape, z.dtype)

    @staticmethod
    def pick(xs, k):
        """Per-example selection xs[k[i]][i] from a list of (B, ...) arrays."""
        stacked = jnp.stack(xs)
        return jnp.take_along_axis(stacked, k.reshape((1, -1) + (1,) * (stacked.ndim - 2)), axis=0)[0]

    def denoisers(self, fake, x_t, t):
        mu_real = self.predictor(self.teacher, conditioned=False).x0(x_t, t)
        mu_fake = self.predictor(fake).x0(x_t, t)
        return jax.lax.stop_gradient(mu_fake), jax.lax.stop_gradient(mu_real)

    def fake_sample(self, experts, phase, key):
        """(x_s, s, t_max): generator points the fake score learns, the time they sit at, and
        the top of the interval their diffusion is modelled on. ``phase`` is static."""
        raise NotImplementedError

    def generator_loss(self, experts, fake, batch, key, phase: int = 0):
        """(per-example generator loss, logged per-example terms); ``phase`` is static."""
        raise NotImplementedError

    # -- the step ---------------------------------------------------------------------------
    def _on_variant(self, key, make):
        """``make(self)()``; a method trained over several variants (steps-aware TDM) picks one."""
        del key
        return make(self)()

    def _phase(self, aux):
        return jnp.zeros((), jnp.int32) if aux is None else aux["phase"]

    def _fake_loss_fn(self, params, batch, key, aux):
        """Per-example fake-score loss on fresh (detached) generator samples."""
        del batch
        k_s, k_l = jax.random.split(key)
        experts, phase = params["generator"], self._phase(aux)

        def for_variant(v):
            def run():
                x_s, s, t_max = self._branch(phase, lambda p: lambda: v.fake_sample(experts, p, k_s))
                net = lambda p, x, t: v.predictor(p).fn(x, t)  # noqa: E731 (the fake score with v's label)
                return O.subinterval_fm_loss(net, self.path, self.parametrization, clamp=self.fake_clamp)(
                    params["fake"], x_s, s, k_l, t_max)
            return run

        return {"per_example": self._on_variant(key, for_variant)}

    def _generator_loss_fn(self, params, batch, key, aux):
        phase = self._phase(aux)
        loss, terms = self._on_variant(key, lambda v: lambda: self._branch(
            phase, lambda p: lambda: v.generator_loss(params["generator"], params["fake"], batch, key, p)))
        out = {"per_example": loss, **terms}
        if aux is not None:
            out["metrics"] = {"phase": phase.astype(jnp.float32)}
        return out

    def _groups(self) -> dict:
        return {
            "fake": Group(self._fake_loss_fn, self.fake_optimizer, updates_per_step=self.num_fake_updates),
            "generator": Group(self._generator_loss_fn, self.generator_optimizer, ema_decay=self.ema_decay),
        }

    def prepare(self, state: TrainState) -> TrainState:
        """Runs at the start of every step (Phased DMD's phase change); nothing here."""
        return state

    def make_step(self) -> Callable:
        """The pure ``step(state, batch) -> (state, metrics)`` for ``diffalign.training.train``:
        ``num_fake_updates`` fake-score updates, then one generator update (``make_group_step``)."""
        prepare = None if type(self).prepare is DistillationMethod.prepare else self.prepare
        return make_group_step(self._groups(), prepare=prepare)

    def _branch(self, phase, make):
        """``make(p)()`` for the traced phase (lax.switch over the static phases)."""
        if self.num_experts == 1:
            return make(0)()
        return jax.lax.switch(phase, [make(p) for p in range(self.num_experts)])
