"""The benchmarks' rows against a peer: ratios from the interleaved pairs, and "not measured" (never
an old constant) when the peer did not run. No timing is asserted here."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


common = _load("bench_common", "common.py")


def test_the_ratio_is_taken_pair_by_pair():
    calls = []
    ours, theirs = common.interleaved(lambda: calls.append("ours") or 1.0, lambda: calls.append("peer") or 3.0, 3)
    assert calls == ["ours", "peer"] * 3 and ours == [1.0] * 3 and theirs == [3.0] * 3
    row = common.peer_row([1.0, 2.0, 4.0], [3.0, 2.0, 20.0], {"name": "p", "version": "1"}, 1)
    assert row["ours_s"] == 2.0 and row["peer_s"] == 3.0
    assert row["ratio"] == {"median": 3.0, "min": 1.0, "max": 5.0}  # ratios 3, 1, 5: not 3.0 / 2.0


def test_a_peer_not_run_is_not_measured(tmp_path, monkeypatch):
    row = common.peer_row([1.0], None, "not measured", 2, what="x")
    assert row["peer"] == "not measured" and row["peer_s"] is None and row["ratio"] is None
    tables = _load("bench_speed_tables", "speed_tables.py")
    (tmp_path / "results").mkdir()
    with open(tmp_path / "results" / "toy2d-2threads.json", "w") as f:
        json.dump({"rows": {"icfm_train": {**row, "fraction_of_peak": {"ours": 0.2, "peer": None}}},
                   "matmul_peak_flops_per_s": 1e11, "jax": "0"}, f)
    monkeypatch.setattr(tables, "RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(tables, "OUT", str(tmp_path / "speed.md"))
    tables.main()
    text = (tmp_path / "speed.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("| I-CFM training"))
    assert "not measured" in line and "20.0%" in line and "x (" not in line
    assert "No benchmark JSON yet." in text  # no gdss JSON in this folder


@pytest.mark.parametrize("script", ["toy2d.py", "gdss.py"])
def test_no_stored_peer_figures(script):
    text = open(os.path.join(ROOT, "benchmarks", script)).read()
    assert "PEER = {" not in text and "REFERENCE = {" not in text
