"""Symmetrical Flow Matching (SymmFlow; Caetano et al., arXiv 2506.10634, AAAI 2026).

One network ``v([x; m], t)`` on the concatenation of an image ``x`` and its mask or label
embedding ``m`` learns a joint flow in which the image goes noise -> data while the mask goes
data -> noise over the same t. Integrating from [noise, m] generates an image of mask/class m;
integrating the other way from [x, noise] segments/classifies x, and one Euler step of the
mask part is the "one-step" answer.

Time convention. The library's convention is kept: t = 0 is the *image's* data end and t = 1
its noise end (so generation runs t = 1 -> 0, as every library sampler does). The paper's
time is s = 1 - t. With ``sigma_min`` (1e-4, as in the reference code) the paths are

    x_t = (1 - t) x + (sigma_min + (1 - sigma_min) t) eps_x      image: data at 0, noise at 1
    m_t = (sigma_min + (1 - sigma_min) t) m + (1 - t) eps_m      mask:  noise at 0, data at 1

which are the paper's x_s, m_s at s = 1 - t, and the network regresses d/dt of them,

    u_x = -x + (1 - sigma_min) eps_x,      u_m = (1 - sigma_min) m - eps_m,

i.e. minus the paper's targets (dz/dt = -dz/ds). The loss is the paper's
lambda mean||v_x - u_x||^2 + (1 - lambda) mean||v_m - u_m||^2 with lambda = ``image_weight``.

* generation (mask -> image): z(1) = [eps_x, m], integrate t = 1 -> 0, read x.
* classification (image -> mask): z(0) = [x, eps_m], integrate t = 0 -> 1, read m; one Euler
  step is m_hat = eps_m + v_m([x, eps_m], 0), the paper's eps_m - v_paper_m([x, eps_m], s=1).
  For an exact field this is the posterior mean E[m | x] (see ``gaussian_class_velocity``).

Labels are embedded as vectors (``label_embeddings``) and decoded by the nearest embedding.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from .losses.common import REDUCTIONS, reduce_per_example, uniform_times

SIGMA_MIN = 1e-4
METHODS = ("euler", "heun")


def _check_sigma_min(sigma_min: float) -> None:
    if not 0.0 <= sigma_min < 1.0:
        raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min}")


def coefficients(t, sigma_min: float = SIGMA_MIN):
    """(a, b, c, d) with x_t = a x + b eps_x and m_t = c m + d eps_m, and their t-derivatives."""
    a, b = 1.0 - t, sigma_min + (1.0 - sigma_min) * t
    c, d = b, a
    da, db = -jnp.ones_like(t), (1.0 - sigma_min) * jnp.ones_like(t)
    return (a, b, c, d), (da, db, db, da)


def _col(t, x):
    return jnp.reshape(t, (-1,) + (1,) * (x.ndim - 1))


def interpolate(x, m, eps_x, eps_m, t, sigma_min: float = SIGMA_MIN):
    """(x_t, m_t): the image at time t of its noise -> data path, the mask of its data -> noise path."""
    (a, b, c, d), _ = coefficients(t, sigma_min)
    return _col(a, x) * x + _col(b, x) * eps_x, _col(c, m) * m + _col(d, m) * eps_m


def targets(x, m, eps_x, eps_m, sigma_min: float = SIGMA_MIN):
    """(u_x, u_m) = d/dt of ``interpolate`` (constant in t on these straight paths)."""
    return -x + (1.0 - sigma_min) * eps_x, (1.0 - sigma_min) * m - eps_m


# ----------------------------------------------------------------------------- labels and masks


def label_embeddings(num_classes: int, scale: float = 1.0, signed: bool = False):
    """(K, D) class embeddings: for K = 2 the scalars -scale, +scale (D = 1; already signed, so
    ``signed`` changes nothing); otherwise one-hot vectors times ``scale`` (``signed``: +scale for
    the class, -scale elsewhere, in the image's [-1, 1] range like the paper's palette masks)."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if num_classes == 2:
        return jnp.array([[-scale], [scale]], jnp.float32)
    eye = jnp.eye(num_classes, dtype=jnp.float32)
    return scale * (2.0 * eye - 1.0 if signed else eye)


def decode_labels(m, embeddings):
    """Class index of the nearest embedding to each row of ``m`` (sign of m for two classes)."""
    m = jnp.asarray(m)
    if m.ndim != 2 or m.shape[1] != embeddings.shape[1]:
        raise ValueError(f"masks must have shape (batch, {embeddings.shape[1]}), got {tuple(m.shape)}")
    d2 = jnp.sum((m[:, None, :] - embeddings[None]) ** 2, -1)
    return jnp.argmin(d2, axis=1)


