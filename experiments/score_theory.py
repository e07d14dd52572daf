"""Early stopping in score matching: the regression view of DSM with fixed noise draws.

Han, Razaviyayn, Xu (ICLR 2024). On p0 = 0.5 N(-2, 0.5^2) + 0.5 N(2, 0.5^2) with the OU path,
n fixed training triples (t, x_t, x0) make DSM a regression with noisy labels x0 and regression
function f*(t, x) = E[x0 | x_t = x]. For each n and each training draw this runs kernel GD with
the analytic two-layer ReLU NTK and with the empirical tangent kernel of a wide two-layer
network at its initialisation (both in closed form, every iteration at once), trains that
network itself by full-batch GD for small n, and applies a held-out DSM-loss stopping rule.
It reports the test excess risk E (f_k - f*)^2 on fresh points: its minimum over k, the
iteration k* of the minimum, its value at k = 1 and at k = k_max (about interpolation), next to
the reference numbers of the note, and plots the curves.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from diffalign.theory import score_estimation as S
from diffalign.theory import two_layer as T

from diffalign.config import field, require_positive
from diffalign.results import begin, write_results

NAME = "score-theory"
DESCRIPTION = (
    "Early stopping in score matching (Han, Razaviyayn, Xu 2024): test excess risk of kernel GD "
    "(analytic and empirical NTK) and of a wide two-layer network vs training time, for several n."
)

#: the note's kernel run (analytic NTK, mean of 3 draws; k* is the median): n -> numbers
REFERENCE = {
    100: {"best_iteration": 338, "best_excess": 0.141, "converged_excess": 0.385, "excess_at_1": 1.66},
    300: {"best_iteration": 444, "best_excess": 0.037, "converged_excess": 0.470, "excess_at_1": 1.62},
    1000: {"best_iteration": 666, "best_excess": 0.018, "converged_excess": 0.445, "excess_at_1": 1.60},
    3000: {"best_iteration": 763, "best_excess": 0.012, "converged_excess": 0.439, "excess_at_1": 1.61},
}
#: the note's network check at n = 300 (width 2 x 1024): minimum 0.034 at step 572
REFERENCE_NETWORK = {300: {"best_iteration": 572, "best_excess": 0.034}}
REFERENCE_FLOOR, REFERENCE_VAR_F = 1.107, 3.18


@dataclasses.dataclass(frozen=True)
class Config:
    ns: tuple[int, ...] = field((100, 300, 1000, 3000), "training-set sizes n")
    draws: int = field(5, "independent draws per n (training, held-out and test sets, network init)")
    n_test: int = field(4000, "fresh test points (t, x_t) for the excess risk")
    holdout_fractions: tuple[float, ...] = field(
        (1.0, 4.0), "held-out set sizes for the stopping rule, as multiples of n (nested fresh sets; the largest is the headline)")
    holdout_max: int = field(4000, "cap on the held-out set size")
    k_max: int = field(10_000_000, "last kernel-GD iteration (about interpolation)")
    points_per_decade: int = field(80, "log-grid density of recorded iterations")
    width: int = field(2048, "network width (width / 2 symmetric pairs, so f_0 = 0)")
    empirical: bool = field(True, "also run kernel GD with the network's empirical tangent kernel")
    network_max_n: int = field(300, "train the network itself for n up to this (0: never)")
    network_steps: int = field(10_000, "full-batch GD steps of the network")
    network_draws: int = field(3, "draws (the first ones) on which the network is trained")
    t_min: float = field(0.05, "smallest diffusion time")
    t_max: float = field(1.0, "largest diffusion time")
    seed: int = field(0, "base seed")

    def __post_init__(self):
        require_positive(self, "draws", "n_test", "holdout_max", "k_max", "points_per_decade", "width", "network_steps", "network_draws")
        if not self.ns or min(self.ns) < 2:
            raise ValueError(f"ns must be training-set sizes >= 2, got {self.ns}")
        if list(self.ns) != sorted(set(self.ns)):
            raise ValueError(f"ns must be distinct and increasing, got {self.ns}")
        if self.network_max_n < 0:
            raise ValueError(f"network_max_n must be >= 0, got {self.network_max_n}")
        if self.width % 2:
            raise ValueError(f"width must be even (symmetric pairs), got {self.width}")
        if not self.holdout_fractions or not all(0.0 < f <= 10.0 for f in self.holdout_fractions):
            raise ValueError(f"holdout_fractions must be in (0, 10], got {self.holdout_fractions}")
        if not 0.0 < self.t_min < self.t_max:
            raise ValueError(f"need 0 < t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}")

    def smoke(self) -> "Config":
        return dataclasses.replace(
            self, ns=(50, 100), draws=2, n_test=500, k_max=100_000, points_per_decade=20,
            width=256, network_max_n=100, network_steps=500, network_draws=2,
        )


def _draw(cfg: Config, n: int, d: int):
    """One draw: training, held-out and test sets with features and exact f* on the test set."""
    rng = np.random.default_rng([cfg.seed, n, d])
    kw = dict(mix=S.BIMODAL, t_min=cfg.t_min, t_max=cfg.t_max)
    t, xt, x0 = S.sample_triples(rng, n, **kw)
    tv, xv, x0v = S.sample_triples(rng, max(_held_out_sizes(cfg, n)), **kw)
    tt, xtt, _ = S.sample_triples(rng, cfg.n_test, **kw)
    return {
        "z": S.features(t, xt), "y": x0, "z_val": S.features(tv, xv), "y_val": x0v,
        "z_test": S.features(tt, xtt), "f_test": S.posterior_mean(S.BIMODAL, tt, xtt),
    }


def _held_out_sizes(cfg: Config, n: int) -> list[int]:
    return sorted({max(2, min(cfg.holdout_max, int(round(f * n)))) for f in cfg.holdout_fractions})


def _held_out_losses(pred, y_val, sizes) -> dict:
    """Held-out DSM loss curves on the first m held-out triples, for each size m.

    ``pred`` is (n_val, K) predictions on the held-out inputs; labels are the x0's."""
    err = (np.asarray(pred) - np.asarray(y_val)[:, None]) ** 2
    return {m: err[:m].mean(axis=0) for m in sizes}


