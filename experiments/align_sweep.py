"""The ring comparison of AWM and the DDPO / Flow-GRPO baseline, over learning rates and seeds, and
AWM's beta sweep (issue 4, demonstration 1).

One pretrained ring model is shared by every run. Per (method, lr, seed): the per-epoch reward
(fraction of rollouts in the rewarded modes) and drift E||v - v_ref||^2 at t = 0.5, the epoch
the reward first reaches ``target``, stability (no NaN, the reward never more than 0.1 below
its best so far), and on 4096 final ODE samples the reward, the off-manifold mass and the
balance of the two rewarded modes (the KL-regularised optimum p* ~ p_ref exp(r / beta) keeps
them 1:1). Writes ``results.json``, ``table.md`` and ``curves.png``.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from . import align as A
from diffalign.config import build, field
from diffalign.results import begin, write_json, write_results

NAME = "align-sweep"
DESCRIPTION = "AWM vs the DDPO / Flow-GRPO baseline on the ring: learning rates x seeds, and AWM's beta sweep."


@dataclasses.dataclass(frozen=True)
class Config:
    epochs: int = field(150, "RL epochs per run")
    lrs: tuple[float, ...] = field((1e-4, 3e-4, 1e-3, 3e-3), "learning rates, for both methods")
    seeds: tuple[int, ...] = field((0, 1, 2), "RL seeds")
    methods: tuple[str, ...] = field(("awm", "ddpo"), "methods compared")
    betas: tuple[float, ...] = field((0.001, 0.05, 0.2), "AWM's beta sweep (at beta_lr)")
    beta_lr: float = field(1e-3, "learning rate of the beta sweep")
    plateau_epochs: int = field(20, "the plateau reward and drift are means over the last this many epochs")
    target: float = field(0.9, "reward level for epochs_to_target")
    pretrain_steps: int = field(4000, "flow-matching pretraining steps")

    def smoke(self) -> "Config":
        return dataclasses.replace(self, epochs=4, lrs=(1e-3,), seeds=(0,), betas=(0.001, 0.2), pretrain_steps=100,
                                   plateau_epochs=2)


def _one(cfg: Config, task, apply_fn, ref, method, lr, seed, beta):
    rc = build(A.Config, task="ring", method=method, epochs=cfg.epochs, lr=lr, seed=seed, beta=beta, target=cfg.target,
                     pretrain_steps=cfg.pretrain_steps)
    t0 = time.perf_counter()
    state, params, rows, summary = A.align_run(rc, task, apply_fn, ref, None, progress=False)
    if state is None:  # diverged: the epochs it ran are kept, the final evaluation is not possible
        final = {"in_target": float("nan"), "off_manifold": float("nan"), "mode0_share": float("nan"),
                 "mode1_share": float("nan")}
    else:
        _, final = A.evaluate(task, apply_fn, params, 4096, 777)
    reward = [r["in_target"] for r in rows]
    drift = [r["drift"] for r in rows]
    shares = final["mode0_share"], final["mode1_share"]
    p = cfg.plateau_epochs
    return {
        "method": method, "lr": lr, "seed": seed, "beta": beta if method == "awm" else None,
        "epochs_to_target": A.first_epoch_at(reward, cfg.target), "diverged_at": summary.get("diverged_at"),
        "stable": state is not None and A.stability(reward),
        "final_reward": final["in_target"], "off_manifold": final["off_manifold"],
        "rewarded_mode_balance": shares[0] / max(sum(shares), 1e-9),
        "plateau_reward": float(np.mean(reward[-p:])), "plateau_drift": float(np.mean(drift[-p:])),
        "max_drift": float(np.nanmax(drift)), "drift_at_saturation": _drift_after_saturation(reward, drift, cfg),
        "epoch_s": summary["train_s"] / max(summary["steps_run"], 1) if state is not None else None,
        "compile_s": summary["compile_s"],
        "wall_s": time.perf_counter() - t0, "reward_curve": reward, "drift_curve": drift,
    }


def _drift_after_saturation(reward, drift, cfg):
    """(drift at the first epoch the reward reaches the target, the mean drift of the plateau) or None."""
    e = A.first_epoch_at(reward, cfg.target)
    return None if e is None else (drift[e - 1], float(np.mean(drift[-cfg.plateau_epochs:])))


def summarise(rows, cfg: Config) -> dict:
    """Per (method, lr): medians over seeds; per method: the best stable lr (all seeds stable,
    fewest median epochs to the target); and the ratio of the baseline's epochs to AWM's."""
    out = {"per_lr": [], "best": {}}
    for method in cfg.methods:
        best = None
        for lr in cfg.lrs:
            rs = [r for r in rows if r["method"] == method and r["lr"] == lr and r["beta"] in (None, cfg.betas[0])]
            if not rs:
                continue
            ett = [r["epochs_to_target"] for r in rs]
            reached = [e for e in ett if e is not None]
            entry = {
                "method": method, "lr": lr, "seeds": len(rs),
                "epochs_to_target": ett,
                "median_epochs_to_target": float(np.median(reached)) if len(reached) == len(rs) else None,
                "all_stable": all(r["stable"] for r in rs),
                "final_reward": [r["final_reward"] for r in rs],
                "off_manifold": [r["off_manifold"] for r in rs],
                "rewarded_mode_balance": [r["rewarded_mode_balance"] for r in rs],
                "plateau_drift": [r["plateau_drift"] for r in rs],
                "median_epoch_s": float(np.median([r["epoch_s"] for r in rs if r["epoch_s"] is not None] or [np.nan])),
            }
            out["per_lr"].append(entry)
            if entry["all_stable"] and entry["median_epochs_to_target"] is not None:
                if best is None or entry["median_epochs_to_target"] < best["median_epochs_to_target"]:
                    best = entry
        out["best"][method] = best
    b = out["best"]
    if b.get("awm") and b.get("ddpo"):
        out["baseline_over_awm_epochs"] = b["ddpo"]["median_epochs_to_target"] / b["awm"]["median_epochs_to_target"]
    betas = []
    for beta in cfg.betas:
        rs = [r for r in rows if r["method"] == "awm" and r["lr"] == cfg.beta_lr and r["beta"] == beta]
        if rs:
            betas.append({"beta": beta, "plateau_reward": float(np.median([r["plateau_reward"] for r in rs])),
                          "plateau_drift": float(np.median([r["plateau_drift"] for r in rs])),
                          "rewarded_mode_balance": float(np.median([r["rewarded_mode_balance"] for r in rs])),
                          "seeds": len(rs)})
    out["beta_sweep"] = betas
    pr = [b_["plateau_reward"] for b_ in betas]
    pd = [b_["plateau_drift"] for b_ in betas]
    out["beta_monotone"] = bool(len(betas) > 1 and all(np.diff(pr) < 0) and all(np.diff(pd) < 0))
    return out


def run(cfg: Config, out: str, smoke: bool = False) -> dict:
    cfg, out, timer = begin(cfg, out, smoke)
    base_cfg = A.Config(task="ring", pretrain_steps=cfg.pretrain_steps)
    task = A.Task(base_cfg)
    with timer("pretrain"):
        apply_fn, ref, _ = A.pretrain(task, base_cfg, os.path.join(out, "pretrain"))
    _, base = A.evaluate(task, apply_fn, ref, 4096, 777)
    rows = []
    jobs = [(m, lr, s, cfg.betas[0]) for m in cfg.methods for lr in cfg.lrs for s in cfg.seeds]
    jobs += [("awm", cfg.beta_lr, s, b) for b in cfg.betas[1:] for s in cfg.seeds]
    from tqdm.auto import tqdm

    with timer("runs"):
        for m, lr, s, b in tqdm(jobs, desc="runs"):
            rows.append(_one(cfg, task, apply_fn, ref, m, lr, s, b))
            write_json(os.path.join(out, "runs.json"), rows)  # partial results survive a crash
    summary = summarise(rows, cfg)
    _table(os.path.join(out, "table.md"), summary, base)
    picture = _plot(os.path.join(out, "curves.png"), rows, summary, cfg)
    metrics = {"baseline_over_awm_epochs": summary.get("baseline_over_awm_epochs"),
               "beta_monotone": summary["beta_monotone"], "base_reward": base["in_target"],
               "base_off_manifold": base["off_manifold"]}
    write_results(out, experiment=NAME, config=cfg, metrics=metrics, timings=timer.times,
                  extra={"smoke": smoke, "summary": summary, "base": base, "runs": rows, "picture": picture})
    return metrics


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _table(path, summary, base):
    lines = [f"Base model: reward {base['in_target']:.3f}, off-manifold {base['off_manifold']:.3f}, "
             f"rewarded-mode balance {base['mode0_share'] / (base['mode0_share'] + base['mode1_share']):.3f}", "",
             "| method | lr | epochs to 0.9 (per seed) | all stable | final reward | off-manifold | mode balance | plateau drift | s/epoch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in summary["per_lr"]:
        lines.append(f"| {e['method']} | {e['lr']:g} | {_fmt(e['epochs_to_target'])} | {e['all_stable']} | "
                     f"{_fmt(e['final_reward'])} | {_fmt(e['off_manifold'])} | {_fmt(e['rewarded_mode_balance'])} | "
                     f"{_fmt(e['plateau_drift'])} | {e['median_epoch_s']:.3f} |")
    lines += ["", "| AWM beta | plateau reward | plateau drift | mode balance |", "|---|---|---|---|"]
    for b in summary["beta_sweep"]:
        lines.append(f"| {b['beta']:g} | {b['plateau_reward']:.3f} | {b['plateau_drift']:.3f} | {b['rewarded_mode_balance']:.3f} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _plot(path, rows, summary, cfg):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = {"awm": "tab:blue", "ddpo": "tab:red"}
    for method, best in summary["best"].items():
        if best is None:
            continue
        for r in rows:
            if r["method"] == method and r["lr"] == best["lr"] and r["beta"] in (None, cfg.betas[0]):
                label = f"{method} lr {best['lr']:g}" if r["seed"] == cfg.seeds[0] else None
                axes[0].plot(r["reward_curve"], color=colors.get(method), alpha=0.7, label=label)
                axes[1].plot(r["drift_curve"], color=colors.get(method), alpha=0.7, label=label)
    axes[0].axhline(cfg.target, ls=":", c="gray")
    axes[0].set(xlabel="epoch", ylabel="fraction in rewarded modes", title="best stable lr, all seeds")
    axes[1].set(xlabel="epoch", ylabel="E||v - v_ref||^2 at t = 0.5", yscale="log", title="drift")
    for b in cfg.betas:
        for r in rows:
            if r["method"] == "awm" and r["lr"] == cfg.beta_lr and r["beta"] == b and r["seed"] == cfg.seeds[0]:
                axes[2].plot(r["reward_curve"], label=f"beta {b:g}")
    axes[2].set(xlabel="epoch", ylabel="fraction in rewarded modes", title=f"AWM beta sweep (lr {cfg.beta_lr:g})")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.path.basename(path)
