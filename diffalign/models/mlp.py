"""Multilayer perceptrons for low-dimensional data, conditioned on time and optionally class."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from .activations import elu, selu
from .embeddings import sinusoidal_embedding

ACTIVATIONS = {"selu": selu, "silu": nnx.silu, "gelu": nnx.gelu, "relu": nnx.relu, "elu": elu, "tanh": nnx.tanh}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {tuple(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def remat_if(on: bool, fn):
    """``jax.checkpoint(fn)`` when ``on``: the block's activations are recomputed in the
    backward pass instead of stored (less memory, about one more forward pass of compute)."""
    return jax.checkpoint(fn) if on else fn


def _partitioned(init, names, on: bool):
    return nnx.with_partitioning(init, names) if on else init


def _check_input(x, t, dim: int) -> None:
    if x.ndim != 2 or x.shape[-1] != dim:
        raise ValueError(f"the network expects inputs of shape (batch, {dim}), got {tuple(x.shape)}")
    if t.shape != (x.shape[0],):
        raise ValueError(f"the network expects one time per example, shape ({x.shape[0]},), got {tuple(t.shape)}")


class MLP(nnx.Module):
    """[x, t (, class embedding)] -> hidden layers -> output of the data's dimension.

    With ``hidden=(64, 64, 64)`` and SELU this is torchcfm's ``MLP(dim, w=64, time_varying=True)``
    (the network of Tong et al.'s 2-D experiments). ``time_features=0`` feeds t itself;
    ``time_features=k`` feeds k sinusoidal features instead. ``num_classes`` adds a learned class
    embedding with one extra row for the null label of classifier-free guidance.

    Scale-out switches: ``dtype=jnp.bfloat16`` computes in bf16 with float32 parameters
    (the output is cast back to the input's dtype); ``remat=True`` rematerialises each hidden
    layer (``jax.checkpoint``); ``shard_model=True`` splits the hidden layers over the mesh's
    "model" axis, Megatron style (kernels alternately (None, "model") and ("model", None)),
    and must be created inside ``diffalign.distributed.model_init(mesh)``.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64, 64),
        *,
        activation: str = "selu",
        time_features: int = 0,
        num_classes: int | None = None,
        class_features: int = 16,
        dtype=None,
        remat: bool = False,
        shard_model: bool = False,
        rngs: nnx.Rngs,
    ):
        if dim < 1 or not hidden or min(hidden) < 1:
            raise ValueError(f"MLP needs dim >= 1 and positive hidden widths, got dim={dim}, hidden={hidden}")
        self.act = _activation(activation)
        self.remat = remat
        self.dim = dim
        self.time_features = time_features
        self.num_classes = num_classes
        in_dim = dim + (time_features or 1)
        if num_classes:
            self.class_embed = nnx.Embed(num_classes + 1, class_features, rngs=rngs)
            in_dim += class_features
        widths = [in_dim, *hidden]
        kinit, binit = nnx.initializers.lecun_normal(), nnx.initializers.zeros
        layers = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            column = i % 2 == 0  # column-parallel (output split), then row-parallel (input split)
            layers.append(nnx.Linear(
                a, b, dtype=dtype, rngs=rngs,
                kernel_init=_partitioned(kinit, (None, "model") if column else ("model", None), shard_model),
                bias_init=_partitioned(binit, ("model",) if column else (None,), shard_model),
            ))
        self.layers = nnx.List(layers)
        last_column = len(hidden) % 2 == 1
        self.out = nnx.Linear(
            widths[-1], dim, dtype=dtype, rngs=rngs,
            kernel_init=_partitioned(kinit, ("model", None) if last_column else (None, None), shard_model),
        )

    def __call__(self, x, t, y=None):
        _check_input(x, t, self.dim)
        feats = [x, sinusoidal_embedding(t, self.time_features) if self.time_features else t[:, None]]
        if self.num_classes:
            if y is None:
                y = jnp.full((x.shape[0],), self.num_classes, jnp.int32)
            feats.append(self.class_embed(y))
        h = jnp.concatenate(feats, axis=-1)
        block = remat_if(self.remat, lambda layer, h: self.act(layer(h)))
        for layer in self.layers:
            h = block(layer, h)
        return self.out(h).astype(x.dtype)


class ResidualMLP(nnx.Module):
    """Residual MLP with a learned time (and class) embedding added in every block.

    h <- h + W2 act(W1 act(LayerNorm(h)) + cond), for flattened images and other vectors.
    ``dtype`` and ``remat`` (per block) as in ``MLP``.
    """

    def __init__(
        self,
        dim: int,
        width: int = 256,
        depth: int = 4,
        *,
        activation: str = "silu",
        time_features: int = 64,
        num_classes: int | None = None,
        dtype=None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        self.act = _activation(activation)
        self.remat = remat
        self.dim = dim
        self.time_features = time_features
        self.num_classes = num_classes
        self.inp = nnx.Linear(dim, width, dtype=dtype, rngs=rngs)
        self.time_mlp = nnx.Linear(time_features, width, dtype=dtype, rngs=rngs)
        if num_classes:
            self.class_embed = nnx.Embed(num_classes + 1, width, rngs=rngs)
        self.norms = nnx.List([nnx.LayerNorm(width, dtype=dtype, rngs=rngs) for _ in range(depth)])
        self.fc1 = nnx.List([nnx.Linear(width, width, dtype=dtype, rngs=rngs) for _ in range(depth)])
        self.cond = nnx.List([nnx.Linear(width, width, dtype=dtype, rngs=rngs) for _ in range(depth)])
        self.fc2 = nnx.List(
            [nnx.Linear(width, width, kernel_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs) for _ in range(depth)]
        )
        self.out_norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(width, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x, t, y=None):
        shape = x.shape
        x = x.reshape(shape[0], -1)
        _check_input(x, t, self.dim)
        c = self.time_mlp(sinusoidal_embedding(t, self.time_features))
        if self.num_classes:
            if y is None:
                y = jnp.full((shape[0],), self.num_classes, jnp.int32)
            c = c + self.class_embed(y)
        c = self.act(c)
        h = self.inp(x)
        block = remat_if(self.remat, lambda norm, fc1, cond, fc2, h, c: h + fc2(self.act(fc1(self.act(norm(h))) + cond(c))))
        for norm, fc1, cond, fc2 in zip(self.norms, self.fc1, self.cond, self.fc2):
            h = block(norm, fc1, cond, fc2, h, c)
        return self.out(self.act(self.out_norm(h))).reshape(shape).astype(x.dtype)
