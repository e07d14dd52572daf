"""The `diffalign` command: help, argument errors, and the experiment contract under --smoke."""

import os

import numpy as np
import pytest
from clitools import cli, read

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_explains_itself():
    out = cli("--help").stdout
    for name in ("toy2d", "digits", "--out", "--smoke"):
        assert name in out
    sub = cli("toy2d", "--help").stdout
    for flag in ("--task", "--method", "--sde", "--sampler", "--steps", "default: otcfm"):
        assert flag in sub


def test_every_listed_subcommand_has_its_experiment_module():
    import importlib

    from diffalign.cli import EXPERIMENTS, experiment_parser

    for name, (module, _) in EXPERIMENTS.items():
        mod = importlib.import_module(module)
        assert hasattr(mod, "COMMANDS") or (hasattr(mod, "Config") and hasattr(mod, "run")), name
        if not hasattr(mod, "COMMANDS"):
            parser = experiment_parser(name, [])[0]
            assert "--smoke" in parser.format_help() and "--out" in parser.format_help(), name


def test_bad_arguments_are_refused_clearly(tmp_path):
    p = cli("toy2d", "--out", str(tmp_path), "--method", "gan", check=False)
    assert p.returncode == 2 and "invalid choice: 'gan'" in p.stderr
    p = cli("toy2d", "--out", str(tmp_path), "--steps", "-5", check=False)
    assert p.returncode == 2 and "steps must be >= 1" in p.stderr
    p = cli("toy2d", "--out", str(tmp_path), "--task", "noise->spirals", check=False)
    assert p.returncode == 2 and "unknown 2-D data set 'spirals'" in p.stderr
    p = cli("toy2d", "--out", str(tmp_path), "--task", "moons->8gaussians", "--method", "dsm", check=False)
    assert p.returncode == 2 and "dsm needs a Gaussian source" in p.stderr
    p = cli("frobnicate", check=False)
    assert p.returncode == 2 and "unknown subcommand" in p.stderr
    assert not os.listdir(tmp_path)  # nothing was written by refused runs


@pytest.mark.parametrize(
    "args",
    [
        [],  # the README's main job (OT-CFM, 8 gaussians -> moons)
        ["--task", "noise->tong_moons", "--method", "dsm", "--sde", "ve", "--sampler", "pc"],
        ["--task", "noise->8gaussians", "--method", "rf"],
    ],
    ids=["otcfm", "dsm-ve-pc", "rf"],
)
def test_toy2d_smoke_keeps_the_contract(tmp_path, args):
    out = str(tmp_path / "run")
    cli("toy2d", "--out", out, "--smoke", *args)
    r = read(out)
    assert r["smoke"] is True and r["experiment"] == "toy2d"
    assert np.isfinite(r["metrics"]["w2"]) and r["metrics"]["nfe"] > 0
    assert {"jax", "flax", "diffrax"} <= set(r["versions"]) and r["timings"]["total_s"] > 0
    assert r["config"]["steps"] == 300
    samples = np.load(os.path.join(out, "samples.npz"))["samples"]
    assert samples.shape == (1000, 2)
    assert os.path.exists(os.path.join(out, "samples.png"))
    if "--task" in args and args[1].startswith("noise"):
        assert np.isfinite(r["metrics"]["nll"])


def test_rerun_resumes_from_the_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    cli("toy2d", "--out", out, "--smoke", "--method", "icfm")
    cli("toy2d", "--out", out, "--smoke", "--method", "icfm")
    r = read(out)
    assert r["rounds"][0]["resumed_from"] == 300 and r["rounds"][0]["steps_run"] == 0
    p = cli("toy2d", "--out", out, "--smoke", "--method", "icfm", "--lr", "0.01", check=False)
    assert p.returncode != 0 and "different config" in p.stderr


def test_digits_smoke_keeps_the_contract(tmp_path):
    out = str(tmp_path / "digits")
    cli("digits", "--out", out, "--smoke")
    r = read(out)
    m = r["metrics"]
    assert np.isfinite(m["bpd_unconditional"]) and m["nfe"] == 10 and m["nfe_guided"] == 20
    s = np.load(os.path.join(out, "samples.npz"))["samples"]
    assert s.shape == (2, 40, 8, 8)
    assert all(os.path.exists(p) for p in r["pictures"])


@pytest.mark.parametrize("args", [("--task", "ring", "--method", "awm"), ("--task", "ring", "--method", "ddpo"),
                                  ("--task", "digits", "--method", "kto")])
def test_align_smoke_keeps_the_contract(tmp_path, args):
    out = str(tmp_path / "align")
    cli("align", "--out", out, "--smoke", *args)
    r = read(out)
    assert r["experiment"] == "align" and r["smoke"] is True
    assert set(r["curves"]) >= {"reward", "drift", "in_target"} and len(r["curves"]["reward"]) == 6
    assert 0.0 <= r["final_reward"] <= 1.0 and "epochs_to_target" in r
    assert np.all(np.isfinite(r["curves"]["drift"]))
    with np.load(os.path.join(out, "samples.npz")) as s:
        assert s["samples"].shape[0] == 256 and s["base_samples"].shape == s["samples"].shape
    assert os.path.exists(os.path.join(out, r["picture"]))


