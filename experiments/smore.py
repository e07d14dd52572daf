"""SMORe against goal-conditioned behaviour cloning on the four-rooms grid world.

For each expert fraction and seed: generate the offline data (noisy-expert and random-walk
trajectories), train SMORe and GCBC on it (tabular, same data, same training key; with ``--gcbc-mlp`` also
GCBC with an MLP that generalises across goals, a stronger baseline), and
evaluate both greedy policies from every ordered (start, goal) pair of distinct cells (and the
hard split: start and goal in different rooms) for ``horizon`` steps: success (final state =
goal), discounted return sum_t gamma^t 1[s_t = g] and the final BFS distance. The optimum
comes from the exact references (BFS; finite-horizon dynamic programming with slip).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffalign.gcrl import gridworld as G
from diffalign.gcrl import smore as S

from diffalign.config import field, require_positive, validate_choices
from diffalign.results import begin, write_results

NAME = "smore"
DESCRIPTION = (
    "SMORe (score models for offline goal-conditioned RL) and goal-conditioned behaviour cloning "
    "on an 11x11 four-rooms grid with offline data generated from a seed; success, discounted "
    "return and final distance against the exact shortest-path optimum, over expert fractions and seeds."
)
METHODS = ("smore", "gcbc", "gcsl", "gcbc_mlp")
LABELS = {"smore": "SMORe", "gcbc": "GCBC", "gcsl": "GCBC, future goals only (GCSL-style)", "gcbc_mlp": "GCBC (MLP)"}
GAP_SUFFIX = {"gcbc": "", "gcsl": "_gcsl", "gcbc_mlp": "_mlp"}
SPLITS = ("all", "hard")


@dataclasses.dataclass(frozen=True)
class Config:
    fractions: tuple[float, ...] = field((0.5, 0.1, 0.02), "expert fractions of the offline data")
    seeds: tuple[int, ...] = field((0, 1, 2), "seeds (data and training)")
    n_traj: int = field(2000, "trajectories in the offline data")
    length: int = field(50, "steps per data trajectory")
    expert_eps: float = field(0.2, "the noisy expert's probability of a random action")
    slip: float = field(0.0, "probability that the environment replaces an action by a random one")
    horizon: int = field(50, "evaluation episode length")
    gamma: float = field(0.99, "discount (training and the discounted-return metric)")
    loss: str = field("stable", "SMORe score loss: the code's bounded variant or the paper's", choices=S.LOSSES)
    alpha: float = field(1e-4, "weight of the E_D[S] term (scaled by 1 - gamma in the stable loss)")
    expectile: float = field(0.9, "expectile of M")
    kappa: float = field(3.0, "AWR temperature")
    max_weight: float = field(100.0, "AWR weight clip")
    tau: float = field(0.05, "Polyak rate of the score targets")
    p_future: float = field(0.8, "probability of a future-state hindsight goal")
    batch_size: int = field(1024, "batch size (each of D and G)")
    steps: int = field(30_000, "SMORe training steps")
    gcbc_steps: int = field(30_000, "GCBC training steps (tables; as many as SMORe's by default)")
    lr_critic: float = field(0.3, "peak Adam learning rate of the S and M tables")
    lr_actor: float = field(0.1, "peak Adam learning rate of SMORe's policy table")
    gcbc_lr: float = field(0.1, "peak Adam learning rate of the GCBC tables")
    lr_decay: bool = field(True, "cosine decay of the learning rates to zero (SMORe and the GCBC tables)")
    gcbc_mlp: bool = field(False, "also train GCBC with an MLP on (s, g) embeddings, a stronger baseline that "
                                  "generalises across goals (about 20 s per fraction and seed)")
    mlp_steps: int = field(5_000, "training steps of the MLP GCBC")
    mlp_lr: float = field(1e-3, "peak Adam learning rate of the MLP GCBC (cosine decay)")
    mlp_width: int = field(256, "hidden width of the MLP GCBC")
    log_every: int = field(1000, "steps per logged training-metrics window")

    def __post_init__(self):
        validate_choices(self)
        require_positive(self, "n_traj", "length", "horizon", "batch_size", "steps", "gcbc_steps", "log_every",
                         "mlp_steps", "mlp_width")
        if not self.fractions:
            raise ValueError("fractions must not be empty")
        for f in self.fractions:
            if not 0.0 <= f <= 1.0:
                raise ValueError(f"every expert fraction must be in [0, 1], got {f}")
        if len(set(self.fractions)) != len(self.fractions):
            raise ValueError(f"fractions must be distinct, got {self.fractions}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be non-empty and distinct, got {self.seeds}")
        for name in ("expert_eps", "slip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        self.smore_config()  # the learners validate their own settings
        self.gcbc_config()
        self.mlp_config()

    def smore_config(self) -> S.SMOReConfig:
        return S.SMOReConfig(
            loss=self.loss, gamma=self.gamma, alpha=self.alpha, expectile=self.expectile, kappa=self.kappa,
            max_weight=self.max_weight, tau=self.tau, p_future=self.p_future, batch_size=self.batch_size,
            steps=self.steps, lr_critic=self.lr_critic, lr_actor=self.lr_actor, decay=self.lr_decay)

    def gcbc_config(self, p_future: float | None = None) -> S.GCBCConfig:
        return S.GCBCConfig(p_future=self.p_future if p_future is None else p_future, batch_size=self.batch_size,
                            steps=self.gcbc_steps, lr=self.gcbc_lr, decay=self.lr_decay)

    def mlp_config(self) -> S.GCBCConfig:
        return S.GCBCConfig(p_future=self.p_future, batch_size=self.batch_size, steps=self.mlp_steps, lr=self.mlp_lr)

    def methods(self) -> tuple:
        return METHODS if self.gcbc_mlp else METHODS[:3]

    def smoke(self) -> "Config":
        return dataclasses.replace(self, seeds=self.seeds[:1], n_traj=200, steps=300, gcbc_steps=100,
                                   mlp_steps=100, batch_size=256, log_every=100)


def frac_key(f: float) -> str:
    """The stable metrics key of an expert fraction: 0.1 -> 'expert_0.1'."""
    return f"expert_{f:g}"


def evaluate_policy(key, world, actions, slip, horizon, gamma, pairs):
    """{split: {success, return, final_distance}} of the deterministic policy actions[s, g]."""
    out = {}
    for split, (s, g) in pairs.items():
        suc, ret, fd = G.evaluate_table_policy(key, world.next_state, world.dist, actions, jnp.asarray(s),
                                               jnp.asarray(g), horizon, slip, gamma)
        out[split] = {"success": float(suc.mean()), "return": float(ret.mean()), "final_distance": float(fd.mean())}
    return out


def _support(world, data, pairs, cfg):
    """The best success and return of a policy that only uses (s, a, g) triples of the data
    (deterministic grid): what the data supports for a tabular learner."""
    d = G.support_distances(world, data)
    out = {}
    for split, (s, g) in pairs.items():
        ds = d[s, g]
        r = {"success": float((ds <= cfg.horizon).mean()),
             # no supported path: return 0, which the formula gives at d = horizon
             "return": float(G.optimal_return_bfs(np.where(np.isfinite(ds), ds, cfg.horizon),
                                                  cfg.gamma, cfg.horizon).mean())}
        if split == "all":
            out.update(r)
        else:
            out["hard"] = r
    return out


def _spread(values):
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def _summarise(per_seed):
    """Mean metrics at the top level (``success``, ``return``, ``final_distance``, and ``hard``),
    spread over seeds under ``spread`` and the per-seed values under ``per_seed``."""
    out, spread = {}, {}
    for split in SPLITS:
        dst = out if split == "all" else out.setdefault("hard", {})
        for m in ("success", "return", "final_distance"):
            sp = _spread([r[split][m] for r in per_seed])
            dst[m] = sp["mean"]
            spread[m if split == "all" else f"hard_{m}"] = sp
    out["spread"] = spread
    out["per_seed"] = per_seed
    return out


def run(cfg: Config, out: str, smoke: bool = False) -> dict:
    cfg, out, timer = begin(cfg, out, smoke)
    world = G.four_rooms()
    pairs = {split: G.eval_pairs(world, split) for split in SPLITS}
    scfg, gcfg, mcfg = cfg.smore_config(), cfg.gcbc_config(), cfg.mlp_config()
    gcsl_cfg = cfg.gcbc_config(p_future=1.0)
    methods = cfg.methods()

    with timer("optimum"):
        v_ret, v_suc = G.optimal_values(world, cfg.gamma, cfg.horizon, cfg.slip)
        optimal = {}
        for split, (s, g) in pairs.items():
            m = {"success": float(v_suc[s, g].mean()), "return": float(v_ret[s, g].mean()),
                 "final_distance": 0.0 if cfg.slip == 0 else None, "pairs": int(len(s)),
                 "mean_shortest_path": float(world.dist[s, g].mean())}
            if split == "all":
                optimal.update(m)
            else:
                optimal["hard"] = m
    metrics = {"optimal": optimal}
    train_log = {}
    for frac in cfg.fractions:
        per = {m: [] for m in methods}
        diag, support = [], []
        for seed in cfg.seeds:
            # the data of (seed, fraction) does not depend on which other fractions run
            base = jax.random.fold_in(jax.random.key(seed), int(round(frac * 1_000_000)))
            k_data, k_train, k_eval = jax.random.split(base, 3)
            with timer("data"):
                data = G.generate_dataset(k_data, world, cfg.n_traj, frac, cfg.length, cfg.expert_eps, cfg.slip)
                jax.block_until_ready(data)
            if cfg.slip == 0.0:
                with timer("support"):
                    support.append({"seed": seed, **_support(world, data, pairs, cfg)})
            with timer("train_smore"):
                st, log_s = S.train_smore(k_train, data, world.n_states, scfg, cfg.log_every)
                jax.block_until_ready(st)
            with timer("train_gcbc"):
                sb, log_b = S.train_gcbc(k_train, data, world.n_states, gcfg, cfg.log_every)
                jax.block_until_ready(sb)
            with timer("train_gcsl"):
                sf, _ = S.train_gcbc(k_train, data, world.n_states, gcsl_cfg, cfg.log_every)
                jax.block_until_ready(sf)
            logits = {"smore": st.params["pi"], "gcbc": sb.params["pi"], "gcsl": sf.params["pi"]}
            if cfg.gcbc_mlp:
                with timer("train_gcbc_mlp"):
                    # its own key: switching it on or off leaves the other methods' numbers alone
                    logits["gcbc_mlp"], log_m = S.train_gcbc_mlp(jax.random.fold_in(k_train, 1), data, world.n_states,
                                                                 mcfg, cfg.mlp_width, cfg.log_every)
                    jax.block_until_ready(logits["gcbc_mlp"])
            with timer("evaluate"):
                k_tie, k_roll = jax.random.split(k_eval)
                for name in methods:
                    acts = S.greedy_actions(k_tie, logits[name])
                    r = evaluate_policy(k_roll, world, acts, cfg.slip, cfg.horizon, cfg.gamma, pairs)
                    per[name].append({"seed": seed, **r})
            diag.append({"seed": seed, "expert_trajectories": int(np.asarray(data.expert).sum()),
                         "S_goal_transitions": float(log_s["S_goal"][-1]),
                         "S_data_transitions": float(log_s["S_data"][-1]),
                         "awr_weight_clipped": float(log_s["weight_clipped"][-1]),
                         "gcbc_final_loss": float(log_b["bc_loss"][-1]),
                         **({"gcbc_mlp_final_loss": float(log_m["bc_loss"][-1])} if cfg.gcbc_mlp else {})})
            train_log[f"{frac_key(frac)}/seed_{seed}"] = {
                "smore": {k: np.asarray(v).tolist() for k, v in log_s.items()},
                "gcbc": {k: np.asarray(v).tolist() for k, v in log_b.items()}}
        entry = {name: _summarise(per[name]) for name in methods}
        for base in methods[1:]:
            suffix = GAP_SUFFIX[base]
            for m in ("success", "return"):
                gaps = [a["all"][m] - b["all"][m] for a, b in zip(per["smore"], per[base])]
                entry[f"gap{suffix}_{m}"] = _spread(gaps)
        if support:
            entry["data_support"] = {
                "success": _spread([r["success"] for r in support])["mean"],
                "return": _spread([r["return"] for r in support])["mean"],
                "hard": {m: _spread([r["hard"][m] for r in support])["mean"] for m in ("success", "return")},
                "per_seed": support}
        entry["diagnostics"] = diag
        metrics[frac_key(frac)] = entry
        print(f"expert {frac:g}: smore success {entry['smore']['success']:.3f} return {entry['smore']['return']:.2f} | "
              f"gcbc success {entry['gcbc']['success']:.3f} return {entry['gcbc']['return']:.2f} | "
              f"gcsl success {entry['gcsl']['success']:.3f} return {entry['gcsl']['return']:.2f} | "
              + (f"gcbc-mlp success {entry['gcbc_mlp']['success']:.3f} return {entry['gcbc_mlp']['return']:.2f} | "
                 if cfg.gcbc_mlp else "") +
              f"data support {entry.get('data_support', {}).get('success', float('nan')):.3f} | "
              f"optimum {optimal['success']:.3f} / {optimal['return']:.2f}", flush=True)

    pictures = []
    with timer("plot"):
        pictures.append(_plot(cfg, metrics, os.path.join(out, "success_vs_expert.png")))
    write_results(out, experiment=NAME, config=cfg, metrics=metrics, timings=timer.times,
                  extra={"smoke": smoke, "pictures": pictures, "train_log": train_log,
                         "eval": {"pairs": {k: int(len(v[0])) for k, v in pairs.items()},
                                  "policy": "greedy (argmax, random tie-break)", "reward": "1[s_t = g], t < horizon"}})
    summary = {}
    for frac in cfg.fractions:
        e = metrics[frac_key(frac)]
        summary[f"smore_success@{frac:g}"] = e["smore"]["success"]
        summary[f"gcbc_success@{frac:g}"] = e["gcbc"]["success"]
        summary[f"gcsl_success@{frac:g}"] = e["gcsl"]["success"]
        if cfg.gcbc_mlp:
            summary[f"gcbc_mlp_success@{frac:g}"] = e["gcbc_mlp"]["success"]
    summary["optimal_success"] = optimal["success"]
    return summary


def _plot(cfg, metrics, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fracs = list(cfg.fractions)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, m, label in ((axes[0], "success", "success rate"), (axes[1], "return", "discounted return")):
        for name in cfg.methods():
            mean = [metrics[frac_key(f)][name][m] for f in fracs]
            std = [metrics[frac_key(f)][name]["spread"][m]["std"] for f in fracs]
            ax.errorbar(fracs, mean, yerr=std, marker="o", capsize=3, label=LABELS[name])
        if all("data_support" in metrics[frac_key(f)] for f in fracs):
            ax.plot(fracs, [metrics[frac_key(f)]["data_support"][m] for f in fracs], "k:", marker="x", lw=1,
                    label="data-support optimum")
        ax.axhline(metrics["optimal"][m], color="k", ls="--", lw=1, label="optimum")
        ax.set_xscale("log")
        ax.set_xticks(fracs, [f"{f:g}" for f in fracs])
        ax.minorticks_off()
        ax.set_xlabel("expert fraction")
        ax.set_ylabel(label)
    axes[0].legend()
    fig.suptitle(f"four rooms, {cfg.n_traj} trajectories, {len(cfg.seeds)} seed(s), slip {cfg.slip:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.path.basename(path)
