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
