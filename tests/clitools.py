"""Running `diffalign` in a subprocess from tests, and reading what a run wrote."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, check=True, env=None):
    """Run ``diffalign ARGS`` on the CPU; with ``check``, fail the test on a non-zero exit."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "diffalign.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"diffalign {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def read(out):
    """The results.json of a run directory."""
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)
