"""Time the official GDSS code (harryjo97/GDSS, a checkout the user fetched) on our batches.

Run by ``benchmarks/gdss.py --reference DIR --reference-python PY`` once per interleaved repeat,
with the Python that has the official code's dependencies (torch, networkx, tqdm, pyyaml). It
builds the score networks, the loss and the samplers from the checkout's own modules and its
``config/<dataset>.yaml``, exactly as its ``trainer.py`` / ``sampler.py`` call them, on the dense
batch ``--data`` (x, adj, flags written by our benchmark), and prints one JSON line:

    {"task": ..., "runs_s": [...], "torch": ..., "threads": ...}

``train``: seconds per training iteration (both losses, both backward passes, gradient clipping,
both Adam steps, both EMA updates, as ``Trainer.train``), after ``--warmup`` iterations.
``pc`` / ``s4``: seconds of one sampling run of ``--steps`` reverse steps (the predictor-corrector
sampler with Euler + Langevin, or S4), after a short warm-up run. Nothing of the official code is
copied into this project; it is imported from ``--reference``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def info(reference: str, python: str, version: str | None = None) -> dict:
    """The peer's name, commit (``git rev-parse`` of the checkout unless given) and torch version."""
    if version is None:
        git = subprocess.run(["git", "-C", reference, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        version = git.stdout.strip() or "unknown commit"
    torch = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                           text=True).stdout.strip()
    return {"name": "GDSS official code (harryjo97/GDSS)", "version": version, "torch": torch}


def timed_run(reference: str, python: str, task: str, data: str, threads: int, **kw) -> float:
    """Seconds of one timed run of ``task`` in a fresh process of ``python`` running this driver
    (start-up, imports and model building not timed); ``kw`` are further flags (``steps=20``)."""
    cmd = [python, os.path.abspath(__file__), "--reference", reference, "--task", task, "--data", data,
           "--threads", str(threads), "--repeats", "1"]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"the official code failed ({' '.join(cmd)}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])["runs_s"][0]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, help="a checkout of harryjo97/GDSS")
    p.add_argument("--task", choices=("train", "pc", "s4"), required=True)
    p.add_argument("--data", required=True, help=".npz with x (B, N, F), adj (B, N, N), flags (B, N)")
    p.add_argument("--dataset", default="community_small")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--iterations", type=int, default=10, help="training iterations per timed run")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000, help="reverse steps of a sampling run")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--max-nodes", type=int, help="override the config's max_node_num (growth with N)")
    p.add_argument("--max-feat", type=int, help="override the config's max_feat_num (growth with N)")
    args = p.parse_args()

    ref = os.path.abspath(args.reference)
    sys.path.insert(0, ref)
    import numpy as np
    import torch
    import yaml

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open(os.path.join(ref, "config", f"{args.dataset.lower()}.yaml")) as f:
        cfg = yaml.safe_load(f)
    sample_cfg = os.path.join(ref, "config", f"sample_{args.dataset.lower()}.yaml")
    if os.path.exists(sample_cfg):  # the molecule sets keep their sampler settings apart, as sampler.py reads them
        with open(sample_cfg) as f:
            cfg.update({k: v for k, v in yaml.safe_load(f).items() if k in ("sampler", "sample")})
    dev = torch.device(args.device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    from losses import get_sde_loss_fn
    from models.ScoreNetwork_A import ScoreNetworkA
    from models.ScoreNetwork_X import ScoreNetworkX
    from sde import VESDE, VPSDE, subVPSDE
    from solver import S4_solver, get_pc_sampler
    from utils.ema import ExponentialMovingAverage

    d, m, tr = cfg["data"], cfg["model"], cfg["train"]
    if args.max_nodes:
        d["max_node_num"] = args.max_nodes
    if args.max_feat:
        d["max_feat_num"] = args.max_feat
    if m["x"] != "ScoreNetworkX":
        raise SystemExit(f"this driver builds ScoreNetworkX; {args.dataset} uses {m['x']}")

    def sde_of(c):
        kind = {"VP": VPSDE, "subVP": subVPSDE}.get(c["type"])
        if kind is not None:
            return kind(beta_min=c["beta_min"], beta_max=c["beta_max"], N=c["num_scales"])
        return VESDE(sigma_min=c["beta_min"], sigma_max=c["beta_max"], N=c["num_scales"])

    model_x = ScoreNetworkX(max_feat_num=d["max_feat_num"], depth=m["depth"], nhid=m["nhid"])
    model_adj = ScoreNetworkA(max_feat_num=d["max_feat_num"], max_node_num=d["max_node_num"], nhid=m["nhid"],
                              num_layers=m["num_layers"], num_linears=m["num_linears"], c_init=m["c_init"],
                              c_hid=m["c_hid"], c_final=m["c_final"], adim=m["adim"], num_heads=m["num_heads"],
                              conv=m["conv"])
    model_x, model_adj = model_x.to(dev), model_adj.to(dev)
    batch = np.load(args.data)
    x, adj, flags = (torch.tensor(batch[k], dtype=torch.float32, device=dev) for k in ("x", "adj", "flags"))
    runs = []
    if args.task == "train":
        opt_x = torch.optim.Adam(model_x.parameters(), lr=tr["lr"], weight_decay=tr["weight_decay"])
        opt_a = torch.optim.Adam(model_adj.parameters(), lr=tr["lr"], weight_decay=tr["weight_decay"])
        ema_x = ExponentialMovingAverage(model_x.parameters(), decay=tr["ema"])
        ema_a = ExponentialMovingAverage(model_adj.parameters(), decay=tr["ema"])
        loss_fn = get_sde_loss_fn(sde_of(cfg["sde"]["x"]), sde_of(cfg["sde"]["adj"]), train=True,
                                  reduce_mean=tr["reduce_mean"], continuous=True, likelihood_weighting=False,
                                  eps=tr["eps"])
        model_x.train()
        model_adj.train()

        def iteration():  # Trainer.train's body for one batch
            opt_x.zero_grad()
            opt_a.zero_grad()
            loss_x, loss_adj = loss_fn(model_x, model_adj, x, adj)
            loss_x.backward()
            loss_adj.backward()
            torch.nn.utils.clip_grad_norm_(model_x.parameters(), tr["grad_norm"])
            torch.nn.utils.clip_grad_norm_(model_adj.parameters(), tr["grad_norm"])
            opt_x.step()
            opt_a.step()
            ema_x.update(model_x.parameters())
            ema_a.update(model_adj.parameters())
            return loss_x.item(), loss_adj.item()

        for _ in range(args.warmup):
            iteration()
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            for _ in range(args.iterations):
                iteration()
            sync()
            runs.append((time.perf_counter() - t0) / args.iterations)
    else:
        s = cfg["sampler"]
        sde_x, sde_adj = sde_of({**cfg["sde"]["x"], "num_scales": args.steps}), sde_of(
            {**cfg["sde"]["adj"], "num_scales": args.steps})
        b, n = flags.shape
        make = get_pc_sampler if args.task == "pc" else S4_solver
        kw = dict(shape_x=(b, n, d["max_feat_num"]), shape_adj=(b, n, n), predictor=s["predictor"],
                  corrector=s["corrector"], snr=s["snr"], scale_eps=s["scale_eps"], n_steps=s["n_steps"],
                  probability_flow=cfg["sample"]["probability_flow"], continuous=True,
                  denoise=cfg["sample"]["noise_removal"], eps=cfg["sample"]["eps"], device=args.device)
        model_x.eval()
        model_adj.eval()
        warm = make(sde_of({**cfg["sde"]["x"], "num_scales": 5}), sde_of({**cfg["sde"]["adj"], "num_scales": 5}), **kw)
        warm(model_x, model_adj, flags)
        run = make(sde_x, sde_adj, **kw)
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            run(model_x, model_adj, flags)
            sync()
            runs.append(time.perf_counter() - t0)
    print(json.dumps({"task": args.task, "runs_s": runs, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
