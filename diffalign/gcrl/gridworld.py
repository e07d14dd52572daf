"""The 11x11 four-rooms grid world, its exact references, offline data and HER relabelling.

The layout is Sutton, Precup & Singh's four rooms (104 free cells) without the outer wall;
moving into a wall or off the grid leaves the agent where it is. Actions: up, down, left,
right, stay. With ``slip`` > 0 the chosen action is replaced by a uniformly random one (of
the five) with that probability.

Reward and metrics (the three the SMORe code logs): an episode is ``horizon`` = 50 actions
from s_0 to s_50; the reward at step t is r_t = 1[s_t = g] (t = 0..49), so the discounted
return is sum_t gamma^t r_t and a shortest path of length d followed by "stay" earns
sum_{d <= t < 50} gamma^t = (gamma^d - gamma^50) / (1 - gamma); success is 1[s_50 = g]; the
final distance is the BFS distance d(s_50, g).

Exact references: BFS distances for every (s, g); optimal return and success by finite-horizon
dynamic programming (equal to the BFS formula without slip, checked in the tests).

The environment tables are numpy (built once on the host); rollouts, data generation and
batch sampling are pure JAX functions of a key, so they jit and vmap.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import deque
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# '#' wall, '.' free; row 0 is the top. Doorways: (2, 5), (9, 5), (5, 1), (6, 8).
FOUR_ROOMS = (
    ".....#.....",
    ".....#.....",
    "...........",
    ".....#.....",
    ".....#.....",
    "#.####.....",
    ".....###.##",
    ".....#.....",
    ".....#.....",
    "...........",
    ".....#.....",
)
ACTION_NAMES = ("up", "down", "left", "right", "stay")
DELTAS = ((-1, 0), (1, 0), (0, -1), (0, 1), (0, 0))
N_ACTIONS = len(DELTAS)
STAY = 4


@dataclasses.dataclass(frozen=True, eq=False)
class GridWorld:
    """Host-side tables of a grid world: cells, transitions, rooms and BFS distances.

    ``cells[i]`` is the (row, col) of state i; ``index[r, c]`` the state at a cell (-1 on
    walls); ``next_state[s, a]`` the deterministic successor; ``room[s]`` the room (0..3,
    -1 for a doorway); ``dist[s, g]`` the shortest-path length (in moves).
    """

    layout: tuple
    cells: np.ndarray
    index: np.ndarray
    next_state: np.ndarray
    room: np.ndarray
    dist: np.ndarray

    @property
    def n_states(self) -> int:
        return len(self.cells)

    def state(self, row: int, col: int) -> int:
        """The state index of a free cell; ValueError on a wall or off the grid."""
        h, w = self.index.shape
        if not (0 <= row < h and 0 <= col < w) or self.index[row, col] < 0:
            raise ValueError(f"({row}, {col}) is not a free cell of the grid")
        return int(self.index[row, col])

    def optimal_action_mask(self) -> np.ndarray:
        """mask[s, g, a]: action a starts a shortest path from s to g (at s = g only "stay")."""
        d_next = self.dist[self.next_state]  # (s, a, g)
        mask = d_next == self.dist[:, None, :] - 1
        mask = np.transpose(mask, (0, 2, 1)).copy()
        diag = np.arange(self.n_states)
        mask[diag, diag, :] = False
        mask[diag, diag, STAY] = True
        return mask


def make_grid(layout=FOUR_ROOMS) -> GridWorld:
    """Build the tables of a grid from its rows ('#' wall, '.' free); ValueError if malformed."""
    rows = tuple(layout)
    if not rows or len({len(r) for r in rows}) != 1 or any(set(r) - {"#", "."} for r in rows):
        raise ValueError("layout must be equal-length rows of '#' and '.'")
    grid = np.array([[c == "." for c in r] for r in rows])
    h, w = grid.shape
    cells = np.argwhere(grid)
    if len(cells) < 2:
        raise ValueError("layout needs at least two free cells")
    index = -np.ones((h, w), np.int32)
    index[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
    nxt = np.zeros((len(cells), N_ACTIONS), np.int32)
    for s, (r, c) in enumerate(cells):
        for a, (dr, dc) in enumerate(DELTAS):
            rr, cc = r + dr, c + dc
            ok = 0 <= rr < h and 0 <= cc < w and grid[rr, cc]
            nxt[s, a] = index[rr, cc] if ok else s
    dist = _bfs_all(nxt)
    if (dist < 0).any():
        raise ValueError("layout is not connected")
    return GridWorld(rows, cells.astype(np.int32), index, nxt, _rooms(rows, cells, index, nxt), dist)


def four_rooms() -> GridWorld:
    return make_grid(FOUR_ROOMS)


def _bfs_all(nxt: np.ndarray) -> np.ndarray:
    """All-pairs shortest-path lengths by one breadth-first search per source (-1: unreachable)."""
    n = nxt.shape[0]
    dist = -np.ones((n, n), np.int32)
    for src in range(n):
        dist[src, src] = 0
        queue = deque([src])
        while queue:
            u = queue.popleft()
            for v in nxt[u]:
                if dist[src, v] < 0:
                    dist[src, v] = dist[src, u] + 1
                    queue.append(v)
    return dist


def _rooms(rows, cells, index, nxt) -> np.ndarray:
    """Room labels: a doorway is a free cell with walls on both sides along one axis; rooms
    are the connected components of the other free cells."""
    h, w = len(rows), len(rows[0])

    def wall(r, c):
        return not (0 <= r < h and 0 <= c < w) or rows[r][c] == "#"

    door = np.array([(wall(r - 1, c) and wall(r + 1, c)) or (wall(r, c - 1) and wall(r, c + 1))
                     for r, c in cells])
    room = -np.ones(len(cells), np.int32)
    label = 0
    for s in range(len(cells)):
        if door[s] or room[s] >= 0:
            continue
        room[s] = label
        queue = deque([s])
        while queue:
            u = queue.popleft()
            for v in nxt[u]:
                if not door[v] and room[v] < 0:
                    room[v] = label
                    queue.append(v)
        label += 1
    return room


# ----------------------------------------------------------------------------- exact references


def optimal_return_bfs(dist, gamma: float, horizon: int):
    """Optimal discounted return without slip: sum_{d <= t < horizon} gamma^t (0 if d >= horizon)."""
    d = np.asarray(dist, np.float64)
    ret = (gamma ** d - gamma ** horizon) / (1.0 - gamma)
    return np.where(d < horizon, ret, 0.0)


def optimal_values(world: GridWorld, gamma: float, horizon: int, slip: float = 0.0):
    """Finite-horizon dynamic programming for every (start, goal): (best expected discounted
    return, best success probability P(s_horizon = g)), each (n_states, n_states) [s, g]."""
    _check_prob("slip", slip)
    n = world.n_states
    # P[s, a, s']: the chosen move with prob. 1 - slip, a uniformly random one with prob. slip
    onehot = np.eye(n)[world.next_state]
    P = (1.0 - slip) * onehot + slip * onehot.mean(axis=1, keepdims=True)
    eye = np.eye(n)  # eye[s, g] = r(s, g)
    v_ret = np.zeros((n, n))  # value at t = horizon (no reward collected at s_horizon)
    v_suc = eye.copy()
    for t in reversed(range(horizon)):
        v_ret = (gamma ** t) * eye + np.einsum("sap,pg->sag", P, v_ret).max(axis=1)
        v_suc = np.einsum("sap,pg->sag", P, v_suc).max(axis=1)
    return v_ret, v_suc


# ----------------------------------------------------------------------------- dynamics and rollouts


def env_step(key, next_state, s, a, slip: float = 0.0):
    """s' for states s and actions a (any shape); with prob. ``slip`` the action is random."""
    if slip > 0.0:
        k1, k2 = jax.random.split(key)
        rand_a = jax.random.randint(k1, jnp.shape(a), 0, N_ACTIONS)
        a = jnp.where(jax.random.uniform(k2, jnp.shape(a)) < slip, rand_a, a)
    return jnp.asarray(next_state)[s, a]


