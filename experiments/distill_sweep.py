"""Every distillation method on the 2-D toys, over distillation seeds (issue 5, point 2).

One teacher per task (shared by every run, trained once under ``OUT/teachers``); per (task,
method, seed) one ``diffalign distill`` run under ``OUT/runs``. Writes ``results.json`` (every
run's metrics and, per task and method, the median and range over seeds), ``table.md`` and
``samples.png`` (teacher and each method's student, seed 0, per task).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from diffalign.distill import METHODS

from . import distill as D
from diffalign.config import build, field
from diffalign.results import begin, write_results

NAME = "distill-sweep"
DESCRIPTION = "All four distillation methods on the 2-D toys (8 gaussians, moons, 25-mode grid), over seeds."
KEYS = ("w2", "min_mode_fraction", "max_mode_fraction", "within_3std", "modes_covered", "mode_tv")


@dataclasses.dataclass(frozen=True)
class Config:
    tasks: tuple[str, ...] = field(("8gaussians", "moons", "25gaussians"), "2-D tasks")
    methods: tuple[str, ...] = field(METHODS, "methods")
    seeds: tuple[int, ...] = field((0, 1, 2), "distillation seeds (the teacher is shared)")
    steps: int = field(4000, "generator updates per run")
    teacher_steps: int = field(20_000, "teacher flow-matching steps")

    def smoke(self) -> "Config":
        return dataclasses.replace(self, tasks=("8gaussians",), methods=("dmd2", "tdm"), seeds=(0,), steps=40, teacher_steps=300)


def _summary(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": float(np.median(vals)), "min": float(np.min(vals)), "max": float(np.max(vals)), "n": len(vals)}


def run(cfg: Config, out: str, smoke: bool = False) -> dict:
    cfg, out, timer = begin(cfg, out, smoke)
    rows = []
    for task in cfg.tasks:
        for method in cfg.methods:
            for seed in cfg.seeds:
                rc = build(D.Config, task=task, method=method, seed=seed, steps=cfg.steps,
                           teacher_steps=cfg.teacher_steps, teacher_dir=os.path.join(out, "teachers", task))
                if smoke:
                    rc = rc.smoke()
                with timer(f"{task}/{method}"):
                    m = D.run(rc, os.path.join(out, "runs", f"{task}_{method}_s{seed}"))
                rows.append({"task": task, "method": method, "seed": seed, "student_nfe": m["student_nfe"],
                             "teacher": {k: m["teacher"].get(k) for k in KEYS},
                             "teacher_few_step": {"sampler": m["teacher_few_step_best"]["sampler"],
                                                  "nfe": m["teacher_few_step_best"]["nfe"],
                                                  **{k: m["teacher_few_step_best"].get(k) for k in KEYS}},
                             "student": {k: m["student"].get(k) for k in KEYS},
                             "student_over_teacher_w2": m["student_over_teacher_w2"],
                             "sampling_speedup": m["sampling_speedup"]})
    summary = {}
    for task in cfg.tasks:
        for method in cfg.methods:
            rs = [r for r in rows if r["task"] == task and r["method"] == method]
            summary[f"{task}/{method}"] = {
                "student_nfe": rs[0]["student_nfe"],
                **{f"student_{k}": _summary([r["student"][k] for r in rs]) for k in KEYS},
                "student_over_teacher_w2": _summary([r["student_over_teacher_w2"] for r in rs]),
                "teacher_w2": rs[0]["teacher"]["w2"], "teacher_mode_tv": rs[0]["teacher"]["mode_tv"],
                "teacher_few_step": rs[0]["teacher_few_step"],
            }
    table = _table(cfg, summary)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)
    print(table)
    picture = _picture(out, cfg)
    write_results(out, experiment=NAME, config=cfg, metrics={"summary": summary}, timings=timer.timings(),
                  extra={"smoke": smoke, "runs": rows, "picture": picture})
    return {"summary": summary}


def _fmt(s, digits=3):
    if s is None:
        return "-"
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def _table(cfg, summary) -> str:
    lines = [f"Medians [min, max] over distillation seeds {list(cfg.seeds)}; W2 on 10,000 samples against a fixed reference.\n"]
    for task in cfg.tasks:
        first = summary[f"{task}/{cfg.methods[0]}"]
        lines.append(f"\n### {task}\n")
        tv = first["teacher_mode_tv"]
        lines.append(f"Teacher: W2 {first['teacher_w2']:.3f} at 100 Euler steps" + (f" (mode TV {tv:.3f})" if tv is not None else "") + "\n")
        lines.append("| method | NFE | student W2 | / teacher-100 W2 | teacher W2 at the same NFE (best sampler) | min mode share | within 3 std | modes covered | mode TV |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for method in cfg.methods:
            s = summary[f"{task}/{method}"]
            few = s["teacher_few_step"]
            lines.append(
                f"| {method} | {s['student_nfe']} | {_fmt(s['student_w2'])} | {_fmt(s['student_over_teacher_w2'], 2)} | "
                f"{few['w2']:.3f} ({few['sampler']}, {few['nfe']} NFE) | {_fmt(s['student_min_mode_fraction'])} | "
                f"{_fmt(s['student_within_3std'])} | {_fmt(s['student_modes_covered'], 0)} | {_fmt(s['student_mode_tv'])} |"
            )
    return "\n".join(lines) + "\n"


def _picture(out, cfg):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    seed = cfg.seeds[0]
    fig, axes = plt.subplots(len(cfg.tasks), 1 + len(cfg.methods), figsize=(3.2 * (1 + len(cfg.methods)), 3.2 * len(cfg.tasks)), squeeze=False)
    for i, task in enumerate(cfg.tasks):
        for j, method in enumerate(("teacher",) + tuple(cfg.methods)):
            run_dir = os.path.join(out, "runs", f"{task}_{cfg.methods[0] if method == 'teacher' else method}_s{seed}")
            data = np.load(os.path.join(run_dir, "samples.npz"))
            res = json.load(open(os.path.join(run_dir, "results.json")))["metrics"]
            x = data["teacher" if method == "teacher" else "student"]
            ev = res["teacher" if method == "teacher" else "student"]
            ax = axes[i, j]
            ax.scatter(data["reference"][:2000, 0], data["reference"][:2000, 1], s=1, c="0.8")
            ax.scatter(x[:2000, 0], x[:2000, 1], s=1)
            ax.set_title(f"{task}: {method}, {ev['nfe']} NFE\nW2 {ev['w2']:.3f}", fontsize=9)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    path = os.path.join(out, "samples.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
