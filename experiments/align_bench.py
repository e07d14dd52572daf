"""The alignment benchmark: AWM, Flow-GRPO, DiffusionNFT, online DPO / KTO and RWR, like for like.

One protocol for every method on a task (issue 19; recipes in ``diffalign.align.recipes``; on
``qm9`` the same recipes through GDSS's own loss, ``diffalign.graphs.align.build``):

* the same pretrained model (per pretraining seed), the same rollouts per epoch (reward calls)
  in the same pseudo-groups, one seed set;
* each method's own training rollouts, rows, objective and updates per epoch; its regularisers
  either its own (``own``) or AWM's for all (``equalised``: 1e-3 to the reference, 1 to an EMA
  anchor);
* a learning-rate grid per method: the best stable rate (every seed stable and at the target;
  fewest median epochs) is reported, and the whole grid;
* after every epoch, the same evaluation for all: ``eval_samples`` samples of the Euler
  ODE from fixed noise, scored by the task (on ``qm9``: molecules of the GDSS config's sampler
  from fixed noise and fixed node counts, scored by their mean QED over the base model's);
  epochs, network passes (rollout + update, counted by the recipe: forward and backward passes
  each count one) and seconds (training only, compilation and evaluation apart) to the target
  are read off that curve.

Writes ``results.json`` (per method and regime: the best rate's numbers and the whole grid, the
AWM / Flow-GRPO ratios both ways), ``table.md``, ``curves.png`` (evaluated reward against
network passes at each method's best rate) and ``front.png`` (final reward against drift from
the reference and against diversity, one point per learning rate).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffalign.align import recipes
from diffalign.config import build, field
from diffalign.metrics.distances import frechet_distance
from diffalign.results import begin, write_json, write_results
from diffalign.training import NonFiniteLossError, train

from . import align as A

NAME = "align-bench"
DESCRIPTION = ("Every alignment method on one task under one protocol: AWM, Flow-GRPO, DiffusionNFT, online "
               "DPO / KTO, RWR; own and equalised regularisers, a learning-rate grid, seeds; table and fronts.")
TASKS = ("ring", "digits", "qm9")
DRIFT_T = 0.5
# the sizes a Config leaves at 0, per task
SIZES = {"ring": dict(epochs=150, samples_per_epoch=512, eval_samples=1024, eval_steps=20),
         "digits": dict(epochs=150, samples_per_epoch=512, eval_samples=1024, eval_steps=20),
         "qm9": dict(epochs=30, samples_per_epoch=64, eval_samples=256, eval_steps=100)}
QM9_KEYS = ("gdss_runs", "rollout_steps", "final_samples", "reward")
REWARDS = ("qed", "qed_novel_unique")  # settings only the qm9 task reads


@dataclasses.dataclass(frozen=True)
class Config:
    task: str = field("ring", "the task (ring: 2 of 8 gaussians rewarded; digits: a classifier's p(class 3); "
                              "qm9: GDSS molecules, QED)", choices=TASKS)
    methods: tuple[str, ...] = field(recipes.METHODS, f"methods compared, of {', '.join(recipes.METHODS)}")
    regimes: tuple[str, ...] = field(recipes.REGIMES, "regularisers: each method's own, or AWM's for all (equalised)")
    lrs: tuple[float, ...] = field((1e-4, 3e-4, 1e-3, 3e-3), "the learning-rate grid, each method")
    seeds: tuple[int, ...] = field((0, 1, 2), "RL seeds")
    pretrain_seeds: tuple[int, ...] = field((0,), "pretraining seeds (one pretrained model each)")
    epochs: int = field(0, "RL epochs per run (0: the task's, 150; qm9 30)")
    samples_per_epoch: int = field(0, "rollouts (reward calls) per epoch, every method (0: the task's, 512; qm9 64)")
    group_size: int = field(16, "pseudo-group size (advantages, pairs), every method")
    eval_samples: int = field(0, "samples of the per-epoch evaluation, fixed noise (0: the task's, 1024; qm9 256)")
    eval_steps: int = field(0, "steps of the evaluation sampler (0: the task's, 20 Euler; qm9 100 of GDSS's)")
    target: float = field(0.0, "target of the evaluated score (0: the task's, ring 0.9 in the rewarded modes, "
                                "digits 0.8 classified as the class, qm9 +0.05 mean QED over the base model)")
    pretrain_steps: int = field(4000, "flow-matching pretraining steps (digits uses 4x)")
    target_class: int = field(3, "digits: the rewarded class")
    gdss_runs: tuple[str, ...] = field((), "qm9: `diffalign graphs train --dataset QM9` runs, one per pretraining "
                                           "seed (--smoke without: a few steps of GDSS)")
    rollout_steps: int = field(100, "qm9: steps of GDSS's sampler in every method's rollouts (the recipes' step "
                                    "counts are the flows')")
    final_samples: int = field(10_000, "qm9: molecules scored at the end of each run (uniqueness, novelty, FCD)")
    reward: str = field("qed", "qm9: the training reward (qed; qed_novel_unique: 0 for a molecule of the training "
                               "set or repeated in its batch); the evaluated score is QED either way", choices=REWARDS)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        for name, v in SIZES[self.task].items():  # 0: the task's size
            if getattr(self, name) == 0:
                object.__setattr__(self, name, v)
        for name in ("methods", "regimes", "lrs", "seeds", "pretrain_seeds"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        for m in self.methods:
            if m not in recipes.METHODS:
                raise ValueError(f"unknown method {m!r}; expected some of {recipes.METHODS}")
        for r in self.regimes:
            if r not in recipes.REGIMES:
                raise ValueError(f"unknown regime {r!r}; expected some of {recipes.REGIMES}")
        if any(lr <= 0 for lr in self.lrs):
            raise ValueError(f"learning rates must be positive, got {self.lrs}")
        if self.group_size < 2 or self.samples_per_epoch % self.group_size:
            raise ValueError(f"group_size must be >= 2 and divide samples_per_epoch, got {self.group_size}")
        for name in ("epochs", "eval_samples", "eval_steps", "pretrain_steps", "rollout_steps", "final_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def target_level(self) -> float:
        return self.target or {"ring": 0.9, "digits": 0.8, "qm9": 0.05}[self.task]

    @property
    def stability_tolerance(self) -> float:
        """How far below its best so far the evaluated score may fall in a stable run."""
        return 0.05 if self.task == "qm9" else 0.1

    def smoke(self) -> "Config":
        """Small sizes; a grid given on the command line (learning rates, seeds) is kept."""
        default = Config(task=self.task)
        small = dict(epochs=3, samples_per_epoch=64, group_size=8, eval_samples=128, eval_steps=8, pretrain_steps=100)
        if self.task == "qm9":
            small.update(epochs=2, samples_per_epoch=16, eval_samples=16, eval_steps=4, rollout_steps=4,
                         final_samples=32)
        return dataclasses.replace(self, lrs=(1e-3,) if self.lrs == default.lrs else self.lrs,
                                   seeds=(0,) if self.seeds == default.seeds else self.seeds, **small)


# ----------------------------------------------------------------------------- evaluation


class Evaluator:
    """The shared per-epoch evaluation: fixed-noise Euler ODE samples, the task's score, the
    drift E||v - v_ref||^2 at t = 0.5 (fixed noise, on the samples) and a diversity measure."""

    def __init__(self, cfg: Config, task: A.Task, apply_fn, ref_params):
        self.cfg, self.task, self.apply_fn, self.ref = cfg, task, apply_fn, ref_params
        key = jax.random.key(777)
        self.x1 = jax.random.normal(key, (cfg.eval_samples, *task.shape))
        self.eps = jax.random.normal(jax.random.fold_in(key, 1), (cfg.eval_samples, *task.shape))
        from diffalign.align import rl

        def sample_and_drift(params):
            x = rl.sample_flow(None, apply_fn, params, self.x1, cfg.eval_steps)
            t = jnp.full((x.shape[0],), DRIFT_T, x.dtype)
            xt = (1.0 - DRIFT_T) * x + DRIFT_T * self.eps
            drift = jnp.mean((apply_fn(params, xt, t) - apply_fn(ref_params, xt, t)) ** 2)
            return x, drift

        self._run = jax.jit(sample_and_drift)
        self.base_x = np.asarray(self._run(ref_params)[0])
        if cfg.task == "ring":  # the reward-tilted base law p_ref r / Z: the base model's rewarded samples
            self.tilted = self.base_x[np.asarray(task.reward(jnp.asarray(self.base_x))) > 0]
        else:
            from diffalign.metrics.digits import DigitClass

            real = task.levels[task.labels == cfg.target_class]
            self.judge = DigitClass(task.classifier, real, cfg.target_class)
        self.base = None
        self.base = self(ref_params, final=True)

    def __call__(self, params, final: bool = False, tag: str = "") -> dict:
        del tag  # the flows' samples are not written
        x, drift = self._run(params)
        m = {k: float(v) for k, v in self.task.metrics_fn(x).items()}
        m["reward"] = float(jnp.mean(self.task.reward(x)))
        m["drift"] = float(drift)
        m["score"] = m["in_target"]  # ring: in the rewarded modes; digits: classified as the class
        if self.cfg.task == "ring":
            modes = self.task.reward.modes
            shares = [m[f"mode{k}_share"] for k in modes]
            m["mode_balance"] = shares[0] / max(sum(shares), 1e-9)
            if final:
                xs = np.asarray(x)
                hit = xs[np.asarray(self.task.reward(x)) > 0]
                m["frechet_to_tilted"] = float(frechet_distance(hit, self.tilted)) if len(hit) > 10 else None
        else:
            if final:
                s = self.judge.score(np.asarray(x))
                m.update({k: (None if v is None else float(v)) for k, v in s.items()})
                base_fd = None if self.base is None else self.base.get("frechet_logits")
                if base_fd and m.get("frechet_logits") is not None:  # the FD of the class over the base model's
                    m["frechet_ratio"] = m["frechet_logits"] / base_fd
        return m


class QM9Evaluator:
    """The shared per-epoch evaluation on QM9: ``eval_samples`` molecules of the GDSS config's
    sampler (predictor and corrector, ``eval_steps`` steps) from fixed noise and fixed node
    counts, quantized as ``diffalign graphs`` quantizes them. ``score``: their mean QED (over the
    molecules valid without correction) minus the base model's; beside it validity without
    correction, uniqueness and novelty among them, and the drift E 1/2 ||sigma s - sigma s_ref||^2
    at t = 0.5 on the base model's molecules (fixed noise). ``final``: ``final_samples`` more
    molecules (other fixed noise) scored as ``graphs`` scores them (NSPDK, FCD too), with the
    changes from the base model in points."""

    _train_canonical: dict = {}  # the training set's canonical SMILES, computed once per process

    def __init__(self, cfg: Config, model, data, ref_params, out: str):
        from diffalign.graphs.gdss import sample_flags, score_fns
        from diffalign.graphs.system import half_sq, node_flags, perturb, scaled_scores
        from diffalign.sampling.graph import sample_graphs

        self.cfg, self.data, self.out = cfg, data, out
        os.makedirs(out, exist_ok=True)
        mc, gsde = model.config, dataclasses.replace(model.gsde, num_scales=cfg.eval_steps)
        kw = dict(solver=mc.solver, predictor=mc.predictor, corrector=mc.corrector, snr=mc.snr,
                  scale_eps=mc.scale_eps)

        def sample(params, key, flags):
            sx, sa = score_fns(model, params)
            return sample_graphs(key, gsde, sx, sa, flags, mc.max_feat, **kw)

        def drift(params, x0, a0):
            f0 = node_flags(a0)
            t = jnp.full((x0.shape[0],), DRIFT_T)
            xd, ad, _, _ = perturb(model.gsde, jax.random.key(778), x0, a0, f0, t)
            cx, ca = scaled_scores(model.gsde, model.apply_x, model.apply_a, params, xd, ad, f0, t)
            qx, qa = scaled_scores(model.gsde, model.apply_x, model.apply_a, ref_params, xd, ad, f0, t)
            return jnp.mean(half_sq(cx - qx) + half_sq(ca - qa))

        self._sample, self._drift = jax.jit(sample), jax.jit(drift)
        key = jax.random.key(777)
        self.noise = {n: (jax.random.fold_in(key, 2 * i + 1), sample_flags(jax.random.fold_in(key, 2 * i), data.flags, m))
                      for i, (n, m) in enumerate((("epoch", cfg.eval_samples), ("final", cfg.final_samples)))}
        if "QM9" not in self._train_canonical:
            self._train_canonical["QM9"] = {s for s in data.M.canonical(data.train_smiles) if s}
        self.train_canonical = self._train_canonical["QM9"]
        self.base = self.base_qed = None
        x, adj = self._molecules(ref_params, "epoch")
        from diffalign.graphs.align import quantize_jax

        self.base_x0, self.base_a0 = quantize_jax(jnp.asarray(x), jnp.asarray(adj))
        self.base_qed = self._quick(x, adj)["qed"]
        self.base = self(ref_params, final=True, tag="base")

    def _molecules(self, params, which):
        key, flags = self.noise[which]
        x, adj = self._sample(params, key, flags)
        return np.asarray(x), np.asarray(jax.block_until_ready(adj))

    def _quick(self, x, adj) -> dict:
        from diffalign.graphs.align import qed_scores

        types, bonds = self.data.quantize(x, adj)
        qed, valid = qed_scores(types, bonds, "QM9")
        dec = self.data.M.decode(types, bonds, "QM9")
        m = self.data.M.validity_uniqueness_novelty(dec.smiles, self._train_canonical["QM9"],
                                                    dec.valid_without_correction)
        m.update(qed=float(qed[valid > 0].mean()) if valid.any() else float("nan"), reward=float(qed.mean()))
        return m

    def __call__(self, params, final: bool = False, tag: str = "") -> dict:
        x, adj = self._molecules(params, "epoch")
        m = self._quick(x, adj)
        m["score"] = m["qed"] - self.base_qed
        m["drift"] = float(self._drift(params, self.base_x0, self.base_a0))
        if final:
            from diffalign.graphs.align import qed_scores

            x, adj = self._molecules(params, "final")
            types, bonds = self.data.quantize(x, adj)
            f = self.data.score_quantized(types, bonds, self.out, tag or "final")
            qed, valid = qed_scores(types, bonds, "QM9")
            f["qed"] = float(qed[valid > 0].mean()) if valid.any() else float("nan")
            m.update({f"final_{k}": float(v) for k, v in f.items()})
            if self.base is not None:
                b = self.base
                m["qed_gain"] = m["final_qed"] - b["final_qed"]
                for k in ("validity_wo_correction", "uniqueness", "novelty"):
                    m[f"{k}_change"] = 100 * (m[f"final_{k}"] - b[f"final_{k}"])
                m["meets_bar"] = bool(m["qed_gain"] >= 0.05 and m["uniqueness_change"] >= -5
                                      and m["novelty_change"] >= -5)
        return m


def train_seed(trained: dict) -> int:
    """A `graphs train` run's training seed (its config's -1: the data set's released seed)."""
    from diffalign.graphs.configs import get_config

    seed = int(trained.get("seed", -1))
    return seed if seed >= 0 else get_config(trained["dataset"]).train_seed


