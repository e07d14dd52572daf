#!/usr/bin/env bash
# Bit-identity of the redesign (issue 17): each script trains a few steps and saves the final
# parameters and metrics; it runs once on the code before the redesign (commit 05943c1, a
# temporary worktree) and once on this checkout, and the largest absolute difference is printed.
#   bash docs/results/issue17/bit_identity/run.sh > docs/results/issue17/bit_identity/output.txt
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel)
old=$(mktemp -d)/old
git -C "$root" worktree add -q "$old" 05943c1
trap 'git -C "$root" worktree remove --force "$old"' EXIT
out=$(mktemp -d)
export JAX_PLATFORMS=cpu
for check in distill awm ddpo smore; do
  (cd "$out" && PYTHONPATH="$old" python "$here/$check.py" "$out/$check-old.npz" > /dev/null)
  (cd "$out" && PYTHONPATH="$root" python "$here/$check.py" "$out/$check-new.npz" > /dev/null)
  python - "$check" "$out/$check-old.npz" "$out/$check-new.npz" <<'PY'
import sys, collections, numpy as np
name, a, b = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3])
worst = collections.defaultdict(float)
for k in a.files:
    group = k.rsplit("_", 1)[0] if name == "distill" else name
    worst[group] = max(worst[group], float(np.max(np.abs(a[k].astype(float) - b[k].astype(float)))))
for g, v in worst.items():
    print(f"{g}: max |new - old| = {v:.3g} over {len(a.files)} arrays")
PY
done
