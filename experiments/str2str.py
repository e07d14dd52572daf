"""Str2Str (Lu et al., ICLR 2024) at honest small scale: heating-annealing with a learned score.

Two parts, each with a score model trained by denoising score matching on a "structure prior"
and then used zero-shot from one input structure:

* ``wells``: the 2-D three-well landscape (0.5 / 0.3 / 0.2 at (-1.5, 0), (1.5, 0), (0, 2), std
  0.35). An MLP learns the score from ``wells_data`` samples; replicas started at the first
  well's minimum are heated to each T_delta and annealed back (SDE and probability-flow ODE).
  The well fractions are compared with the exact ones, E over x_t ~ q(. | start) of the
  posterior well responsibilities, in standard errors.
* ``chain``: a 10-residue two-state C-alpha chain (helix <-> hairpin, a time-ordered
  trajectory: ``diffalign.data.chains``). An MLP learns the score of the trajectory's
  conformations (coordinates x 0.1, nm, as Str2Str); from the helix template, Str2Str's
  protocol (T_delta 0.25, 0.30, ..., 0.70; ``replicas`` per level; ~1000 T_delta steps per
  unit time) gives an ensemble that is scored with Str2Str's metrics (Val-Clash, Val-Bond,
  JS-PwD, JS-Rg, JS-TIC) against the trajectory, next to baselines: the input structure
  alone, unconditional draws of the learned prior, and an independent sample of the
  reference itself (the finite-sample floor).

What this is not: proteins. The score models here see the data's own distribution (the
mechanism test), not a PDB-trained prior applied to an unseen protein, and the chain model is
a plain MLP on C-alpha coordinates in a fixed orientation, not the SE(3)-equivariant frame
network (``diffalign.geometry.frames`` has the frame diffusion; no frame network is trained).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffalign.data.chains import helix, nearest_state, two_state_trajectory
from diffalign.losses import dsm_loss
from diffalign.metrics.conformations import ensemble_metrics, js_pwd
from diffalign.models import MLP, functional
from diffalign.paths import Predictor
from diffalign.sampling.heat_anneal import heat_anneal
from diffalign.sde import get_sde
from diffalign.training import init_train_state, make_optimizer, make_train_step, train

from diffalign.config import LoopConfig, as_dict, field, replace, require_positive
from diffalign.results import Timer, begin, write_results

NAME = "str2str"
DESCRIPTION = (
    "Str2Str's heating-annealing with learned scores: well fractions on the three-well landscape "
    "against the exact ones, and Str2Str's ensemble metrics on a two-state C-alpha chain."
)

WELL_WEIGHTS = np.array([0.5, 0.3, 0.2])
WELL_MEANS = np.array([[-1.5, 0.0], [1.5, 0.0], [0.0, 2.0]])
WELL_STD = 0.35
CHAIN_RESIDUES = 10
COORD_SCALE = 0.1  # Angstrom -> nm, as Str2Str scales C-alpha positions


@dataclasses.dataclass(frozen=True)
class Config:
    wells_t_deltas: tuple[float, ...] = field((0.2, 0.3, 0.5, 0.7), "T_delta levels of the three-well test")
    wells_data: int = field(50_000, "samples of the three-well density the score model learns from")
    wells_replicas: int = field(4000, "replicas per T_delta (three wells)")
    wells_steps: int = field(10_000, "training steps of the three-well score model")
    anneal_steps: int = field(400, "reverse steps of the three-well annealing")
    chain_frames: int = field(50_000, "frames of the two-state chain trajectory (the reference)")
    chain_steps: int = field(20_000, "training steps of the chain score model")
    chain_t_deltas: tuple[float, ...] = field(tuple(round(0.25 + 0.05 * k, 2) for k in range(10)),
                                              "T_delta levels of the chain ensemble (Str2Str: 0.25 ... 0.70)")
    replicas: int = field(100, "replicas per T_delta level (chain; Str2Str: 100)")
    steps_per_unit_time: int = field(1000, "chain annealing steps per unit of time (Str2Str: 1000)")
    released_sampler: bool = field(False, "anneal with Str2Str's released steps (dt = 1/n; the ODE halves the whole drift) instead of the textbook ones")
    denoise: bool = field(True, "chain: return Tweedie's E[x0 | x_tmin] after annealing (the sample at t_min keeps 0.45 A of noise)")
    hidden: tuple[int, ...] = field((256, 256, 256), "MLP hidden widths (both score models)")
    batch_size: int = field(512, "batch size")
    lr: float = field(1e-3, "learning rate")
    ema_decay: float = field(0.999, "EMA decay of the sampled parameters")
    loop: LoopConfig = field(LoopConfig(steps_per_call=500, log_every=2000, checkpoint_every=20_000), "training loop (both score models)")

    def __post_init__(self):
        require_positive(self, "wells_data", "wells_replicas", "wells_steps", "anneal_steps", "chain_frames",
                         "chain_steps", "replicas", "steps_per_unit_time", "batch_size")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden widths must be positive integers, got {self.hidden}")
        for name in ("wells_t_deltas", "chain_t_deltas"):
            levels = getattr(self, name)
            if not levels or not all(0.01 < t <= 1.0 for t in levels):
                raise ValueError(f"{name} must be non-empty values in (0.01, 1], got {levels}")
        if self.chain_frames <= 20:
            raise ValueError(f"chain_frames must exceed the TICA lag (20), got {self.chain_frames}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def smoke(self) -> "Config":
        return replace(
            self, wells_t_deltas=(0.3, 0.7), wells_data=5000, wells_replicas=500, wells_steps=300, anneal_steps=100,
            chain_frames=3000, chain_steps=300, chain_t_deltas=(0.3, 0.6), replicas=20, steps_per_unit_time=200,
            hidden=(64, 64), steps_per_call=100, log_every=100,
        )


# settings that only change the annealing and evaluation: a rerun reuses the trained score models
SAMPLING_FIELDS = ("wells_t_deltas", "wells_replicas", "anneal_steps", "chain_t_deltas", "replicas",
                   "steps_per_unit_time", "denoise", "released_sampler")
SDE = get_sde("vp", beta_min=0.1, beta_max=20.0, t_min=0.01)  # Str2Str's positions: beta 0.1 -> 20, t in [0.01, 1]


def wells_sample(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = rng.choice(3, size=n, p=WELL_WEIGHTS)
    return (WELL_MEANS[k] + WELL_STD * rng.standard_normal((n, 2))).astype(np.float32)


def exact_well_probabilities(t_delta: float, n: int = 1_000_000, seed: int = 0) -> np.ndarray:
    """E over x_t ~ q(. | first minimum) of the posterior well responsibilities (Monte Carlo)."""
    a, std = (float(v[0]) for v in SDE.marginal(jnp.ones(1), jnp.full((1,), t_delta)))
    x = a * WELL_MEANS[0] + std * np.random.default_rng(seed).standard_normal((n, 2))
    logp = np.log(WELL_WEIGHTS) - 0.5 * ((x[:, None] - a * WELL_MEANS[None]) ** 2).sum(-1) / (a**2 * WELL_STD**2 + std**2)
    r = np.exp(logp - logp.max(1, keepdims=True))
    return (r / r.sum(1, keepdims=True)).mean(0)


def well_fractions(x) -> np.ndarray:
    """Share of samples whose nearest well centre is each well."""
    return np.bincount(np.argmin(((np.asarray(x)[:, None] - WELL_MEANS[None]) ** 2).sum(-1), -1), minlength=3) / len(x)


def train_score_model(cfg: Config, data: np.ndarray, steps: int, workdir: str, seed: int, desc: str):
    """An MLP eps-predictor trained by DSM on ``data`` (rows) under the VP SDE; returns a score function."""
    dim = data.shape[1]
    model = MLP(dim, cfg.hidden, activation="silu", time_features=32, rngs=nnx.Rngs(seed))
    apply_fn, params = functional(model)
    loss_fn = dsm_loss(SDE, apply_fn, parametrization="eps")
    pool = jnp.asarray(data)
    key = jax.random.key(seed + 1_000_003)

    def batch_fn(step):
        idx = jax.random.randint(jax.random.fold_in(key, step), (cfg.batch_size,), 0, pool.shape[0])
        return {"x": pool[idx]}

    opt = make_optimizer(cfg.lr)
    state = init_train_state(params, opt, jax.random.key(seed), ema=True)
    step = make_train_step(loss_fn, opt, ema_decay=cfg.ema_decay)
    result = train(state, step, batch_fn, num_steps=steps, workdir=workdir,
                   config={**as_dict(cfg), "part": desc}, resume_ignore=SAMPLING_FIELDS, desc=desc, **cfg.loop.train_kwargs())
    p = result.state.eval_params()
    return Predictor(lambda x, t: apply_fn(p, x, t), SDE, "eps").score, result.summary


def run_wells(cfg: Config, out: str, timer: Timer) -> dict:
    with timer("wells_train"):
        score, summary = train_score_model(cfg, wells_sample(cfg.wells_data, cfg.loop.seed), cfg.wells_steps,
                                           os.path.join(out, "wells"), cfg.loop.seed, "wells")
    start = jnp.asarray(WELL_MEANS[0], jnp.float32)
    res: dict = {"replicas": cfg.wells_replicas, "steps": cfg.anneal_steps, "final_loss": summary["final_metrics"].get("loss")}
    with timer("wells_anneal"):
        for method in ("sde", "ode"):
            run = jax.jit(lambda k, t, m=method: heat_anneal(k, score, SDE, start, t, cfg.anneal_steps, method=m,
                                                               replicas=cfg.wells_replicas,
                                                               str2str_compat=cfg.released_sampler), static_argnums=1)
            res[method] = {}
            for t_delta in cfg.wells_t_deltas:
                got = well_fractions(run(jax.random.key(cfg.loop.seed + 17), float(t_delta)))
                exact = exact_well_probabilities(t_delta)
                row = {"fractions": got.tolist(), "exact": exact.tolist()}
                if method == "sde":  # the SDE's exact law; the ODE is not expected to match it (it is more local)
                    se = np.sqrt(exact * (1 - exact) / cfg.wells_replicas)
                    row.update(max_abs_error=float(np.max(np.abs(got - exact))),
                               max_error_in_se=float(np.max(np.abs(got - exact) / se)))
                res[method][f"{t_delta:g}"] = row
    res["ode_more_local"] = all(res["ode"][k]["fractions"][0] > res["sde"][k]["fractions"][0] for k in res["sde"])
    return res


def _anneal_ensemble(score, start, t_deltas, replicas, steps_per_unit, method, seed, denoise, released=False):
    """Str2Str's protocol: ``replicas`` per T_delta level, pooled; steps ~ steps_per_unit * T_delta."""
    out = []
    for i, t_delta in enumerate(t_deltas):
        steps = max(1, round(steps_per_unit * t_delta))
        run = jax.jit(lambda k, t=t_delta, s=steps: heat_anneal(k, score, SDE, start, t, s, method=method,
                                                                replicas=replicas, denoise=denoise,
                                                                str2str_compat=released))
        out.append(np.asarray(run(jax.random.key(seed + 1000 * i))))
    return out