def _kernel_curves(k_train, predict, data, ks, sizes):
    """Test excess-risk curve and held-out loss curves of kernel GD; ``predict(gd, which, ks)``."""
    gd = S.KernelGD(k_train, data["y"])
    test = S.excess_risk(predict(gd, "z_test", ks), data["f_test"])
    val = _held_out_losses(predict(gd, "z_val", ks), data["y_val"], sizes)
    return test, val, gd.lam_max


def _stats(x) -> dict:
    return {"mean": float(np.mean(x)), "std": float(np.std(x, ddof=1)) if len(x) > 1 else 0.0, "min": float(np.min(x)),
            "max": float(np.max(x))}


def _rule(ks, test_curves, val_curves, k_best, best) -> dict:
    """The held-out rule on each draw: chosen k, its test excess, and how far it is from k*."""
    rule = [S.held_out_stop(ks, v) for v in val_curves]
    k_rule = np.array([k for k, _ in rule])
    ex_rule = np.array([c[i] for c, (_, i) in zip(test_curves, rule)])
    factor = np.maximum(k_rule / k_best, k_best / k_rule)
    return {
        "iteration": float(np.median(k_rule)),
        "iteration_per_draw": k_rule.tolist(),
        "excess": float(ex_rule.mean()),
        "excess_spread": _stats(ex_rule),
        "excess_over_oracle_best": float(ex_rule.mean() / best.mean()),
        "factor_from_oracle_per_draw": factor.tolist(),
        "max_factor_from_oracle": float(factor.max()),
    }


def _summary(ks, test_curves, val_curves: list[dict], last_key: str) -> dict:
    """Per-draw minima, k*, the ends of the curve and the held-out rule; mean/median/spread."""
    test_curves = np.asarray(test_curves)
    i_best = test_curves.argmin(axis=1)
    best = test_curves[np.arange(len(i_best)), i_best]
    k_best = ks[i_best]
    sizes = sorted(val_curves[0])
    by_size = {f"n_val_{m}": _rule(ks, test_curves, [v[m] for v in val_curves], k_best, best) for m in sizes}
    return {
        "best_iteration": float(np.median(k_best)),
        "best_iteration_per_draw": k_best.tolist(),
        "best_excess": float(best.mean()),
        "best_excess_spread": _stats(best),
        "best_excess_per_draw": best.tolist(),
        last_key: float(test_curves[:, -1].mean()),
        f"{last_key}_spread": _stats(test_curves[:, -1]),
        "last_iteration": int(ks[-1]),
        "excess_at_1": float(test_curves[:, 0].mean()),
        "last_over_best": float(test_curves[:, -1].mean() / best.mean()),
        "draws": int(len(best)),
        "held_out_rule": {**by_size[f"n_val_{sizes[-1]}"], "n_val": sizes[-1]},
        "held_out_rule_by_size": by_size,
    }


def _slope(ns, values, lo=300, hi=3000):
    if lo in ns and hi in ns:
        return float(np.log(values[ns.index(hi)] / values[ns.index(lo)]) / np.log(hi / lo))
    return None