def qm9_setup(cfg: Config, gdss_run: str, out: str):
    """(evaluator, make_aligner) for one trained GDSS QM9 model."""
    from diffalign.graphs.align import build as build_graph, qed_reward
    from diffalign.graphs.evaluation import load_trained

    tc, _, data, model, ref = load_trained(gdss_run)
    if tc["dataset"] != "QM9":
        raise ValueError(f"{gdss_run} is a {tc['dataset']} run, not QM9")
    evaluator = QM9Evaluator(cfg, model, data, ref, os.path.join(out, "molecules", f"pretrain_seed{train_seed(tc)}"))
    host = qed_reward("QM9", novel_against=evaluator.train_canonical if cfg.reward == "qed_novel_unique" else None,
                      unique=cfg.reward == "qed_novel_unique")

    def make_aligner(r, lr, seed):
        return build_graph(r, model, ref, data.flags, host, samples=cfg.samples_per_epoch,
                           group_size=cfg.group_size, lr=lr, rollout_steps=cfg.rollout_steps, seed=seed)

    return evaluator, make_aligner


# ----------------------------------------------------------------------------- one run


def one_run(cfg: Config, make_aligner, evaluator, method: str, regime: str, lr: float, seed: int) -> dict:
    """One (method, regime, lr, seed) run: ``make_aligner(recipe, lr, seed)`` builds its step."""
    aligner = make_aligner(recipes.recipe(method, regime), lr, seed)
    rows: list[dict] = []
    t0 = time.perf_counter()
    diverged = None
    try:
        result = train(aligner.state, aligner.step, lambda s: {}, num_steps=cfg.epochs, workdir=None, steps_per_call=1,
                       log_every=1, progress=False, on_log=lambda s, m: rows.append(m),
                       evaluate=lambda st: evaluator(st.params), desc=f"{method}/{regime}")
        final = evaluator(result.state.params, final=True, tag=f"{method}_{regime}_lr{lr:g}_seed{seed}")
        compile_s = result.summary["compile_s"]
    except NonFiniteLossError as e:  # a diverging run is a result: its curve up to there is kept
        diverged, final, compile_s = e.step + 1, None, None
    score = [row["eval_score"] for row in rows]
    seconds = np.cumsum([1.0 / row["steps_per_sec"] for row in rows]).tolist()
    hit = A.first_epoch_at(score, cfg.target_level)
    per_epoch = aligner.evals_per_epoch["total"]
    return {
        "method": method, "regime": regime, "lr": lr, "seed": seed,
        "epochs_to_target": hit, "evals_to_target": None if hit is None else hit * per_epoch,
        "seconds_to_target": None if hit is None else seconds[hit - 1],
        "stable": diverged is None and len(score) == cfg.epochs and A.stability(score, cfg.stability_tolerance),
        "diverged_at": diverged, "final": final, "evals_per_epoch": aligner.evals_per_epoch,
        "epoch_s": float(np.median(np.diff([0.0] + seconds))) if seconds else None, "compile_s": compile_s,
        "wall_s": time.perf_counter() - t0,
        "score_curve": score, "drift_curve": [row["eval_drift"] for row in rows],
        "rollout_reward_curve": [row["reward"] for row in rows],
    }


