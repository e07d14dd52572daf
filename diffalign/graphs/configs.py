"""GDSS's per-data-set settings, as in the paper's released configs (``config/*.yaml``).

Each entry gives the padding size, feature count, the two SDEs, both networks'
hyper-parameters, the training schedule and the sampler. Numbers are read from the reference
code and checked against the released checkpoints (parameter counts match exactly).
"""

from __future__ import annotations

import dataclasses

from ..sde import VESDE, VPSDE
from .system import GraphSDE


@dataclasses.dataclass(frozen=True)
class GDSSConfig:
    name: str
    kind: str  # "generic" or "molecule"
    max_nodes: int
    max_feat: int
    sde_x: tuple  # ("vp" | "ve", min, max)
    sde_a: tuple
    x_depth: int
    x_nhid: int
    a_nhid: int
    a_layers: int
    a_linears: int
    adim: int
    c_init: int = 2
    c_hid: int = 8
    c_final: int = 4
    heads: int = 4
    batch_size: int = 128
    epochs: int = 5000
    lr: float = 1e-2
    weight_decay: float = 1e-4
    lr_decay: float = 0.999
    ema: float = 0.999
    grad_clip: float = 1.0
    predictor: str = "euler"
    corrector: str = "langevin"
    solver: str = "pc"
    snr: float = 0.1
    scale_eps: float = 0.7
    use_ema: bool = False
    sample_seed: int = 42
    train_seed: int = 42

    def graph_sde(self) -> GraphSDE:
        return GraphSDE(_sde(self.sde_x), _sde(self.sde_a))


def _sde(spec):
    kind, lo, hi = spec
    if kind == "vp":
        return VPSDE(beta_min=lo, beta_max=hi, t_min=1e-5)
    return VESDE(sigma_min=lo, sigma_max=hi, t_min=1e-5)


CONFIGS = {
    c.name: c
    for c in [
        GDSSConfig("community_small", "generic", 20, 10, ("vp", 0.1, 1.0), ("vp", 0.1, 1.0), 3, 32, 32, 5, 2, 32,
                   batch_size=128, predictor="euler", corrector="langevin", snr=0.05, scale_eps=0.7,
                   use_ema=False, sample_seed=11, train_seed=12),
        GDSSConfig("ego_small", "generic", 18, 17, ("vp", 0.1, 1.0), ("vp", 0.1, 1.0), 2, 32, 32, 5, 2, 32,
                   batch_size=128, predictor="euler", corrector="none", snr=0.0, scale_eps=0.0,
                   use_ema=False, sample_seed=12, train_seed=11),
        GDSSConfig("ENZYMES", "generic", 125, 10, ("vp", 0.1, 1.0), ("ve", 0.2, 1.0), 5, 32, 32, 7, 2, 32,
                   batch_size=64, solver="s4", snr=0.15, scale_eps=0.7, use_ema=True, sample_seed=12, train_seed=11),
        GDSSConfig("grid", "generic", 361, 5, ("vp", 0.1, 1.0), ("vp", 0.2, 0.8), 5, 32, 32, 7, 2, 32,
                   batch_size=8, predictor="reverse", corrector="langevin", snr=0.1, scale_eps=0.7,
                   use_ema=True, sample_seed=13, train_seed=11),
        GDSSConfig("QM9", "molecule", 9, 4, ("ve", 0.1, 1.0), ("ve", 0.1, 1.0), 2, 16, 16, 3, 3, 16,
                   batch_size=1024, epochs=300, lr=5e-3, predictor="reverse", corrector="langevin", snr=0.2,
                   scale_eps=0.7, use_ema=False, sample_seed=42, train_seed=42),
        GDSSConfig("ZINC250k", "molecule", 38, 9, ("vp", 0.1, 1.0), ("ve", 0.2, 1.0), 2, 16, 16, 6, 3, 16,
                   batch_size=1024, epochs=1000, lr=5e-3, predictor="reverse", corrector="langevin", snr=0.2,
                   scale_eps=0.9, use_ema=False, sample_seed=42, train_seed=42),
    ]
}


def get_config(name: str) -> GDSSConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown graph data set {name!r}; expected one of {tuple(CONFIGS)}")
    return CONFIGS[name]


# The paper's numbers (Jo et al. 2022, Tables 1 and 2, as quoted in the project's issue), for
# comparison in result tables. Generic: MMD^2 per statistic; molecules: percentages as fractions.
PAPER = {
    "community_small": {"degree": 0.045, "clustering": 0.086, "orbit": 0.007},
    "ego_small": {"degree": 0.021, "clustering": 0.024, "orbit": 0.007},
    "QM9": {"validity_wo_correction": 0.9572, "nspdk": 0.003, "fcd": 2.900, "uniqueness": 0.9846,
            "novelty": 0.8627},
    # not quoted in the issue: read from the paper's Tables 1 and 2
    "ENZYMES": {"degree": 0.026, "clustering": 0.061, "orbit": 0.009},
    "grid": {"degree": 0.111, "clustering": 0.005, "orbit": 0.070},
    "ZINC250k": {"validity_wo_correction": 0.9701, "nspdk": 0.019, "fcd": 14.656, "uniqueness": 0.9964,
                 "novelty": 1.0},
}
