"""Write docs/speed.md: the speed-against-peers tables, generated from the benchmark JSONs.

    python benchmarks/speed_tables.py

Reads ``benchmarks/results/{toy2d,gdss}-{1thread,2threads}.json`` (written by
``benchmarks/toy2d.py`` and ``benchmarks/gdss.py``, where ours and the peer are timed in the same
run, interleaved) and prints nothing of its own: every number in the tables is a field of those
files. A row whose peer was not measured says so.
"""

from __future__ import annotations

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
OUT = os.path.join(os.path.dirname(HERE), "docs", "speed.md")
ROWS = {
    "toy2d": [("icfm_train", "I-CFM training, 20k tutorial steps"), ("euler_sample", "10k samples, 100 Euler steps")],
    "gdss": [("train", "GDSS training iteration, community_small (80 graphs)"),
             ("pc_sampling", "GDSS PC sampling, 128 graphs x 1000 steps")],
}
COMMANDS = {
    "toy2d": ("taskset -c 0 python benchmarks/toy2d.py --threads 1", "python benchmarks/toy2d.py"),
    "gdss": ("taskset -c 0 python benchmarks/gdss.py --threads 1 --reference GDSS",
             "python benchmarks/gdss.py --reference GDSS"),
}


def _time(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _peer(p) -> str:
    return p if isinstance(p, str) else f"{p['name']} {p['version']} (torch {p['torch']})"


def _frac(f) -> str:
    return "-" if f is None else f"{100 * f:.1f}%"


def table(name: str, files: dict) -> list[str]:
    lines = ["| row | threads | ours | peer | ratio (median, min-max) | ours / peer, % of fp32 matmul peak | peer |",
             "|---|---|---|---|---|---|---|"]
    for key, label in ROWS[name]:
        for threads, res in files.items():
            r = res.get("rows", {}).get(key)
            if r is None:
                lines.append(f"| {label} | {threads} | (no such row in the JSON) | | | | |")
                continue
            frac = r.get("fraction_of_peak") or {}
            if r["ratio"] is None:
                lines.append(f"| {label} | {threads} | {_time(r['ours_s'])} | not measured | - | "
                             f"{_frac(frac.get('ours'))} / - | not measured |")
                continue
            q = r["ratio"]
            lines.append(f"| {label} | {threads} | {_time(r['ours_s'])} | {_time(r['peer_s'])} | "
                         f"**{q['median']:.1f}x** ({q['min']:.1f}-{q['max']:.1f}) | "
                         f"{_frac(frac.get('ours'))} / {_frac(frac.get('peer'))} | {_peer(r['peer'])} |")
    return lines


def toy2d_detail(files: dict) -> list[str]:
    """Our own rows beside the headline ones: the tutorial trainings, the samplers at equal W2 and
    a large step's share of the matmul peak."""
    lines = ["| ours | " + " | ".join(f"{t} thread(s)" for t in files) + " |", "|---|" + "---|" * len(files)]
    names = {"icfm": "I-CFM, tutorial steps", "otcfm_exact": "OT-CFM, exact plan (POT on host threads)",
             "otcfm_sinkhorn": "OT-CFM, entropic plan in JAX (ott-jax), one run"}
    for key, label in names.items():
        cells = []
        for res in files.values():
            r = res.get("train_tutorial", {}).get(key)
            cells.append("-" if r is None else f"{r['run_s']:.2f} s (compile {r['compile_s']:.1f} s), W2 {r['w2_100_euler']:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for res in files.values():
        samp = res.get("sampling_icfm", {})
        best = samp.get("fastest_at_equal_w2")
        base = samp.get("euler_100")
        cells.append("-" if not (best and base) else
                     f"{best['method']} x{best['steps']} ({best['nfe']} NFE): {_time(best['run_s'])}, W2 {best['w2']:.3f}"
                     f" (Euler x100: {_time(base['run_s'])}, W2 {base['w2']:.3f})")
    lines.append("| 10k samples, cheapest sampler at the 100-step Euler W2 (+0.01) | " + " | ".join(cells) + " |")
    cells = []
    for res in files.values():
        b = res.get("mlp_3x256_batch4096")
        cells.append("-" if b is None else f"{b['step_s'] * 1e3:.1f} ms, {_frac(b.get('fraction_of_peak'))} of peak")
    lines.append("| 3x256 MLP, batch 4096, one training step | " + " | ".join(cells) + " |")
    return lines


def gdss_detail(files: dict) -> list[str]:
    """Our training step with and without size buckets, and PC / S4 sampling."""
    lines = ["| ours, community_small (N = 20) | " + " | ".join(f"{t} thread(s)" for t in files) + " |",
             "|---|" + "---|" * len(files)]
    for name in ("bucketed", "padded"):
        cells = []
        for res in files.values():
            r = res.get("train_community_small", {}).get(name)
            cells.append("-" if r is None else f"{r['step_s'] * 1e3:.1f} ms (compile {r['compile_s']:.0f} s)")
        lines.append(f"| training step, 80 graphs, {name} | " + " | ".join(cells) + " |")
    for solver, buckets in (("pc", 4), ("pc", 1), ("s4", 4)):
        cells = []
        for res in files.values():
            rows = [r for r in res.get("sample_community_small", []) if r["solver"] == solver
                    and r.get("size_buckets", 4) == buckets]
            cells.append("-" if not rows else f"{rows[0]['s_per_1000_steps']:.1f} s (compile {rows[0]['compile_s']:.0f} s)")
        label = f"{solver.upper()} sampling, 128 graphs, 1000 steps{'' if buckets > 1 else ', padded'}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main():
    out = ["# Speed against the peers, measured in one run",
           "",
           "Generated by `python benchmarks/speed_tables.py` from the benchmark JSONs in `benchmarks/results/`;",
           "do not edit by hand. In each benchmark ours and the peer run interleaved (ours, peer, ours, peer, ...)",
           "at the same thread count, in the same run: the ratio is peer time / our time for each pair, its",
           "median and range over the pairs. One core is `taskset -c 0` (XLA's CPU runtime ignores thread",
           "flags; torch gets `set_num_threads(1)`). The % of peak divides the row's FLOPs (XLA's count of our",
           "program; the peer does the same arithmetic) by its time and by the fp32 matmul rate measured at the",
           "start of the same run.", ""]
    for name in ("toy2d", "gdss"):
        files = {}
        for threads, suffix in ((1, "1thread"), (2, "2threads")):
            path = os.path.join(RESULTS, f"{name}-{suffix}.json")
            if os.path.exists(path):
                with open(path) as f:
                    files[threads] = json.load(f)
        out.append(f"## {'2-D flow matching against torchcfm' if name == 'toy2d' else 'GDSS against the official code'}"
                   f" (`benchmarks/{name}.py`)")
        out.append("")
        if not files:
            out += ["No benchmark JSON yet.", ""]
            continue
        out += table(name, files)
        out.append("")
        for threads, res in files.items():
            r = res.get("rows", {}).get("icfm_train") or {}
            if r.get("peer_w2_100_euler") is not None:
                out.append(f"- {threads} thread(s): the timed models' W2 (10k samples, 100 Euler steps): ours "
                           f"{r['ours_w2_100_euler']:.3f}, torchcfm {r['peer_w2_100_euler']:.3f} (each its final iterate).")
        out.append("")
        out += (toy2d_detail if name == "toy2d" else gdss_detail)(files)
        out.append("")
        for threads, res in files.items():
            peak = res.get("matmul_peak_flops_per_s")
            out.append(f"- {threads} thread(s): `{COMMANDS[name][0 if threads == 1 else 1]}`"
                       f"{' (quick)' if res.get('quick') else ''}; fp32 matmul peak that run "
                       f"{'not measured' if peak is None else f'{peak / 1e9:.0f} GFLOP/s'}; jax {res.get('jax')}.")
        out.append("")
    with open(OUT, "w") as f:
        f.write("\n".join(out))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
