"""What the benchmark scripts share: writing their JSON result, the matmul peak, and timing a
peer interleaved with us."""

from __future__ import annotations

import json
import os


def write_result(out_dir: str, name: str, threads: int, quick: bool, result: dict) -> str:
    """Write ``out_dir/<name>-<threads>thread(s)[-quick].json`` and say where."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}-{threads}thread{'s' if threads > 1 else ''}{'-quick' if quick else ''}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")
    return path


def time_train_chunks(step, batch_fn, state, chunk: int, repeats: int) -> tuple[float, list[float]]:
    """Compile ``chunk`` training steps as one program, run it once to warm up, then time it
    ``repeats`` times: (compile seconds, seconds per step of each timed run)."""
    import time

    import jax
    import jax.numpy as jnp

    from diffalign.training import make_multi_step

    run = jax.jit(make_multi_step(step, batch_fn, chunk), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = run.lower(state).compile()
    compile_s = time.perf_counter() - t0
    s = jax.block_until_ready(compiled(jax.tree.map(jnp.copy, state))[0])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        s = jax.block_until_ready(compiled(s)[0])
        times.append((time.perf_counter() - t0) / chunk)
    return compile_s, times


def timed(fn, *args, repeats: int):
    """(compile seconds, median run seconds, all run seconds) of ``jax.jit(fn)(*args)``."""
    import statistics
    import time

    import jax

    jitted = jax.jit(fn)
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - t0)
    return compile_s, statistics.median(runs), runs


def matmul_peak(repeats: int = 7, n: int = 2048) -> float:
    """This machine's fp32 matmul rate (FLOP/s) through XLA, median of ``repeats``: the yardstick
    every row's fraction of peak is measured against, in the same run."""
    import statistics
    import time

    import jax

    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(ts)


def interleaved(ours, peer, repeats: int) -> tuple[list[float], list[float]]:
    """Call ``ours()`` and ``peer()`` alternately ``repeats`` times (ours, peer, ours, peer, ...);
    each returns the seconds of one measured run. So both see the same machine, hour and load."""
    mine, theirs = [], []
    for _ in range(repeats):
        mine.append(float(ours()))
        theirs.append(float(peer()))
    return mine, theirs


def peer_row(ours_s: list[float], peer_s: list[float] | None, peer: dict | str, threads: int, **extra) -> dict:
    """One ``rows.<name>`` entry: both medians, every run, the peer's name and version, and the
    ratio peer / ours (median, min and max over the interleaved pairs). Without a peer measured in
    this run, ``peer`` is "not measured" and there is no ratio: never an old constant."""
    import statistics

    row = {"ours_s": statistics.median(ours_s), "ours_runs_s": ours_s, "threads": threads}
    if not peer_s:
        return {**row, "peer": "not measured", "peer_s": None, "ratio": None, **extra}
    ratios = [p / o for p, o in zip(peer_s, ours_s)]
    return {**row, "peer": peer, "peer_s": statistics.median(peer_s), "peer_runs_s": peer_s,
            "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}, **extra}
