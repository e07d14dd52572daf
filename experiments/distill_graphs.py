"""Distil a trained GDSS model (``diffalign graphs train``) into a one- or few-step graph generator (DMD2).

Loads the teacher from ``--gdss-run``, distils it (``diffalign.graphs.distill``), samples as many
graphs as the test set per sampling seed, and scores them (MMD of degree, clustering, orbits) next
to the teacher sampled here with GDSS's sampler at 1000 steps and at few steps (``--teacher-scales``).
Sampling times are medians over seeds of the generation time of the graphs, compilation apart. Writes ``results.json``,
``samples_seed*.npz`` (edge lists) and ``samples.png``.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np

from diffalign.graphs.configs import get_config
from diffalign.graphs.distill import GraphDistiller
from diffalign.graphs.gdss import quantize_generic, sample_flags, sampler
from diffalign.graphs.metrics import graph_mmds
from diffalign.sampling.graph import evaluations_per_step
from diffalign.training import make_optimizer, train

from diffalign.graphs.evaluation import load_trained, trained_config
from diffalign.config import LoopConfig, as_dict, field, replace
from diffalign.results import begin, write_results

NAME = "distill-graphs"
DESCRIPTION = "DMD2 on GDSS: distil a trained `graphs train` run into a few-step graph generator; MMDs and sampling time."


@dataclasses.dataclass(frozen=True)
class Config:
    gdss_run: str = field("", "a `diffalign graphs train` output directory (generic graphs, e.g. community_small)")
    student_steps: int = field(1, "generator steps (network evaluations of X and A each)")
    steps: int = field(1000, "generator updates")
    fake_updates: int = field(5, "fake-score updates per generator update (DMD2: 5)")
    batch_size: int = field(32, "graphs per generator (and fake-score) batch")
    lr: float = field(1e-4, "learning rate of both networks")
    clip_norm: float = field(10.0, "gradient clipping")
    ema_decay: float = field(0.99, "EMA of the generator (0: none)")
    sample_seeds: tuple[int, ...] = field((0, 1, 2), "sampling seeds")
    teacher_scales: tuple[int, ...] = field((1000, 50, 10, 4), "the teacher with GDSS's sampler at these N (the first is the reference)")
    loop: LoopConfig = field(LoopConfig(steps_per_call=50, log_every=50, checkpoint_every=250), "distillation loop")

    def __post_init__(self):
        if not self.gdss_run:
            raise ValueError("--gdss-run is required: the output directory of `diffalign graphs train`")
        for name in ("student_steps", "steps", "fake_updates", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def smoke(self) -> "Config":
        return replace(self, steps=4, fake_updates=1, batch_size=8, sample_seeds=self.sample_seeds[:1],
                                   teacher_scales=(4,), steps_per_call=2, log_every=2, checkpoint_every=4)


def _sample_scored(gen, data, seeds, n, batch):
    """Per seed: (MMDs, seconds spent generating, compilation excluded, the graphs)."""
    per_seed, secs, graphs = {}, [], {}
    for s in seeds:
        key = jax.random.key(s)
        adjs, fls = [], []
        t = 0.0
        for r in range(-(-n // batch)):
            k = jax.random.fold_in(key, r)
            flags = sample_flags(jax.random.fold_in(k, 0), data.flags, batch)
            jax.block_until_ready(gen(jax.random.fold_in(k, 1), flags))  # compile (a new size layout) apart
            t0 = time.perf_counter()
            _, adj = gen(jax.random.fold_in(k, 1), flags)
            adj = np.asarray(jax.block_until_ready(adj))
            t += time.perf_counter() - t0
            adjs.append(adj)
            fls.append(np.asarray(flags))
        g = quantize_generic(np.concatenate(adjs)[:n], np.concatenate(fls)[:n])
        per_seed[s] = graph_mmds(data.test, g)
        secs.append(t)
        graphs[s] = g
    return per_seed, float(np.median(secs)), graphs


def run(cfg: Config, out: str, smoke: bool = False) -> dict:
    cfg, out, timer = begin(cfg, out, smoke)
    tc = trained_config(cfg.gdss_run)
    if get_config(tc["dataset"]).kind != "generic":
        raise ValueError(f"distill-graphs handles generic graph sets (MMD evaluation); {tc['dataset']} is a molecule set")
    tc, gcfg, data, model, teacher = load_trained(cfg.gdss_run)
    n = data.default_samples
    metrics: dict = {"dataset": tc["dataset"], "num_samples": n}

    # the teacher with GDSS's sampler at each N (the first is the reference), sampled here
    few = {}
    with timer("teacher_sample"):
        for scales in cfg.teacher_scales:
            f = sampler(model, teacher, num_scales=scales)
            per_seed, secs, _ = _sample_scored(f, data, cfg.sample_seeds, n, data.sample_batch(n))
            few[str(scales)] = {**data.summarise(per_seed), "num_scales": scales, "sample_s_per_seed": secs,
                                "nfe_per_graph": scales * evaluations_per_step(gcfg.solver, gcfg.corrector)}
            print(f"teacher, N = {scales}: MMD average {few[str(scales)]['average']:.4f} in {secs:.2f} s per seed")
    metrics["teacher"] = {**few[str(cfg.teacher_scales[0])], "gdss_run": os.path.abspath(cfg.gdss_run)}
    metrics["teacher_by_num_scales"] = few

    d = GraphDistiller(
        model, teacher, data.flags, make_optimizer(cfg.lr, clip_norm=cfg.clip_norm), make_optimizer(cfg.lr, clip_norm=cfg.clip_norm),
        student_steps=cfg.student_steps, fake_updates=cfg.fake_updates, batch_size=cfg.batch_size, ema_decay=cfg.ema_decay,
    )
    with timer("distill"):
        result = train(
            d.init(jax.random.key(cfg.loop.seed)), d.make_step(), lambda s: {}, num_steps=cfg.steps,
            workdir=os.path.join(out, "distill"), config={**as_dict(cfg), "dataset": tc["dataset"]},
            resume_ignore=("sample_seeds", "teacher_scales", "log_every"),
            desc="dmd2 (graphs)", **cfg.loop.train_kwargs(),
        )
    state = result.state
    gen = jax.jit(lambda k, fl: d.sample(d.generator_params(state), k, fl))
    with timer("student_sample"):
        per_seed, secs, graphs = _sample_scored(gen, data, cfg.sample_seeds, n, data.sample_batch(n))
    metrics["student"] = {**data.summarise(per_seed), "student_steps": cfg.student_steps,
                          "nfe_per_graph": cfg.student_steps * 2, "sample_s_per_seed": secs}
    metrics["student_over_teacher_average"] = metrics["student"]["average"] / metrics["teacher"]["average"]
    metrics["sampling_speedup"] = metrics["teacher"]["sample_s_per_seed"] / max(secs, 1e-9)
    from diffalign.graphs import data as gdata

    for s, g in graphs.items():
        gdata.write_edge_lists(os.path.join(out, f"samples_seed{s}.npz"), g)
    picture = _picture(out, graphs[cfg.sample_seeds[0]], data.test, metrics)
    write_results(out, experiment=NAME, config=cfg, metrics=metrics,
                  timings=timer.timings(distill_compile_s=result.summary["compile_s"], distill_run_s=result.summary["train_s"]),
                  extra={"smoke": smoke, "distill_summary": result.summary, "picture": picture})
    return metrics


def _picture(out, graphs, test, metrics):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import networkx as nx
    except ImportError:
        return None
    fig, axes = plt.subplots(2, 6, figsize=(15, 5.4))
    for row, (gs, name) in enumerate(((test, "test"), (graphs, f"DMD2 student, {metrics['student']['student_steps']} step(s)"))):
        for j, ax in enumerate(axes[row]):
            if j >= len(gs):
                ax.axis("off")
                continue
            g = nx.Graph()
            g.add_nodes_from(range(int(gs.num_nodes[j])))
            g.add_edges_from(map(tuple, gs.edges[j]))
            nx.draw(g, ax=ax, node_size=15, width=0.6, pos=nx.spring_layout(g, seed=0))
            ax.set_title(name if j == 0 else "", fontsize=9, loc="left")
    fig.tight_layout()
    path = os.path.join(out, "samples.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
