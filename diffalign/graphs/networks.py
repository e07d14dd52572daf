"""GDSS score networks (Jo, Lee & Hwang, ICML 2022): ScoreNetworkX (GCN) and ScoreNetworkA (GMH).

Neither network takes the time as input. Shapes: X (B, N, F) node features, A (B, N, N)
adjacency (real-valued, symmetric), flags (B, N) real nodes. Both are permutation
equivariant and return masked outputs; ScoreNetworkA's output is symmetric with a zero
diagonal.

Work saving that changes no result: every per-entry MLP of ScoreNetworkA acts on symmetric
inputs (A, A^2, the symmetrised attention maps and earlier symmetric channels), so its output
is symmetric; it is evaluated on the upper triangle only and mirrored.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def mask_x(x, flags):
    return x * flags[..., None]


def mask_adj(a, flags):
    """Mask (B, ..., N, N) adjacencies (any channel axes between batch and nodes) by the flags."""
    f = flags.reshape(flags.shape[:1] + (1,) * (a.ndim - 3) + flags.shape[1:])
    return a * f[..., :, None] * f[..., None, :]


class DenseGCN(nnx.Module):
    """out = D^-1/2 A' D^-1/2 X W + b, A' = A with its diagonal set to 1, degrees clamped at 1.

    As PyTorch Geometric's DenseGCNConv (used by GDSS): Glorot-uniform W, zero b.
    """

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.lin = nnx.Linear(din, dout, use_bias=False, kernel_init=nnx.initializers.glorot_uniform(), rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((dout,)))

    def __call__(self, x, adj_norm):
        return adj_norm @ self.lin(x) + self.bias[...]


def normalize_adj(adj):
    """D^-1/2 A' D^-1/2 with A' = A, diagonal overwritten by 1, degrees clamped at >= 1."""
    n = adj.shape[-1]
    eye = jnp.eye(n, dtype=adj.dtype)
    a = adj * (1 - eye) + eye
    d = jnp.maximum(a.sum(-1), 1.0) ** -0.5
    return d[..., :, None] * a * d[..., None, :]


def torch_linear(din: int, dout: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """A Linear layer initialised as PyTorch's ``nn.Linear`` (GDSS's MLPs keep that default):
    weights and biases uniform on +-1/sqrt(fan_in)."""
    bound = 1.0 / math.sqrt(din)

    def bias_init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.Linear(din, dout, kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                      bias_init=bias_init, rngs=rngs)


class MLP(nnx.Module):
    """Linear, act, [Linear, act] * (layers - 2), Linear (GDSS's MLP without batch norm)."""

    def __init__(self, layers: int, din: int, dhid: int, dout: int, *, rngs: nnx.Rngs):
        dims = [din] + [dhid] * (layers - 1) + [dout]
        self.linears = nnx.List([torch_linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])

    def __call__(self, h):
        for lin in self.linears[:-1]:
            h = nnx.elu(lin(h))
        return self.linears[-1](h)


class ScoreNetworkX(nnx.Module):
    """h_0 = X, h_l = tanh(GCN_l(h_{l-1}, A)); out = MLP_3(concat h_0..h_depth), masked."""

    def __init__(self, max_feat: int, depth: int, nhid: int, *, rngs: nnx.Rngs):
        self.gcns = nnx.List([DenseGCN(max_feat if i == 0 else nhid, nhid, rngs=rngs) for i in range(depth)])
        fdim = max_feat + depth * nhid
        self.final = MLP(3, fdim, 2 * fdim, max_feat, rngs=rngs)

    def __call__(self, x, adj, flags):
        a = normalize_adj(adj)
        hs = [x]
        for gcn in self.gcns:
            x = jnp.tanh(gcn(x, a))
            hs.append(x)
        return mask_x(self.final(jnp.concatenate(hs, -1)), flags)


def _upper(n: int):
    return jnp.triu_indices(n)


def _per_entry_symmetric(fn, feats):
    """Apply ``fn`` to the last axis of (B, N, N, C) symmetric features on the upper triangle
    only and mirror the result; returns (B, N, N, C_out)."""
    n = feats.shape[1]
    iu, ju = _upper(n)
    out_u = fn(feats[:, iu, ju, :])  # (B, N(N+1)/2, C_out)
    full = jnp.zeros(feats.shape[:3] + out_u.shape[-1:], out_u.dtype)
    full = full.at[:, iu, ju, :].set(out_u)
    return full.at[:, ju, iu, :].set(out_u)


class Attention(nnx.Module):
    """Q, K, V from GCNs; per-head tanh(Q_h K_h^T / sqrt(out_dim)), mean over heads, symmetrised."""

    def __init__(self, din: int, attn_dim: int, dout: int, heads: int, *, rngs: nnx.Rngs):
        if attn_dim % heads:
            raise ValueError(f"attention dimension {attn_dim} is not divisible by {heads} heads")
        self.q = DenseGCN(din, attn_dim, rngs=rngs)
        self.k = DenseGCN(din, attn_dim, rngs=rngs)
        self.v = DenseGCN(din, dout, rngs=rngs)
        self.heads, self.dout = heads, dout

    def __call__(self, x, adj_norm):
        q, k, v = self.q(x, adj_norm), self.k(x, adj_norm), self.v(x, adj_norm)
        b, n, d = q.shape
        qh = q.reshape(b, n, self.heads, d // self.heads)
        kh = k.reshape(b, n, self.heads, d // self.heads)
        s = jnp.tanh(jnp.einsum("bihd,bjhd->bhij", qh, kh) / math.sqrt(self.dout)).mean(1)
        return v, 0.5 * (s + jnp.swapaxes(s, -1, -2))


class AttentionLayer(nnx.Module):
    """One GMH layer: (X, C channels) -> (X', C' channels)."""

    def __init__(self, num_linears, din, attn_dim, dout, c_in, c_out, heads, *, rngs: nnx.Rngs):
        self.attn = nnx.List([Attention(din, attn_dim, dout, heads, rngs=rngs) for _ in range(c_in)])
        hid = 2 * max(c_in, c_out)
        self.mlp = MLP(num_linears, 2 * c_in, hid, c_out, rngs=rngs)
        self.multi_channel = MLP(2, c_in * dout, hid, dout, rngs=rngs)

    def __call__(self, x, adjc, flags):
        vs, ms = [], []
        for c, att in enumerate(self.attn):
            v, m = att(x, normalize_adj(adjc[:, c]))
            vs.append(v)
            ms.append(m)
        x_out = jnp.tanh(mask_x(self.multi_channel(jnp.concatenate(vs, -1)), flags))
        feats = jnp.concatenate([jnp.stack(ms, -1), jnp.moveaxis(adjc, 1, -1)], -1)  # (B, N, N, 2 c_in)
        s = _per_entry_symmetric(self.mlp, feats)  # symmetric, so S + S^T = 2 S
        return x_out, mask_adj(jnp.moveaxis(2.0 * s, -1, 1), flags)


class ScoreNetworkA(nnx.Module):
    """Graph multi-head attention over [A, A^2, ...]; per-entry MLP of all channels, zero diagonal."""

    def __init__(self, max_feat: int, nhid: int, num_layers: int, num_linears: int, c_init: int, c_hid: int,
                 c_final: int, adim: int, heads: int = 4, *, rngs: nnx.Rngs):
        self.c_init = c_init
        layers = []
        for i in range(num_layers):
            if i == 0:
                layers.append(AttentionLayer(num_linears, max_feat, nhid, nhid, c_init, c_hid, heads, rngs=rngs))
            elif i == num_layers - 1:
                layers.append(AttentionLayer(num_linears, nhid, adim, nhid, c_hid, c_final, heads, rngs=rngs))
            else:
                layers.append(AttentionLayer(num_linears, nhid, adim, nhid, c_hid, c_hid, heads, rngs=rngs))
        self.layers = nnx.List(layers)
        fdim = c_hid * (num_layers - 1) + c_final + c_init
        self.final = MLP(3, fdim, 2 * fdim, 1, rngs=rngs)

    def __call__(self, x, adj, flags):
        powers = [adj]
        for _ in range(self.c_init - 1):
            powers.append(powers[-1] @ adj)
        adjc = jnp.stack(powers, 1)
        chans = [adjc]
        for layer in self.layers:
            x, adjc = layer(x, adjc, flags)
            chans.append(adjc)
        feats = jnp.moveaxis(jnp.concatenate(chans, 1), 1, -1)
        score = _per_entry_symmetric(self.final, feats)[..., 0]
        n = adj.shape[-1]
        return mask_adj(score * (1 - jnp.eye(n, dtype=score.dtype)), flags)


def count_params(module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
