"""Alignment as a loss transform.

The interface (``LossTransform``, ``RewardTransform``, ``mean``, ``weighted``, ``combine``,
``with_rewards``) is the core's: ``diffalign.losses.transforms``. This package holds the objectives:
* ``awm``: Advantage Weighted Matching's transform and group advantages.
* ``preference``: Diffusion-DPO, RPO, Diffusion-KTO, BCO, LiPO-lambda, RWR.
* ``rewards``: the log-sigmoid (LSC) reward transform, dynamic multi-objective weights, Lagrangian
  constraints.
* ``nft``: DiffusionNFT's negative-aware objective.
* ``rl``: the rollout stage (a training step's ``prepare``) and the per-row losses of every method.
* ``recipes``: each method's published settings as one step (``recipes.build``).
"""

from .awm import (
    WEIGHTINGS as WEIGHTINGS,
    advantages as advantages,
    awm as awm,
    flow_grpo as flow_grpo,
    ema_anchor_decay as ema_anchor_decay,
    group_advantages as group_advantages,
    log_likelihood_surrogate as log_likelihood_surrogate,
)
from .nft import nft as nft
from .preference import (
    bco as bco,
    chosen_mean as chosen_mean,
    dpo as dpo,
    implicit_reward as implicit_reward,
    kto as kto,
    lipo as lipo,
    rpo as rpo,
    rwr as rwr,
)
from .rewards import dynamic_weights as dynamic_weights, lagrangian as lagrangian, log_sigmoid_reward as log_sigmoid_reward
