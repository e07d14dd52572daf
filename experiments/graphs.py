"""GDSS (Jo et al., ICML 2022): train, sample and evaluate graph generators.

    diffalign graphs train    --dataset community_small --out runs/cs
    diffalign graphs sample   --run runs/cs --seeds 0 1 2 --out runs/cs-samples
    diffalign graphs evaluate --dataset community_small --samples FILE --out runs/eval
    diffalign graphs table    --runs runs/cs-seed1 runs/cs-seed2 runs/cs-seed3 --out runs/cs-table

``train`` trains both score networks with the paper's schedule, then samples as many graphs
as the test set with each sampling seed and scores them; ``sample`` reuses a trained run;
``evaluate`` scores any generator's output (an edge-list ``.npz`` in the shared format);
``table`` gathers several training seeds' runs into mean +- std beside the paper's numbers.
Generated graphs are written as ``samples.npz`` (the first sampling seed) and
``samples_seed{S}.npz``, in the shared edge-list format.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from diffalign.graphs.configs import CONFIGS, get_config
from diffalign.graphs.gdss import (
    build_model,
    make_step,
    steps_per_epoch,
)
from diffalign.graphs.evaluation import GenericGraphs, Molecules, load_data, sample_and_score, trained_config
from diffalign.sampling.graph import CORRECTORS, PREDICTORS, SOLVERS, evaluations_per_step
from diffalign.training import init_train_state, train
from diffalign.checkpoint import Checkpointer

from diffalign.config import LoopConfig, field, replace, require_positive, validate_choices
from diffalign.results import begin, prepare_out, write_json, write_results

NAME = "graphs"
DESCRIPTION = "GDSS score-based graph generation: train | sample | evaluate (MMDs of degree, clustering, orbits)."
GENERIC = tuple(k for k, c in CONFIGS.items() if c.kind == "generic")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    dataset: str = field("community_small", "data set", choices=tuple(CONFIGS))
    data_dir: str = field("", "folder holding graphs/ and molecules/ (default: $DIFFALIGN_DATA or ../shared/data)")
    epochs: int = field(0, "training epochs (0: the paper's)")
    train_minutes: float = field(0.0, "short-budget run: stop training at the first log boundary after this many "
                                      "minutes (0: no limit); the schedule stays the full run's")
    sample_seeds: tuple[int, ...] = field((0, 1, 2), "sampling seeds for the final evaluation")
    num_samples: int = field(0, "graphs per sampling seed (0: as many as the test set)")
    solver: str = field("", "override the data set's solver", choices=("",) + SOLVERS)
    predictor: str = field("", "override the predictor", choices=("",) + PREDICTORS)
    corrector: str = field("", "override the corrector", choices=("",) + CORRECTORS)
    num_scales: int = field(1000, "reverse steps N")
    use_ema: str = field("config", "sample with EMA weights: config | yes | no", choices=("config", "yes", "no"))
    score: bool = field(True, "score the samples (--no-score: only write them, e.g. on a machine without RDKit; "
                              "`graphs evaluate` scores them later)")
    loop: LoopConfig = field(
        LoopConfig(seed=-1, steps_per_call=2000, log_every=50, checkpoint_every=500), "training loop (intervals in epochs)",
        nested_help={"seed": "training seed (-1: the released checkpoint's seed)",
                     "steps_per_call": "at most this many training steps per compiled chunk (whole epochs, at least one)",
                     "log_every": "log interval in epochs", "checkpoint_every": "checkpoint interval in epochs"},
        nested_aliases={"log_every": "--log-every-epochs", "checkpoint_every": "--checkpoint-every-epochs"})
    remat: bool = field(False, "rematerialise every layer of both score networks in the backward pass (less memory)")
    accumulate: int = field(1, "gradient accumulation: microbatches per step (must divide the batch)")

    def __post_init__(self):
        validate_choices(self)
        require_positive(self, "num_scales", "accumulate")
        if self.epochs < 0 or self.num_samples < 0 or self.train_minutes < 0:
            raise ValueError("epochs, train_minutes and num_samples must be >= 0")

    def smoke(self):
        generic = get_config(self.dataset).kind == "generic"
        epochs = 4 if generic else 1
        return replace(
            self, epochs=epochs, num_scales=40, sample_seeds=(0,), log_every=1, checkpoint_every=epochs,
            num_samples=self.num_samples or (0 if generic else 200),
        )


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
    score: bool = field(True, "score the samples (--no-score: only write them)")

    def __post_init__(self):
        validate_choices(self)
        if not self.run:
            raise ValueError("--run is required: the output directory of `diffalign graphs train`")

    def smoke(self):
        return dataclasses.replace(self, seeds=self.seeds[:1], num_scales=40)


@dataclasses.dataclass(frozen=True)
class TableConfig:
    runs: tuple[str, ...] = field((), "`graphs train` (or `sample`) output directories, one per training seed")

    def __post_init__(self):
        if not self.runs:
            raise ValueError("--runs is required: the output directories of `diffalign graphs train`")

    def smoke(self):
        return self


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


def _overrides(c, cfg):
    return dict(solver=c.solver or None, predictor=c.predictor or None, corrector=c.corrector or None,
                num_scales=c.num_scales)


def _use_ema(choice, cfg):
    return cfg.use_ema if choice == "config" else choice == "yes"


def train_run(c: TrainConfig, out: str, smoke: bool = False) -> dict:
    c, out, timer = begin(c, out, smoke)
    cfg = get_config(c.dataset)
    with timer("load_data"):
        data = load_data(c.dataset, cfg, c.data_dir)
    seed = cfg.train_seed if c.loop.seed < 0 else c.loop.seed
    model = build_model(cfg, seed, remat=c.remat)
    batch = min(cfg.batch_size, data.num_train)
    if batch % c.accumulate:
        raise ValueError(f"the batch of {batch} graphs is not divisible by accumulate={c.accumulate}")
    opt, step = make_step(model, data.flags, accumulate=c.accumulate)
    spe = steps_per_epoch(data.num_train, batch)
    epochs = c.epochs or cfg.epochs
    state = init_train_state(model.params, opt, jax.random.key(seed))
    with timer("train"):
        result = train(
            state, step, data.batch_fn(seed + 1), num_steps=epochs * spe, workdir=out,
            config={"dataset": c.dataset, "seed": seed, "gdss": dataclasses.asdict(cfg), "data": c.data_dir,
                    "accumulate": c.accumulate},
            resume_defaults={"accumulate": 1},
            steps_per_call=spe * min(c.loop.log_every, max(1, c.loop.steps_per_call // spe)), log_every=spe * c.loop.log_every,
            checkpoint_every=spe * c.loop.checkpoint_every, resume=c.loop.resume,
            time_limit_s=60 * c.train_minutes if c.train_minutes else None,
        )
    st = result.state
    params = st.ema_params if _use_ema(c.use_ema, cfg) else st.params
    n = c.num_samples or data.default_samples
    per_seed = sample_and_score(model, params, data, c.sample_seeds, n, out, _overrides(c, cfg), timer, c.score)
    metrics = data.summarise(per_seed)
    solver = c.solver or cfg.solver
    metrics.update(
        num_samples=n, train_steps=int(st.step), train_epochs=int(st.step) / spe,
        stopped_early=result.summary["stopped_early"], final_loss=result.summary["final_metrics"].get("loss"),
        train_steps_per_sec=result.summary["steps_per_sec"],
        train_s_all_segments=result.summary.get("train_s_all_segments"),
        nfe_per_graph=c.num_scales * evaluations_per_step(solver, c.corrector or cfg.corrector),
    )
    write_json(os.path.join(out, "metrics.json"), {k: metrics[k] for k in data.keys if k in metrics})
    write_results(out, experiment="graphs train", config=c, metrics=metrics,
                  timings=timer.timings(compile_s=result.summary["compile_s"]),
                  extra={"smoke": smoke, "gdss_config": dataclasses.asdict(cfg), "train": result.summary})
    return {k: v for k, v in metrics.items() if k != "per_seed"}


def sample_run(c: SampleConfig, out: str, smoke: bool = False) -> dict:
    c, out, timer = begin(c, out, smoke)
    tc = trained_config(c.run)
    cfg = get_config(tc["dataset"])
    data = load_data(tc["dataset"], cfg, tc.get("data_dir"))
    model = build_model(cfg, 0)  # shapes only: the parameters come from the checkpoint
    opt, _ = make_step(model, data.flags)
    like = init_train_state(model.params, opt, jax.random.key(0))
    with Checkpointer(os.path.join(c.run, "checkpoints")) as ck:
        state, _ = ck.restore(like)
    params = state.ema_params if _use_ema(c.use_ema, cfg) else state.params
    n = c.num_samples or data.default_samples
    per_seed = sample_and_score(model, params, data, c.seeds, n, out, _overrides(c, cfg), timer, c.score)
    metrics = data.summarise(per_seed)
    write_json(os.path.join(out, "metrics.json"), {k: metrics[k] for k in data.keys if k in metrics})
    write_results(out, experiment="graphs sample", config=c, metrics=metrics, timings=timer.timings(),
                  extra={"smoke": smoke, "dataset": tc["dataset"], "training_seed": tc.get("seed")})
    return {k: v for k, v in metrics.items() if k != "per_seed"}


def evaluate_run(c: EvaluateConfig, out: str, smoke: bool = False) -> dict:
    c, out, timer = begin(c, out, smoke)  # evaluation has no smaller version: smoke() is the config itself
    cfg = get_config(c.dataset)
    if not os.path.exists(c.samples):
        raise FileNotFoundError(f"--samples {c.samples} not found")
    metrics = load_data(c.dataset, cfg, c.data_dir).score_file(c.samples, out)
    write_json(os.path.join(out, "metrics.json"), metrics)
    write_results(out, experiment="graphs evaluate", config=c, metrics=metrics,
                  timings=timer.timings())
    return metrics


def table_run(c: TableConfig, out: str, smoke: bool = False) -> dict:
    """Mean +- std over training seeds (each the mean over its sampling seeds), the spread
    of all training x sampling seed pairs, and the paper's numbers beside them."""
    del smoke
    from diffalign.graphs.configs import PAPER

    runs = []
    for r in c.runs:
        path = os.path.join(r, "results.json")
        try:
            with open(path) as f:
                runs.append(json.load(f))
        except OSError as e:
            raise FileNotFoundError(f"{path}: not a finished `graphs train` run ({e})") from e
    for r, run in zip(runs, c.runs):
        if not (r.get("config", {}).get("dataset") or r.get("dataset")) or "metrics" not in r:
            raise FileNotFoundError(f"{run} is not a `graphs train` or `graphs sample` run "
                                    f"(its results.json is from {r.get('experiment', 'another command')!r})")
    names = {r["config"].get("dataset") or r.get("dataset") for r in runs}
    if len(names) != 1:
        raise ValueError(f"the runs are of different data sets: {sorted(map(str, names))}")
    dataset = names.pop()
    keys = GenericGraphs.keys if get_config(dataset).kind == "generic" else Molecules.keys
    keys = keys + (("average",) if "degree" in keys else ())
    paper = dict(PAPER.get(dataset, {}))
    if "degree" in paper:
        paper["average"] = float(np.mean([paper["degree"], paper["clustering"], paper["orbit"]]))
    rows = {}
    for k in keys:
        per_train = [r["metrics"][k] for r in runs if k in r["metrics"]]
        pairs = [m[k] for r in runs for m in r["metrics"].get("per_seed", {}).values() if k in m]
        if k == "average":
            pairs = [float(np.mean([m["degree"], m["clustering"], m["orbit"]]))
                     for r in runs for m in r["metrics"].get("per_seed", {}).values()]
        if not per_train:
            continue
        rows[k] = {"mean": float(np.mean(per_train)), "std_over_training_seeds": float(np.std(per_train, ddof=1))
                   if len(per_train) > 1 else 0.0, "per_training_seed": per_train,
                   "std_over_all_pairs": float(np.std(pairs, ddof=1)) if len(pairs) > 1 else 0.0,
                   "pairs": len(pairs), "paper": paper.get(k)}
        if paper.get(k):
            rows[k]["ratio_to_paper"] = rows[k]["mean"] / paper[k]
    out = prepare_out(out)
    seeds = [r["config"].get("seed", r.get("training_seed")) for r in runs]
    lines = [f"GDSS on {dataset}: {len(runs)} training seeds {seeds}, "
             f"{rows[keys[0]]['pairs'] // max(1, len(runs))} sampling seeds each", "",
             "| metric | ours: mean +- std over training seeds | std over all pairs | paper | ours / paper |",
             "|---|---|---|---|---|"]
    for k, v in rows.items():
        p = f"{v['paper']:.4g}" if v["paper"] is not None else "-"
        ratio = f"{v['ratio_to_paper']:.2f}" if "ratio_to_paper" in v else "-"
        lines.append(f"| {k} | {v['mean']:.4f} +- {v['std_over_training_seeds']:.4f} | "
                     f"{v['std_over_all_pairs']:.4f} | {p} | {ratio} |")
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    metrics = {k: v["mean"] for k, v in rows.items()}
    metrics.update({f"{k}_std": v["std_over_training_seeds"] for k, v in rows.items()})
    write_results(out, experiment="graphs table", config=c, metrics=metrics, timings={},
                  extra={"dataset": dataset, "rows": rows, "training_seeds": seeds})
    return metrics


COMMANDS = {
    "train": (TrainConfig, train_run, "train GDSS on a data set, then sample and score (MMDs over sampling seeds)"),
    "sample": (SampleConfig, sample_run, "sample and score from a trained run"),
    "evaluate": (EvaluateConfig, evaluate_run, "score any generator's graphs against a data set's test split"),
    "table": (TableConfig, table_run, "mean +- std over training seeds of several runs, beside the paper's numbers"),
}