def test_align_refuses_bad_settings(tmp_path):
    p = cli("align", "--out", str(tmp_path), "--task", "qm9", "--method", "ddpo", check=False)
    assert p.returncode == 2 and "qm9 task runs awm only" in p.stderr
    p = cli("align", "--out", str(tmp_path), "--beta", "-1", check=False)
    assert p.returncode == 2 and "beta and beta_ema must be >= 0" in p.stderr
    p = cli("align", "--out", str(tmp_path), "--target-class", "12", check=False)
    assert p.returncode == 2 and "target_class" in p.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_align_qm9_smoke_keeps_the_contract(tmp_path):
    out = str(tmp_path / "qm9")
    # the 3,000-molecule QM9 fixture (tests/data/README.md): runs on a clean clone, and faster
    cli("align", "--task", "qm9", "--out", out, "--smoke", env={"DIFFALIGN_DATA": os.path.join(ROOT, "tests", "data")})
    r = read(out)
    m = r["metrics"]
    # mean QED counts the training reward's zeros; final_reward (QED of the valid molecules) is
    # NaN when a smoke model makes none valid
    assert 0.0 <= m["final"]["reward_mean"] <= 1.0 and 0.0 <= m["base"]["reward_mean"] <= 1.0
    assert all(np.isnan(v) or 0.0 <= v <= 1.0 for v in (m["final_reward"], m["base_reward"]))
    assert len(r["curves"]["reward"]) == 3 and "validity_wo_correction_change_points" in m


@pytest.mark.parametrize("args", [("--method", "dmd"), ("--method", "phased-dmd", "--task", "25gaussians")])
def test_distill_smoke_keeps_the_contract(tmp_path, args):
    out = str(tmp_path / "distill")
    cli("distill", "--out", out, "--smoke", *args)
    r = read(out)
    m = r["metrics"]
    for k in ("teacher_w2", "student_w2", "teacher_nfe", "student_nfe", "teacher_few_step_w2"):
        assert np.isfinite(m[k]), k
    assert m["teacher_nfe"] == 100 and "within_3std" in m["student"] and m["student_nfe"] == (1 if "dmd" in args else 4)
    assert m["student"]["num_modes"] == (8 if "dmd" in args else 25)
    s = np.load(os.path.join(out, "samples.npz"))
    assert s["student"].shape == (1000, 2) and s["teacher"].shape == (1000, 2)
    assert os.path.exists(r["picture"])
    # a rerun finds the finished distillation and the teacher: nothing is retrained
    cli("distill", "--out", out, "--smoke", *args)
    r = read(out)
    assert r["distill_summary"]["resumed_from"] == r["config"]["steps"] and r["distill_summary"]["steps_run"] == 0


def test_distill_refuses_bad_settings(tmp_path):
    p = cli("distill", "--out", str(tmp_path), "--method", "dmd", "--student-steps", "4", check=False)
    assert p.returncode == 2 and "one-step generator" in p.stderr
    p = cli("distill", "--out", str(tmp_path), "--method", "phased-dmd", "--phases", "3", check=False)
    assert p.returncode == 2 and "phases (3) must divide" in p.stderr
    p = cli("distill", "--out", str(tmp_path), "--method", "dmd2", "--steps-choices", "1", "2", check=False)
    assert p.returncode == 2 and "steps-aware student" in p.stderr
    p = cli("distill", "--out", str(tmp_path), "--task", "spirals", check=False)
    assert p.returncode == 2 and "invalid choice: 'spirals'" in p.stderr


def test_distill_digits_smoke_reports_frechet_distances(tmp_path):
    out = str(tmp_path / "distill")
    cli("distill", "--out", out, "--smoke", "--task", "digits", "--method", "tdm")
    m = read(out)["metrics"]
    assert m["student_nfe"] == 4 and m["teacher_few_step_best"]["nfe"] == 4
    for k in ("teacher", "teacher_1step", "teacher_few_step_best", "student"):
        assert np.isfinite(m[k]["frechet_logits"]) and np.isfinite(m[k]["frechet_pca16"]), k
    assert np.load(os.path.join(out, "samples.npz"))["student"].shape == (1000, 64)


def test_the_compile_cache_is_on_by_default_off_on_request_and_never_overrides_jax(monkeypatch, tmp_path):
    from diffalign.cli import use_compile_cache

    class Config:
        jax_compilation_cache_dir = None

        def __init__(self):
            self.set = {}

        def update(self, name, value):
            self.set[name] = value

    class FakeJax:
        def __init__(self):
            self.config = Config()

    monkeypatch.setenv("DIFFALIGN_COMPILE_CACHE", str(tmp_path / "c"))
    j = FakeJax()
    assert use_compile_cache(j) == str(tmp_path / "c") and j.config.set["jax_compilation_cache_dir"] == str(tmp_path / "c")
    monkeypatch.setenv("DIFFALIGN_COMPILE_CACHE", "off")
    j = FakeJax()
    assert use_compile_cache(j) is None and j.config.set == {}
    monkeypatch.delenv("DIFFALIGN_COMPILE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    j = FakeJax()
    assert use_compile_cache(j) == os.path.join(str(tmp_path), ".cache", "diffalign", "jax")
    j = FakeJax()
    j.config.jax_compilation_cache_dir = "/users/own"
    assert use_compile_cache(j) == "/users/own" and j.config.set == {}
