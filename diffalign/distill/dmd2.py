"""DMD2 (Yin et al., NeurIPS 2024): distribution matching without regression, two time scales.

Five fake-score updates per generator update; a K-step generator re-noises its prediction with
fresh noise between steps and is trained by backward simulation (run the current generator for
k ~ U{0..K-1} steps from noise, train its prediction there).
"""

from __future__ import annotations

import dataclasses

from .base import DistillationMethod
from .dmd import distribution_matching_loss, final_predictions


@dataclasses.dataclass(frozen=True)
class DMD2(DistillationMethod):
    name = "dmd2"
    default_fake_updates = 5
    stochastic = True

    def sample(self, experts, z, key=None, steps: int | None = None):
        if self.student_steps > 1 and key is None:
            raise ValueError("a multi-step dmd2 generator re-noises between steps: pass a key")
        return super().sample(experts, z, key)

    def fake_sample(self, experts, phase, key):
        return final_predictions(self, experts, key)

    def generator_loss(self, experts, fake, batch, key, phase: int = 0):
        loss = distribution_matching_loss(self, experts, fake, key)
        return loss, {"loss_dm": loss}
