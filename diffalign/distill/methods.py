"""DMD, DMD2, Phased DMD and TDM behind one interface: a generator, a fake score, a frozen teacher.

All three networks share one definition ``apply_fn(params, x, t)`` predicting
``parametrization`` on ``path`` (the generator and the fake score start as copies of the
teacher, as in the papers). A K-step generator runs on a fixed grid 1 = t_0 > ... > t_K = 0: at
each point it predicts x0 and moves to the next time either deterministically (DDIM, which is
Euler on rectified flow: TDM, Phased DMD) or by re-noising the prediction with fresh noise
(DMD2's multi-step generator). Phased DMD groups the K steps into phases with one expert each;
every generator is therefore a stack of experts (one for the other methods).

One ``step(state, batch)`` is ``fake_updates`` updates of the fake score on fresh generator
samples (the two time-scale rule) followed by one generator update; it is pure, so the
ordinary training loop (checkpoints, exact resumption, logs) drives it. What each method trains:

* ``dmd``: 1 fake update per generator update; generator loss 1/2 ||x - sg(x - g)||^2 with
  g = (mu_fake - mu_real) / mean|x - mu_real| at t ~ U[0.02, 0.98], plus ``regression_weight``
  times the squared error to precomputed teacher ODE pairs (``batch["z"]`` -> ``batch["y"]``;
  LPIPS in the paper, Euclidean here).
* ``dmd2``: no regression; 5 fake updates per generator update; K > 1 by backward simulation
  (run the current generator for k ~ U{0..K-1} steps from noise, train its prediction there).
* ``phased-dmd``: phase p trains expert p to carry samples from t_{p} to t_{p+1} (the phase
  boundaries), earlier experts frozen; the fake score restarts from the teacher at every phase
  and learns the diffused phase output x_s with the unbiased subinterval target
  (``objectives.subinterval_fm_loss``); the gradient on x_s is the subinterval DMD gradient
  (mu_fake - mu_real) / (alpha_s mean|x0_hat - mu_real|), which is DMD2's at s = 0.
* ``tdm``: one deterministic K-step student; at a random step k its prediction x0_hat is pushed
  by the DMD gradient evaluated inside the step's own interval (the student's next point x_{k+1},
  re-noised to tau in (t_{k+1}, t_k]), through TDM's pseudo-Huber surrogate; one fake score for
  all intervals, trained with the unbiased subinterval target from x_{k+1} (TDM's code uses an
  x0 loss with importance weights for the same marginal). With ``steps_choices`` the student is
  sampling-steps aware: K is drawn per update and fed, as a label, to the student and the fake score.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ..paths.base import AffinePath, LinearPath, bcast
from ..paths.conversions import Predictor
from . import objectives as O

METHODS = ("dmd", "dmd2", "phased-dmd", "tdm")


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


@struct.dataclass
class DistillState:
    """The whole of a distillation run, as one pytree (checkpointed by the training loop).

    Attributes:
      experts: generator parameters stacked over experts (leading axis = phases; 1 otherwise).
      generator_opt: optax state of ``experts``.
      ema: EMA of ``experts`` (``None`` when off); sample with ``eval_experts()``.
      fake / fake_opt: the fake score's parameters and optax state.
      step: generator updates done.
      fake_updates: fake-score updates done.
      phase: the phase being trained (Phased DMD; 0 otherwise).
      key: base PRNG key; step n uses fold_in(key, n).
    """

    experts: Any
    generator_opt: Any
    ema: Any
    fake: Any
    fake_opt: Any
    step: jax.Array
    fake_updates: jax.Array
    phase: jax.Array
    key: jax.Array

    def eval_experts(self):
        return self.experts if self.ema is None else self.ema


@dataclasses.dataclass(frozen=True)
class Distiller:
    """A distillation method with its generator, fake score and frozen teacher.

    Args:
      method: one of ``METHODS``.
      apply_fn: ``apply_fn(params, x, t)``, the teacher's network (shared by all three).
      teacher: the teacher's parameters (frozen; closed over, not part of the state).
      path / parametrization: what the network predicts, on which path.
      student_steps: K, the generator's number of steps (= NFE).
      phases: Phased DMD's number of experts (must divide K).
      steps_per_phase: generator updates per phase (Phased DMD).
      fake_updates: fake-score updates per generator update (None: 1 for dmd and tdm, 5 otherwise).
      t_range: noise levels of the generator loss (DMD: [0.02, 0.98]).
      regression_weight: DMD's regression term (0 turns it off).
      clamp: the subinterval loss's weight cap (Phased DMD and TDM fake scores).
      huber_c: TDM's pseudo-Huber c (None: 0.00054 sqrt(d)).
      ema_decay: EMA of the generator (0: none).
      data_shape: shape of one sample.
      steps_choices: TDM's sampling-steps-aware student ("TDM-unify"): each update draws K from
        these; the student and the fake score get K's index as the label of
        ``apply_fn(params, x, t, y)`` (the teacher is called without one); sample with ``steps=K``.
      init_fn: how the generator and fake score start from the teacher's parameters (default: a
        copy), e.g. giving every K's label the embedding of the teacher's null label.
      label: set by ``for_steps``; not an argument to pass.
    """

    method: str
    apply_fn: Callable
    teacher: Any
    generator_optimizer: optax.GradientTransformation
    fake_optimizer: optax.GradientTransformation
    path: AffinePath = LinearPath()
    parametrization: str = "velocity"
    student_steps: int = 1
    phases: int = 1
    steps_per_phase: int | None = None
    fake_updates: int | None = None
    batch_size: int = 256
    t_range: tuple[float, float] = (0.02, 0.98)
    regression_weight: float = 0.25
    clamp: float = 10.0
    huber_c: float | None = None
    ema_decay: float = 0.0
    data_shape: tuple[int, ...] = (2,)
    steps_choices: tuple[int, ...] = ()
    init_fn: Callable | None = None
    label: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown distillation method {self.method!r}; expected one of {METHODS}")
        k = self.student_steps
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"student_steps must be a positive integer, got {k!r}")
        if self.method == "dmd" and k != 1:
            raise ValueError("dmd distils a one-step generator (student_steps=1); use dmd2, phased-dmd or tdm for more")
        if self.method == "phased-dmd":
            if self.phases < 1 or k % self.phases:
                raise ValueError(f"phases must divide student_steps, got {self.phases} phases for {k} steps")
            if self.steps_per_phase is None or self.steps_per_phase < 1:
                raise ValueError("phased-dmd needs steps_per_phase (generator updates per phase) >= 1")
        elif self.phases != 1:
            raise ValueError(f"only phased-dmd has phases; {self.method} has 1")
        lo, hi = self.t_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"t_range must satisfy 0 <= lo < hi <= 1, got {self.t_range}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.steps_choices:
            if self.method != "tdm":
                raise ValueError("steps_choices (the sampling-steps-aware student) is TDM's variant: use method='tdm'")
            if any(not isinstance(c, int) or c < 1 for c in self.steps_choices) or len(set(self.steps_choices)) != len(self.steps_choices):
                raise ValueError(f"steps_choices must be distinct positive integers, got {self.steps_choices}")

    # -- the fixed parts -------------------------------------------------------------------
    @property
    def num_fake_updates(self) -> int:
        if self.fake_updates is not None:
            return self.fake_updates
        return 1 if self.method in ("dmd", "tdm") else 5

    @property
    def grid(self) -> jnp.ndarray:
        """The student's K + 1 times, from t_max down to 0."""
        return jnp.linspace(self.path.t_max, 0.0, self.student_steps + 1)

    @property
    def nfe(self) -> int:
        return self.student_steps

    def expert_of_step(self, k: int) -> int:
        return k // (self.student_steps // self.phases)

    def phase_bounds(self, p: int) -> tuple[int, int]:
        """Student steps [first, end) of phase p."""
        n = self.student_steps // self.phases
        return p * n, (p + 1) * n

    def _pred(self, params, conditioned: bool = True) -> Predictor:
        """The network as a Predictor; a steps-aware student and its fake score also get the
        index of K as their label (the teacher never does)."""
        if self.label is None or not conditioned:
            return Predictor(lambda x, t: self.apply_fn(params, x, t), self.path, self.parametrization)
        return Predictor(lambda x, t: self.apply_fn(params, x, t, self._labels(x)), self.path, self.parametrization)

    def _labels(self, x):
        return jnp.full((x.shape[0],), self.label, jnp.int32)

    def for_steps(self, k: int) -> "Distiller":
        """The steps-aware student at K = k steps: the same parameters, label = k's index."""
        if k not in self.steps_choices:
            raise ValueError(f"this steps-aware student was trained for K in {self.steps_choices}, not {k}")
        return dataclasses.replace(self, student_steps=k, label=self.steps_choices.index(k), steps_choices=())

    @staticmethod
    def _expert(experts, e):
        return jax.tree.map(lambda p: p[e], experts)

    # -- state -----------------------------------------------------------------------------
    def init(self, key) -> DistillState:
        """Generator experts and fake score start from the teacher (the papers' initialisation)."""
        if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
            raise TypeError("Distiller.init needs a typed PRNG key: use jax.random.key(seed)")
        start = self.teacher if self.init_fn is None else self.init_fn(self.teacher)
        experts = jax.tree.map(lambda p: jnp.stack([p] * self.phases), start)
        fake = jax.tree.map(jnp.copy, start)
        return DistillState(
            experts=experts,
            generator_opt=self.generator_optimizer.init(experts),
            ema=jax.tree.map(jnp.copy, experts) if self.ema_decay > 0 else None,
            fake=fake,
            fake_opt=self.fake_optimizer.init(fake),
            step=jnp.zeros((), jnp.int32),
            fake_updates=jnp.zeros((), jnp.int32),
            phase=jnp.zeros((), jnp.int32),
            key=key,
        )

    # -- the generator -----------------------------------------------------------------------
    def _move(self, x0, eps_hat, t_next, noise):
        """From a prediction at t to time t_next: DDIM with the predicted noise, or with ``noise``."""
        a, s = self.path.coeffs(t_next)
        return a * x0 + s * (eps_hat if noise is None else noise)

    def rollout(self, experts, z, *, key=None, upto: int | None = None, stochastic: bool | None = None):
        """Run the generator from z at t_0 for ``upto`` steps (default K).

        Returns (states, x0s): states[k] is the input of step k (``upto`` + 1 of them; the last
        is the output), x0s[k] the prediction at step k. ``stochastic`` re-noises predictions
        with fresh noise from ``key`` (DMD2's multi-step generator; its default).
        """
        stochastic = (self.method == "dmd2") if stochastic is None else stochastic
        upto = self.student_steps if upto is None else upto
        states, x0s, x = [z], [], z
        for k in range(upto):
            noise = jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype) if stochastic else None
            x, x0 = self._advance(self._expert(experts, self.expert_of_step(k)), x, k, noise)
            states.append(x)
            x0s.append(x0)
        return states, x0s

    def _advance(self, params, x, k: int, noise=None):
        """Step k of the generator: (the state at t_{k+1}, the x0 prediction at t_k). The last
        step returns the prediction itself."""
        ts = self.grid
        pred = self._pred(params)
        t = jnp.full((x.shape[0],), ts[k], x.dtype)
        x0 = pred.x0(x, t)
        if k + 1 == self.student_steps:
            return x0, x0
        return self._move(x0, pred.eps(x, t), ts[k + 1], noise), x0

    def sample(self, experts, z, key=None, steps: int | None = None):
        """Generator samples from noise z (NFE = K); ``key`` for DMD2's multi-step re-noising;
        ``steps`` picks K of a steps-aware student."""
        if self.steps_choices:
            return self.for_steps(steps or max(self.steps_choices)).sample(experts, z, key)
        if self.method == "dmd2" and self.student_steps > 1 and key is None:
            raise ValueError("a multi-step dmd2 generator re-noises between steps: pass a key")
        return self.rollout(experts, z, key=key)[0][-1]

    # -- per-method pieces ---------------------------------------------------------------------
    def _noise(self, key, shape):
        return self.path.prior_sample(key, shape)

    def _pick(self, xs, k):
        """Per-example selection xs[k[i]][i] from a list of (B, ...) arrays."""
        stacked = jnp.stack(xs)
        return jnp.take_along_axis(stacked, k.reshape((1, -1) + (1,) * (stacked.ndim - 2)), axis=0)[0]

    def fake_sample(self, experts, phase, key):
        """(x_s, s, t_max): generator points the fake score learns, the time they sit at, and
        the top of the interval their diffusion is modelled on."""
        B = self.batch_size
        kz, kr, kk = jax.random.split(key, 3)
        z = self._noise(kz, (B,) + self.data_shape)
        ts = self.grid
        experts = jax.lax.stop_gradient(experts)
        if self.method in ("dmd", "dmd2"):
            states, x0s = self.rollout(experts, z, key=kr)
            k = jax.random.randint(kk, (B,), 0, self.student_steps)
            return self._pick(x0s, k), jnp.zeros((B,)), jnp.ones((B,))
        if self.method == "tdm":
            states, _ = self.rollout(experts, z)
            k = jax.random.randint(kk, (B,), 0, self.student_steps)
            return self._pick(states[1:], k), ts[k + 1], ts[k]
        x_s, _, s = self._phase_output(experts, phase, z)
        return jax.lax.stop_gradient(x_s), jnp.full((B,), s), jnp.ones((B,))

    def _phase_output(self, experts, phase, z):
        """(x_s, its last x0 prediction, s) for phase ``phase`` (static): the frozen earlier experts
        bring z to the phase's start, its own expert (with gradient) to its end s."""
        first, end = self.phase_bounds(phase)
        x = self.rollout(jax.lax.stop_gradient(experts), z, upto=first)[0][-1]
        params = self._expert(experts, phase)
        x0 = None
        for k in range(first, end):
            x, x0 = self._advance(params, x, k)
        return x, x0, self.grid[end]

    def _denoisers(self, fake, x_t, t):
        mu_real = self._pred(self.teacher, conditioned=False).x0(x_t, t)
        mu_fake = self._pred(fake).x0(x_t, t)
        return jax.lax.stop_gradient(mu_fake), jax.lax.stop_gradient(mu_real)

    def generator_loss(self, experts, fake, batch, key, phase: int = 0):
        """Per-example generator loss and logged terms; ``phase`` is static."""
        B = self.batch_size
        kz, kr, kk, kt, ke = jax.random.split(key, 5)
        z = self._noise(kz, (B,) + self.data_shape)
        lo, hi = self.t_range
        eps = jax.random.normal(ke, z.shape, z.dtype)
        terms = {}
        if self.method in ("dmd", "dmd2"):
            states, _ = self.rollout(jax.lax.stop_gradient(experts), z, key=kr)
            k = jax.random.randint(kk, (B,), 0, self.student_steps)
            x_in, t_in = self._pick(states[:-1], k), self.grid[k]
            # each example through the expert of its step (one expert unless phased)
            x = self._pred(self._expert(experts, 0)).x0(jax.lax.stop_gradient(x_in), t_in)
            t = jax.random.uniform(kt, (B,), minval=lo, maxval=hi)
            x_t = self.path.interpolate(jax.lax.stop_gradient(x), eps, t)
            mu_fake, mu_real = self._denoisers(fake, x_t, t)
            loss = O.matching_loss(x, O.dm_gradient(mu_fake, mu_real, jax.lax.stop_gradient(x)))
            terms["loss_dm"] = loss
            if self.method == "dmd" and self.regression_weight > 0:
                y_hat = self.sample(experts, batch["z"])
                reg = jnp.mean(((y_hat - batch["y"]) ** 2).reshape(B, -1), axis=-1)
                terms["loss_regression"] = reg
                loss = loss + self.regression_weight * reg
            return loss, terms
        if self.method == "tdm":
            states, _ = self.rollout(jax.lax.stop_gradient(experts), z)
            k = jax.random.randint(kk, (B,), 0, self.student_steps)
            ts = self.grid
            x_k, t_k, t_next = jax.lax.stop_gradient(self._pick(states[:-1], k)), ts[k], ts[k + 1]
            pred = self._pred(self._expert(experts, 0))
            x0 = pred.x0(x_k, t_k)
            a_k, s_k = self.path.coeffs(t_k)
            eps_hat = (x_k - bcast(a_k, x_k) * x0) / bcast(s_k, x_k)
            a_n, s_n = self.path.coeffs(t_next)
            x_next = jax.lax.stop_gradient(bcast(a_n, x0) * x0 + bcast(s_n, x0) * eps_hat)
            tau = O.sample_times_above(kt, t_next, t_k, B, z.dtype)
            a_ts, sig_ts = O.transition(self.path, t_next, tau)
            x_tau = bcast(a_ts, x0) * x_next + bcast(sig_ts, x0) * eps
            mu_fake, mu_real = self._denoisers(fake, x_tau, tau)
            g = O.dm_gradient(mu_fake, mu_real, jax.lax.stop_gradient(x0))
            loss = O.pseudo_huber_matching_loss(x0, g, self.huber_c)
            return loss, {"loss_dm": loss}
        # phased-dmd
        x_s, x0_last, s = self._phase_output(experts, phase, z)
        t = O.sample_times_above(kt, jnp.maximum(s, lo), hi, B, z.dtype)
        a_ts, sig_ts = O.transition(self.path, s, t)
        x_t = bcast(a_ts, x_s) * jax.lax.stop_gradient(x_s) + bcast(sig_ts, x_s) * eps
        mu_fake, mu_real = self._denoisers(fake, x_t, t)
        a_s, _ = self.path.coeffs(s)
        g = O.dm_gradient(mu_fake, mu_real, jax.lax.stop_gradient(x0_last)) / a_s
        loss = O.matching_loss(x_s, g)
        return loss, {"loss_dm": loss}

    # -- the step ---------------------------------------------------------------------------
    def make_step(self) -> Callable:
        """The pure ``step(state, batch) -> (state, metrics)`` for ``diffalign.training.train``."""
        clamp = None if self.method in ("dmd", "dmd2") else self.clamp
        gopt, fopt = self.generator_optimizer, self.fake_optimizer
        variants = [self.for_steps(k) for k in self.steps_choices] or [self]

        def choose(key):
            """The index of this step's K (steps-aware TDM: K ~ U(steps_choices)); 0 otherwise."""
            return jax.random.randint(jax.random.fold_in(key, 7), (), 0, len(variants))

        def on_variant(i, make):
            return make(variants[0])() if len(variants) == 1 else jax.lax.switch(i, [make(v) for v in variants])

        def fake_loss(fake, x_s, s, key, t_max, i):
            if self.steps_choices:
                fn = lambda p, x, t: self.apply_fn(p, x, t, jnp.full((x.shape[0],), i, jnp.int32))  # noqa: E731
            else:
                fn = self.apply_fn
            return O.subinterval_fm_loss(fn, self.path, self.parametrization, clamp=clamp)(fake, x_s, s, key, t_max)

        def fake_update(carry, key, experts, phase):
            fake, opt_state = carry
            k_s, k_l = jax.random.split(key)
            i = choose(key)
            x_s, s, t_max = on_variant(i, lambda v: lambda: self._branch(phase, lambda p: lambda: v.fake_sample(experts, p, k_s)))
            loss, grads = jax.value_and_grad(lambda f: jnp.mean(fake_loss(f, x_s, s, k_l, t_max, i)))(fake)
            updates, opt_state = fopt.update(grads, opt_state, fake)
            return (optax.apply_updates(fake, updates), opt_state), loss

        def step(state: DistillState, batch):
            key = jax.random.fold_in(state.key, state.step)
            k_fake, k_gen = jax.random.split(key)
            phase = jnp.minimum(state.step // (self.steps_per_phase or 1), self.phases - 1).astype(jnp.int32)
            fake, fake_opt, gen_opt = state.fake, state.fake_opt, state.generator_opt
            if self.method == "phased-dmd":
                # a new phase: the fake score restarts from the teacher, the optimizers afresh
                new = phase != state.phase
                reset = lambda cur, fresh: jax.tree.map(lambda c, f: jnp.where(new, f, c), cur, fresh)  # noqa: E731
                fake = reset(fake, self.teacher)
                fake_opt = reset(fake_opt, fopt.init(self.teacher))
                gen_opt = reset(gen_opt, gopt.init(state.experts))
            keys = jax.random.split(k_fake, self.num_fake_updates)
            (fake, fake_opt), fake_losses = jax.lax.scan(
                lambda c, k: fake_update(c, k, state.experts, phase), (fake, fake_opt), keys
            )

            def objective(experts):
                loss, terms = on_variant(choose(k_gen), lambda v: lambda: self._branch(
                    phase, lambda p: lambda: v.generator_loss(experts, fake, batch, k_gen, p)
                ))
                return jnp.mean(loss), terms

            (loss, terms), grads = jax.value_and_grad(objective, has_aux=True)(state.experts)
            updates, gen_opt = gopt.update(grads, gen_opt, state.experts)
            experts = optax.apply_updates(state.experts, updates)
            if self.phases > 1:  # only the current expert moves
                mask = jnp.arange(self.phases) == phase
                experts = jax.tree.map(
                    lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), experts, state.experts
                )
            ema = state.ema
            if ema is not None:
                ema = optax.incremental_update(experts, ema, 1.0 - self.ema_decay)
            grad_norm = optax.tree.norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.all(jnp.isfinite(fake_losses))
            new = state.replace(
                experts=experts, generator_opt=gen_opt, ema=ema, fake=fake, fake_opt=fake_opt,
                step=state.step + 1, fake_updates=state.fake_updates + self.num_fake_updates, phase=phase,
            )
            new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
            metrics = {
                "loss": loss, "fake_loss": jnp.mean(fake_losses), "grad_norm": grad_norm,
                "phase": phase.astype(jnp.float32), "nonfinite": ~finite,
                **{k: jnp.mean(v) for k, v in terms.items()},
            }
            return new, metrics

        return step

    def _branch(self, phase, make):
        """``make(p)()`` for the traced phase (lax.switch over the static phases)."""
        if self.phases == 1:
            return make(0)()
        return jax.lax.switch(phase, [make(p) for p in range(self.phases)])