def _checks(cfg: Config, metrics: dict) -> dict:
    """The note's 'what working means' tolerances, evaluated (not asserted) on this run."""
    ns = list(cfg.ns)
    ana = [metrics[f"n_{n}"]["analytic_ntk"] for n in ns]
    k_ana = [a["best_iteration"] for a in ana]
    out = {
        # U-shape: the minimum is at least 1.5x below both ends of the recorded curve
        "u_shape": {
            f"{kind}_n_{n}": bool(m[kind]["best_excess"] < min(
                m[kind]["excess_at_1"], m[kind].get("converged_excess", m[kind].get("final_excess"))) / 1.5)
            for n, m in ((n, metrics[f"n_{n}"]) for n in ns)
            for kind in ("analytic_ntk", "empirical_ntk", "network") if kind in m},
        "k_star_monotone_in_n": bool(all(b >= a for a, b in zip(k_ana, k_ana[1:]))),
    }
    ref_ns = [n for n in ns if n in REFERENCE]
    if ref_ns:
        out["k_star_within_2x_of_reference"] = {
            str(n): bool(0.5 <= metrics[f"n_{n}"]["analytic_ntk"]["best_iteration"] / REFERENCE[n]["best_iteration"] <= 2.0)
            for n in ref_ns}
        out["best_excess_within_1.5x_of_reference"] = {
            str(n): bool(1 / 1.5 <= metrics[f"n_{n}"]["analytic_ntk"]["best_excess"] / REFERENCE[n]["best_excess"] <= 1.5)
            for n in ref_ns}
    if cfg.empirical:
        out["empirical_best_excess_within_10pct_of_analytic"] = {
            str(n): bool(abs(metrics[f"n_{n}"]["empirical_ntk"]["best_excess"] / metrics[f"n_{n}"]["analytic_ntk"]["best_excess"] - 1) <= 0.10)
            for n in ns}
    out["held_out_rule_within_2x_of_oracle_k"] = {
        f"{kind}_n_{n}": bool(metrics[f"n_{n}"][kind]["held_out_rule"]["max_factor_from_oracle"] <= 2.0)
        for n in ns for kind in ("analytic_ntk", "empirical_ntk", "network") if kind in metrics[f"n_{n}"]}
    net = {n: metrics[f"n_{n}"]["network"] for n in ns if "network" in metrics[f"n_{n}"]}
    if net:
        out["network_tracks_kernel"] = {
            str(n): bool(
                1 / 1.5 <= m["best_excess"] / m["analytic_ntk_same_draws"]["best_excess"] <= 1.5
                and 0.5 <= m["best_iteration"] / m["analytic_ntk_same_draws"]["best_iteration"] <= 2.0)
            for n, m in net.items()}
    return out


