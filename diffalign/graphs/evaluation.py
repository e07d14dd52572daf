"""GDSS's data sets with their evaluators, as the experiments and notebooks use them.

Each data set is an ``Evaluator`` (``diffalign.metrics.Evaluator``: ``keys``, ``score(samples)``,
``summarise(per_seed)``) that also serves its training data: ``batch_fn(seed)`` (training
batches), ``flags`` (node flags to draw sampling sizes from), ``sample_batch(n)`` (the
reference's sampling round size), ``save_and_score(x, adj, flags, out, tag, first, score)``
(write the generated graphs, the sampler's dense output, and score them against the test set)
and ``score_file(path, out)``. ``GenericGraphs`` reports MMDs of degree, clustering and orbit
counts (and GDSS's average of the three); ``Molecules`` validity without correction, uniqueness,
novelty, NSPDK and FCD.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from ..checkpoint import Checkpointer
from ..metrics import Evaluator
from . import data as gdata
from .gdss import build_model, make_batch_fn, make_molecule_batch_fn, make_step, quantize_generic, sample_flags, sampler
from .metrics import graph_mmds


def _dense(graphs, cfg):
    return gdata.to_dense(graphs, cfg.max_nodes, cfg.max_feat)


class GenericGraphs(Evaluator):
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
        return self.score(graphs) if score else {}

    def score(self, samples) -> dict:
        """MMDs of the generated graphs (networkx) to the test set."""
        return graph_mmds(self.test, samples)

    def summarise(self, per_seed: dict) -> dict:
        out = super().summarise(per_seed)
        rows = out.pop("per_seed")
        if "degree" in out:
            out["average"] = float(np.mean([out["degree"], out["clustering"], out["orbit"]]))
        return {**out, "per_seed": rows}

    def score_file(self, path, out):
        generated = gdata.read_edge_lists(path)
        m = self.score(generated)
        m.update(num_generated=len(generated), num_reference=len(self.test))
        return m


class Molecules(Evaluator):
    """Molecules: atom-type / bond-order batches; validity, uniqueness, novelty, NSPDK, FCD."""

    keys = ("validity_wo_correction", "uniqueness", "novelty", "nspdk", "fcd")

    def __init__(self, name, cfg, data_dir):
        from . import molecules as M

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

    def quantize(self, x, adj):
        """The sampler's dense output as (atom types, bond orders)."""
        return self.M.quantize(np.asarray(x), np.asarray(adj))

    def load_samples(self, path):
        """(atom types, bond orders) saved by ``save_and_score``."""
        return self.M.load_quantized(path, self.name)

    def save_and_score(self, x, adj, flags, out, tag, first, score=True):
        types, bonds = self.quantize(x, adj)
        self.M.save_quantized(os.path.join(out, f"samples_{tag}.npz"), types, bonds, self.name)
        if not score:
            return {}
        return self.score_quantized(types, bonds, out, tag, first)

    def score_quantized(self, types, bonds, out, tag, first=False):
        """Decode quantized molecules as the sampler does, write their SMILES to
        ``out/samples_{tag}.smi`` (and ``samples.smi`` when ``first``) and score them."""
        dec = self.M.decode(types, bonds, self.name)
        lines = "\n".join(s or "" for s in dec.smiles) + "\n"
        with open(os.path.join(out, f"samples_{tag}.smi"), "w") as f:
            f.write(lines)
        if first:
            with open(os.path.join(out, "samples.smi"), "w") as f:
                f.write(lines)
        return self.score(dec.smiles, dec.valid_without_correction)

    def score_file(self, path, out):
        """A SMILES file (one per line; validity without correction unknown) or a ``.npz`` of
        quantized molecules (``atom_types``, ``bond_orders``), decoded here as the sampler does."""
        if path.endswith(".npz"):
            types, bonds = self.load_samples(path)
            m = self.score_quantized(types, bonds, out, "decoded")
            m.update(num_generated=len(types), num_reference=len(self.test_smiles))
            return m
        with open(path) as f:
            smiles = [line.strip() for line in f]
        m = self.score(smiles)
        m.update(num_generated=len(smiles), num_reference=len(self.test_smiles))
        return m

    def score(self, samples, valid_wo=None) -> dict:
        """Metrics of generated SMILES (``None`` for a failed decoding); ``valid_wo`` (per
        molecule, validity before valency correction) when known, else that metric is NaN."""
        from .nspdk import mol_to_graph, nspdk_mmd
        from rdkit import Chem

        if self._train_can is None:
            self._train_can = set(s for s in self.M.canonical(self.train_smiles) if s)
            self._test_graphs = [mol_to_graph(Chem.MolFromSmiles(s)) for s in self.test_smiles]
        m = self.M.validity_uniqueness_novelty(samples, self._train_can, valid_wo)
        if valid_wo is None:
            m["validity_wo_correction"] = float("nan")  # unknown for SMILES from elsewhere
        mols = [Chem.MolFromSmiles(s) for s in samples if s]
        mols = [mol for mol in mols if mol is not None]
        m["nspdk"] = nspdk_mmd(self._test_graphs, [mol_to_graph(mol) for mol in mols]) if mols else float("nan")
        m["fcd"] = self.M.fcd([Chem.MolToSmiles(mol) for mol in mols], self.test_smiles)
        return m


def load_data(name, cfg, data_dir=None):
    """The data set ``name`` with its evaluator: ``GenericGraphs`` or ``Molecules``."""
    return (GenericGraphs if cfg.kind == "generic" else Molecules)(name, cfg, data_dir or None)


def sample_and_score(model, params, data, seeds, n, out, overrides, timer, score=True):
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


def load_trained(run: str):
    """A `graphs train` run's (config, GDSS config, data, model, sampling parameters): the EMA or
    raw parameters as its data set's config says, restored from the run's latest checkpoint."""
    from ..training import init_train_state
    from .configs import get_config

    tc = trained_config(run)
    gcfg = get_config(tc["dataset"])
    data = load_data(tc["dataset"], gcfg, tc.get("data_dir") or None)
    model = build_model(gcfg, 0)  # shapes only: the parameters come from the checkpoint
    opt, _ = make_step(model, data.flags)
    with Checkpointer(os.path.join(run, "checkpoints")) as ck:
        state, _ = ck.restore(init_train_state(model.params, opt, jax.random.key(0)))
    return tc, gcfg, data, model, state.ema_params if gcfg.use_ema else state.params


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
