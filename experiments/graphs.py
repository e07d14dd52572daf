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
import time

import jax
import numpy as np

from diffalign.graphs import data as gdata
from diffalign.graphs.configs import CONFIGS, get_config
from diffalign.graphs.gdss import (
    build_model,
    make_batch_fn,
    make_molecule_batch_fn,
    make_step,
    quantize_generic,
    sample_flags,
    sampler,
    steps_per_epoch,
)
from diffalign.graphs.metrics import graph_mmds
from diffalign.sampling.graph import CORRECTORS, PREDICTORS, SOLVERS, evaluations_per_step
from diffalign.training import init_train_state, train
from diffalign.checkpoint import Checkpointer

from diffalign.config import field, require_positive, validate_choices
from diffalign.results import Timer, prepare_out, write_json, write_results

NAME = "graphs"
DESCRIPTION = "GDSS score-based graph generation: train | sample | evaluate (MMDs of degree, clustering, orbits)."
GENERIC = tuple(k for k, c in CONFIGS.items() if c.kind == "generic")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    dataset: str = field("community_small", "data set", choices=tuple(CONFIGS))
    data_dir: str = field("", "folder holding graphs/ and molecules/ (default: $DIFFALIGN_DATA or ../shared/data)")
    seed: int = field(-1, "training seed (-1: the released checkpoint's seed)")
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
    log_every_epochs: int = field(50, "log interval in epochs")
    checkpoint_every_epochs: int = field(500, "checkpoint interval in epochs")
    remat: bool = field(False, "rematerialise every layer of both score networks in the backward pass (less memory)")
    accumulate: int = field(1, "gradient accumulation: microbatches per step (must divide the batch)")

    def __post_init__(self):
        validate_choices(self)
        require_positive(self, "num_scales", "log_every_epochs", "checkpoint_every_epochs", "accumulate")
        if self.epochs < 0 or self.num_samples < 0 or self.train_minutes < 0:
            raise ValueError("epochs, train_minutes and num_samples must be >= 0")

    def smoke(self):
        generic = get_config(self.dataset).kind == "generic"
        epochs = 4 if generic else 1
        return dataclasses.replace(
            self, epochs=epochs, num_scales=40, sample_seeds=(0,), log_every_epochs=1, checkpoint_every_epochs=epochs,
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


def _dense(graphs, cfg):
    return gdata.to_dense(graphs, cfg.max_nodes, cfg.max_feat)


class _Generic:
    """Generic graphs: dense one-hot-degree batches, MMDs of degree / clustering / orbits."""

    keys = ("degree", "clustering", "orbit")

    def __init__(self, name, cfg, data_dir):
        self.cfg = cfg
        train_graphs, self.test = gdata.load_generic(name, data_dir)
        self.x, self.adj, self.flags = _dense(train_graphs, cfg)
        self.num_train = len(self.x)
        self.default_samples = len(self.test)

    def batch_fn(self, seed):
        return make_batch_fn(self.x, self.adj, self.cfg.batch_size, seed)

    def sample_batch(self, n):
        """GDSS samples generic graphs in rounds of the training batch size."""
        return self.cfg.batch_size

    def save_and_score(self, x, adj, flags, out, tag, first, score=True):
        graphs = quantize_generic(adj, flags)
        gdata.write_edge_lists(os.path.join(out, f"samples_{tag}.npz"), graphs)
        if first:
            gdata.write_edge_lists(os.path.join(out, "samples.npz"), graphs)
        return graph_mmds(self.test, graphs) if score else {}

    def score_file(self, path, out):
        generated = gdata.read_edge_lists(path)
        m = graph_mmds(self.test, generated)
        m.update(num_generated=len(generated), num_reference=len(self.test))
        return m


class _Molecules:
    """Molecules: atom-type / bond-order batches; validity, uniqueness, novelty, NSPDK, FCD."""

    keys = ("validity_wo_correction", "uniqueness", "novelty", "nspdk", "fcd")

    def __init__(self, name, cfg, data_dir):
        from diffalign.graphs import molecules as M

        self.M, self.name, self.cfg = M, name, cfg
        self.types, self.bonds, self.train_smiles, self.test_smiles = M.load_encoded(name, data_dir)
        self.flags = (self.bonds != 0).any(-1).astype(np.float32)
        self.num_train = len(self.types)
        self.default_samples = 10_000
        self._train_can = None
        self._test_graphs = None

    def batch_fn(self, seed):
        return make_molecule_batch_fn(self.types, self.bonds, self.cfg.max_feat, self.cfg.batch_size, seed)

    def sample_batch(self, n):
        """GDSS samples its 10,000 molecules in one batch."""
        return n

    def save_and_score(self, x, adj, flags, out, tag, first, score=True):
        types, bonds = self.M.quantize(np.asarray(x), np.asarray(adj))
        self.M.save_quantized(os.path.join(out, f"samples_{tag}.npz"), types, bonds, self.name)
        if not score:
            return {}
        return self._decode_and_score(types, bonds, out, tag, first)

    def _decode_and_score(self, types, bonds, out, tag, first):
        dec = self.M.decode(types, bonds, self.name)
        lines = "\n".join(s or "" for s in dec.smiles) + "\n"
        with open(os.path.join(out, f"samples_{tag}.smi"), "w") as f:
            f.write(lines)
        if first:
            with open(os.path.join(out, "samples.smi"), "w") as f:
                f.write(lines)
        return self._score(dec.smiles, dec.valid_without_correction)

    def score_file(self, path, out):
        """A SMILES file (one per line; validity without correction unknown) or a ``.npz`` of
        quantized molecules (``atom_types``, ``bond_orders``), decoded here as the sampler does."""
        if path.endswith(".npz"):
            types, bonds = self.M.load_quantized(path, self.name)
            m = self._decode_and_score(types, bonds, out, "decoded", False)
            m.update(num_generated=len(types), num_reference=len(self.test_smiles))
            return m
        with open(path) as f:
            smiles = [line.strip() for line in f]
        m = self._score(smiles, None)
        m.update(num_generated=len(smiles), num_reference=len(self.test_smiles))
        return m

    def _score(self, smiles, valid_wo):
        from diffalign.graphs.nspdk import mol_to_graph, nspdk_mmd
        from rdkit import Chem

        if self._train_can is None:
            self._train_can = set(s for s in self.M.canonical(self.train_smiles) if s)
            self._test_graphs = [mol_to_graph(Chem.MolFromSmiles(s)) for s in self.test_smiles]
        m = self.M.validity_uniqueness_novelty(smiles, self._train_can, valid_wo)
        if valid_wo is None:
            m["validity_wo_correction"] = float("nan")  # unknown for SMILES from elsewhere
        mols = [Chem.MolFromSmiles(s) for s in smiles if s]
        mols = [mol for mol in mols if mol is not None]
        m["nspdk"] = nspdk_mmd(self._test_graphs, [mol_to_graph(mol) for mol in mols]) if mols else float("nan")
        m["fcd"] = self.M.fcd([Chem.MolToSmiles(mol) for mol in mols], self.test_smiles)
        return m


def load_data(name, cfg, data_dir):
    return (_Generic if cfg.kind == "generic" else _Molecules)(name, cfg, data_dir or None)


def _sample_and_score(model, params, data, seeds, n, out, overrides, timer, score=True):
    """Sample ``n`` graphs per seed as the reference does: in rounds of ``data.sample_batch(n)``
    graphs (the sampler's step size uses batch means), truncated to ``n``."""
    f = sampler(model, params, **overrides)
    batch = data.sample_batch(n)
    per_seed = {}
    for s in seeds:
        key = jax.random.key(s)
        xs, adjs, fls = [], [], []
        for r in range(-(-n // batch)):
            k = jax.random.fold_in(key, r)
            flags = sample_flags(jax.random.fold_in(k, 0), data.flags, batch)
            with timer("sample"):
                x, adj = f(jax.random.fold_in(k, 1), flags)
                adj = np.asarray(jax.block_until_ready(adj))
            xs.append(np.asarray(x))
            adjs.append(adj)
            fls.append(np.asarray(flags))
        with timer("evaluate"):
            per_seed[s] = data.save_and_score(np.concatenate(xs)[:n], np.concatenate(adjs)[:n],
                                              np.concatenate(fls)[:n], out, f"seed{s}", s == seeds[0], score)
        print(f"sampling seed {s}: " + (" ".join(f"{k} {v:.4f}" for k, v in per_seed[s].items()) or "saved, not scored"))
    return per_seed


def seed_summary(per_seed: dict, keys) -> dict:
    out = {}
    for k in keys:
        vals = [m[k] for m in per_seed.values() if k in m]
        if vals:
            out[k] = float(np.mean(vals))
            out[f"{k}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    if "degree" in out:
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
    out = prepare_out(out)
    timer = Timer()
    t0 = time.perf_counter()
    with timer("load_data"):
        data = load_data(c.dataset, cfg, c.data_dir)
    seed = cfg.train_seed if c.seed < 0 else c.seed
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
            steps_per_call=spe * min(c.log_every_epochs, max(1, 2000 // spe)), log_every=spe * c.log_every_epochs,
            checkpoint_every=spe * c.checkpoint_every_epochs,
            time_limit_s=60 * c.train_minutes if c.train_minutes else None,
        )
    st = result.state
    params = st.ema_params if _use_ema(c.use_ema, cfg) else st.params
    n = c.num_samples or data.default_samples
    per_seed = _sample_and_score(model, params, data, c.sample_seeds, n, out, _overrides(c, cfg), timer, c.score)
    metrics = seed_summary(per_seed, data.keys)
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
                  timings={**timer.times, "compile_s": result.summary["compile_s"], "total_s": time.perf_counter() - t0},
                  extra={"smoke": smoke, "gdss_config": dataclasses.asdict(cfg), "train": result.summary})
    return {k: v for k, v in metrics.items() if k != "per_seed"}


def trained_config(run: str) -> dict:
    """A training run's config: from its results.json, or, for a run stopped before it wrote one
    (interrupted, killed), from its latest checkpoint."""
    results_path = os.path.join(run, "results.json")
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
        config = results.get("config") if isinstance(results, dict) else None
        if not isinstance(config, dict) or "dataset" not in config:
            what = results.get("experiment", "another command") if isinstance(results, dict) else "another command"
            raise FileNotFoundError(f"{run} is not a `graphs train` run (its results.json is from {what!r})")
        return config
    ckpt_dir = os.path.join(run, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"{run}: neither results.json nor checkpoints/ (not a `graphs train` run)")
    with Checkpointer(ckpt_dir) as ck:
        tc = ck.read_config()
    if not tc or "dataset" not in tc:
        raise ValueError(f"{ckpt_dir}: the latest checkpoint has no run config")
    return {"dataset": tc["dataset"], "data_dir": tc.get("data", ""), "seed": tc.get("seed")}


def sample_run(c: SampleConfig, out: str, smoke: bool = False) -> dict:
    if smoke:
        c = c.smoke()
    tc = trained_config(c.run)
    cfg = get_config(tc["dataset"])
    out = prepare_out(out)
    timer = Timer()
    t0 = time.perf_counter()
    data = load_data(tc["dataset"], cfg, tc.get("data_dir"))
    model = build_model(cfg, 0)  # shapes only: the parameters come from the checkpoint
    opt, _ = make_step(model, data.flags)
    like = init_train_state(model.params, opt, jax.random.key(0))
    with Checkpointer(os.path.join(c.run, "checkpoints")) as ck:
        state, _ = ck.restore(like)
    params = state.ema_params if _use_ema(c.use_ema, cfg) else state.params
    n = c.num_samples or data.default_samples
    per_seed = _sample_and_score(model, params, data, c.seeds, n, out, _overrides(c, cfg), timer, c.score)
    metrics = seed_summary(per_seed, data.keys)
    write_json(os.path.join(out, "metrics.json"), {k: metrics[k] for k in data.keys if k in metrics})
    write_results(out, experiment="graphs sample", config=c, metrics=metrics,
                  timings={**timer.times, "total_s": time.perf_counter() - t0},
                  extra={"smoke": smoke, "dataset": tc["dataset"], "training_seed": tc.get("seed")})
    return {k: v for k, v in metrics.items() if k != "per_seed"}


def evaluate_run(c: EvaluateConfig, out: str, smoke: bool = False) -> dict:
    del smoke  # evaluation has no smaller version
    cfg = get_config(c.dataset)
    out = prepare_out(out)
    t0 = time.perf_counter()
    if not os.path.exists(c.samples):
        raise FileNotFoundError(f"--samples {c.samples} not found")
    metrics = load_data(c.dataset, cfg, c.data_dir).score_file(c.samples, out)
    write_json(os.path.join(out, "metrics.json"), metrics)
    write_results(out, experiment="graphs evaluate", config=c, metrics=metrics,
                  timings={"total_s": time.perf_counter() - t0})
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
    keys = _Generic.keys if get_config(dataset).kind == "generic" else _Molecules.keys
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
