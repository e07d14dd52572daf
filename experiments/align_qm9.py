"""``diffalign align --task qm9``: AWM on a GDSS model trained on QM9, with a QED reward.

Each epoch samples ``samples_per_epoch`` molecules with the model's own sampler, scores them
with RDKit's QED (0 for a molecule that needs valency correction), and takes one AWM update of
both score networks. At the end ``eval_samples`` molecules of the aligned model (and of the base
model, unless ``--base-samples`` gives its saved samples) are scored as ``diffalign graphs``
scores them: validity without correction, uniqueness, novelty, NSPDK, FCD, and the mean QED.

``final_reward`` / ``base_reward`` are the mean QED of the molecules valid without correction
(``reward_mean`` beside them counts the invalid ones as 0, the training reward). The per-row
loss is GDSS's own (1/2 the squared error summed over a molecule's entries, about 117 for QM9,
not averaged), so beta and beta_ema act on a larger scale than on the flows: beta = 0.05
froze the model in a 25-epoch pilot, 0.003 let it move.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from diffalign import align
from diffalign.align import rl
from diffalign.checkpoint import Checkpointer
from diffalign.graphs.align import gdss_matching, graph_rollout_stage, qed_reward, qed_scores
from diffalign.graphs.gdss import build_model, sample_flags, sampler
from diffalign.training import init_train_state, make_optimizer, make_train_step, train

from diffalign.config import as_dict
from diffalign.results import write_json, write_results


def _load_gdss(run_dir: str):
    from diffalign.graphs.evaluation import load_data, trained_config
    from .graphs import get_config, make_step

    tc = trained_config(run_dir)
    if tc["dataset"] != "QM9":
        raise ValueError(f"--gdss-run {run_dir} is a {tc['dataset']} run, not QM9")
    cfg = get_config("QM9")
    data = load_data("QM9", cfg, tc.get("data_dir"))
    model = build_model(cfg, 0)
    opt, _ = make_step(model, data.flags)
    like = init_train_state(model.params, opt, jax.random.key(0))
    with Checkpointer(os.path.join(run_dir, "checkpoints")) as ck:
        state, _ = ck.restore(like)
    return model, (state.ema_params if cfg.use_ema else state.params), data


def smoke_gdss_run(out: str) -> str:
    """For --smoke without --gdss-run: a few steps of GDSS on QM9 (same code path, no quality)."""
    from .graphs import TrainConfig, train_run

    run_dir = os.path.join(out, "gdss_smoke")
    if not os.path.exists(os.path.join(run_dir, "results.json")):
        train_run(TrainConfig(dataset="QM9", score=False), run_dir, smoke=True)
    return run_dir


def _score(data, model, params, cfg, out, tag, timer):
    """Sample ``eval_samples`` molecules (the config's sampler, one batch as GDSS does) and score them."""
    f = sampler(model, params)
    key = jax.random.key(cfg.loop.seed + 4242)
    flags = sample_flags(jax.random.fold_in(key, 0), data.flags, cfg.eval_samples)
    with timer(f"sample_{tag}"):
        x, adj = f(jax.random.fold_in(key, 1), flags)
        x, adj = np.asarray(x), np.asarray(jax.block_until_ready(adj))
    with timer(f"score_{tag}"):
        m = data.save_and_score(x, adj, np.asarray(flags), out, tag, False, True)
        types, bonds = data.quantize(x, adj)
        m.update(_qed_summary(types, bonds))
    return m


def _qed_summary(types, bonds):
    rewards, valid = qed_scores(types, bonds, "QM9")
    return {"reward_mean": float(rewards.mean()), "qed_mean": float(rewards[valid > 0].mean()) if valid.any() else float("nan"),
            "num_samples": int(len(types))}


def run_qm9(cfg, out: str, timer, smoke: bool) -> dict:
    """``align --task qm9``: ``cfg`` (already at smoke size if asked), ``out`` made and ``timer``
    started by ``align.run``."""
    gdss_run = cfg.gdss_run or (smoke_gdss_run(out) if smoke else "")
    if not gdss_run:
        raise ValueError("--task qm9 needs --gdss-run DIR, a `diffalign graphs train --dataset QM9` run")
    model, ref, data = _load_gdss(gdss_run)
    host = qed_reward("QM9")
    prepare = graph_rollout_stage(model, data.flags, host, num_samples=cfg.samples_per_epoch,
                                  num_scales=cfg.rollout_steps)
    loss_fn = rl.matching_rows(gdss_matching(model), num_times=cfg.num_times, t_range=(model.gsde.train_eps, 1.0))
    transform = align.awm(weighting=cfg.weighting, beta=cfg.beta, beta_ema=cfg.beta_ema)
    opt = make_optimizer(cfg.lr, clip_norm=cfg.clip_norm)
    state = init_train_state(ref, opt, jax.random.key(cfg.loop.seed), transform, ema=False, aux=rl.awm_aux(ref))
    step = make_train_step(loss_fn, opt, transform, prepare=prepare, aux_update=rl.ema_anchor_update)
    rows: list[dict] = []
    workdir = os.path.join(out, "align")
    from diffalign.training import NonFiniteLossError
    from diffalign.training.logger import read_log

    with timer("align"):
        try:
            result = train(state, step, lambda s: {}, num_steps=cfg.epochs, workdir=workdir, config=as_dict(cfg),
                           desc="awm qm9", on_log=lambda s, m: rows.append(m),
                           resume_ignore=("eval_samples", "base_samples"), **cfg.loop.train_kwargs())
        except NonFiniteLossError as e:  # a diverging run is a result: keep its curves, say where it stopped
            rows = [{k: v for k, v in r.items() if k != "step"} for r in read_log(workdir)]
            curves = {k: [r.get(k) for r in rows] for k in rows[0]} if rows else {}
            metrics = {"final_reward": None, "epochs_to_target": None, "diverged_at": e.step + 1}
            write_results(out, experiment="align", config=cfg, metrics=metrics, timings=timer.times,
                          extra={"smoke": smoke, "curves": curves, "final_reward": None, "epochs_to_target": None,
                                 "divergence": str(e), "gdss_run": gdss_run})
            return metrics

    rows = [{k: v for k, v in r.items() if k != "step"} for r in read_log(workdir)][-cfg.epochs:]
    curves = {k: [r.get(k) for r in rows] for k in rows[0]} if rows else {}
    final = _score(data, model, result.state.params, cfg, out, "aligned", timer)
    if cfg.base_samples:
        with timer("score_base"):
            types, bonds = data.load_samples(cfg.base_samples)
            base = data.score_quantized(types, bonds, out, "base")
            base.update(_qed_summary(types, bonds))
    else:
        base = _score(data, model, ref, cfg, out, "base", timer)
    metrics = {
        "final_reward": final["qed_mean"], "base_reward": base["qed_mean"],
        "qed_gain": final["qed_mean"] - base["qed_mean"],
        "epochs_to_target": None,
        "final": final, "base": base,
        "final_drift": curves["drift"][-1] if curves.get("drift") else None,
    }
    for k in ("validity_wo_correction", "uniqueness", "novelty"):
        metrics[f"{k}_change_points"] = 100 * (final[k] - base[k])
    timings = timer.timings(align_compile_s=result.summary["compile_s"], align_run_s=result.summary["train_s"],
                            epoch_s=result.summary["train_s"] / max(result.summary["steps_run"], 1))
    write_json(os.path.join(out, "curves.json"), curves)
    picture = _plot(os.path.join(out, "alignment.png"), curves, cfg)
    write_results(out, experiment="align", config=cfg, metrics=metrics, timings=timings,
                  extra={"smoke": smoke, "curves": curves, "picture": picture, "gdss_run": gdss_run,
                         "final_reward": metrics["final_reward"], "epochs_to_target": None})
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def _plot(path, curves, cfg):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, k, label in zip(axes, ("reward", "valid_wo_correction", "drift"),
                            ("mean reward (QED, 0 if invalid)", "valid without correction", "drift at t = 0.5")):
        ax.plot(curves.get(k, []))
        ax.set(xlabel="epoch", ylabel=label)
    axes[0].set_title(f"AWM on GDSS QM9, lr {cfg.lr:g}, {cfg.samples_per_epoch} molecules/epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.path.basename(path)