# ----------------------------------------------------------------------------- summary


def _median(xs):
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.median(xs)) if xs else None


VALIDITY_FLOOR = -10.0  # qm9: a stable run keeps validity without correction within 10 points of the base's


def stable_run(run: dict) -> bool:
    """The run's stability (its evaluated score: no NaN, no fall of more than the task's tolerance
    below its best) and, on QM9, its final molecules' validity without correction within 10
    points of the base model's: QED is scored over the valid molecules, so a run that breaks
    validity could otherwise keep its score."""
    change = (run["final"] or {}).get("validity_wo_correction_change")
    return run["stable"] and (change is None or change >= VALIDITY_FLOOR)


def summarise(runs: list[dict], cfg: Config) -> dict:
    """Per (method, regime, lr): medians over seeds (and pretraining seeds); per (method,
    regime): the best stable rate (every run stable and at the target, fewest median epochs;
    if none reaches it, the stable rate with the highest median final score), and the ratios of
    Flow-GRPO's cost to AWM's and back."""
    grid, best = [], {}
    for regime in cfg.regimes:
        for method in cfg.methods:
            cands = []
            for lr in cfg.lrs:
                rs = [r for r in runs if (r["method"], r["regime"], r["lr"]) == (method, regime, lr)]
                if not rs:
                    continue
                fin = [r["final"] or {} for r in rs]
                reached = all(r["epochs_to_target"] is not None for r in rs)
                e = {
                    "method": method, "regime": regime, "lr": lr, "runs": len(rs),
                    "all_stable": all(stable_run(r) for r in rs), "all_reached": reached,
                    "epochs_to_target": [r["epochs_to_target"] for r in rs],
                    "median_epochs_to_target": _median([r["epochs_to_target"] for r in rs]) if reached else None,
                    "median_evals_to_target": _median([r["evals_to_target"] for r in rs]) if reached else None,
                    "median_seconds_to_target": _median([r["seconds_to_target"] for r in rs]) if reached else None,
                    "evals_per_epoch": rs[0]["evals_per_epoch"]["total"],
                    "median_epoch_s": _median([r["epoch_s"] for r in rs]),
                }
                if any("meets_bar" in f for f in fin):  # qm9: the QED bar with <= 5 points lost
                    e["meets_bar"] = [f.get("meets_bar") for f in fin]
                for k in ("score", "drift", "off_manifold", "mode_balance", "frechet_to_tilted", "class_fraction",
                          "frechet_logits", "frechet_ratio", "diversity_ratio", "qed_gain", "final_qed",
                          "validity_wo_correction_change", "uniqueness_change", "novelty_change", "final_fcd",
                          "final_nspdk"):
                    vals = [f.get(k) for f in fin]
                    if any(v is not None for v in vals):
                        e[f"final_{k}"] = vals
                        e[f"median_final_{k}"] = _median(vals)
                grid.append(e)
                cands.append(e)
            stable = [e for e in cands if e["all_stable"]]
            at = [e for e in stable if e["all_reached"]]
            if at:
                pick = min(at, key=lambda e: (e["median_epochs_to_target"], -(e.get("median_final_score") or 0)))
            elif stable:
                pick = max(stable, key=lambda e: e.get("median_final_score") or -1)
            else:
                pick = None
            best[f"{method}/{regime}"] = pick
    ratios = {}
    for regime in cfg.regimes:
        a, g = best.get(f"awm/{regime}"), best.get(f"flow_grpo/{regime}")
        if a and g and a["all_reached"] and g["all_reached"]:
            for k in ("epochs", "evals", "seconds"):
                key = f"median_{k}_to_target"
                ratios[f"{regime}/flow_grpo_over_awm_{k}"] = g[key] / a[key]
                ratios[f"{regime}/awm_over_flow_grpo_{k}"] = a[key] / g[key]
    return {"grid": grid, "best": best, "ratios": ratios}


