"""What the persistent compilation cache saves a user: the same short GDSS run twice.

    python benchmarks/compile_cache.py

Runs ``diffalign graphs train --dataset community_small --epochs 100 --sample-seeds 0
--num-scales 20`` twice in fresh processes with ``DIFFALIGN_COMPILE_CACHE`` pointing at an empty
temporary folder: the first run compiles and fills the cache, the second loads its programs from it.
Also a run with ``DIFFALIGN_COMPILE_CACHE=off``. Writes benchmarks/results/compile-cache-<N>thread(s).json
with each run's wall time, the training chunk's compile time and the timings of its results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import write_result


def run(cache: str, out: str) -> dict:
    cmd = [sys.executable, "-m", "diffalign.cli", "graphs", "train", "--dataset", "community_small", "--epochs", "100",
           "--sample-seeds", "0", "--num-scales", "20", "--out", out]
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # a user's cache would win
    p = subprocess.run(cmd, env={**env, "DIFFALIGN_COMPILE_CACHE": cache}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    return {"cache": cache, "wall_s": wall, "train_compile_s": res["timings"]["compile_s"], "timings": res["timings"],
            "command": " ".join(cmd[2:])}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        runs = {"off": run("off", os.path.join(tmp, "off")),
                "first (empty cache)": run(cache, os.path.join(tmp, "first")),
                "second (cache filled)": run(cache, os.path.join(tmp, "second"))}
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs)
    for name, r in runs.items():
        print(f"{name}: {r['wall_s']:.1f} s in all, training chunk compile {r['train_compile_s']:.1f} s")
    write_result(args.out, "compile-cache", threads, False, {"threads": threads, "runs": runs, "cache_bytes": size})


if __name__ == "__main__":
    main()