def dequantize_mask(key, m, width: float):
    """m + width (U - 1/2): the paper's mask dequantisation (width = beta / 127.5 for 8-bit masks),
    so that a discrete mask has a density."""
    if width < 0:
        raise ValueError(f"mask dequantisation width must be >= 0, got {width}")
    if width == 0:
        return m
    return m + width * (jax.random.uniform(key, m.shape, m.dtype) - 0.5)


# ----------------------------------------------------------------------------- the loss


def symmflow_loss(
    apply_fn: Callable,
    embeddings=None,
    *,
    image_weight: float = 0.5,
    sigma_min: float = SIGMA_MIN,
    mask_noise: float = 0.0,
    reduce: str = "mean",
) -> Callable:
    """Build ``loss_fn(params, batch, key) -> {"per_example", "t", "loss_x", "loss_m"}``.

    The batch holds images under "x" (any shape (B, ...), flattened) and either class labels
    "y" (embedded with ``embeddings``, shape (K, D)) or masks "m" (B, D).
    ``apply_fn(params, z, t)`` predicts d/dt of z = [x_t, m_t] (shape (B, dx + D)).
    per_example = image_weight * reduce((v_x - u_x)^2) + (1 - image_weight) * reduce((v_m - u_m)^2),
    each part reduced over its own dimensions ("mean" as the reference code's two MSEs).
    """
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
    _check_sigma_min(sigma_min)
    if mask_noise < 0:
        raise ValueError(f"mask_noise must be >= 0, got {mask_noise}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduce!r}; expected one of {REDUCTIONS}")
    if embeddings is not None:
        embeddings = jnp.asarray(embeddings, jnp.float32)
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must have shape (num_classes, dim), got {tuple(embeddings.shape)}")

    def loss_fn(params, batch, key):
        if not isinstance(batch, dict) or "x" not in batch or not ("y" in batch or "m" in batch):
            raise TypeError("a SymmFlow batch is a dict with images under 'x' and labels 'y' or masks 'm'")
        x = batch["x"].reshape(batch["x"].shape[0], -1)
        if "m" in batch:
            m = batch["m"].astype(x.dtype)
        else:
            if embeddings is None:
                raise ValueError("a batch with labels 'y' needs the class embeddings")
            m = embeddings[batch["y"]].astype(x.dtype)
        if m.ndim != 2 or m.shape[0] != x.shape[0]:
            raise ValueError(f"masks must have shape (batch, dim) with batch {x.shape[0]}, got {tuple(m.shape)}")
        k_q, k_x, k_m, k_t = jax.random.split(key, 4)
        m = dequantize_mask(k_q, m, mask_noise)
        eps_x = jax.random.normal(k_x, x.shape, x.dtype)
        eps_m = jax.random.normal(k_m, m.shape, x.dtype)
        t = uniform_times(k_t, x.shape[0], 0.0, 1.0, x.dtype)
        x_t, m_t = interpolate(x, m, eps_x, eps_m, t, sigma_min)
        u_x, u_m = targets(x, m, eps_x, eps_m, sigma_min)
        v = apply_fn(params, jnp.concatenate([x_t, m_t], -1), t)
        dx = x.shape[1]
        loss_x = reduce_per_example((v[:, :dx] - u_x) ** 2, reduce)
        loss_m = reduce_per_example((v[:, dx:] - u_m) ** 2, reduce)
        per = image_weight * loss_x + (1.0 - image_weight) * loss_m
        return {"per_example": per, "t": t, "loss_x": loss_x, "loss_m": loss_m}

    return loss_fn


# ----------------------------------------------------------------------------- integration


