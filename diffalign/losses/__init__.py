"""Per-example losses (each factory returns loss_fn(params, batch, key) -> dict with "per_example")
and the loss-transform contract that turns them into the scalar a step minimises."""

from .flow_matching import flow_matching_loss as flow_matching_loss, reflow_pairs as reflow_pairs
from .score_matching import WEIGHTINGS as WEIGHTINGS, dsm_loss as dsm_loss
from .transforms import (
    LossTransform as LossTransform,
    RewardTransform as RewardTransform,
    combine as combine,
    masked_mean as masked_mean,
    mean as mean,
    penalties as penalties,
    per_example_of as per_example_of,
    regularised as regularised,
    weighted as weighted,
    with_rewards as with_rewards,
)
