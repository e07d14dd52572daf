"""Merge align-bench runs.json files of one setting (a grid split over processes) into DEST/runs.json."""
import json, sys, os
dest, srcs = sys.argv[1], sys.argv[2:]
settings, runs, base = None, {}, {}
for p in srcs:
    d = json.load(open(p))
    d["settings"].setdefault("reward", "qed")  # the first invocation predates --reward; its runs used QED
    if settings is None:
        settings = d["settings"]
    assert d["settings"] == settings, p
    for r in d["runs"]:
        runs[(r["method"], r["regime"], r["lr"], r["seed"], r["pretrain_seed"])] = r
    base.update(d.get("base", {}))
os.makedirs(dest, exist_ok=True)
json.dump({"settings": settings, "runs": list(runs.values()), "base": base}, open(os.path.join(dest, "runs.json"), "w"))
print(len(runs), "runs;", "base", sorted(base))
