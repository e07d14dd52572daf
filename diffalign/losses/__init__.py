"""Per-example losses: each factory returns loss_fn(params, batch, key) -> dict with "per_example"."""

from .flow_matching import flow_matching_loss as flow_matching_loss, reflow_pairs as reflow_pairs
from .score_matching import WEIGHTINGS as WEIGHTINGS, dsm_loss as dsm_loss