def _fmt(v, spec=".3g"):
    if v is None:
        return "-"
    if isinstance(v, list):
        return ", ".join(_fmt(x, spec) for x in v)
    return format(v, spec)


# the diversity columns of the table: (header, key of the final evaluation)
DIVERSITY = {
    "ring": (("off-manifold", "off_manifold"), ("mode balance", "mode_balance"), ("FD to tilted", "frechet_to_tilted")),
    "digits": (("FD logits", "frechet_logits"), ("FD / base FD", "frechet_ratio"), ("diversity", "diversity_ratio")),
    "qm9": (("QED gain (final)", "qed_gain"), ("validity w/o corr. (pts)", "validity_wo_correction_change"),
            ("uniqueness (pts)", "uniqueness_change"), ("novelty (pts)", "novelty_change"), ("FCD", "final_fcd")),
}


def table(summary: dict, cfg: Config) -> str:
    score = {"ring": "in the rewarded modes", "digits": f"classified as {cfg.target_class}",
             "qm9": "mean QED over the base model's (valid molecules)"}[cfg.task]
    div = DIVERSITY[cfg.task]
    lines = [f"# align-bench, task {cfg.task}: best stable learning rate per method and regime", "",
             f"Target: {cfg.target_level} {score} on the shared evaluation ({cfg.eval_samples} samples, "
             f"{cfg.eval_steps}-step {'GDSS' if cfg.task == 'qm9' else 'Euler ODE'}, fixed noise). Medians over {len(cfg.seeds)} RL seeds x "
             f"{len(cfg.gdss_runs) if cfg.task == 'qm9' else len(cfg.pretrain_seeds)} pretraining seed(s). Network passes: rollout forwards + update forwards "
             "(policy and frozen sets) + backwards, each pass one. Seconds: training only.", "",
             f"| method | regime | lr | epochs to target (per run) | passes to target | seconds to target | final score "
             f"| drift | {' | '.join(h for h, _ in div)} |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(div)]
    for key, e in summary["best"].items():
        method, regime = key.split("/")
        if e is None:
            lines.append(f"| {method} | {regime} | no stable rate |" + " |" * (7 + len(div)))
            continue
        cols = [e.get(f"median_final_{k}") for _, k in div]
        lines.append(
            f"| {method} | {regime} | {e['lr']:g} | {_fmt(e['median_epochs_to_target'])} ({_fmt(e['epochs_to_target'])}) "
            f"| {_fmt(e['median_evals_to_target'])} | {_fmt(e['median_seconds_to_target'])} "
            f"| {_fmt(e.get('median_final_score'))} | {_fmt(e.get('median_final_drift'))} "
            f"| {' | '.join(_fmt(c) for c in cols)} |")
    lines += ["", "Ratios of the best stable rates (median cost to the target):", ""]
    lines += [f"* {k}: {v:.3g}" for k, v in summary["ratios"].items()] or ["* not every run reached the target"]
    extra = [(h, k) for h, k in div if cfg.task == "qm9"]  # qm9: the bar's columns, run by run
    if cfg.task == "qm9":
        lines += ["", "The bar (issue 19, point 4): QED gain >= 0.05 on the final molecules with uniqueness and "
                  "novelty each within 5 points of the base model's."]
    lines += ["", "## The whole grid (per run)", "",
              "| method | regime | lr | stable | epochs to target | final score | drift |"
              + "".join(f" {h} |" for h, _ in extra) + (" meets the bar |" if extra else ""),
              "|---|---|---|---|---|---|---|" + "---|" * (len(extra) + bool(extra))]
    for e in summary["grid"]:
        lines.append(f"| {e['method']} | {e['regime']} | {e['lr']:g} | {'yes' if e['all_stable'] else 'no'} "
                     f"| {_fmt(e['epochs_to_target'])} | {_fmt(e.get('final_score'))} | {_fmt(e.get('final_drift'))} |"
                     + "".join(f" {_fmt(e.get(f'final_{k}'))} |" for _, k in extra)
                     + (f" {', '.join('-' if b is None else ('yes' if b else 'no') for b in e.get('meets_bar', []))} |"
                        if extra else ""))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the command


# the grid's axes: a rerun on the same --out may change these (and reuses the runs it shares);
# every other setting must match the runs already there
GRID_KEYS = ("methods", "regimes", "lrs", "seeds", "pretrain_seeds", "gdss_runs")


def run_settings(cfg: Config) -> dict:
    """What a reused run must share with this invocation: the settings off the grid, and the
    recipes (a changed recipe must not reuse the runs of the old one)."""
    skip = GRID_KEYS + (() if cfg.task == "qm9" else QM9_KEYS)
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    out["recipes"] = {f"{m}/{g}": dataclasses.asdict(recipes.recipe(m, g)) for m in recipes.METHODS
                      for g in recipes.REGIMES}
    return out


def _earlier_runs(path: str, cfg: Config) -> tuple[list[dict], dict]:
    """The runs of an earlier (or interrupted) invocation on the same ``--out``, and its base
    models' evaluations, if its settings are this one's; a grid that stops loses only the run in
    progress. Runs of another ``--out`` with the same settings (a grid split over processes) may
    be merged into this file: they are reused the same way."""
    if not os.path.exists(path):
        return [], {}
    with open(path) as f:
        saved = json.load(f)
    if saved.get("settings") != json.loads(json.dumps(run_settings(cfg))):
        raise ValueError(f"{path} holds runs made with other settings ({saved.get('settings')}); use another --out")
    return saved["runs"], saved.get("base", {})


def _models(cfg: Config, out: str, smoke: bool, timer):
    """Per pretrained model: (pretraining seed, ``setup() -> (evaluator, make_aligner(recipe, lr,
    seed))``). ``setup`` pretrains (flows, one per ``pretrain_seeds``) or loads (QM9,
    ``gdss_runs``) the model and evaluates it; ``run`` calls it only when a run is left to do."""
    if cfg.task == "qm9":
        from diffalign.graphs.evaluation import trained_config

        from .align_qm9 import smoke_gdss_run  # a few steps of GDSS: the smoke's model

        runs = cfg.gdss_runs or ((smoke_gdss_run(out),) if smoke else ())
        if not runs:
            raise ValueError("--task qm9 needs --gdss-runs DIR [DIR ...], `diffalign graphs train --dataset QM9` runs")
        for run_dir in runs:
            def setup(run_dir=run_dir):
                with timer("load_and_evaluate_base"):
                    return qm9_setup(cfg, run_dir, out)

            yield train_seed(trained_config(run_dir)), setup
        return
    for pseed in cfg.pretrain_seeds:
        def setup(pseed=pseed):
            acfg = build(A.Config, task=cfg.task, pretrain_steps=cfg.pretrain_steps, pretrain_seed=pseed,
                         target_class=cfg.target_class)
            task = A.Task(acfg)
            with timer(f"pretrain_{pseed}"):
                apply_fn, ref, _ = A.pretrain(task, acfg, os.path.join(out, f"pretrain_seed{pseed}"))

            def make_aligner(r, lr, seed):
                return recipes.build(r, apply_fn, ref, task.reward, task.shape, samples=cfg.samples_per_epoch,
                                     group_size=cfg.group_size, lr=lr, seed=seed, metrics_fn=task.metrics_fn)

            return Evaluator(cfg, task, apply_fn, ref), make_aligner

        yield pseed, setup


def run(cfg: Config, out: str, smoke: bool = False) -> dict:
    cfg, out, timer = begin(cfg, out, smoke)
    path = os.path.join(out, "runs.json")
    earlier, base = _earlier_runs(path, cfg)
    done = {(r["method"], r["regime"], r["lr"], r["seed"], r["pretrain_seed"]): r for r in earlier}
    runs: list[dict] = []
    combos = [(m, g, lr, s) for g in cfg.regimes for m in cfg.methods for lr in cfg.lrs for s in cfg.seeds]
    from tqdm.auto import tqdm

    for pseed, setup in _models(cfg, out, smoke, timer):
        todo = [c for c in combos if (*c, pseed) not in done]
        evaluator = make_aligner = None
        if todo or str(pseed) not in base:  # the model is pretrained (loaded) and evaluated only if needed
            evaluator, make_aligner = setup()
            base[str(pseed)] = evaluator.base
        with timer(f"runs_pretrain{pseed}"):
            for method, regime, lr, seed in tqdm(combos, desc=f"align-bench {cfg.task} (pretrain seed {pseed})"):
                row = done.pop((method, regime, lr, seed, pseed), None)
                if row is None:
                    row = one_run(cfg, make_aligner, evaluator, method, regime, lr, seed)
                    row["pretrain_seed"] = pseed
                runs.append(row)
                kept = runs + list(done.values())  # runs of the earlier grid outside this one stay on file
                # nothing lost if a long grid stops
                write_json(path, {"settings": run_settings(cfg), "runs": kept, "base": base})
    base = {k: v for k, v in base.items() if k in {str(r["pretrain_seed"]) for r in runs}}
    summary = summarise(runs, cfg)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table(summary, cfg))
    pictures = _plot(out, runs, summary, cfg)
    metrics = {"best": {k: None if e is None else {kk: vv for kk, vv in e.items() if not isinstance(vv, list)}
                        for k, e in summary["best"].items()},
               "ratios": summary["ratios"], "base": base, "target_level": cfg.target_level}
    write_results(out, experiment=NAME, config=cfg, metrics=metrics, timings=timer.times,
                  extra={"smoke": smoke, "grid": summary["grid"], "pictures": pictures,
                         "recipes": {f"{m}/{g}": dataclasses.asdict(recipes.recipe(m, g)) for m in cfg.methods
                                     for g in cfg.regimes}})
    return {"ratios": summary["ratios"]}