def run_chain(cfg: Config, out: str, timer: Timer) -> tuple[dict, dict]:
    with timer("chain_data"):
        traj, state = two_state_trajectory(cfg.chain_frames, CHAIN_RESIDUES, seed=cfg.loop.seed + 5)
    flat = (traj * COORD_SCALE).reshape(len(traj), -1).astype(np.float32)
    with timer("chain_train"):
        score, summary = train_score_model(cfg, flat, cfg.chain_steps, os.path.join(out, "chain"), cfg.loop.seed + 1, "chain")
    start = jnp.asarray(helix(CHAIN_RESIDUES).reshape(-1) * COORD_SCALE, jnp.float32)
    n_total = cfg.replicas * len(cfg.chain_t_deltas)
    to_ca = lambda x: np.asarray(x).reshape(len(x), CHAIN_RESIDUES, 3) / COORD_SCALE  # noqa: E731
    res: dict = {"reference_frames": cfg.chain_frames, "hairpin_share_reference": float(state.mean()),
                 "conformations": n_total, "final_loss": summary["final_metrics"].get("loss")}
    samples: dict = {}
    with timer("chain_anneal"):
        for method in ("sde", "ode"):
            levels = [to_ca(x) for x in _anneal_ensemble(score, start, cfg.chain_t_deltas, cfg.replicas,
                                                         cfg.steps_per_unit_time, method, cfg.loop.seed + 23, cfg.denoise,
                                                         cfg.released_sampler)]
            pooled = np.concatenate(levels)
            samples[method] = pooled
            res[method] = {
                **ensemble_metrics(pooled, traj), "hairpin_share": float(nearest_state(pooled).mean()),
                "per_t_delta": {f"{t:g}": {"hairpin_share": float(nearest_state(x).mean()), "js_pwd": js_pwd(x, traj)}
                                for t, x in zip(cfg.chain_t_deltas, levels)},
            }
    with timer("chain_baselines"):
        prior = to_ca(_anneal_ensemble(score, start, (1.0,), n_total, cfg.steps_per_unit_time, "sde", cfg.loop.seed + 29,
                                      cfg.denoise, cfg.released_sampler)[0])
        rng = np.random.default_rng(cfg.loop.seed + 31)
        floor = traj[rng.choice(len(traj), n_total, replace=False)]
        repeated = np.repeat(helix(CHAIN_RESIDUES)[None], n_total, 0)
        res["baselines"] = {
            "input_only": ensemble_metrics(repeated, traj),
            "prior_draws": {**ensemble_metrics(prior, traj), "hairpin_share": float(nearest_state(prior).mean())},
            "reference_subsample": ensemble_metrics(floor, traj),
        }
    samples.update(prior=prior, reference=traj)
    return res, samples