def rollout(key, next_state, act_fn, starts, goals, horizon: int = 50, slip: float = 0.0):
    """States (B, horizon + 1) of the closed loop a_t = act_fn(key_t, s_t, g)."""
    def body(s, k):
        ka, ks = jax.random.split(k)
        s_next = env_step(ks, next_state, s, act_fn(ka, s, goals), slip)
        return s_next, s_next

    _, traj = jax.lax.scan(body, starts, jax.random.split(key, horizon))
    return jnp.concatenate([starts[None], traj], 0).T


def episode_metrics(states, goals, dist, gamma: float):
    """Per-episode (success, discounted return, final distance) of a (B, T + 1) state array."""
    horizon = states.shape[1] - 1
    at_goal = (states[:, :horizon] == goals[:, None]).astype(jnp.float32)
    ret = (at_goal * gamma ** jnp.arange(horizon)).sum(1)
    final = states[:, -1]
    return (final == goals).astype(jnp.float32), ret, jnp.asarray(dist)[final, goals].astype(jnp.float32)


def table_policy(actions):
    """An act_fn from a table actions[s, g] (a deterministic policy)."""
    actions = jnp.asarray(actions)
    return lambda key, s, g: actions[s, g]


@functools.partial(jax.jit, static_argnames=("horizon", "slip", "gamma"))
def evaluate_table_policy(key, next_state, dist, actions, starts, goals, horizon: int = 50,
                          slip: float = 0.0, gamma: float = 0.99):
    """Per-pair (success, discounted return, final distance) of the policy actions[s, g]."""
    states = rollout(key, next_state, table_policy(actions), starts, goals, horizon, slip)
    return episode_metrics(states, goals, dist, gamma)


