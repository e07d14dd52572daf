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


def test_the_official_gdss_driver_is_called_with_the_sizes_and_read_back(monkeypatch):
    driver = _load("bench_gdss_official", os.path.join("peers", "gdss_official.py"))
    seen = {}

    class Done:
        returncode, stderr = 0, ""
        stdout = 'log line\n{"task": "pc", "runs_s": [12.5], "torch": "2", "threads": 1}\n'

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        return Done()

    monkeypatch.setattr(driver.subprocess, "run", fake_run)
    assert driver.timed_run("/ref", "py", "pc", "d.npz", 1, steps=20, max_nodes=40, max_feat=40) == 12.5
    cmd = seen["cmd"]
    assert cmd[0] == "py" and cmd[cmd.index("--task") + 1] == "pc" and cmd[cmd.index("--max-nodes") + 1] == "40"
    assert cmd[cmd.index("--steps") + 1] == "20" and cmd[cmd.index("--threads") + 1] == "1"
    Done.returncode, Done.stderr = 1, "Traceback: boom"
    with pytest.raises(SystemExit, match="boom"):
        driver.timed_run("/ref", "py", "train", "d.npz", 1)


def test_time_to_quality_and_growth_tables_come_from_their_json(tmp_path, monkeypatch):
    tables = _load("bench_speed_tables2", "speed_tables.py")
    res = tmp_path / "results"
    res.mkdir()
    mmd = {"average": 0.05, "degree": 0.06, "degree_std": 0.01, "clustering": 0.08, "clustering_std": 0.02,
           "orbit": 0.004, "orbit_std": 0.001}
    row = {"name": "S4, 500 steps", "kind": "s4", "meets": True, "nfe_per_graph": 1000, "seconds": 9.0, "mmd": mmd, "mmd_over_pc_1000": 1.1,
           "speedup_over_official_pc_1000": 33.0, "speedup_over_our_pc_1000": 6.0, "mmd_all_generated": {"average": 0.03}}
    ttq = {"command": "python ttq", "graphs": 128, "seeds": [0, 1, 2], "test_graphs": 20, "rows": [row],
           "official_pc_1000": {"name": "GDSS", "version": "abc", "torch": "2", "seconds": 297.0},
           "bars": {"quality": 1.2, "speed": 10.0}, "fastest_within_bars": "S4, 500 steps"}
    grow = {"command": "python g", "matmul_peak_flops_per_s": 1.75e11, "growth": [
        {"nodes": 20, "train": {"bucketed": {"step_s": 0.1}, "padded": {"step_s": 0.12}}, "pc": {"s_per_1000_steps": 50.0},
         "s4": {"s_per_1000_steps": 28.0}, "peer": {"train_step_s": 0.3, "pc_s_per_1000_steps": 250.0},
         "ratio": {"train": 3.0, "pc": 5.0}},
        {"nodes": 40, "train": {"bucketed": {"step_s": 0.2}, "padded": {"step_s": 0.3}}, "pc": {"s_per_1000_steps": 190.0},
         "s4": {"s_per_1000_steps": 97.0}}]}
    for name, obj in (("gdss-time-to-quality-1thread", ttq), ("gdss-growth-1thread", grow)):
        with open(res / f"{name}.json", "w") as f:
            json.dump(obj, f)
    monkeypatch.setattr(tables, "RESULTS", str(res))
    monkeypatch.setattr(tables, "OUT", str(tmp_path / "speed.md"))
    tables.main()
    text = (tmp_path / "speed.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("| **S4, 500 steps**"))
    assert "9.00 s" in line and "33.0x" in line and "1.100x" in line and "0.0600 +- 0.0100" in line and "| yes |" in line
    assert "**297.0 s**" in text and "at least 10x faster than the official PC 1000 run: **S4, 500 steps**" in text
    assert "without distillation (the trained model's own samplers): **S4, 500 steps**" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| 20 |") or ln.startswith("| 40 |")]
    assert "300.0 ms" in rows[0] and "3.0x" in rows[0] and "250.0 s" in rows[0] and "5.0x" in rows[0]
    assert rows[1].count("not measured") == 2