def _picture(path, cfg, wells, chain_samples, t_deltas):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffalign.metrics.conformations import TICA, pair_distances

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.5))
    levels = list(wells["sde"])
    ts = [float(k) for k in levels]
    for j, (name, colour) in enumerate(zip(("well 1 (start)", "well 2", "well 3"), ("C0", "C1", "C2"))):
        ax[0].plot(ts, [wells["sde"][k]["exact"][j] for k in levels], "-", color=colour, label=f"{name}: exact")
        ax[0].plot(ts, [wells["sde"][k]["fractions"][j] for k in levels], "o", color=colour, label="SDE (learned)")
        ax[0].plot(ts, [wells["ode"][k]["fractions"][j] for k in levels], "x", color=colour, label="ODE (learned)")
    ax[0].set(xlabel="T_delta", ylabel="share of replicas", title="three wells: heating-annealing from well 1")
    ax[0].legend(fontsize=7, ncol=3)
    ref = chain_samples["reference"]
    tica = TICA(20, 2).fit(pair_distances(ref, 3))
    proj = lambda x: tica.transform(pair_distances(x, 3))  # noqa: E731
    r = proj(ref[:: max(1, len(ref) // 5000)])
    for k, method in enumerate(("sde", "ode")):
        ax[k + 1].scatter(r[:, 0], r[:, 1], s=2, alpha=0.2, color="grey", label="reference trajectory")
        p = proj(chain_samples[method])
        ax[k + 1].scatter(p[:, 0], p[:, 1], s=4, alpha=0.6, color="C3", label=f"Str2Str-{method.upper()} from the helix")
        s0 = proj(helix(CHAIN_RESIDUES)[None])
        ax[k + 1].scatter(s0[:, 0], s0[:, 1], marker="*", s=200, color="k", label="input structure")
        ax[k + 1].set(xlabel="TIC 1", ylabel="TIC 2", title=f"chain, {method.upper()}, T_delta {t_deltas[0]:g}-{t_deltas[-1]:g}")
        ax[k + 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(cfg: Config, out: str, smoke: bool = False) -> dict:
    cfg, out, timer = begin(cfg, out, smoke)
    wells = run_wells(cfg, out, timer)
    chain, samples = run_chain(cfg, out, timer)
    metrics = {"wells": wells, "chain": chain}
    np.savez(os.path.join(out, "samples.npz"), chain_sde=samples["sde"], chain_ode=samples["ode"],
             chain_prior=samples["prior"])
    picture = None
    try:
        picture = _picture(os.path.join(out, "samples.png"), cfg, wells, samples, cfg.chain_t_deltas)
    except ImportError as e:
        print(f"note: no picture written ({e})")
    write_results(out, experiment=NAME, config=cfg, metrics=metrics,
                  timings=timer.timings(), extra={"smoke": smoke, "picture": picture})
    errs = ", ".join(f"{k}: {v['max_error_in_se']:.1f}" for k, v in wells["sde"].items())
    first = ", ".join(f"{k}: {wells['sde'][k]['fractions'][0]:.3f} / {wells['ode'][k]['fractions'][0]:.3f}" for k in wells["sde"])
    print(f"wells: SDE's largest error against the exact fractions, in s.e. ({errs}); share left in the first well, SDE / ODE ({first})")
    for method in ("sde", "ode"):
        c = chain[method]
        print(f"{method}: chain clash {c['val_clash']:.3f} bond {c['val_bond']:.3f} "
              f"JS-PwD {c['js_pwd']:.3f} JS-Rg {c['js_rg']:.3f} JS-TIC {c['js_tic']:.3f} hairpin {c['hairpin_share']:.3f}")
    return metrics