def integrate(fn: Callable, z, t0: float, t1: float, steps: int, method: str = "euler"):
    """Integrate dz/dt = fn(z, t) from t0 to t1 (either direction) on a uniform grid."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if method not in METHODS:
        raise ValueError(f"unknown integrator {method!r}; expected one of {METHODS}")
    ts = jnp.linspace(t0, t1, steps + 1, dtype=z.dtype)

    def body(z, i):
        ta, tb = ts[i], ts[i + 1]
        h = tb - ta
        va = fn(z, jnp.full((z.shape[0],), ta, z.dtype))
        if method == "euler":
            return z + h * va, None
        zb = z + h * va
        vb = fn(zb, jnp.full((z.shape[0],), tb, z.dtype))
        return z + 0.5 * h * (va + vb), None

    z, _ = jax.lax.scan(body, z, jnp.arange(steps))
    return z


def generate(key, fn: Callable, m, x_dim: int, steps: int = 25, method: str = "euler"):
    """Images for masks/embeddings ``m`` (B, D): z(1) = [eps_x, m], integrated t = 1 -> 0 (the
    paper's forward direction). ``fn(z, t)`` is the trained velocity. Returns x (B, x_dim)."""
    m = jnp.asarray(m)
    if m.ndim != 2:
        raise ValueError(f"masks must have shape (batch, dim), got {tuple(m.shape)}")
    if not isinstance(x_dim, int) or x_dim < 1:
        raise ValueError(f"x_dim must be a positive integer, got {x_dim!r}")
    eps_x = jax.random.normal(key, (m.shape[0], x_dim), m.dtype)
    z = integrate(fn, jnp.concatenate([eps_x, m], -1), 1.0, 0.0, steps, method)
    return z[:, :x_dim]


def segment(key, fn: Callable, x, mask_dim: int, steps: int = 1, method: str = "euler"):
    """Masks for images ``x`` (B, ...): z(0) = [x, eps_m], integrated t = 0 -> 1 (the paper's
    backward direction); ``steps=1`` with Euler is the one-step answer. Returns m_hat (B, D)."""
    x = jnp.asarray(x)
    x = x.reshape(x.shape[0], -1)
    if not isinstance(mask_dim, int) or mask_dim < 1:
        raise ValueError(f"mask_dim must be a positive integer, got {mask_dim!r}")
    eps_m = jax.random.normal(key, (x.shape[0], mask_dim), x.dtype)
    z = integrate(fn, jnp.concatenate([x, eps_m], -1), 0.0, 1.0, steps, method)
    return z[:, x.shape[1]:]


def classify(key, fn: Callable, x, embeddings, steps: int = 1, method: str = "euler"):
    """(labels, m_hat): ``segment`` then the nearest class embedding."""
    embeddings = jnp.asarray(embeddings)
    m_hat = segment(key, fn, x, embeddings.shape[1], steps, method)
    return decode_labels(m_hat, embeddings), m_hat


def round_trip(key, fn: Callable, y, embeddings, x_dim: int, gen_steps: int = 25, cls_steps: int = 1,
               method: str = "euler"):
    """Labels -> generated images -> recovered labels: (x, y_hat). y_hat == y is the round trip's
    consistency (segment(generate(m)) recovers m)."""
    embeddings = jnp.asarray(embeddings)
    k_g, k_c = jax.random.split(key)
    x = generate(k_g, fn, embeddings[y], x_dim, gen_steps, method)
    y_hat, _ = classify(k_c, fn, x, embeddings, cls_steps, "euler" if cls_steps == 1 else method)
    return x, y_hat


# ----------------------------------------------------------------------------- an exact reference


def gaussian_class_velocity(means, std: float, embeddings, sigma_min: float = SIGMA_MIN) -> Callable:
    """The exact (loss-minimising) velocity for x | class k ~ N(means[k], std^2 I), equal class
    probabilities and m = embeddings[k] without dequantisation.

    Given the class, [x_t, m_t] is Gaussian with independent coordinates, so
    E[u | z_t, k] is linear in z_t; the field is the mixture of these over the class posterior
    p(k | z_t). Used by the tests: its one-step classification is the Bayes posterior mean
    of the embedding, and for one class its generation is the affine map x = mu + sqrt(std^2 +
    sigma_min^2) eps.
    """
    means = jnp.asarray(means, jnp.float32)
    emb = jnp.asarray(embeddings, jnp.float32)
    if means.ndim != 2 or emb.ndim != 2 or means.shape[0] != emb.shape[0]:
        raise ValueError(f"means (K, dx) and embeddings (K, D) must agree in K, got {means.shape} and {emb.shape}")
    _check_sigma_min(sigma_min)
    dx = means.shape[1]

    def fn(z, t):
        x_t, m_t = z[:, :dx], z[:, dx:]
        (a, b, c, d), (da, db, dc, dd) = coefficients(t[:, None], sigma_min)
        d = jnp.maximum(d, 1e-6)
        var_x = a**2 * std**2 + b**2
        rx = x_t[:, None, :] - a[:, None] * means[None]  # (B, K, dx)
        rm = m_t[:, None, :] - c[:, None] * emb[None]  # (B, K, D)
        logw = -0.5 * jnp.sum(rx**2, -1) / var_x - 0.5 * jnp.sum(rm**2, -1) / d**2
        w = jax.nn.softmax(logw, axis=1)[..., None]  # (B, K, 1)
        ux = da[:, None] * means[None] + ((da * a * std**2 + db * b) / var_x)[:, None] * rx
        um = dc[:, None] * emb[None] + (dd / d)[:, None] * rm
        return jnp.concatenate([jnp.sum(w * ux, 1), jnp.sum(w * um, 1)], -1)

    return fn
