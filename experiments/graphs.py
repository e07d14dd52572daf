"""GDSS (Jo et al., ICML 2022): train, sample and evaluate graph generators.

    diffalign graphs train    --dataset community_small --out runs/cs
    diffalign graphs sample   --run runs/cs --seeds 0 1 2 --out runs/cs-samples
    diffalign graphs evaluate --dataset community_small --samples FILE --out runs/eval

``train`` trains both score networks with the paper's schedule, then samples as many graphs
as the test set with each sampling seed and scores them; ``sample`` reuses a trained run;
``evaluate`` scores any generator's output (an edge-list ``.npz`` in the shared format).
Generated graphs are written as ``samples.npz`` (the first sampling seed) and
``samples_seed{S}.npz``, in the shared edge-list format.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import numpy as np

from diffalign.graphs import data as gdata
from diffalign.graphs.configs import CONFIGS, get_config
from diffalign.graphs.gdss import build_model, make_batch_fn, make_step, quantize_generic, sample_flags, sampler, steps_per_epoch
from diffalign.graphs.metrics import graph_mmds
from diffalign.graphs.sampling import CORRECTORS, PREDICTORS, SOLVERS, evaluations_per_step
from diffalign.training import init_train_state, train
from diffalign.checkpoint import Checkpointer

from .common import Timer, field, prepare_out, require_positive, validate_choices, write_json, write_results

NAME = "graphs"
DESCRIPTION = "GDSS score-based graph generation: train | sample | evaluate (MMDs of degree, clustering, orbits)."
GENERIC = tuple(k for k, c in CONFIGS.items() if c.kind == "generic")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    dataset: str = field("community_small", "data set", choices=tuple(CONFIGS))
    data_dir: str = field("", "folder holding graphs/ and molecules/ (default: $DIFFALIGN_DATA or ../shared/data)")
    seed: int = field(-1, "training seed (-1: the released checkpoint's seed)")
    epochs: int = field(0, "training epochs (0: the paper's)")
    sample_seeds: tuple[int, ...] = field((0, 1, 2), "sampling seeds for the final evaluation")
    num_samples: int = field(0, "graphs per sampling seed (0: as many as the test set)")
    solver: str = field("", "override the data set's solver", choices=("",) + SOLVERS)
    predictor: str = field("", "override the predictor", choices=("",) + PREDICTORS)
    corrector: str = field("", "override the corrector", choices=("",) + CORRECTORS)
    num_scales: int = field(1000, "reverse steps N")
    use_ema: str = field("config", "sample with EMA weights: config | yes | no", choices=("config", "yes", "no"))
    log_every_epochs: int = field(50, "log interval in epochs")
    checkpoint_every_epochs: int = field(500, "checkpoint interval in epochs")

    def __post_init__(self):
        validate_choices(self)
        require_positive(self, "num_scales", "log_every_epochs", "checkpoint_every_epochs")
        if self.epochs < 0 or self.num_samples < 0:
            raise ValueError("epochs and num_samples must be >= 0")

    def smoke(self):
        return dataclasses.replace(self, epochs=4, num_scales=40, sample_seeds=(0,), log_every_epochs=2,
                                   checkpoint_every_epochs=4)


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    run: str = field("", "a `graphs train` output directory")
    seeds: tuple[int, ...] = field((0, 1, 2), "sampling seeds")
    num_samples: int = field(0, "graphs per seed (0: as many as the test set)")
    solver: str = field("", "override the solver", choices=("",) + SOLVERS)
    predictor: str = field("", "override the predictor", choices=("",) + PREDICTORS)
    corrector: str = field("", "override the corrector", choices=("",) + CORRECTORS)
    num_scales: int = field(1000, "reverse steps N")
    use_ema: str = field("config", "sample with EMA weights: config | yes | no", choices=("config", "yes", "no"))

    def __post_init__(self):
        validate_choices(self)
        if not self.run:
            raise ValueError("--run is required: the output directory of `diffalign graphs train`")

    def smoke(self):
        return dataclasses.replace(self, seeds=self.seeds[:1], num_scales=40)


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    dataset: str = field("community_small", "reference data set (its test split)", choices=tuple(CONFIGS))
    samples: str = field("", "generated graphs: an edge-list .npz (or a SMILES file for molecules)")
    data_dir: str = field("", "folder holding graphs/ and molecules/")

    def __post_init__(self):
        validate_choices(self)
        if not self.samples:
            raise ValueError("--samples is required")

    def smoke(self):
        return self


def _dense(graphs, cfg):
    return gdata.to_dense(graphs, cfg.max_nodes, cfg.max_feat)


def _sample_and_score(model, params, train_flags, test, cfg, seeds, n, out, overrides, timer):
    f = sampler(model, params, **overrides)
    per_seed = {}
    for s in seeds:
        key = jax.random.key(s)
        flags = sample_flags(jax.random.fold_in(key, 0), train_flags, n)
        with timer("sample"):
            _, adj = f(jax.random.fold_in(key, 1), flags)
            adj = np.asarray(jax.block_until_ready(adj))
        graphs = quantize_generic(adj, np.asarray(flags))
        gdata.write_edge_lists(os.path.join(out, f"samples_seed{s}.npz"), graphs)
        if s == seeds[0]:
            gdata.write_edge_lists(os.path.join(out, "samples.npz"), graphs)
        with timer("evaluate"):
            per_seed[s] = graph_mmds(test, graphs)
        print(f"sampling seed {s}: " + " ".join(f"{k} {v:.4f}" for k, v in per_seed[s].items()))
    return per_seed


def _summary(per_seed: dict) -> dict:
    out = {}
    for k in ("degree", "clustering", "orbit"):
        vals = [m[k] for m in per_seed.values()]
        out[k] = float(np.mean(vals))
        out[f"{k}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    out["average"] = float(np.mean([out["degree"], out["clustering"], out["orbit"]]))
    out["per_seed"] = {str(s): m for s, m in per_seed.items()}
    return out


def _overrides(c, cfg):
    return dict(solver=c.solver or None, predictor=c.predictor or None, corrector=c.corrector or None,
                num_scales=c.num_scales)


def _use_ema(choice, cfg):
    return cfg.use_ema if choice == "config" else choice == "yes"


def train_run(c: TrainConfig, out: str, smoke: bool = False) -> dict:
    if smoke:
        c = c.smoke()
    cfg = get_config(c.dataset)
    if cfg.kind != "generic":
        raise ValueError(f"{c.dataset} is a molecule data set: molecules are trained by `graphs train-mol`")
    out = prepare_out(out)
    timer = Timer()
    t0 = time.perf_counter()
    train_graphs, test = gdata.load_generic(c.dataset, c.data_dir or None)
    x, adj, flags = _dense(train_graphs, cfg)
    seed = cfg.train_seed if c.seed < 0 else c.seed
    model = build_model(cfg, seed)
    opt, step = make_step(model, len(x))
    spe = steps_per_epoch(len(x), min(cfg.batch_size, len(x)))
    epochs = c.epochs or cfg.epochs
    state = init_train_state(model.params, opt, jax.random.key(seed))
    with timer("train"):
        result = train(
            state, step, make_batch_fn(x, adj, cfg.batch_size, seed + 1), num_steps=epochs * spe, workdir=out,
            config={"dataset": c.dataset, "seed": seed, "gdss": dataclasses.asdict(cfg), "data": c.data_dir},
            steps_per_call=spe * min(c.log_every_epochs, 50), log_every=spe * c.log_every_epochs,
            checkpoint_every=spe * c.checkpoint_every_epochs,
        )
    st = result.state
    params = st.ema_params if _use_ema(c.use_ema, cfg) else st.params
    n = c.num_samples or len(test)
    per_seed = _sample_and_score(model, params, flags, test, cfg, c.sample_seeds, n, out, _overrides(c, cfg), timer)
    metrics = _summary(per_seed)
    solver = c.solver or cfg.solver
    metrics.update(
        num_samples=n, train_steps=int(st.step), final_loss=result.summary["final_metrics"].get("loss"),
        train_steps_per_sec=result.summary["steps_per_sec"],
        nfe_per_graph=c.num_scales * evaluations_per_step(solver, c.corrector or cfg.corrector),
    )
    write_json(os.path.join(out, "metrics.json"), {k: metrics[k] for k in ("degree", "clustering", "orbit")})
    write_results(out, experiment="graphs train", config=c, metrics=metrics,
                  timings={**timer.times, "compile_s": result.summary["compile_s"], "total_s": time.perf_counter() - t0},
                  extra={"smoke": smoke, "gdss_config": dataclasses.asdict(cfg), "train": result.summary})
    return {k: v for k, v in metrics.items() if k != "per_seed"}


def sample_run(c: SampleConfig, out: str, smoke: bool = False) -> dict:
    if smoke:
        c = c.smoke()
    results_path = os.path.join(c.run, "results.json")
    try:
        with open(results_path) as f:
            trained = json.load(f)
    except OSError as e:
        raise FileNotFoundError(f"{results_path}: not a finished `graphs train` run ({e})") from e
    tc = trained["config"]
    cfg = get_config(tc["dataset"])
    out = prepare_out(out)
    timer = Timer()
    t0 = time.perf_counter()
    train_graphs, test = gdata.load_generic(tc["dataset"], tc.get("data_dir") or None)
    x, _, flags = _dense(train_graphs, cfg)
    model = build_model(cfg, 0)  # shapes only: the parameters come from the checkpoint
    opt, _ = make_step(model, len(x))
    like = init_train_state(model.params, opt, jax.random.key(0))
    with Checkpointer(os.path.join(c.run, "checkpoints")) as ck:
        state, _ = ck.restore(like)
    params = state.ema_params if _use_ema(c.use_ema, cfg) else state.params
    n = c.num_samples or len(test)
    per_seed = _sample_and_score(model, params, flags, test, cfg, c.seeds, n, out, _overrides(c, cfg), timer)
    metrics = _summary(per_seed)
    write_json(os.path.join(out, "metrics.json"), {k: metrics[k] for k in ("degree", "clustering", "orbit")})
    write_results(out, experiment="graphs sample", config=c, metrics=metrics,
                  timings={**timer.times, "total_s": time.perf_counter() - t0}, extra={"smoke": smoke})
    return {k: v for k, v in metrics.items() if k != "per_seed"}


def evaluate_run(c: EvaluateConfig, out: str, smoke: bool = False) -> dict:
    del smoke  # evaluation has no smaller version
    cfg = get_config(c.dataset)
    out = prepare_out(out)
    t0 = time.perf_counter()
    if cfg.kind != "generic":
        raise ValueError("molecule evaluation arrives with the molecule pipeline")
    _, test = gdata.load_generic(c.dataset, c.data_dir or None)
    generated = gdata.read_edge_lists(c.samples)
    metrics = graph_mmds(test, generated)
    metrics["num_generated"] = len(generated)
    metrics["num_reference"] = len(test)
    write_json(os.path.join(out, "metrics.json"), metrics)
    write_results(out, experiment="graphs evaluate", config=c, metrics=metrics,
                  timings={"total_s": time.perf_counter() - t0})
    return metrics


COMMANDS = {
    "train": (TrainConfig, train_run, "train GDSS on a data set, then sample and score (MMDs over sampling seeds)"),
    "sample": (SampleConfig, sample_run, "sample and score from a trained run"),
    "evaluate": (EvaluateConfig, evaluate_run, "score any generator's graphs against a data set's test split"),
}
