"""What every experiment shares: the results contract, versions, timers and the CLI from a config.

The contract: an experiment takes ``--out DIR`` and ``--smoke`` and writes
``DIR/results.json`` (metrics, config, versions, wall times) and its samples.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
import types
import typing
from importlib import metadata


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("diffalign", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "diffrax", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    import jax

    out["devices"] = [str(d) for d in jax.devices()]
    out["process_count"] = jax.process_count()
    return out


class Timer:
    """Named wall-clock timings: ``with timer("train"): ...``; ``timer.times`` in seconds."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


def write_json(path: str, obj) -> str:
    """Write JSON atomically (temporary file, then rename): a crash never leaves half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_default)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _default(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_results(out: str, *, experiment: str, config, metrics: dict, timings: dict, extra: dict | None = None) -> str:
    results = {
        "experiment": experiment,
        "metrics": metrics,
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
        "versions": versions(),
        "timings": timings,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if extra:
        results.update(extra)
    path = os.path.join(out, "results.json")
    from diffalign.distributed import is_main_process

    return write_json(path, results) if is_main_process() else path


def prepare_out(out: str) -> str:
    """Create the output directory, with a clear error when that is impossible."""
    out = os.path.abspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise SystemExit(f"error: --out {out} exists and is not a directory")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"error: cannot create output directory {out}: {e}") from e
    if not os.access(out, os.W_OK):
        raise SystemExit(f"error: output directory {out} is not writable")
    return out


# ----------------------------------------------------------------------------- CLI from a config


def _field_type(f: dataclasses.Field, hints: dict):
    t = hints.get(f.name, f.type)
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        t, origin = args[0], typing.get_origin(args[0])
    return t, origin


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--flag`` per field of the frozen config dataclass ``cls`` (help from field metadata;
    the parser's ArgumentDefaultsHelpFormatter adds the defaults)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        t, origin = _field_type(f, hints)
        if t is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif origin is tuple:
            elem = typing.get_args(t)[0]
            parser.add_argument(flag, type=elem, nargs="+", default=default, help=help_)
        else:
            parser.add_argument(flag, type=t, default=default, choices=choices, help=help_)


def config_from_args(cls, args: argparse.Namespace):
    kwargs = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name)
        kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def field(default, help: str, choices=None):
    """A config field with its help text (and allowed values) for the generated CLI."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=meta)


def validate_choices(config) -> None:
    """Check every field with ``choices`` (also when the config is built in Python, not the CLI)."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices is not None and getattr(config, f.name) not in choices:
            raise ValueError(f"{f.name}={getattr(config, f.name)!r} is not one of {choices}")


def require_positive(config, *names: str) -> None:
    """Raise a clear error for any named integer setting below 1."""
    for name in names:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
