"""Write docs/speed.md: the speed-against-peers tables, generated from the benchmark JSONs.

    python benchmarks/speed_tables.py

Reads ``benchmarks/results/{toy2d,gdss,gdss-time-to-quality,gdss-growth}-{1thread,2threads}.json``
(written by ``benchmarks/toy2d.py``, ``benchmarks/gdss.py`` and
``benchmarks/gdss_time_to_quality.py``; in the first two ours and the peer are timed in the same
run, interleaved) and prints nothing of its own: every number in the tables is a field of those
files or a ratio of two. A row whose peer was not measured says so.
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


def _load(name: str) -> dict:
    """{threads: result} of ``<name>-1thread.json`` / ``<name>-2threads.json`` where they exist."""
    files = {}
    for threads, suffix in ((1, "1thread"), (2, "2threads")):
        path = os.path.join(RESULTS, f"{name}-{suffix}.json")
        if os.path.exists(path):
            with open(path) as f:
                files[threads] = json.load(f)
    return files


def growth(files: dict) -> list[str]:
    """Training step and sampling time against N, ours and the official code's, per thread count."""
    lines = []
    for threads, res in files.items():
        lines += [f"{threads} thread(s), `{res.get('command') or 'python benchmarks/gdss.py --growth-only'}`; fp32 matmul peak "
                  f"{res['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s:", "",
                  "| N | training step, ours bucketed (padded) | official | ratio | PC, s per 1000 steps of 128 graphs, ours | "
                  "official | ratio | S4, ours |", "|---|---|---|---|---|---|---|---|"]
        for r in res["growth"]:
            t, p, q = r["train"], r.get("peer"), r.get("ratio") or {}
            cells = [str(r["nodes"]), f"{_time(t['bucketed']['step_s'])} ({_time(t['padded']['step_s'])})",
                     _time(p["train_step_s"]) if p else "not measured", f"{q['train']:.1f}x" if p else "-",
                     f"{r['pc']['s_per_1000_steps']:.1f} s", f"{p['pc_s_per_1000_steps']:.1f} s" if p else "not measured",
                     f"{q['pc']:.1f}x" if p else "-", f"{r['s4']['s_per_1000_steps']:.1f} s"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def time_to_quality(files: dict) -> list[str]:
    """Sampler x steps: MMD and seconds for 128 graphs, against the official 1000-step PC run."""
    lines = []
    for threads, res in files.items():
        off = res.get("official_pc_1000")
        lines += [f"{threads} thread(s): `{res['command']}`; {res['graphs']} graphs per seed, sampling seeds {res['seeds']}, "
                  f"MMD of the first {res['test_graphs']} against the {res['test_graphs']} test graphs (GDSS's protocol); "
                  f"official PC, 1000 steps: " + (f"**{off['seconds']:.1f} s** ({_peer(off)})" if off else "not measured")
                  + ".", "",
                  f"| sampler | NFE per graph | seconds, {res['graphs']} graphs | average MMD | degree | clustering | orbit | "
                  "MMD / PC 1000 | speed-up over the official PC 1000 | over our PC 1000 | within both bars | "
                  f"average MMD, all {res['graphs']} |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            m = r["mmd"]
            sp = r.get("speedup_over_official_pc_1000")
            name = f"**{r['name']}**" if r["name"] == res.get("fastest_within_bars") else r["name"]
            over, ours = r.get("mmd_over_pc_1000"), r.get("speedup_over_our_pc_1000")
            lines.append(f"| {name} | {r['nfe_per_graph']} | {_time(r['seconds'])} | {m['average']:.4f} | "
                         f"{m['degree']:.4f} +- {m['degree_std']:.4f} | {m['clustering']:.4f} +- {m['clustering_std']:.4f} | "
                         f"{m['orbit']:.4f} +- {m['orbit_std']:.4f} | {'-' if over is None else f'{over:.3f}x'} | "
                         f"{'-' if sp is None else f'{sp:.1f}x'} | {'-' if ours is None else f'{ours:.1f}x'} | "
                         f"{'yes' if r.get('meets') else 'no'} | "
                         f"{r['mmd_all_generated']['average']:.4f} |")
        bars = res["bars"]
        own = [r for r in res["rows"] if r.get("meets") and r.get("kind") != "student"]
        own = min(own, key=lambda r: r["seconds"])["name"] if own else "none"
        lines += ["", f"Fastest configuration within {bars['quality']}x of PC 1000's average MMD and at least "
                      f"{bars['speed']:.0f}x faster than the official PC 1000 run: **{res['fastest_within_bars'] or 'none'}**; "
                      f"without distillation (the trained model's own samplers): **{own}**.", ""]
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
        files = _load(name)
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
    out += ["## GDSS: time to quality, community_small (`benchmarks/gdss_time_to_quality.py`)", ""]
    out += time_to_quality(_load("gdss-time-to-quality")) or ["No benchmark JSON yet.", ""]
    out += ["## GDSS: growth with N (`benchmarks/gdss.py --growth-only`)", "",
            "Random community-like graphs of 0.6 N to N nodes padded to N; training on 80 graphs (ours: median of",
            "3 chunks of 2 steps; the official code: 3 iterations after one), sampling 20 PC steps of 128 graphs",
            "scaled to 1000 (the official code: one run after a 5-step warm-up).", ""]
    out += growth(_load("gdss-growth")) or ["No benchmark JSON yet.", ""]
    with open(OUT, "w") as f:
        f.write("\n".join(out))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
