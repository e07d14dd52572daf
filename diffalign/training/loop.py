"""The training loop: the only place that touches files, clocks and terminals.

It runs a pure ``step(state, batch) -> (state, metrics)`` in ``lax.scan`` chunks (one
dispatch per chunk, which matters for small models), and around it:

* resumes automatically from the newest complete checkpoint in ``workdir`` (refusing one
  written with a different config),
* saves orbax checkpoints with the config beside them,
* logs metrics to ``workdir/metrics.jsonl`` and ``.csv`` (TensorBoard optional),
* shows a progress bar with steps/s on process 0,
* stops on a non-finite loss with the step number, keeping the last good checkpoint,
* reports compile time apart from run time.

Chunk boundaries fall on multiples of ``steps_per_call``, ``log_every`` and
``checkpoint_every``, so a resumed run executes exactly the same chunks as an uninterrupted
one and ends bit-identical to it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..checkpoint import CheckpointError, Checkpointer
from ..distributed.mesh import batch_sharding, check_divisible, is_main_process, make_mesh, put, replicated, state_shardings
from .logger import MetricLogger, logged_train_seconds, read_log
from .step import make_multi_step


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or gradient; the last good checkpoint is kept."""

    def __init__(self, step: int, metrics: dict, last_checkpoint: int | None, directory: str | None):
        self.step, self.metrics, self.last_checkpoint, self.directory = step, metrics, last_checkpoint, directory
        where = (
            f"the last good checkpoint is step {last_checkpoint} in {directory}"
            if last_checkpoint is not None
            else "no checkpoint had been written yet"
        )
        shown = {k: v for k, v in metrics.items() if k != "nonfinite"}
        super().__init__(
            f"non-finite loss or gradient at step {step} (metrics {shown}); training stopped and {where}. "
            "Lower the learning rate, clip gradients, or check the data for NaN/inf."
        )


# the loop's own settings: a run may resume with other values (they change no result)
LOOP_KEYS = ("steps_per_call", "log_every", "checkpoint_every", "resume")


class TrainResult(NamedTuple):
    state: object
    summary: dict


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict, current: dict, ignore=(), defaults: dict | None = None) -> list[str]:
    """Keys whose values differ between two (nested) configs, ignoring ``ignore``; a key in
    ``defaults`` that the saved config lacks (written before the key existed) counts as its default."""
    a, b = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(current)))
    for k, v in (defaults or {}).items():
        a.setdefault(k, v)
    keys = sorted((set(a) | set(b)) - set(ignore))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys if a.get(k) != b.get(k)]


@dataclasses.dataclass
class _Chunks:
    """Runs one compiled multi-step program per chunk length, with optional shardings."""

    step_fn: Callable
    batch_fn: Callable
    on_device: bool
    vectorize: bool
    mesh: object
    state_sh: object
    compile_s: float = 0.0

    def __post_init__(self):
        self._compiled = {}

    def _device_batch_fn(self):
        if self.mesh is None:
            return self.batch_fn
        sh = batch_sharding(self.mesh)
        return lambda step: jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(x, sh), self.batch_fn(step)
        )

    def host_batches(self, start: int, n: int):
        batches = [self.batch_fn(s) for s in range(start, start + n)]
        stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *batches)
        if self.mesh is None:
            return stacked
        # each process transfers only the rows of its own devices
        return put(stacked, jax.tree.map(lambda _: batch_sharding(self.mesh, axis=1), stacked))

    def run(self, state, start: int, n: int):
        batches = None if self.on_device else self.host_batches(start, n)
        if n not in self._compiled:
            run = make_multi_step(
                self.step_fn,
                self._device_batch_fn() if self.on_device else None,
                n,
                vectorize_batches=self.vectorize,
            )
            if self.mesh is None:
                jitted = jax.jit(run, donate_argnums=0)
            else:
                bsh = None if self.on_device else batch_sharding(self.mesh, axis=1)
                jitted = jax.jit(
                    run,
                    in_shardings=(self.state_sh, bsh),
                    out_shardings=(self.state_sh, replicated(self.mesh)),
                    donate_argnums=0,
                )
            t0 = time.perf_counter()
            self._compiled[n] = jitted.lower(state, batches).compile()
            self.compile_s += time.perf_counter() - t0
        return self._compiled[n](state, batches)


