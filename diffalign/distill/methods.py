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

from ..paths.base import AffinePath, LinearPath, bcast
from ..paths.conversions import Predictor
from ..training import Group, TrainState, init_group_state, make_group_step
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
    def init(self, key) -> TrainState:
        """The run's TrainState: parameter groups ``generator`` (experts stacked on a leading axis)
        and ``fake``, both starting from the teacher (the papers' initialisation); the phase of
        Phased DMD in ``aux``. Sample with ``generator_params(state)``."""
        if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
            raise TypeError("Distiller.init needs a typed PRNG key: use jax.random.key(seed)")
        start = self.teacher if self.init_fn is None else self.init_fn(self.teacher)
        experts = jax.tree.map(lambda p: jnp.stack([p] * self.phases), start)
        aux = {"phase": jnp.zeros((), jnp.int32)} if self.method == "phased-dmd" else None
        return init_group_state({"fake": start, "generator": experts}, self._groups(), key, aux=aux)

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
    def _variants(self):
        return [self.for_steps(k) for k in self.steps_choices] or [self]

    def _on_variant(self, key, make):
        """``make(v)()`` for this update's K (steps-aware TDM: K ~ U(steps_choices)), else ``make(self)()``."""
        variants = self._variants()
        if len(variants) == 1:
            return make(variants[0])()
        i = jax.random.randint(jax.random.fold_in(key, 7), (), 0, len(variants))
        return jax.lax.switch(i, [make(v) for v in variants])

    def _phase(self, aux):
        return jnp.zeros((), jnp.int32) if aux is None else aux["phase"]

    def _fake_loss_fn(self, params, batch, key, aux):
        """Per-example fake-score loss on fresh (detached) generator samples."""
        del batch
        clamp = None if self.method in ("dmd", "dmd2") else self.clamp
        k_s, k_l = jax.random.split(key)
        experts, phase = params["generator"], self._phase(aux)

        def for_variant(v):
            def run():
                x_s, s, t_max = self._branch(phase, lambda p: lambda: v.fake_sample(experts, p, k_s))
                fn = self.apply_fn
                if self.steps_choices:
                    i = self.steps_choices.index(v.student_steps)
                    fn = lambda p, x, t: self.apply_fn(p, x, t, jnp.full((x.shape[0],), i, jnp.int32))  # noqa: E731
                return O.subinterval_fm_loss(fn, self.path, self.parametrization, clamp=clamp)(
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

    def _prepare(self, state: TrainState) -> TrainState:
        """Phased DMD: the phase of this step; at a new phase the fake score restarts from the
        teacher and both optimizers afresh (earlier experts are frozen, later ones unused, so
        only the current expert moves)."""
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

    def make_step(self) -> Callable:
        """The pure ``step(state, batch) -> (state, metrics)`` for ``diffalign.training.train``:
        ``num_fake_updates`` fake-score updates, then one generator update (``make_group_step``)."""
        return make_group_step(self._groups(), prepare=self._prepare if self.method == "phased-dmd" else None)

    def _branch(self, phase, make):
        """``make(p)()`` for the traced phase (lax.switch over the static phases)."""
        if self.phases == 1:
            return make(0)()
        return jax.lax.switch(phase, [make(p) for p in range(self.phases)])
