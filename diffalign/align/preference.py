"""Preference objectives as loss transforms on per-example diffusion / flow-matching losses.

The diffusion substitution of Diffusion-DPO and its successors: the log-likelihood ratio of a
sample under the policy and the reference is replaced by

    g = l_ref - l_theta

with ``l`` the matching loss of the sample at one draw of (t, noise), **the same draw for the
policy, the reference and every member of a pair or list** (the loss function's job). So a
loss function for these objectives returns ``per_example`` (l_theta, shape (B,)) and
``ref_loss`` (l_ref, same draws), plus what the objective needs:

* pairs (``dpo``, ``rpo``): the batch is stacked ``[chosen; rejected]``: rows ``i`` and
  ``i + B/2`` are a pair.
* binary labels (``kto``, ``bco``): ``out["label"]``, 1 = desirable, 0 = undesirable.
* graded lists (``lipo``): ``out["reward"]``; lists are contiguous blocks of ``list_size`` rows.
* rewards (``rwr``): ``out["reward"]``.

The T w(t) factor of the ELBO is absorbed into beta, hence betas of 100-5000 rather than
LLM-style 0.1 (Diffusion-DPO used 5000 on epsilon-MSE; Flow-GRPO's FM variant 100).
Formulas and sources: ``shared/reference/awm-and-preference-objectives.md`` section 4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..losses.transforms import LossTransform, combine, masked_mean, per_example_of


def _need(out, *keys):
    for k in keys:
        if k not in out:
            raise KeyError(f"this objective reads out[{k!r}], which the loss function did not return")


def implicit_reward(out) -> jax.Array:
    """g = l_ref - l_theta per example (gradient through l_theta only)."""
    _need(out, "ref_loss")
    loss = per_example_of(out)
    ref = jax.lax.stop_gradient(out["ref_loss"]).astype(loss.dtype)
    if ref.shape != loss.shape:
        raise ValueError(f"ref_loss has shape {ref.shape}, per_example {loss.shape}")
    return ref - loss


def _halves(x):
    if x.shape[0] % 2:
        raise ValueError(f"pairwise objectives need the batch stacked [chosen; rejected]: got an odd batch of {x.shape[0]}")
    n = x.shape[0] // 2
    return x[:n], x[n:]


def _dpo_loss(out, beta):
    g_w, g_l = _halves(implicit_reward(out))
    margin = 0.5 * beta * (g_w - g_l)
    pairs = {"mask": _halves(out["mask"])[0]} if "mask" in out else {}  # a pair counts when its chosen row does
    return masked_mean(-jax.nn.log_sigmoid(margin), pairs), {
        "preference_accuracy": masked_mean((margin > 0).astype(jnp.float32), pairs),
        "implicit_margin": masked_mean(jax.lax.stop_gradient(margin), pairs),
    }


def dpo(beta: float = 5000.0) -> LossTransform:
    """Diffusion-DPO (Wallace et al., CVPR 2024): mean over pairs of -log sigmoid(beta/2 (g_w - g_l)).
    With ``out["mask"]``, pairs whose chosen row has mask 0 are left out (tied groups of an
    online rollout, ``rl.matching_rows(pair_group_size=...)``)."""
    _positive(beta=beta)
    return LossTransform(lambda: (), lambda out, state, step: _ret(_dpo_loss(out, beta), state))


def rpo(beta: float = 5000.0, eta: float = 1.0) -> LossTransform:
    """RPO (Liu et al. 2024, "Provably mitigating overoptimization"): Diffusion-DPO plus eta times
    the matching loss of the chosen samples (a supervised anchor against over-optimisation)."""
    return combine((1.0, dpo(beta)), (eta, chosen_mean()))


def _labels(out, loss):
    _need(out, "label")
    y = jax.lax.stop_gradient(out["label"])
    if y.shape != loss.shape:
        raise ValueError(f"labels have shape {y.shape}, per_example {loss.shape}")
    return y.astype(loss.dtype)


def kto(beta: float = 1000.0, *, lambda_desirable: float = 1.0, lambda_undesirable: float = 1.0) -> LossTransform:
    """Diffusion-KTO (Li et al., NeurIPS 2024): mean of w_y (1 - sigmoid(s_y beta (g - z))),
    s_y = +1 for desirable and -1 for undesirable samples, w_y = lambda_D or lambda_U, and the
    reference point z = stopgrad(max(0, mean g)) over the batch. Rows with ``out["mask"]`` 0
    (unlabelled samples: an online group of tied rewards) are left out."""
    _positive(beta=beta)

    def apply(out, state, step):
        del step
        g = implicit_reward(out)
        y = _labels(out, g)
        z = jax.lax.stop_gradient(jnp.maximum(0.0, masked_mean(g, out)))
        s = 2.0 * y - 1.0
        w = y * lambda_desirable + (1.0 - y) * lambda_undesirable
        loss = masked_mean(w * (1.0 - jax.nn.sigmoid(s * beta * (g - z))), out)
        return loss, state, {"kto_reference_point": z}

    return LossTransform(lambda: (), apply)


def bco(beta: float = 1000.0) -> LossTransform:
    """BCO (Jung et al. 2024): mean of -log sigmoid(s_y (beta g - delta)), with delta the running
    mean of all implicit rewards beta g seen so far (chosen and rejected alike), kept in the
    transform state as (mean, count) and updated with this batch before it is used (as TRL's
    ``RunningMoments``)."""
    _positive(beta=beta)

    def init():
        return {"mean": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.float32)}

    def apply(out, state, step):
        del step
        _no_mask(out)
        g = implicit_reward(out)
        y = _labels(out, g)
        r = beta * g
        n = jnp.asarray(r.shape[0], jnp.float32)
        count = state["count"] + n
        mean = state["mean"] + (jnp.mean(jax.lax.stop_gradient(r)) - state["mean"]) * n / count
        delta = jax.lax.stop_gradient(mean)
        loss = jnp.mean(-jax.nn.log_sigmoid((2.0 * y - 1.0) * (r - delta)))
        return loss, {"mean": mean, "count": count}, {"bco_delta": delta}

    return LossTransform(init, apply)


def lipo(beta: float = 1000.0, *, list_size: int) -> LossTransform:
    """LiPO-lambda (Liu et al. 2024): per list of K samples with graded labels psi (``out["reward"]``)
    and scores s = beta g,

        sum over pairs psi_i > psi_j of Delta_ij log(1 + exp(-(s_i - s_j))),
        Delta_ij = |G_i - G_j| |1/D(tau_i) - 1/D(tau_j)|,  G = 2^psi - 1,  D(tau) = log2(1 + tau),

    tau the 1-based rank under the current scores (a constant); averaged over lists. DPO is its
    K = 2 case up to the constant Delta. The base-2 log is NDCG's discount (LambdaLoss, TF-Ranking);
    the method notes write the natural log, which scales every Delta by ln 2."""
    _positive(beta=beta)
    if list_size < 2:
        raise ValueError(f"list_size must be >= 2, got {list_size}")

    def apply(out, state, step):
        del step
        _no_mask(out)
        g = implicit_reward(out)
        _need(out, "reward")
        if g.shape[0] % list_size:
            raise ValueError(f"a batch of {g.shape[0]} rows is not whole lists of {list_size}")
        s = (beta * g).reshape(-1, list_size)
        psi = jax.lax.stop_gradient(out["reward"]).astype(g.dtype).reshape(-1, list_size)
        sg = jax.lax.stop_gradient(s)
        tau = 1.0 + jnp.sum(sg[:, None, :] > sg[:, :, None], axis=-1)  # rank 1 = highest score
        gain, inv_d = 2.0**psi - 1.0, 1.0 / jnp.log2(1.0 + tau)
        delta = jnp.abs(gain[:, :, None] - gain[:, None, :]) * jnp.abs(inv_d[:, :, None] - inv_d[:, None, :])
        better = (psi[:, :, None] > psi[:, None, :]).astype(g.dtype)
        pair = jax.nn.softplus(-(s[:, :, None] - s[:, None, :]))
        return jnp.mean(jnp.sum(better * delta * pair, axis=(1, 2))), state, {}

    return LossTransform(lambda: (), apply)


def rwr(temperature: float = 0.2) -> LossTransform:
    """Reward-weighted regression (Peters & Schaal 2007; the DDPO paper's RWR baseline):
    sum_i softmax(r / temperature)_i l_i, the weights constants. AWM's ancestor: exponentiated
    rewards instead of zero-mean advantages."""
    _positive(temperature=temperature)

    def apply(out, state, step):
        del step
        loss = per_example_of(out)
        _need(out, "reward")
        _no_mask(out)
        w = jax.nn.softmax(jax.lax.stop_gradient(out["reward"]).astype(loss.dtype) / temperature)
        return jnp.sum(w * loss), state, {"rwr_effective_size": 1.0 / jnp.sum(w**2)}

    return LossTransform(lambda: (), apply)


def chosen_mean() -> LossTransform:
    """The mean matching loss of the chosen half of a [chosen; rejected] batch (RPO's SFT term)."""
    def apply(out, state, step):
        _no_mask(out)
        return jnp.mean(_halves(per_example_of(out))[0]), state, {}

    return LossTransform(lambda: (), apply)


def _no_mask(out):
    if "mask" in out:
        raise ValueError("preference objectives take whole pairs / lists / groups: a padded batch (out['mask']) "
                         "is not supported; drop the padding before the loss")


def _positive(**values):
    for name, v in values.items():
        if not v > 0:
            raise ValueError(f"{name} must be positive, got {v}")


def _ret(loss_metrics, state):
    loss, metrics = loss_metrics
    return loss, state, metrics
