"""diffalign: score-based diffusion and flow models in JAX, and their alignment with rewards.

Pure, jittable kernels (SDEs and paths, losses, samplers, likelihoods), loss transforms for
alignment objectives, and a functional training loop (one TrainState pytree, a pure
``step(state, batch) -> (state, metrics)``, orbax checkpoints, sharding over a device mesh).
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("diffalign")
except _metadata.PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"