def eval_pairs(world: GridWorld, split: str = "all"):
    """(starts, goals) of every ordered pair s != g; ``hard``: both in rooms (not doorways),
    in different rooms."""
    s, g = np.meshgrid(np.arange(world.n_states), np.arange(world.n_states), indexing="ij")
    s, g = s.ravel(), g.ravel()
    keep = s != g
    if split == "hard":
        keep &= (world.room[s] >= 0) & (world.room[g] >= 0) & (world.room[s] != world.room[g])
    elif split != "all":
        raise ValueError(f"split must be 'all' or 'hard', got {split!r}")
    return s[keep].astype(np.int32), g[keep].astype(np.int32)


# ----------------------------------------------------------------------------- offline data


class Dataset(NamedTuple):
    """Trajectories: ``obs`` (n, T + 1) states, ``actions`` (n, T), the commanded ``goals`` (n,)
    and ``expert`` (n,) flags."""

    obs: jax.Array
    actions: jax.Array
    goals: jax.Array
    expert: jax.Array


def _check_prob(name, p):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")


def generate_dataset(key, world: GridWorld, n_traj: int, expert_fraction: float, length: int = 50,
                     eps: float = 0.2, slip: float = 0.0) -> Dataset:
    """Offline data: round(expert_fraction * n_traj) noisy-expert trajectories (a uniformly random
    shortest-path action toward the commanded goal, a uniformly random action with prob. eps)
    and random walks (uniform actions) for the rest. Starts are uniform over free cells,
    commanded goals uniform over the other cells; every trajectory has ``length`` steps."""
    if n_traj < 1 or length < 1:
        raise ValueError(f"n_traj and length must be >= 1, got {n_traj}, {length}")
    _check_prob("expert_fraction", expert_fraction)
    _check_prob("eps", eps)
    _check_prob("slip", slip)
    n_expert = int(round(expert_fraction * n_traj))
    opt_logits = jnp.where(jnp.asarray(world.optimal_action_mask()), 0.0, -jnp.inf)
    return _generate(key, jnp.asarray(world.next_state), opt_logits, n_traj, n_expert, length, eps, slip)


