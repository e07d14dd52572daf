"""Checkpoints: a thin wrapper over orbax's CheckpointManager.

Each checkpoint holds the whole TrainState (params, optimizer state, EMA, step, PRNG key,
transform state) and, beside it, the run's config as JSON. Orbax writes a step into a
temporary directory (``<step>.orbax-checkpoint-tmp``) and renames it when complete, so an
interrupted save never replaces the last good checkpoint; ``latest_step`` only sees complete
ones, and the leftovers of an interrupted save are removed when the directory is next opened.
In a multi-process run every process calls ``save`` (the write is collective: each process
writes its own shards, process 0 the metadata and the config). Restores go onto an abstract
target (shapes, dtypes and shardings of a state like the one being restored), so a checkpoint
restores onto any device layout.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be used (unreadable, corrupt, or from another config)."""


def _abstract(tree):
    def leaf(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(leaf, tree)


class Checkpointer:
    """Save and restore TrainStates (and their config) under ``directory``."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True):
        directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise CheckpointError(f"checkpoint path {directory} exists and is not a directory")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create checkpoint directory {directory}: {e}") from e
        if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
            raise CheckpointError(f"checkpoint directory {directory} is not readable and writable")
        self.directory = directory
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True,
        )
        try:
            self._manager = ocp.CheckpointManager(directory, options=options)
        except Exception as e:  # orbax raises a variety of types on a bad directory
            raise CheckpointError(f"cannot open checkpoint directory {directory}: {e}") from e

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return list(self._manager.all_steps())

    def save(self, step: int, state, config: dict | None = None, *, force: bool = False) -> bool:
        """Start saving ``state`` (and ``config``) as ``step``; returns whether a save started."""
        args = {"state": ocp.args.StandardSave(state)}
        if config is not None:
            args["config"] = ocp.args.JsonSave(config)
        started = self._manager.save(int(step), args=ocp.args.Composite(**args), force=force)
        _kill_in_save_hook(int(step))
        return started

    def restore(self, target, step: int | None = None) -> tuple[Any, dict | None]:
        """Restore (state, config) at ``step`` (default: latest) into the structure of ``target``.

        ``target`` is a state like the one saved (concrete or ``jax.ShapeDtypeStruct`` leaves);
        its shardings decide where the restored arrays live.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        item_names = self._item_names(step)
        args = {"state": ocp.args.StandardRestore(_abstract(target))}
        if "config" in item_names:
            args["config"] = ocp.args.JsonRestore()
        try:
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**args))
            except ValueError as e:
                restored = self._restore_without_aux(step, target, args) if "aux" in str(e) else None
                if restored is None:
                    raise
        except Exception as e:
            raise CheckpointError(
                f"could not restore checkpoint step {step} from {self.directory}: {type(e).__name__}: {e}. "
                "If the model or optimizer changed since it was written, start a new run directory."
            ) from e
        return restored["state"], restored.get("config") if "config" in item_names else None

    def _restore_without_aux(self, step, target, args):
        """A state written before ``TrainState`` had its ``aux`` field (``None`` for every run but
        alignment) restores into a target whose ``aux`` is ``None``; otherwise returns None."""
        if not (dataclasses.is_dataclass(target) and getattr(target, "aux", 0) is None):
            return None
        fields = {f.name: getattr(target, f.name) for f in dataclasses.fields(target) if f.name != "aux"}
        args = {**args, "state": ocp.args.StandardRestore(_abstract(fields))}
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        return {**restored, "state": target.replace(**restored["state"])}

    def read_config(self, step: int | None = None) -> dict | None:
        """The config saved with a checkpoint (default: the latest), without restoring its state."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        if "config" not in self._item_names(step):
            return None
        restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return restored["config"]

    def _item_names(self, step: int) -> set[str]:
        path = os.path.join(self.directory, str(step))
        try:
            return {n for n in os.listdir(path) if not n.startswith("_")}
        except OSError as e:
            raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e

    def wait(self) -> None:
        """Block until pending asynchronous saves are written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


KILL_IN_SAVE_ENV = "DIFFALIGN_TEST_KILL_IN_SAVE"


def _kill_in_save_hook(step: int) -> None:
    """Test hook: with DIFFALIGN_TEST_KILL_IN_SAVE=<step>, the process SIGKILLs itself while
    that step's save is in flight (its temporary directory created, the write not committed), so
    tests can check that an interrupted save never costs the last complete checkpoint."""
    target = os.environ.get(KILL_IN_SAVE_ENV)
    if target is not None and int(target) == step:
        os.kill(os.getpid(), signal.SIGKILL)
