"""DiffusionNFT (Zheng et al., arXiv 2509.16117): negative-aware fine-tuning as a loss transform.

From one network v_theta and the frozen old (rollout) policy v_old, two implicit policies

    v+ = v_old + beta (v_theta - v_old),   v- = v_old - beta (v_theta - v_old)

are trained on the rollouts' ordinary matching targets u, the positive one with weight r and the
negative one with 1 - r, r = (1 + A) / 2 the "optimality probability" from the group advantage
A in [-1, 1] (``group_advantages``: clip(A, -5, 5) / 5, the code's 1/2 + clip(A, -5, 5) / 10):

    L = mean over rows of (r ||v+ - u||^2 + (1 - r) ||v- - u||^2) / beta          (paper, velocity form)

Both squared errors follow from three per-row scalars every rows function already returns
(any quadratic norm: the per-dimension mean of the flows, GDSS's masked sums):
l = ||v_theta - u||^2 (``per_example``), l_old = ||v_old - u||^2 (``old_loss``) and
||v_theta - v_old||^2 (``drift_old``), since with e = v_old - u, d = v_theta - v_old,
2 e.d = l - l_old - ||d||^2 and ||v+- - u||^2 = l_old +- 2 beta e.d + beta^2 ||d||^2.

Method notes section 1.3: at v_theta = v_old the gradient is that of AWM with the uniform
surrogate and advantage 2r - 1 = A; beta only sets the stiffness of the built-in proximal term
beta ||v_theta - v_old||^2. The released code's x0-space self-normalised weighting (a
stabilising "trick", per the authors) is not this form.
"""

from __future__ import annotations

import jax

from ..losses.transforms import LossTransform, masked_mean, per_example_of
from .awm import advantages


def nft(beta: float = 1.0, *, scale: float = 1.0) -> LossTransform:
    """The DiffusionNFT objective as a loss transform (velocity form, times ``scale``).

    Reads ``per_example``, ``old_loss`` and ``drift_old`` (``rl.matching_rows`` with
    ``aux["old"]``) and the rows' advantages (``advantage``, or ``reward`` with ``group``, as
    ``awm``). Its gradient at v_theta = v_old is ``scale`` times AWM-uniform's with the same
    advantages; the code's loss is ``scale = 5`` (``adv_clip_max``).
    """
    if not beta > 0:
        raise ValueError(f"the NFT mixing beta must be positive, got {beta}")

    def apply(out, state, step):
        del step
        loss = per_example_of(out)
        for k in ("old_loss", "drift_old"):
            if k not in out:
                raise KeyError(f"the nft transform reads out[{k!r}] (rl.matching_rows with aux['old']), which is missing")
        old = jax.lax.stop_gradient(out["old_loss"]).astype(loss.dtype)
        d2 = out["drift_old"].astype(loss.dtype)
        r = 0.5 * (1.0 + jax.lax.stop_gradient(advantages(out)).astype(loss.dtype))
        ed = 0.5 * (loss - old - d2)  # e.d, with e = v_old - u, d = v_theta - v_old
        positive = old + 2.0 * beta * ed + beta**2 * d2
        negative = old - 2.0 * beta * ed + beta**2 * d2
        total = scale * masked_mean((r * positive + (1.0 - r) * negative) / beta, out)
        return total, state, {"nft_positive": masked_mean(positive, out), "nft_negative": masked_mean(negative, out),
                              "nft_r": masked_mean(r, out)}

    return LossTransform(lambda: (), apply)
