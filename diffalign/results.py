"""The results contract every experiment keeps: ``DIR/results.json`` (metrics, config, versions,
wall times), written atomically, with timers and the output-directory check.

An experiment takes ``--out DIR`` and ``--smoke`` and writes ``DIR/results.json`` and its samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from importlib import metadata

from .config import as_dict


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
    """Named wall-clock timings: ``with timer("train"): ...``; ``timer.times`` in seconds, and
    ``timer.timings(...)`` those with the total since the timer was made."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.started = time.perf_counter()

    def timings(self, **extra) -> dict:
        return {**self.times, **extra, "total_s": time.perf_counter() - self.started}

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
        return as_dict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_results(out: str, *, experiment: str, config, metrics: dict, timings: dict, extra: dict | None = None) -> str:
    results = {
        "experiment": experiment,
        "metrics": metrics,
        "config": as_dict(config) if dataclasses.is_dataclass(config) else config,
        "versions": versions(),
        "timings": timings,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if extra:
        results.update(extra)
    path = os.path.join(out, "results.json")
    from .distributed import is_main_process

    return write_json(path, results) if is_main_process() else path


def begin(config, out: str, smoke: bool = False):
    """Every experiment's first lines: ``(config, out, timer)`` with the smoke-size config when
    ``smoke``, the output directory made (or a clear error) and a timer started."""
    return (config.smoke() if smoke else config), prepare_out(out), Timer()


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
