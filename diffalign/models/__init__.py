"""flax.nnx networks and the bridge to pure functions."""

from .embeddings import sinusoidal_embedding as sinusoidal_embedding
from .functional import functional as functional
from .mlp import MLP as MLP, ResidualMLP as ResidualMLP