def _check_first_step(step_fn, state, batch_fn, on_device) -> None:
    """Trace one step abstractly so that a bad batch fails here, with its shapes named."""
    try:
        batch = jax.eval_shape(batch_fn, 0) if on_device else batch_fn(0)
    except Exception as e:
        raise ValueError(f"the batch function failed for step 0: {type(e).__name__}: {e}") from e
    try:
        jax.eval_shape(step_fn, state, batch)
    except Exception as e:
        shapes = jax.tree.map(lambda x: f"{x.dtype}{list(x.shape)}", batch)
        raise ValueError(
            f"the training step cannot run on the batches given (batch: {shapes}): {type(e).__name__}: {e}"
        ) from e


def train(
    state,
    step_fn: Callable,
    batch_fn: Callable,
    *,
    num_steps: int,
    workdir: str | None = None,
    config: dict | None = None,
    batch_on_device: bool = True,
    vectorize_batches: bool = False,
    steps_per_call: int = 100,
    log_every: int = 100,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 3,
    mesh=None,
    progress: bool = True,
    tensorboard: bool = False,
    resume: bool = True,
    resume_ignore: tuple[str, ...] = ("num_steps",),
    resume_defaults: dict | None = None,
    on_log: Callable | None = None,
    evaluate: Callable | None = None,
    desc: str = "train",
    time_limit_s: float | None = None,
) -> TrainResult:
    """Train ``state`` with ``step_fn`` until ``state.step == num_steps``.

    Args:
      state: a TrainState (its ``step`` says where training stands).
      step_fn: pure ``step(state, batch) -> (state, metrics)`` from ``make_train_step``.
      batch_fn: ``batch_fn(step) -> batch``. With ``batch_on_device`` it must be pure JAX
        (it is traced into the compiled chunk); otherwise it returns NumPy arrays on the host.
        Either way it must depend only on ``step``, which makes resumption exact.
      vectorize_batches: make a chunk's device batches at once under ``jax.vmap``.
      num_steps: total number of steps of the run (not the number still to do).
      workdir: where checkpoints (``workdir/checkpoints``) and metric logs go; ``None``
        trains in memory only.
      resume: continue from the newest checkpoint in ``workdir``; ``False`` refuses a workdir
        that holds one (nothing is deleted).
      config: JSON-serialisable run config, saved beside every checkpoint and compared on
        resume (keys in ``resume_ignore`` may differ; ``resume_defaults`` gives the value a key
        stands for in configs written before it existed).
      steps_per_call: training steps per compiled ``lax.scan`` chunk.
      log_every / checkpoint_every: intervals in steps (checkpoints also at the end).
      mesh: a ("data", "model") device mesh: the batch is split over "data", parameters follow
        their layers' annotations (replicated by default). In a multi-process run (after
        ``jax.distributed.initialize``) it defaults to all devices on "data"; every process
        then calls ``train`` with the same arguments (``batch_fn`` gives the whole global batch,
        the same on every process; each process places only the rows of its own devices), and
        only process 0 logs and shows progress.
      on_log: called as ``on_log(step, metrics)`` after each log row.
      evaluate: ``evaluate(state) -> {name: float}`` at each log row, outside the timed region; its values
        join the row as ``eval_<name>``. An alignment benchmark's fixed-noise evaluation
        after every epoch, say.
      time_limit_s: stop at the first log boundary after this many seconds of training
        (compilation not counted), with a checkpoint there; ``summary["stopped_early"]`` says so.
        For short-budget runs: the schedule is that of the full run, cut short.
    """
    for name, v in (("num_steps", num_steps), ("steps_per_call", steps_per_call), ("log_every", log_every)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    main = is_main_process()
    ckpt = logger = None
    resumed_from = None
    state_sh = None
    if mesh is None and jax.process_count() > 1:
        mesh = make_mesh()
    if mesh is not None:
        probe = jax.eval_shape(batch_fn, 0) if batch_on_device else batch_fn(0)
        for leaf in jax.tree.leaves(probe):
            check_divisible(leaf.shape[0], mesh)
        state_sh = state_shardings(state, mesh)
        state = put(state, state_sh)
    _check_first_step(step_fn, state, batch_fn, batch_on_device)
    state = jax.tree.map(jnp.copy, state)  # chunks donate their input; never consume the caller's arrays

    if workdir is not None:
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=keep_checkpoints)
        latest = ckpt.latest_step()
        if latest is not None and not resume:
            ckpt.close()
            raise CheckpointError(
                f"{ckpt.directory} holds a checkpoint of step {latest} and resume is off (--no-resume): "
                "choose a fresh output directory, or remove this one to start over"
            )
        if latest is not None:
            saved_config = ckpt.read_config(latest)  # compared before restoring: a changed model names its keys
            if config is not None and saved_config is not None:
                diff = config_differences(saved_config, config, tuple(resume_ignore) + LOOP_KEYS, resume_defaults)
                if diff:
                    raise CheckpointError(
                        f"the checkpoints in {ckpt.directory} were written with a different config "
                        f"({'; '.join(diff)}); use another run directory or the same config"
                    )
            state, resumed_from = ckpt.restore(state, latest)[0], latest
            if main:
                print(f"{desc}: resuming from the checkpoint of step {latest} in {ckpt.directory}", file=sys.stderr)
        logger = MetricLogger(workdir, tensorboard=tensorboard, enabled=main)

    start = int(jax.device_get(state.step))
    chunks = _Chunks(step_fn, batch_fn, batch_on_device, vectorize_batches, mesh, state_sh)
    bar = None
    if progress and main and start < num_steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=start, desc=desc, unit="step", dynamic_ncols=True)
    boundaries = [steps_per_call, log_every] + ([checkpoint_every] if checkpoint_every else [])
    pending: list[dict] = []
    last_ckpt = resumed_from
    step = start
    t_run = 0.0
    t_since_log = 0.0
    run_steps_since_log = 0
    last_metrics: dict = {}
    stopped_early = False
    try:
        while step < num_steps:
            n = min([b - step % b for b in boundaries] + [num_steps - step])
            t0 = time.perf_counter()
            compile_before = chunks.compile_s
            state, metrics = chunks.run(state, step, n)
            metrics = jax.device_get(metrics)
            elapsed = time.perf_counter() - t0 - (chunks.compile_s - compile_before)
            t_run += elapsed
            t_since_log += elapsed
            run_steps_since_log += n
            bad = np.asarray(metrics["nonfinite"])
            if bad.any():
                first = int(np.argmax(bad))
                row = {k: np.asarray(v)[first].item() for k, v in metrics.items()}
                if ckpt is not None:
                    ckpt.wait()
                    last_ckpt = ckpt.latest_step()
                raise NonFiniteLossError(step + first, row, last_ckpt, ckpt.directory if ckpt else None)
            pending.append(metrics)
            step += n
            if bar is not None:
                bar.update(n)
            if step % log_every == 0 or step == num_steps:
                row = {
                    k: float(np.mean(np.concatenate([np.ravel(m[k]) for m in pending])))
                    for k in pending[0]
                    if k != "nonfinite"
                }
                row["steps_per_sec"] = run_steps_since_log / max(t_since_log, 1e-9)
                if evaluate is not None:
                    row.update({f"eval_{k}": float(v) for k, v in evaluate(state).items()})
                t_since_log, run_steps_since_log, pending = 0.0, 0, []
                last_metrics = row
                if logger is not None:
                    logger.write(step, row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4g}", steps_s=f"{row['steps_per_sec']:.0f}")
                if on_log is not None:
                    on_log(step, row)
            out_of_time = time_limit_s is not None and t_run >= time_limit_s and step % log_every == 0
            if time_limit_s is not None and jax.process_count() > 1:
                # every process must stop at the same step: process 0's clock decides
                from jax.experimental import multihost_utils

                out_of_time = bool(multihost_utils.broadcast_one_to_all(np.asarray(out_of_time)))
            if ckpt is not None and ((checkpoint_every and step % checkpoint_every == 0) or step == num_steps
                                     or out_of_time):
                ckpt.save(step, state, config)
                last_ckpt = step
            if out_of_time and step < num_steps:
                stopped_early = True
                break
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
        if logger is not None:
            logger.close()
    done = step - start
    summary = {
        "steps_run": done,
        "resumed_from": resumed_from,
        "compile_s": chunks.compile_s,
        "train_s": t_run,
        "steps_per_sec": done / t_run if t_run > 0 else None,
        "final_metrics": last_metrics,
        "stopped_early": f"time limit {time_limit_s:g} s reached at step {step} of {num_steps}" if stopped_early else None,
    }
    if workdir is not None and main:
        summary["train_s_all_segments"] = logged_train_seconds(read_log(workdir))
    return TrainResult(state, summary)
