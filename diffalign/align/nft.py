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
beta ||v_theta - v_old||^2.

``weighting="x0"`` is the released code's loss (``scripts/train_nft_sd3.py``): each branch in
x0 space, self-normalised by its own stop-gradient mean absolute error,
l+- = mean_d (x0_hat+- - x0)^2 / sg(max(mean_d |x0_hat+- - x0|, 1e-5)) with x0_hat - x0 = -t (v - u),
which the authors call a stabilising trick; it reads the rows' residual vectors v - u
(``rl.matching_rows(..., residuals=True)``).
"""

from __future__ import annotations

import jax

import jax.numpy as jnp

from ..losses.transforms import LossTransform, masked_mean, per_example_of
from .awm import advantages


WEIGHTINGS = ("velocity", "x0")


def nft(beta: float = 1.0, *, scale: float = 1.0, weighting: str = "velocity") -> LossTransform:
    """The DiffusionNFT objective as a loss transform, times ``scale``.

    ``"velocity"`` (the paper's form) reads ``per_example``, ``old_loss`` and ``drift_old``
    (``rl.matching_rows`` with ``aux["old"]``); ``"x0"`` (the code's) reads ``residual``,
    ``old_residual`` and ``t``. Both read the rows' advantages (``advantage``, or ``reward``
    with ``group``, as ``awm``). In velocity form the gradient at v_theta = v_old is ``scale``
    times AWM-uniform's with the same advantages; the code's loss has ``scale = 5``
    (``adv_clip_max``), which with r = 1/2 + clip(A, -5, 5) / 10 weights by clip(A, -5, 5).
    """
    if not beta > 0:
        raise ValueError(f"the NFT mixing beta must be positive, got {beta}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown NFT weighting {weighting!r}; expected one of {WEIGHTINGS}")

    def apply(out, state, step):
        del step
        if weighting == "x0":
            return _x0_normalised(out, state, beta, scale)
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


def _x0_normalised(out, state, beta, scale):
    for k in ("residual", "old_residual", "t"):
        if k not in out:
            raise KeyError(f"nft(weighting='x0') reads out[{k!r}] (rl.matching_rows(..., residuals=True) with "
                           "aux['old']), which is missing")
    res = out["residual"]
    e = jax.lax.stop_gradient(out["old_residual"]).astype(res.dtype)  # v_old - u
    d = res - e  # v_theta - v_old
    t = jax.lax.stop_gradient(out["t"]).astype(res.dtype)[:, None]
    r = 0.5 * (1.0 + jax.lax.stop_gradient(advantages(out)).astype(res.dtype))

    def branch(err):  # x0_hat - x0 = -t (v - u): its mean square over its own stop-gradient mean |.|
        x0_err = t * err
        norm = jax.lax.stop_gradient(jnp.maximum(jnp.mean(jnp.abs(x0_err), axis=-1), 1e-5))
        return jnp.mean(x0_err**2, axis=-1) / norm

    positive, negative = branch(e + beta * d), branch(e - beta * d)
    total = scale * masked_mean((r * positive + (1.0 - r) * negative) / beta, out)
    return total, state, {"nft_positive": masked_mean(positive, out), "nft_negative": masked_mean(negative, out),
                          "nft_r": masked_mean(r, out)}