def _plot(out, runs, summary, cfg):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"note: no pictures written ({e})")
        return []
    colours = dict(zip(recipes.METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(1, len(cfg.regimes), figsize=(6.5 * len(cfg.regimes), 4.2), squeeze=False)
    for ax, regime in zip(axes[0], cfg.regimes):
        for method in cfg.methods:
            e = summary["best"].get(f"{method}/{regime}")
            if e is None:
                continue
            rs = [r for r in runs if (r["method"], r["regime"], r["lr"]) == (method, regime, e["lr"])]
            n = min(len(r["score_curve"]) for r in rs)
            if n == 0:
                continue
            curve = np.median([r["score_curve"][:n] for r in rs], axis=0)
            passes = np.arange(1, n + 1) * rs[0]["evals_per_epoch"]["total"]
            ax.plot(passes, curve, label=f"{method} (lr {e['lr']:g})", color=colours[method])
        ax.axhline(cfg.target_level, ls=":", c="gray")
        ax.set(xscale="log", xlabel="network passes (rollout + update)", ylabel="evaluated score",
               title=f"{cfg.task}, {regime} regularisers (median of seeds)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=110)
    plt.close(fig)
    second = {"ring": "mode_balance", "digits": "frechet_ratio", "qm9": "novelty_change"}[cfg.task]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for e in summary["grid"]:
        mk = "o" if e["regime"] == "own" else "s"
        for ax, k in zip(axes, ("drift", second)):
            x, y = e.get(f"median_final_{k}"), e.get("median_final_score")
            if x is not None and y is not None:
                ax.scatter(x, y, marker=mk, color=colours[e["method"]], s=20 + 15 * np.log10(e["lr"] / min(cfg.lrs) + 1))
    for method in cfg.methods:
        axes[0].scatter([], [], color=colours[method], label=method)
    axes[0].legend(fontsize=8, title="o own, s equalised; size ~ lr")
    drift = "1/2 ||sigma s - sigma s_ref||^2" if cfg.task == "qm9" else "||v - v_ref||^2"
    axes[0].set(xscale="log", xlabel=f"final drift E {drift} at t = 0.5", ylabel="final score")
    axes[1].set(xlabel=second.replace("_", " "), ylabel="final score")
    fig.suptitle(f"{cfg.task}: the front each method traces over its learning rates (medians of seeds)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "front.png"), dpi=110)
    plt.close(fig)
    if cfg.task != "qm9":
        return ["curves.png", "front.png"]
    fig, ax = plt.subplots(figsize=(6.5, 4.6))  # the bar of point 4, run by run
    for r in runs:
        f = r["final"] or {}
        if f.get("qed_gain") is None:
            continue
        x = min(f["uniqueness_change"], f["novelty_change"])
        ax.scatter(x, f["qed_gain"], color=colours[r["method"]], marker="o" if stable_run(r) else "x",
                   s=20 + 15 * np.log10(r["lr"] / min(cfg.lrs) + 1))
    for method in cfg.methods:
        ax.scatter([], [], color=colours[method], label=method)
    ax.axhline(0.05, ls=":", c="gray")
    ax.axvline(-5, ls=":", c="gray")
    ax.fill_between([-5, max(ax.get_xlim()[1], 0)], 0.05, max(ax.get_ylim()[1], 0.06), color="green", alpha=0.08)
    ax.legend(fontsize=8, title="o stable, x not; size ~ lr")
    ax.set(xlabel="worse of the uniqueness and novelty changes (points)", ylabel="QED gain (10,000 molecules)",
           title=f"qm9, reward {cfg.reward}: the bar is the shaded corner")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bar.png"), dpi=110)
    plt.close(fig)
    return ["curves.png", "front.png", "bar.png"]
