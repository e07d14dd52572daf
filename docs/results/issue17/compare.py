"""Before/after table for issue 17 (one core): the headline rows of docs/results.md rerun on the
new core, read from each command's own results.json beside this file and compared with the
results committed before the redesign (docs/results/*.json; the graph distiller's row, whose JSON
was not committed then, from its table in docs/results.md).

    python docs/results/issue17/compare.py > docs/results/issue17/before_after.md
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
OLD = os.path.dirname(HERE)


def load(path):
    with open(path) as f:
        return json.load(f)


def rows():
    out = []
    # toy2d tutorial rows (diffalign toy2d-table --only "8gaussians->moons")
    old, new = load(f"{OLD}/toy2d-table.json"), load(f"{HERE}/toy2d-tutorial/results.json")
    old_rows = {(r["task"], r["method"]): r for r in old["table"]}
    for r in new["table"]:
        o = old_rows[(r["task"], r["method"])]
        for k in ("w2", "w2_1step"):
            out.append((f"toy2d {r['task']} {r['method']} {k} (mean of 3 seeds)", o[k]["mean"], r[k]["mean"],
                        o[k]["std"]))
    # AWM against the baseline on the ring (diffalign align-sweep)
    old, new = load(f"{OLD}/align-ring-sweep.json"), load(f"{HERE}/align-ring-sweep/results.json")
    out.append(("align-sweep baseline / AWM epochs to 0.9", old["metrics"]["baseline_over_awm_epochs"],
                new["metrics"]["baseline_over_awm_epochs"], None))
    for m in ("awm", "ddpo"):
        o, n = old["summary"]["best"][m], new["summary"]["best"][m]
        out.append((f"align-sweep best {m}: median epochs to 0.9 (lr {n['lr']:g})", o["median_epochs_to_target"],
                    n["median_epochs_to_target"], None))
        out.append((f"align-sweep best {m}: final reward, seed 0", o["final_reward"][0], n["final_reward"][0], None))
    # digits (diffalign digits)
    old, new = load(f"{OLD}/digits.json"), load(f"{HERE}/digits/results.json")
    for k in ("bpd_unconditional", "bpd_conditional", "final_loss", "class_accuracy_guidance_1",
              "class_accuracy_guidance_3", "classifier_test_accuracy"):
        out.append((f"digits {k}", old["metrics"][k], new["metrics"][k], None))
    # DMD2 and Phased DMD on the 8 gaussians (diffalign distill-sweep)
    old, new = load(f"{OLD}/distill-sweep.json"), load(f"{HERE}/distill-sweep-8gaussians/results.json")
    new_summary = new["metrics"]["summary"]
    for m in ("dmd2", "phased-dmd"):
        o, n = old["summary"][f"8gaussians/{m}"], new_summary[f"8gaussians/{m}"]
        for k in ("student_w2", "student_mode_tv"):
            spread = o[k]["max"] - o[k]["min"]
            out.append((f"distill 8gaussians {m} {k} (median of 3 seeds)", o[k]["median"], n[k]["median"], spread))
    # GDSS community_small, training seed 1 (diffalign graphs train --seed 1)
    old, new = load(f"{OLD}/gdss-community_small.json"), load(f"{HERE}/gdss-cs-seed1/results.json")
    i = old["training_seeds"].index(1)
    for k in ("degree", "clustering", "orbit"):
        out.append((f"GDSS community_small seed 1 {k} MMD (mean of 3 sampling seeds)",
                    old["rows"][k]["per_training_seed"][i], new["metrics"][k], old["rows"][k]["std_over_all_pairs"]))
    # the 1-step graph distiller (diffalign distill-graphs) against docs/results.md's table
    new = load(f"{HERE}/distill-graphs/results.json")["metrics"]
    student = new["student"]
    before = {"degree": 0.0693, "clustering": 0.1553, "orbit": 0.0126, "average": 0.0791}
    for k, v in before.items():
        out.append((f"graph DMD2 1-step student {k} MMD (docs table)", v, student[k], student.get(f"{k}_std")))
    return out


def same_code_rows():
    """The rows whose documented "before" predates later commits, rerun with the code as it was
    before the redesign (commit 05943c1) by the same commands: results.json under before-code/."""
    out = []
    b = f"{HERE}/before-code"
    if os.path.exists(f"{b}/gdss-cs-seed1/results.json"):
        old, new = load(f"{b}/gdss-cs-seed1/results.json")["metrics"], load(f"{HERE}/gdss-cs-seed1/results.json")["metrics"]
        for k in ("degree", "clustering", "orbit", "average", "final_loss"):
            out.append((f"GDSS community_small seed 1 {k}", old[k], new[k], None))
    if os.path.exists(f"{b}/distill-sweep-dmd2/results.json"):
        old = load(f"{b}/distill-sweep-dmd2/results.json")["metrics"]["summary"]["8gaussians/dmd2"]
        new = load(f"{HERE}/distill-sweep-8gaussians/results.json")["metrics"]["summary"]["8gaussians/dmd2"]
        for k in ("student_w2", "student_mode_tv"):
            out.append((f"distill 8gaussians dmd2 {k} (median of 3 seeds)", old[k]["median"], new[k]["median"], None))
    if os.path.exists(f"{b}/distill-graphs/results.json"):
        old = load(f"{b}/distill-graphs/results.json")["metrics"]["student"]
        new = load(f"{HERE}/distill-graphs/results.json")["metrics"]["student"]
        for k in ("degree", "clustering", "orbit", "average"):
            out.append((f"graph DMD2 1-step student {k} MMD", old[k], new[k], None))
    return out


def table(rs, spread_head="seed spread (before)"):
    print(f"| row | before | after | identical | {spread_head} |")
    print("|---|---|---|---|---|")
    for name, a, b, spread in rs:
        same = a == b
        sp = "" if spread is None else f"{spread:.4g}"
        fa = "-" if a is None else (f"{a:.6g}" if isinstance(a, float) else str(a))
        fb = "-" if b is None else (f"{b:.6g}" if isinstance(b, float) else str(b))
        print(f"| {name} | {fa} | {fb} | {'yes' if same else 'no'} | {sp} |")


def main():
    print("Against the committed results of docs/results (max - min over seeds as the spread where known):\n")
    table(rows())
    extra = same_code_rows()
    if extra:
        print("\nAgainst the code before the redesign (commit 05943c1), the same command on the same machine:\n")
        table(extra, "")


if __name__ == "__main__":
    main()
