"""SMORe (Sikchi et al., ICLR 2024) and goal-conditioned behaviour cloning, tabular.

SMORe learns a score S(s, a, g) (two copies, S1 and S2, with Polyak targets), M(s, g) and a
policy pi(a | s, g), from two batches per step: D, offline transitions with hindsight goals
(p_future), and G, goal transitions (g = s'). The losses, as in the released code:

- score, ``loss="smore"`` (the objective as written in the paper):
  L_S = -E_G[S] + alpha E_D[S] + 1/2 E_D[(S(s,a,g) - gamma M(s',g))^2];
  ``loss="stable"`` (the code's default ``smore_stable``, bounded):
  L_S = E_G[(S - c/(1-gamma))^2] + (1-gamma) alpha E_D[S^2]
        + 1/2 E_D[(S(s,a,g) - (-c + gamma M(s',g)))^2],   c = 2;
- M: expectile regression toward Sbar = min(S1', S2') (targets), E_D[|tau - 1(Sbar < M)| (Sbar - M)^2];
- policy: advantage-weighted regression, max E_D[min(exp(kappa (Sbar - M)), w_max) log pi(a|s,g)].

GCBC is max E_D[log pi(a|s,g)] on the same hindsight-relabelled batches, as a table or, as a
stronger baseline that generalises across goals, an MLP on learned (s, g) embeddings
(``train_gcbc_mlp``).

Representation: tables indexed by (s, g) -- a linear model of one-hot (s, g) pairs. Honest
for a 104-state grid, exact to evaluate and fast on a CPU; nothing generalises across goals,
so both methods see the same coverage limits of the data.

Training is a plain jitted Adam step under ``lax.scan`` rather than ``diffalign.training``:
one step updates four tables with their own learning rates plus a Polyak target, from two
batch streams, and the whole run (30k steps of well under a millisecond each) is one
compiled program; checkpoints and resumption are not needed at this size. The three losses
are summed and differentiated once; each loss reaches only its own table (the others enter
through ``stop_gradient``), so this equals three simultaneous updates (the released code
updates them one after the other within a step).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ..losses.transforms import mean
from ..training.update import update
from .gridworld import N_ACTIONS, Dataset, sample_goal_transitions, sample_her

LOSSES = ("stable", "smore")


@dataclasses.dataclass(frozen=True)
class SMOReConfig:
    """Hyper-parameters. The released code's: gamma, alpha, c = 2, kappa, w_max, p_future and the
    stable loss. Chosen here for 2000-trajectory tables (a small sweep on one seed, see the
    docs): Adam with cosine decay from 0.3 (S, M) and 0.1 (policy) -- with a constant rate the
    table noise never averages out and success falls with longer training --, tau = 0.05 (the
    code's 0.005 is for networks and needs many more steps), expectile 0.9 (its README: 0.8),
    batch 1024, 30k steps."""

    loss: str = "stable"
    gamma: float = 0.99
    alpha: float = 1e-4
    step_cost: float = 2.0  # the stable loss's per-step offset c
    expectile: float = 0.9
    kappa: float = 3.0
    max_weight: float = 100.0
    tau: float = 0.05  # Polyak rate of the S targets
    double: bool = True
    p_future: float = 0.8
    batch_size: int = 1024
    steps: int = 30_000
    lr_critic: float = 0.3
    lr_actor: float = 0.1
    decay: bool = True  # cosine decay of both learning rates to zero over ``steps``

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("gamma", "expectile"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.p_future <= 1.0:
            raise ValueError(f"p_future must be in [0, 1], got {self.p_future}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        for name in ("batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_critic", "lr_actor", "kappa", "max_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("alpha", "step_cost"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class GCBCConfig:
    """Goal-conditioned behaviour cloning on hindsight-relabelled batches (``p_future`` 1.0 is
    GCSL-style: every goal a state the trajectory reaches later). Trained like SMORe's policy:
    the same number of steps and a cosine-decayed Adam rate by default (a constant rate leaves
    the tables' minibatch noise in place)."""

    p_future: float = 0.8
    batch_size: int = 1024
    steps: int = 30_000
    lr: float = 0.1
    decay: bool = True  # cosine decay of the learning rate to zero over ``steps``

    def __post_init__(self):
        if not 0.0 <= self.p_future <= 1.0:
            raise ValueError(f"p_future must be in [0, 1], got {self.p_future}")
        for name in ("batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


class LearnerState(NamedTuple):
    params: dict
    target: dict
    opt_state: optax.OptState


# ----------------------------------------------------------------------------- losses


def expectile_loss(diff, tau: float):
    """|tau - 1(diff < 0)| diff^2 for diff = target - prediction (tau > 0.5 leans to the max)."""
    return jnp.where(diff < 0, 1.0 - tau, tau) * diff**2


def score_loss(S_D, S_G, M_next, cfg: SMOReConfig):
    """The score loss of one S table: S_D = S on the D batch, S_G on the G batch, M_next =
    M(s', g) on the D batch (held fixed)."""
    if cfg.loss == "smore":
        return -S_G.mean() + cfg.alpha * S_D.mean() + 0.5 * ((S_D - cfg.gamma * M_next) ** 2).mean()
    c = cfg.step_cost
    return (((S_G - c / (1.0 - cfg.gamma)) ** 2).mean() + (1.0 - cfg.gamma) * cfg.alpha * (S_D**2).mean()
            + 0.5 * ((S_D - (-c + cfg.gamma * M_next)) ** 2).mean())


def awr_weights(S_bar, M, kappa: float, max_weight: float):
    """min(exp(kappa (S - M)), max_weight), computed without overflow."""
    return jnp.exp(jnp.minimum(kappa * (S_bar - M), jnp.log(max_weight)))


def _log_pi(logits, a):
    return jax.nn.log_softmax(logits)[jnp.arange(a.shape[0]), a]


def smore_losses(params, target, D, G, cfg: SMOReConfig):
    """(total loss, metrics) of one SMORe step; each term has gradients only for its own table."""
    sg = jax.lax.stop_gradient
    S_bar_table = jnp.minimum(target["s1"], target["s2"]) if cfg.double else target["s1"]
    S_bar = sg(S_bar_table[D.s, D.g, D.a])
    M = params["m"][D.s, D.g]
    M_next = sg(params["m"][D.s_next, D.g])
    names = ("s1", "s2") if cfg.double else ("s1",)
    l_score = sum(score_loss(params[k][D.s, D.g, D.a], params[k][G.s, G.g, G.a], M_next, cfg) for k in names)
    l_value = expectile_loss(S_bar - M, cfg.expectile).mean()
    w = awr_weights(S_bar, sg(M), cfg.kappa, cfg.max_weight)
    l_policy = -(w * _log_pi(params["pi"][D.s, D.g], D.a)).mean()
    metrics = {"score_loss": l_score, "value_loss": l_value, "policy_loss": l_policy,
               "S_goal": params["s1"][G.s, G.g, G.a].mean(), "S_data": params["s1"][D.s, D.g, D.a].mean(),
               "weight_mean": w.mean(), "weight_clipped": (w >= cfg.max_weight * (1 - 1e-6)).mean()}
    return l_score + l_value + l_policy, metrics


# ----------------------------------------------------------------------------- training


def _labels(params):
    return {k: ("actor" if k == "pi" else "critic") for k in params}


def init_smore(n_states: int, cfg: SMOReConfig) -> LearnerState:
    """Zero tables: S1, S2 (s, g, a), M (s, g), policy logits (s, g, a); targets = S."""
    shape = (n_states, n_states, N_ACTIONS)
    params = {"s1": jnp.zeros(shape), "s2": jnp.zeros(shape), "m": jnp.zeros(shape[:2]), "pi": jnp.zeros(shape)}
    opt = _smore_optimizer(cfg)
    return LearnerState(params, {"s1": params["s1"], "s2": params["s2"]}, opt.init(params))


def _smore_optimizer(cfg: SMOReConfig):
    def lr(peak):
        return optax.cosine_decay_schedule(peak, cfg.steps) if cfg.decay else peak

    return optax.multi_transform({"critic": optax.adam(lr(cfg.lr_critic)), "actor": optax.adam(lr(cfg.lr_actor))},
                                 _labels)


def smore_step(state: LearnerState, key, data: Dataset, cfg: SMOReConfig):
    """One pure SMORe update: sample D and G, one Adam step on all tables, Polyak targets."""
    kd, kg = jax.random.split(key)
    D = sample_her(kd, data, cfg.batch_size, cfg.p_future)
    G = sample_goal_transitions(kg, data, cfg.batch_size)
    params, opt_state, metrics = _scalar_update(lambda p: smore_losses(p, state.target, D, G, cfg),
                                                _smore_optimizer(cfg), state.params, state.opt_state)
    target = {k: (1 - cfg.tau) * state.target[k] + cfg.tau * params[k] for k in state.target}
    return LearnerState(params, target, opt_state), metrics


def gcbc_step(state: LearnerState, key, data: Dataset, cfg: GCBCConfig):
    """One pure GCBC update: max log pi(a | s, g) on a hindsight-relabelled batch."""
    D = sample_her(key, data, cfg.batch_size, cfg.p_future)

    def loss_fn(params):
        loss = -_log_pi(params["pi"][D.s, D.g], D.a).mean()
        return loss, {"bc_loss": loss}

    params, opt_state, metrics = _scalar_update(loss_fn, _gcbc_optimizer(cfg), state.params, state.opt_state)
    return LearnerState(params, {}, opt_state), metrics


def _scalar_update(loss_fn, optimizer, params, opt_state):
    """One optimizer step on the scalar ``loss_fn(params) -> (loss, metrics)`` through the
    library's one update (a single-row per-example loss under the mean transform: the same
    gradient)."""

    def per_example(p, batch, key):
        loss, metrics = loss_fn(p)
        return {"per_example": loss[None], "metrics": metrics}

    params, opt_state, _, _, _, _, out = update(per_example, mean(), optimizer, params, opt_state, (), None, None, 0)
    return params, opt_state, out["metrics"]


def _gcbc_optimizer(cfg: GCBCConfig):
    return optax.adam(optax.cosine_decay_schedule(cfg.lr, cfg.steps) if cfg.decay else cfg.lr)


def init_gcbc(n_states: int, cfg: GCBCConfig) -> LearnerState:
    params = {"pi": jnp.zeros((n_states, n_states, N_ACTIONS))}
    return LearnerState(params, {}, _gcbc_optimizer(cfg).init(params))


def _train(step_fn, state, key, data, cfg, log_every):
    def body(st, k):
        return step_fn(st, k, data, cfg)

    state, metrics = jax.lax.scan(body, state, jax.random.split(key, cfg.steps))
    n = max(cfg.steps // log_every, 1)
    logged = jax.tree.map(lambda m: m[: n * (cfg.steps // n)].reshape(n, -1).mean(1), metrics)
    return state, logged


def check_dataset(data: Dataset, n_states: int) -> None:
    """Host-side check before a jitted learner: out-of-range indices would be clamped silently."""
    obs, actions, goals = (np.asarray(a) for a in (data.obs, data.actions, data.goals))
    if obs.ndim != 2 or actions.shape != (obs.shape[0], obs.shape[1] - 1) or goals.shape != (obs.shape[0],):
        raise ValueError(f"dataset shapes do not fit: obs {obs.shape}, actions {actions.shape}, goals {goals.shape}")
    for name, a, hi in (("obs", obs, n_states), ("goals", goals, n_states), ("actions", actions, N_ACTIONS)):
        if a.size and (a.min() < 0 or a.max() >= hi):
            raise ValueError(f"dataset {name} must lie in [0, {hi}), got values in [{a.min()}, {a.max()}]")


def train_smore(key, data: Dataset, n_states: int, cfg: SMOReConfig, log_every: int = 1000):
    """Train SMORe from zero tables; returns (state, metrics averaged over log windows)."""
    check_dataset(data, n_states)
    return _train_smore(key, data, n_states, cfg, log_every)


def train_gcbc(key, data: Dataset, n_states: int, cfg: GCBCConfig, log_every: int = 1000):
    """Train GCBC from zero logits; returns (state, metrics averaged over log windows)."""
    check_dataset(data, n_states)
    return _train_gcbc(key, data, n_states, cfg, log_every)


@functools.partial(jax.jit, static_argnames=("n_states", "cfg", "log_every"))
def _train_smore(key, data, n_states, cfg, log_every):
    return _train(smore_step, init_smore(n_states, cfg), key, data, cfg, log_every)


@functools.partial(jax.jit, static_argnames=("n_states", "cfg", "log_every"))
def _train_gcbc(key, data, n_states, cfg, log_every):
    return _train(gcbc_step, init_gcbc(n_states, cfg), key, data, cfg, log_every)


def greedy_actions(key, logits):
    """actions[s, g] = argmax_a logits[s, g, a], ties broken uniformly at random."""
    noise = jax.random.uniform(key, logits.shape)
    best = logits >= logits.max(-1, keepdims=True) - 1e-6 * (1.0 + jnp.abs(logits).max(-1, keepdims=True))
    return jnp.argmax(jnp.where(best, noise, -1.0), -1).astype(jnp.int32)


# ----------------------------------------------------------------------------- GCBC with an MLP


class GoalMLP(nnx.Module):
    """Logits pi(. | s, g): learned embeddings of s and g (a linear map of their one-hots),
    concatenated, two ReLU layers. Unlike a table it shares structure across goals."""

    def __init__(self, n_states: int, n_actions: int, width: int = 256, embed: int = 64, *, rngs: nnx.Rngs):
        if min(n_states, n_actions, width, embed) < 1:
            raise ValueError("GoalMLP needs positive sizes")
        self.embed_s = nnx.Embed(n_states, embed, rngs=rngs)
        self.embed_g = nnx.Embed(n_states, embed, rngs=rngs)
        self.hidden1 = nnx.Linear(2 * embed, width, rngs=rngs)
        self.hidden2 = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, n_actions, rngs=rngs)

    def __call__(self, s, g):
        h = jnp.concatenate([self.embed_s(s), self.embed_g(g)], -1)
        h = jax.nn.relu(self.hidden2(jax.nn.relu(self.hidden1(h))))
        return self.out(h)


def train_gcbc_mlp(key, data: Dataset, n_states: int, cfg: GCBCConfig, width: int = 256, log_every: int = 1000):
    """GCBC with a ``GoalMLP`` (Adam, cosine decay from ``cfg.lr``); returns (logits table
    (s, g, a) for every pair, metrics averaged over log windows)."""
    check_dataset(data, n_states)
    if width < 1 or log_every < 1:
        raise ValueError(f"width and log_every must be >= 1, got {width}, {log_every}")
    k_init, k_train = jax.random.split(key)
    graphdef, params = nnx.split(GoalMLP(n_states, N_ACTIONS, width, rngs=nnx.Rngs(k_init)))
    return _gcbc_mlp_run(graphdef, params, k_train, data, n_states, cfg, log_every)


@functools.partial(jax.jit, static_argnames=("graphdef", "n_states", "cfg", "log_every"))
def _gcbc_mlp_run(graphdef, params, key, data, n_states, cfg, log_every):
    opt = optax.adam(optax.cosine_decay_schedule(cfg.lr, cfg.steps))

    def apply_fn(p, s, g):
        return nnx.merge(graphdef, p)(s, g)

    def step(carry, k):
        p, o = carry
        D = sample_her(k, data, cfg.batch_size, cfg.p_future)

        def loss_fn(p):
            loss = -_log_pi(apply_fn(p, D.s, D.g), D.a).mean()
            return loss, {"bc_loss": loss}

        p, o, metrics = _scalar_update(loss_fn, opt, p, o)
        return (p, o), metrics

    (p, _), metrics = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, cfg.steps))
    n = max(cfg.steps // log_every, 1)
    logged = jax.tree.map(lambda m: m[: n * (cfg.steps // n)].reshape(n, -1).mean(1), metrics)
    s, g = jnp.meshgrid(jnp.arange(n_states), jnp.arange(n_states), indexing="ij")
    return apply_fn(p, s.ravel(), g.ravel()).reshape(n_states, n_states, N_ACTIONS), logged
