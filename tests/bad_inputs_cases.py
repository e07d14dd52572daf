"""Bad inputs at every user boundary, one table: the CLI, the data loaders and the library
(tested by ``test_bad_inputs.py``).

``CASES`` lists each kind of bad input with what it must raise and a regex its message must
match (the message names the offending value and says what is expected; none is a traceback
from inside jit). CLI cases run ``diffalign.cli.main`` in-process and turn its outcome into a
``CliExit`` carrying the exit status and the ``error:`` line the user sees on stderr.
``tests/make_bad_inputs_table.py`` runs the same table and writes ``docs/bad-inputs.md``.

Cases marked ``uses_run`` point at a finished run directory (a tiny ``diffalign toy2d`` run
and a tiny ``diffalign.training.train`` run, made once per module);
``test_bad_inputs_leave_a_finished_run_untouched`` checks that none of them changes a byte of
it: no file is modified (an appended log row counts as a modification), added or removed.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffalign import checkpoint, metrics, paths, sde, training
from diffalign.checkpoint import CheckpointError
from diffalign.data import digits, shuffle, toy2d
from diffalign.graphs import configs as gconfigs
from diffalign.graphs import data as gdata
from diffalign.graphs import molecules as M
from diffalign.sampling import graph as gsampling
from diffalign.training import NonFiniteLossError

from bad_inputs_harness import (
    DATA, LIB_CONFIG, LIB_STEPS, SMALL,
    CliExit, Ctx, checkpoint_path_is_a_file, cli, csv_file, distiller, edge_list, fm_loss, lib_train, linear_predictor,
    make_dir, make_transform, molecule_files, moon_batches, nan_batches, oversized_graph, sample_points, tiny_mlp,
    train_in_memory, truncated_npz,
)


# ----------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    area: str  # "cli" | "data" | "library"
    description: str  # the bad input, as a user would give it
    trigger: Callable[[Ctx], object]
    exc: type
    match: str  # a regex the message must match (re.search)
    code: int | None = None  # the exit status, for CLI cases
    uses_run: bool = False  # points at the shared finished runs (checked for corruption)
    needs: str | None = None  # an optional package the case needs (skipped without it)


X = jnp.zeros((4, 2))

CASES = [
    # --- the command line ---------------------------------------------------------------------
    Case("cli-unknown-subcommand", "cli", "`diffalign frobnicate`",
         lambda c: cli("frobnicate"), CliExit, r"unknown subcommand 'frobnicate'; choose one of: toy2d", 2),
    Case("cli-missing-out", "cli", "`diffalign toy2d` without --out",
         lambda c: cli("toy2d"), CliExit, r"required: --out", 2),
    Case("cli-unknown-flag", "cli", "`toy2d --stpes 3` (misspelt flag)",
         lambda c: cli("toy2d", "--out", c.path("o"), "--stpes", "3"), CliExit, r"unrecognized arguments: --stpes 3", 2),
    Case("cli-steps-not-int", "cli", "`toy2d --steps abc`",
         lambda c: cli("toy2d", "--out", c.path("o"), "--steps", "abc"), CliExit, r"--steps: invalid int value: 'abc'", 2),
    Case("cli-steps-zero", "cli", "`toy2d --steps 0` on a finished run",
         lambda c: cli("toy2d", "--out", c.runs.toy2d, *SMALL, "--steps", "0"), CliExit, r"steps must be >= 1, got 0", 2,
         uses_run=True),
    Case("cli-no-resume-on-a-run", "cli", "`toy2d --no-resume` on a finished run",
         lambda c: cli("toy2d", "--out", c.runs.toy2d, *SMALL, "--no-resume"), CliExit,
         r"holds a checkpoint of step 20 and resume is off \(--no-resume\): choose a fresh output directory", 1,
         uses_run=True),
    Case("cli-unknown-choice", "cli", "`toy2d --method gan` on a finished run",
         lambda c: cli("toy2d", "--out", c.runs.toy2d, *SMALL, "--method", "gan"), CliExit,
         r"--method: invalid choice: 'gan' \(choose from 'icfm'", 2, uses_run=True),
    Case("cli-unknown-dataset", "cli", "`toy2d --task noise->spirals`",
         lambda c: cli("toy2d", "--out", c.path("o"), "--task", "noise->spirals"), CliExit,
         r"unknown 2-D data set 'spirals'; available: gaussian", 2),
    Case("cli-ema-out-of-range", "cli", "`toy2d --ema-decay 1.5`",
         lambda c: cli("toy2d", "--out", c.path("o"), "--ema-decay", "1.5"), CliExit, r"ema_decay must be in \[0, 1\), got 1.5", 2),
    Case("cli-negative-lr-toy2d", "cli", "`toy2d --lr -1`",
         lambda c: cli("toy2d", "--out", c.path("o"), "--lr", "-1"), CliExit, r"lr must be > 0, got -1", 2),
    Case("cli-zero-width", "cli", "`toy2d --hidden 0`",
         lambda c: cli("toy2d", "--out", c.path("o"), "--hidden", "0"), CliExit, r"hidden widths must be positive", 2),
    Case("cli-accumulate-not-dividing", "cli", "`toy2d --batch-size 256 --accumulate 3`",
         lambda c: cli("toy2d", "--out", c.path("o"), "--accumulate", "3"), CliExit,
         r"batch_size 256 is not divisible by accumulate=3", 2),
    Case("cli-mesh-too-big", "cli", "`toy2d --mesh 16x2` on 8 devices",
         lambda c: cli("toy2d", "--out", c.path("o"), *SMALL, "--mesh", "16x2"), CliExit, r"mesh 16x2 needs 32 devices", 1),
    Case("cli-model-axis-unused", "cli", "`toy2d --mesh 4x2` without --shard-model",
         lambda c: cli("toy2d", "--out", c.path("o"), *SMALL, "--mesh", "4x2"), CliExit,
         r"has a 'model' axis but no layer is split over it", 1),
    Case("cli-graphs-accumulate", "cli", "`graphs train --accumulate 0`",
         lambda c: cli("graphs", "train", "--out", c.path("o"), "--accumulate", "0"), CliExit, r"accumulate must be >= 1, got 0", 2),
    Case("cli-unknown-graphs-command", "cli", "`diffalign graphs fit`",
         lambda c: cli("graphs", "fit", "--out", c.path("o")), CliExit, r"unknown command 'fit'; choose one of: train", 2),
    Case("cli-resume-other-model", "cli", "`toy2d --out RUN --hidden 32`: resume a run written with another network",
         lambda c: cli("toy2d", "--out", c.runs.toy2d, *[a if a != "16" else "32" for a in SMALL]), CliExit,
         r"different config \(hidden: \[16\] -> \[32\]\)", 1, uses_run=True),
    Case("cli-launch-no-command", "cli", "`diffalign launch --processes 2` without a command",
         lambda c: cli("launch", "--processes", "2"), CliExit, r"give the command to run after '--'", 2),
    Case("cli-launch-zero-processes", "cli", "`diffalign launch --processes 0 -- diffalign toy2d`",
         lambda c: cli("launch", "--processes", "0", "--", "diffalign", "toy2d"), CliExit, r"--processes must be at least 1", 2),
    Case("cli-negative-lr-align", "cli", "`align --lr -1`",
         lambda c: cli("align", "--out", c.path("o"), "--lr", "-1"), CliExit, r"lr and clip_norm must be positive, got -1.0", 2),
    Case("cli-negative-lr-digits", "cli", "`digits --lr -1`",
         lambda c: cli("digits", "--out", c.path("o"), "--lr", "-1"), CliExit, r"lr must be positive, got -1.0", 2),
    Case("cli-negative-lr-distill", "cli", "`distill --fake-lr 0`",
         lambda c: cli("distill", "--out", c.path("o"), "--fake-lr", "0"), CliExit, r"fake_lr must be positive, got 0.0", 2),
    Case("cli-dmd-multistep", "cli", "`distill --method dmd --student-steps 4`",
         lambda c: cli("distill", "--out", c.path("o"), "--method", "dmd", "--student-steps", "4"), CliExit,
         r"dmd distils a one-step generator", 2),
    Case("cli-out-is-a-file", "cli", "`toy2d --out RUN/results.json` (an existing file in a finished run)",
         lambda c: cli("toy2d", "--out", os.path.join(c.runs.toy2d, "results.json"), *SMALL), CliExit,
         r"--out .*results\.json exists and is not a directory", 1, uses_run=True),
    Case("cli-resume-other-config", "cli", "`toy2d --out RUN --lr 0.01`: resume a run written with lr 0.001",
         lambda c: cli("toy2d", "--out", c.runs.toy2d, *SMALL, "--lr", "0.01"), CliExit,
         r"different config \(lr: 0.001 -> 0.01\); use another run directory", 1, uses_run=True),
    Case("cli-checkpoint-dir-is-a-file", "cli", "`toy2d --out DIR` where DIR/round0/checkpoints is a file",
         checkpoint_path_is_a_file, CliExit, r"checkpoint path .*checkpoints exists and is not a directory", 1),
    Case("cli-graphs-missing-data", "cli", "`graphs train --data-dir EMPTY` (no graphs/community_small.npz there)",
         lambda c: cli("graphs", "train", "--out", c.path("o"), "--data-dir", make_dir(c.path("empty"))), CliExit,
         r"data file .*graphs/community_small\.npz not found", 1),
    Case("cli-graphs-sample-not-a-graphs-run", "cli", "`graphs sample --run RUN` where RUN is a toy2d run",
         lambda c: cli("graphs", "sample", "--run", c.runs.toy2d, "--out", c.path("o")), CliExit,
         r"is not a `graphs train` run \(its results.json is from 'toy2d'\)", 1, uses_run=True),
    Case("cli-graphs-sample-missing-run", "cli", "`graphs sample --run NOWHERE`",
         lambda c: cli("graphs", "sample", "--run", c.path("nowhere"), "--out", c.path("o")), CliExit,
         r"nowhere: neither results.json nor checkpoints/", 1),
    Case("cli-graphs-sample-no-run", "cli", "`graphs sample` without --run",
         lambda c: cli("graphs", "sample", "--out", c.path("o")), CliExit, r"--run is required", 2),
    Case("cli-graphs-table-not-graphs-runs", "cli", "`graphs table --runs RUN` where RUN is a toy2d run",
         lambda c: cli("graphs", "table", "--runs", c.runs.toy2d, "--out", c.path("o")), CliExit,
         r"is not a `graphs train` or `graphs sample` run", 1, uses_run=True),
    Case("cli-graphs-evaluate-missing-samples", "cli", "`graphs evaluate --samples missing.npz`",
         lambda c: cli("graphs", "evaluate", "--samples", c.path("missing.npz"), "--data-dir", DATA, "--out", c.path("o")),
         CliExit, r"--samples .*missing\.npz not found", 1),
    Case("cli-str2str-bad-t-delta", "cli", "`str2str --chain-t-deltas 0.0 0.5` (T_delta at or below t_min)",
         lambda c: cli("str2str", "--out", c.path("o"), "--chain-t-deltas", "0.0", "0.5"), CliExit,
         r"chain_t_deltas must be non-empty values in \(0.01, 1\], got \(0.0, 0.5\)", 2),
    Case("cli-smore-bad-fraction", "cli", "`smore --fractions 1.5`",
         lambda c: cli("smore", "--out", c.path("o"), "--fractions", "1.5"), CliExit,
         r"every expert fraction must be in \[0, 1\], got 1.5", 2),
    Case("cli-symmflow-unknown-task", "cli", "`symmflow --task cifar`",
         lambda c: cli("symmflow", "--out", c.path("o"), "--task", "cifar"), CliExit, r"invalid choice: 'cifar'", 2),
    Case("cli-score-theory-bad-n", "cli", "`score-theory --ns 0`",
         lambda c: cli("score-theory", "--out", c.path("o"), "--ns", "0"), CliExit,
         r"ns must be training-set sizes >= 2, got \(0,\)", 2),
    # --- data files and loaders -----------------------------------------------------------------
    Case("data-missing-file", "data", "data directory without the requested graph file",
         lambda c: gdata.load_generic("ego_small", c.tmp),
         FileNotFoundError, r"data file .*graphs/ego_small\.npz not found \(data directory"),
    Case("data-unknown-graph-set", "data", "graph data set 'cora'",
         lambda c: gdata.load_generic("cora", DATA),
         ValueError, r"unknown graph data set 'cora'; expected one of"),
    Case("data-truncated-npz", "data", "edge-list .npz cut in half",
         lambda c: gdata.read_edge_lists(truncated_npz(c)),
         ValueError, r"cannot read .*truncated\.npz: not a readable \.npz archive"),
    Case("data-npz-wrong-keys", "data", "a toy2d samples.npz read as an edge-list file",
         lambda c: gdata.read_edge_lists(os.path.join(c.runs.toy2d, "samples.npz")),
         ValueError, r"samples\.npz is not an edge-list file: missing arrays \['edge_offsets', 'edges', 'num_nodes'\]",
         uses_run=True),
    Case("data-edge-out-of-range", "data", "edge list with an edge to node 7 of a 3-node graph",
         lambda c: gdata.read_edge_lists(edge_list(c, [3], [0, 1], [[0, 7]])),
         ValueError, r"graph 0 has an edge to a node outside 0\.\.2"),
    Case("data-graph-too-large", "data", "25-node graph for GDSS's community_small config (max_nodes 20)",
         oversized_graph, ValueError, r"graph 0 has 25 nodes, more than the padding size 20"),
    Case("data-invalid-smiles", "data", "SMILES 'C1CC' (unclosed ring)",
         lambda c: M.encode(["CCO", "C1CC"], "QM9"),
         ValueError, r"invalid SMILES at row 1: 'C1CC'", needs="rdkit"),
    Case("data-empty-smiles-string", "data", "SMILES '' (empty string)",
         lambda c: M.encode(["CCO", ""], "QM9"),
         ValueError, r"empty SMILES at row 1: ''", needs="rdkit"),
    Case("data-empty-smiles-list", "data", "empty list of SMILES",
         lambda c: M.encode([], "QM9"),
         ValueError, r"no SMILES to encode: the list is empty"),
    Case("data-smiles-wrong-atom", "data", "SMILES 'CCS' for QM9 (no sulfur)",
         lambda c: M.encode(["CCS"], "QM9"),
         ValueError, r"'CCS' has atom S, not one of QM9's types", needs="rdkit"),
    Case("data-smiles-too-large", "data", "10-carbon SMILES for QM9 (at most 9 heavy atoms)",
         lambda c: M.encode(["CCCCCCCCCC"], "QM9"),
         ValueError, r"'CCCCCCCCCC' has 10 heavy atoms, more than QM9's 9", needs="rdkit"),
    Case("data-unknown-molecule-set", "data", "molecule data set 'QM10'",
         lambda c: M.encode(["CC"], "QM10"),
         ValueError, r"unknown molecule data set 'QM10'; expected one of \('QM9', 'ZINC250k'\)"),
    Case("data-empty-csv", "data", "empty SMILES CSV file",
         lambda c: M.read_smiles_csv(csv_file(c, ""), "SMILES1"),
         ValueError, r"smiles\.csv is empty: expected a CSV file with a header row holding 'SMILES1'"),
    Case("data-csv-missing-column", "data", "SMILES CSV without the SMILES1 column",
         lambda c: M.read_smiles_csv(csv_file(c, "id,smiles\n0,CC\n"), "SMILES1"),
         ValueError, r"has no column 'SMILES1' \(columns: \['id', 'smiles'\]\)"),
    Case("data-split-index-out-of-range", "data", "valid_idx_qm9.json naming row 5 of a 3-row qm9.csv",
         lambda c: M.load_split("QM9", molecule_files(c, ["C", "CC", "CCO"], [0, 5])),
         ValueError, r"names row 5, outside the 3 rows of qm9\.csv"),
    Case("data-quantized-other-dataset", "data", "QM9 sample file evaluated as ZINC250k",
         lambda c: M.load_quantized(
             M.save_quantized(
                 c.path("q.npz"), np.zeros((1, 9), np.int8), np.zeros((1, 9, 9), np.int8), "QM9"), "ZINC250k"),
         ValueError, r"holds QM9 molecules, not ZINC250k"),
    Case("data-unknown-toy-set", "data", "2-D data set 'spirals'",
         lambda c: toy2d.get_dataset("spirals"),
         ValueError, r"unknown 2-D data set 'spirals'; available:"),
    Case("data-zero-points", "data", "drawing 0 points from a 2-D data set",
         lambda c: toy2d.get_dataset("moons").sample(jax.random.key(0), 0),
         ValueError, r"number of points must be a positive integer, got 0"),
    Case("data-empty-epoch", "data", "shuffled batches of an empty data set",
         lambda c: shuffle.epoch_batch(jax.random.key(0), 0, 0, 8),
         ValueError, r"empty data set \(num_examples=0\)"),
    Case("data-digits-batch-too-large", "data", "digits batch of 10 from 5 images",
         lambda c: digits.make_batch_fn(
             {"k": np.zeros((5, 8, 8), np.int32), "y": np.zeros(5, np.int32)}, 10, 0),
         ValueError, r"batch size 10 exceeds the 5 training images"),
    # --- the library ----------------------------------------------------------------------------
    Case("lib-unknown-sde", "library", "get_sde('edm')",
         lambda c: sde.get_sde("edm"), ValueError, r"unknown SDE 'edm'; available: subvp, ve, vp"),
    Case("lib-sde-unknown-parameter", "library", "get_sde('vp', sigma=1.0)",
         lambda c: sde.get_sde("vp", sigma=1.0), ValueError,
         r"SDE 'vp' has no parameter\(s\) \['sigma'\]; its parameters are"),
    Case("lib-negative-sigma", "library", "VESDE(sigma_min=-1)",
         lambda c: sde.VESDE(sigma_min=-1.0), ValueError,
         r"VESDE needs 0 < sigma_min < sigma_max, got sigma_min=-1.0"),
    Case("lib-unknown-path", "library", "get_path('spline')",
         lambda c: paths.get_path("spline"), ValueError,
         r"unknown path 'spline'; expected 'linear', 'cosine' or an SDE name"),
    Case("lib-unknown-parametrization", "library", "Predictor(..., parametrization='noise')",
         lambda c: linear_predictor(lambda x, t: x, "noise"), ValueError, r"unknown parametrization 'noise'; expected one of"),
    Case("lib-unknown-sampler", "library", "sample(..., method='rk4')",
         lambda c: sample_points(X, "rk4"), ValueError, r"unknown sampler 'rk4'; expected one of \('euler'"),
    Case("lib-sampler-zero-steps", "library", "sample(..., steps=0)",
         lambda c: sample_points(X, "euler", 0), ValueError, r"number of sampling steps must be a positive integer, got 0"),
    Case("lib-sde-sampler-on-a-path", "library", "the 'pc' sampler on a flow-matching (linear) path",
         lambda c: sample_points(X, "pc", 4), ValueError, r"the 'pc' sampler needs an SDE, got the path LinearPath"),
    Case("lib-sample-wrong-dim", "library", "sampling a 2-D network from x_T of shape (4, 3)",
         lambda c: sample_points(jnp.zeros((4, 3))), ValueError, r"network expects inputs of shape \(batch, 2\), got \(4, 3\)"),
    Case("lib-batch-wrong-dim", "library", "loss on a batch x of shape (4, 3) for a 2-D network",
         lambda c: fm_loss({"x": jnp.zeros((4, 3))}), ValueError, r"network expects inputs of shape \(batch, 2\), got \(4, 3\)"),
    Case("lib-batch-not-a-dict", "library", "loss on a bare array instead of {'x': ...}",
         lambda c: fm_loss(X), TypeError, r"a batch must be a dict with the data under 'x'.*got ArrayImpl"),
    Case("lib-batch-integer-data", "library", "loss on integer data (dtype int32)",
         lambda c: fm_loss({"x": jnp.zeros((4, 2), jnp.int32)}), TypeError, r"batch\['x'\] must hold floating-point data, got dtype int32"),
    Case("lib-paired-without-source", "library", "coupling='paired' without batch['x_source']",
         lambda c: fm_loss({"x": X}, coupling="paired"), ValueError, r"'paired' coupling needs the source partners in batch\['x_source'\]"),
    Case("lib-negative-sigma-min", "library", "flow_matching_loss(sigma_min=-0.1)",
         lambda c: fm_loss({"x": X}, sigma_min=-0.1), ValueError, r"sigma_min must be >= 0, got -0.1"),
    Case("lib-times-wrong-shape", "library", "SDE marginal at times of shape (3,) for a batch of 4",
         lambda c: sde.VPSDE().marginal_sample(jax.random.key(0), X, jnp.ones(3)),
         ValueError, r"times .*of shape \(3,\) do not fit a batch of shape \(4, 2\).*shape \(4,\)"),
    Case("lib-network-times-wrong-shape", "library", "network called with times of shape (3,) for 4 points",
         lambda c: linear_predictor().velocity(X, jnp.ones(3)), ValueError, r"one time per example, shape \(4,\), got \(3,\)"),
    Case("lib-raw-prng-key-state", "library", "init_train_state(..., jax.random.PRNGKey(0))",
         lambda c: training.init_train_state(
             tiny_mlp()[1], optax.adam(1e-3), jax.random.PRNGKey(0)),
         TypeError, r"needs a typed PRNG key: use jax.random.key\(seed\), not PRNGKey"),
    Case("lib-raw-prng-key-distiller", "library", "DMD2(...).init(jax.random.PRNGKey(0))",
         lambda c: distiller().init(jax.random.PRNGKey(0)), TypeError, r"DMD2.init needs a typed PRNG key"),
    Case("lib-unknown-distillation", "library", "Distiller('consistency', ...)",
         lambda c: distiller("consistency"), ValueError, r"unknown distillation method 'consistency'; expected one of"),
    Case("lib-distill-phases", "library", "Distiller('phased-dmd', student_steps=4, phases=3)",
         lambda c: distiller("phased-dmd", student_steps=4, phases=3, steps_per_phase=10), ValueError,
         r"phases must divide student_steps, got 3 phases for 4 steps"),
    Case("lib-transform-per-example-shape", "library", "mean() transform given per_example of shape (4, 2)",
         lambda c: make_transform("mean", {"per_example": jnp.zeros((4, 2))}), ValueError,
         r"'per_example' must have shape \(batch,\), got \(4, 2\)"),
    Case("lib-transform-weights-shape", "library", "weighted() transform with 3 weights for 4 losses",
         lambda c: make_transform("weighted", {"per_example": jnp.zeros(4), "weight": jnp.ones(3)}), ValueError,
         r"weights out\['weight'\] have shape \(3,\), per-example losses \(4,\)"),
    Case("lib-negative-lr", "library", "make_optimizer(-1e-3)",
         lambda c: training.make_optimizer(-1e-3), ValueError,
         r"learning rate must be positive, got -0.001"),
    Case("lib-train-zero-steps", "library", "train(..., num_steps=0)",
         lambda c: train_in_memory(moon_batches, 0), ValueError, r"num_steps must be a positive integer, got 0"),
    Case("lib-train-wrong-batch", "library", "train on batches of shape (16, 3) for a 2-D network",
         lambda c: train_in_memory(lambda s: {"x": jnp.zeros((16, 3))}), ValueError,
         r"training step cannot run on the batches given \(batch: \{'x': 'float32\[16, 3\]'\}\).*got \(16, 3\)"),
    Case("lib-train-nan-data", "library", "train on data containing NaN",
         lambda c: train_in_memory(nan_batches), NonFiniteLossError,
         r"non-finite loss or gradient at step 0 .*check the data for NaN/inf"),
    Case("lib-resume-other-config", "library", "train(workdir=RUN) with lr 0.01 where RUN was written with lr 0.001",
         lambda c: lib_train(c.runs.lib, num_steps=2 * LIB_STEPS, config={**LIB_CONFIG, "lr": 0.01}), CheckpointError,
         r"written with a different config \(lr: 0.001 -> 0.01\)", uses_run=True),
    Case("lib-resume-nan-data", "library", "resume RUN for more steps on NaN data",
         lambda c: lib_train(c.runs.lib, nan_batches, num_steps=2 * LIB_STEPS), NonFiniteLossError,
         r"at step 10 .*the last good checkpoint is step 10 in .*checkpoints", uses_run=True),
    Case("lib-checkpoint-dir-is-a-file", "library", "Checkpointer(PATH) where PATH is a file",
         lambda c: checkpoint.Checkpointer(os.path.join(c.runs.toy2d, "results.json")),
         CheckpointError, r"checkpoint path .*results\.json exists and is not a directory", uses_run=True),
    Case("lib-restore-empty", "library", "restore from a checkpoint directory with no checkpoint",
         lambda c: checkpoint.Checkpointer(c.path("ckpt")).restore({"w": jnp.zeros(2)}),
         CheckpointError, r"no complete checkpoint in .*ckpt"),
    Case("lib-unknown-gdss-config", "library", "GDSS config 'cora'",
         lambda c: gconfigs.get_config("cora"), ValueError,
         r"unknown graph data set 'cora'; expected one of \('community_small'"),
    Case("lib-gdss-one-scale", "library", "GraphSDE(num_scales=1)",
         lambda c: dataclasses.replace(
             gconfigs.get_config("ego_small").graph_sde(), num_scales=1),
         ValueError, r"num_scales must be >= 2, got 1"),
    Case("lib-gdss-unknown-solver", "library", "graph sampler solver 'rk45'",
         lambda c: gsampling.sample_graphs(
             jax.random.key(0), gconfigs.get_config("ego_small").graph_sde(),
             None, None, jnp.ones((1, 18)), 17, solver="rk45"),
         ValueError, r"unknown graph solver 'rk45'; expected one of \('pc', 's4'\)"),
    Case("lib-w2-dimension-mismatch", "library", "wasserstein2 between 2-D and 3-D points",
         lambda c: metrics.wasserstein2(np.zeros((4, 2)), np.zeros((4, 3))), ValueError,
         r"wasserstein2 needs two non-empty sets of points of one dimension.*\(4, 2\) and \(4, 3\)"),
]

# signs of an error that escaped from deep inside JAX / XLA / NumPy instead of being checked
UNCLEAR = ("Traceback (most recent call last)", "XlaRuntimeError", "incompatible shapes for broadcasting",
           "ConcretizationTypeError", "TracerBoolConversionError", "jaxlib", "gufunc signature", "BadZipFile")


def message_of(e: BaseException) -> str:
    return e.message if isinstance(e, CliExit) else str(e)