def _plot(path: str, ks, curves: dict, cfg: Config) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = list(cfg.ns)
    fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 3.6), sharey=True, squeeze=False)
    styles = {"analytic_ntk": ("C0", "-", "analytic NTK"), "empirical_ntk": ("C1", "--", "empirical NTK"),
              "network": ("C3", ":", f"network (width {cfg.width}, first {min(cfg.network_draws, cfg.draws)} draws)")}
    for ax, n in zip(axes[0], ns):
        for kind, (color, ls, label) in styles.items():
            if kind not in curves[n]:
                continue
            x, c = curves[n][kind]
            c = np.asarray(c)
            ax.plot(x, c.mean(0), color=color, ls=ls, label=label)
            ax.fill_between(x, c.min(0), c.max(0), color=color, alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"n = {n} ({cfg.draws} draws: mean, min-max)")
        ax.set_xlabel("GD iteration k")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("test excess risk E (f_k - f*)^2")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(cfg: Config, out: str, smoke: bool = False) -> dict:
    cfg, out, timer = begin(cfg, out, smoke)
    ks = S.iteration_grid(cfg.k_max, cfg.points_per_decade)
    net_steps = S.iteration_grid(cfg.network_steps, cfg.points_per_decade)
    net = T.TwoLayerNet(cfg.width)
    with timer("closed_forms"):
        floor = S.label_noise_floor(S.BIMODAL, cfg.t_min, cfg.t_max)
        var_f = S.var_posterior_mean(S.BIMODAL, cfg.t_min, cfg.t_max)
    metrics: dict = {
        "label_noise_floor": floor, "var_f_star": var_f,
        "reference_label_noise_floor": REFERENCE_FLOOR, "reference_var_f_star": REFERENCE_VAR_F,
    }
    curves: dict = {}
    for n in cfg.ns:
        sizes = _held_out_sizes(cfg, n)
        acc = {"analytic_ntk": ([], []), "empirical_ntk": ([], []), "network": ([], [])}
        for d in range(cfg.draws):
            data = _draw(cfg, n, d)
            with timer("analytic_ntk"):
                test, val, lam_max = _kernel_curves(
                    S.analytic_ntk(data["z"]),
                    lambda gd, which, ks: gd.predict(S.analytic_ntk(data[which], data["z"]), ks),
                    data, ks, sizes)
            acc["analytic_ntk"][0].append(test)
            acc["analytic_ntk"][1].append(val)
            key = jax.random.fold_in(jax.random.key(cfg.seed), n * 10_000 + d)
            params = net.init(key)
            if cfg.empirical:
                with timer("empirical_ntk"):
                    # empirical tangent kernel J J^T of the network at init (jax.vjp rows, float64)
                    jac = {w: S.tangent_features(net.apply, params, data[w]) for w in ("z", "z_test", "z_val")}
                    test, val, _ = _kernel_curves(
                        jac["z"] @ jac["z"].T,
                        lambda gd, which, ks: gd.predict_features(jac[which], jac["z"], ks),
                        data, ks, sizes)
                    del jac
                acc["empirical_ntk"][0].append(test)
                acc["empirical_ntk"][1].append(val)
            if n <= cfg.network_max_n and d < cfg.network_draws:
                with timer("network"):
                    res = T.train_two_layer(
                        net.apply, params, data["z"], data["y"], lr=n / lam_max, record_steps=net_steps,
                        z_test=data["z_test"], f_test=data["f_test"], z_val=data["z_val"], y_val=data["y_val"])
                if not np.all(np.isfinite(res["test_excess"])):
                    raise ValueError(f"network training diverged at n={n}, draw {d}")
                acc["network"][0].append(res["test_excess"])
                acc["network"][1].append(_held_out_losses(res["held_out_pred"].T, data["y_val"], sizes))
        entry, curves[n] = {}, {}
        for kind, (test, val) in acc.items():
            if not test:
                continue
            grid = net_steps if kind == "network" else ks
            entry[kind] = _summary(grid, test, val, "final_excess" if kind == "network" else "converged_excess")
            curves[n][kind] = (grid, np.asarray(test))
        if "empirical_ntk" in entry:
            e, a = entry["empirical_ntk"]["best_excess_per_draw"], entry["analytic_ntk"]["best_excess_per_draw"]
            entry["empirical_ntk"]["relative_diff_vs_analytic_per_draw"] = (np.asarray(e) / np.asarray(a) - 1).tolist()
        if "network" in entry:
            # the kernel curve on the network's recorded steps, same draws: does the network track it?
            idx = np.searchsorted(ks, net_steps[-1], side="right")
            a_short = np.asarray(curves[n]["analytic_ntk"][1])[: cfg.network_draws, :idx]
            entry["network"]["analytic_ntk_same_draws"] = {
                "best_excess": float(a_short.min(axis=1).mean()),
                "best_iteration": float(np.median(ks[a_short.argmin(axis=1)])),
            }
            if n in REFERENCE_NETWORK:
                entry["network"]["reference"] = REFERENCE_NETWORK[n]
        entry["reference"] = REFERENCE.get(n)
        entry["n_held_out"] = sizes
        metrics[f"n_{n}"] = entry
    ns = list(cfg.ns)
    metrics["rate_slope_300_to_3000"] = {
        kind: _slope(ns, [metrics[f"n_{n}"][kind]["best_excess"] for n in ns])
        for kind in ("analytic_ntk", "empirical_ntk") if kind in metrics[f"n_{ns[0]}"]}
    metrics["checks"] = _checks(cfg, metrics)
    with timer("plot"):
        plot = _plot(os.path.join(out, "excess_vs_iteration.png"), ks, curves, cfg)
    np.savez(os.path.join(out, "curves.npz"), **{
        f"n{n}_{kind}_{part}": arr for n in cfg.ns for kind, (grid, c) in curves[n].items()
        for part, arr in (("iterations", grid), ("excess", c))})
    write_results(out, experiment=NAME, config=cfg, metrics=metrics, timings=timer.times,
                  extra={"smoke": smoke, "files": {"plot": os.path.basename(plot), "curves": "curves.npz"}})
    return _headline(cfg, metrics)


def _headline(cfg: Config, metrics: dict) -> dict:
    """A flat summary for the CLI's one-line print (the full metrics are in results.json)."""
    out = {}
    for n in cfg.ns:
        m = metrics[f"n_{n}"]
        out[f"n{n}_kstar"] = m["analytic_ntk"]["best_iteration"]
        out[f"n{n}_best"] = m["analytic_ntk"]["best_excess"]
        if "empirical_ntk" in m:
            out[f"n{n}_best_emp"] = m["empirical_ntk"]["best_excess"]
        if "network" in m:
            out[f"n{n}_best_net"] = m["network"]["best_excess"]
    return out