@functools.partial(jax.jit, static_argnames=("n_traj", "length", "eps", "slip"))
def _generate(key, nxt, opt_logits, n_traj, n_expert, length, eps, slip):
    n = nxt.shape[0]
    k_start, k_goal, k_roll = jax.random.split(key, 3)
    starts = jax.random.randint(k_start, (n_traj,), 0, n)
    goals = (starts + jax.random.randint(k_goal, (n_traj,), 1, n)) % n  # uniform over g != s
    expert = jnp.arange(n_traj) < n_expert

    def body(s, k):
        k_opt, k_rand, k_eps, k_env = jax.random.split(k, 4)
        a_opt = jax.random.categorical(k_opt, opt_logits[s, goals])
        a_rand = jax.random.randint(k_rand, (n_traj,), 0, N_ACTIONS)
        use_opt = expert & (jax.random.uniform(k_eps, (n_traj,)) >= eps)
        a = jnp.where(use_opt, a_opt, a_rand)
        s_next = env_step(k_env, nxt, s, a, slip)
        return s_next, (s_next, a)

    _, (states, actions) = jax.lax.scan(body, starts, jax.random.split(k_roll, length))
    obs = jnp.concatenate([starts[None], states], 0).T
    return Dataset(obs.astype(jnp.int32), actions.T.astype(jnp.int32), goals.astype(jnp.int32), expert)


class Batch(NamedTuple):
    s: jax.Array
    a: jax.Array
    s_next: jax.Array
    g: jax.Array


def sample_her(key, data: Dataset, batch_size: int, p_future: float = 0.8) -> Batch:
    """Transitions (s_t, a_t, s_{t+1}) uniform over the data, with hindsight goals: with prob.
    ``p_future`` a state s_k, k uniform in t+1..T, of the same trajectory, else the commanded goal."""
    n, T = data.actions.shape
    ki, kt, kk, kf = jax.random.split(key, 4)
    i = jax.random.randint(ki, (batch_size,), 0, n)
    t = jax.random.randint(kt, (batch_size,), 0, T)
    k = t + 1 + jnp.floor(jax.random.uniform(kk, (batch_size,)) * (T - t)).astype(jnp.int32)
    future = jax.random.uniform(kf, (batch_size,)) < p_future
    g = jnp.where(future, data.obs[i, jnp.minimum(k, T)], data.goals[i])
    return Batch(data.obs[i, t], data.actions[i, t], data.obs[i, t + 1], g)


def sample_goal_transitions(key, data: Dataset, batch_size: int) -> Batch:
    """The goal-transition batch G: transitions uniform over the data with g = s_{t+1}
    (every one of them achieves its goal)."""
    n, T = data.actions.shape
    ki, kt = jax.random.split(key)
    i = jax.random.randint(ki, (batch_size,), 0, n)
    t = jax.random.randint(kt, (batch_size,), 0, T)
    s_next = data.obs[i, t + 1]
    return Batch(data.obs[i, t], data.actions[i, t], s_next, s_next)


def support_distances(world: GridWorld, data: Dataset) -> np.ndarray:
    """Shortest paths using only the (s, a, g) triples the hindsight sampler can draw from the
    data (g a later state of the same trajectory or its commanded goal), deterministic grid.

    A tabular learner never sees any other triple, so this is the reference for what the data
    supports (``inf`` where it supports no path). Entry [g, g] is 0 if the data holds an action
    that keeps g at g (so an agent can stay), else ``inf``."""
    obs, act, goals = np.asarray(data.obs), np.asarray(data.actions), np.asarray(data.goals)
    n, T = world.n_states, act.shape[1]
    cov = np.zeros((n, n, N_ACTIONS), bool)  # [s, g, a]
    cov[obs[:, :T], goals[:, None], act] = True
    for t in range(T):
        cov[obs[:, t:t + 1], obs[:, t + 1:], act[:, t:t + 1]] = True
    ok = np.transpose(cov, (0, 2, 1))  # [s, a, g]
    dist = np.full((n, n), np.inf)
    diag = np.arange(n)
    stays = (ok & (world.next_state[:, :, None] == diag[:, None, None]))[diag, :, diag].any(-1)
    dist[diag, diag] = np.where(stays, 0.0, np.inf)
    for _ in range(n):
        cand = np.where(ok, 1.0 + dist[world.next_state], np.inf).min(1)
        cand[diag, diag] = dist[diag, diag]
        new = np.minimum(dist, cand)
        if (new == dist).all():
            break
        dist = new
    return dist
