"""What the benchmark scripts share: writing their JSON result."""

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
