"""GDSS score networks (Jo, Lee & Hwang, ICML 2022): ScoreNetworkX (GCN) and ScoreNetworkA (GMH).

Neither network takes the time as input. Shapes: X (B, N, F) node features, A (B, N, N)
adjacency (real-valued, symmetric), flags (B, N) real nodes. Both are permutation
equivariant and return masked outputs; ScoreNetworkA's output is symmetric with a zero
diagonal.

Work saving that changes no result: every per-entry MLP of ScoreNetworkA acts on symmetric
inputs (A, A^2, the symmetrised attention maps and earlier symmetric channels), so its output
is symmetric; the adjacency channels are kept packed as their upper triangle, the MLPs run on
it, and a dense copy is made only where a GCN needs one. Each attention channel propagates
its node features once for Q, K and V together. (Batching all channels of a layer into one
product was tried: faster backward, slower forward, on this CPU.)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..models.activations import elu
from ..models.mlp import remat_if
from ..sampling.graph import mask_adj as mask_adj  # the masks live with the sampler
from ..sampling.graph import mask_x as mask_x


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
            h = elu(lin(h))
        return self.linears[-1](h)


class ScoreNetworkX(nnx.Module):
    """h_0 = X, h_l = tanh(GCN_l(h_{l-1}, A)); out = MLP_3(concat h_0..h_depth), masked."""

    def __init__(self, max_feat: int, depth: int, nhid: int, *, remat: bool = False, rngs: nnx.Rngs):
        self.remat = remat
        self.gcns = nnx.List([DenseGCN(max_feat if i == 0 else nhid, nhid, rngs=rngs) for i in range(depth)])
        fdim = max_feat + depth * nhid
        self.final = MLP(3, fdim, 2 * fdim, max_feat, rngs=rngs)

    def __call__(self, x, adj, flags):
        a = normalize_adj(adj)
        hs = [x]
        block = remat_if(self.remat, lambda gcn, x, a: jnp.tanh(gcn(x, a)))
        for gcn in self.gcns:
            x = block(gcn, x, a)
            hs.append(x)
        return mask_x(self.final(jnp.concatenate(hs, -1)), flags)


class _Triangle:
    """Packing of symmetric (..., N, N) arrays into their upper triangle (..., N(N+1)/2) and back."""

    def __init__(self, n: int):
        iu, ju = np.triu_indices(n)
        pos = np.empty((n, n), np.int32)
        pos[iu, ju] = pos[ju, iu] = np.arange(len(iu))
        self.n, self.upper, self.mirror = n, (iu * n + ju).astype(np.int32), pos.reshape(-1)
        self.off_diagonal = (iu != ju).astype(np.float32)

    def pack(self, a):
        return a.reshape(a.shape[:-2] + (self.n * self.n,))[..., self.upper]

    def unpack(self, p):
        return p[..., self.mirror].reshape(p.shape[:-1] + (self.n, self.n))


def _per_entry(mlp: "MLP", h):
    """``mlp`` applied to every entry of channels-first features (B, C, P) -> (B, C_out, P)."""
    return jnp.swapaxes(mlp(jnp.swapaxes(h, 1, 2)), 1, 2)


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
        """(V, M) for node features x (B, N, F) and one normalised adjacency channel.

        The three GCNs share their propagation: GCN(x) = (A x) W + b, with A x computed once and
        the three weights applied as one (F, 2 d_A + d_V) product (F <= d, so it is also the
        cheaper order)."""
        gcns = (self.q, self.k, self.v)
        w = jnp.concatenate([g.lin.kernel[...] for g in gcns], -1)
        h = (adj_norm @ x) @ w + jnp.concatenate([g.bias[...] for g in gcns])
        b, n, _ = h.shape
        da = self.q.lin.kernel.shape[-1]
        qh = h[..., :da].reshape(b, n, self.heads, da // self.heads)
        kh = h[..., da:2 * da].reshape(b, n, self.heads, da // self.heads)
        s = jnp.tanh(jnp.einsum("bihd,bjhd->bhij", qh, kh) / math.sqrt(self.dout)).mean(1)
        return h[..., 2 * da:], 0.5 * (s + jnp.swapaxes(s, -1, -2))


class AttentionLayer(nnx.Module):
    """One GMH layer: (X, C channels) -> (X', C' channels).

    Per channel c: (V_c, M_c) = Attention_c(X, norm(A_c)); X' = tanh(MLP(concat_c V_c));
    A'_c' = 2 MLP([M, A] per entry), evaluated on the packed upper triangle (its inputs are
    symmetric, so is its output, and S + S^T = 2 S).
    """

    def __init__(self, num_linears, din, attn_dim, dout, c_in, c_out, heads, *, rngs: nnx.Rngs):
        self.attn = nnx.List([Attention(din, attn_dim, dout, heads, rngs=rngs) for _ in range(c_in)])
        hid = 2 * max(c_in, c_out)
        self.mlp = MLP(num_linears, 2 * c_in, hid, c_out, rngs=rngs)
        self.multi_channel = MLP(2, c_in * dout, hid, dout, rngs=rngs)

    def __call__(self, x, adjc, packed, flags, tri: _Triangle, pmask):
        """x (B, N, F); adjc (B, C, N, N) and the same packed (B, C, P); pmask (B, 1, P)."""
        an = normalize_adj(adjc)
        vs, ms = zip(*(att(x, an[:, c]) for c, att in enumerate(self.attn)))
        x_out = jnp.tanh(mask_x(self.multi_channel(jnp.concatenate(vs, -1)), flags))
        feats = jnp.concatenate([tri.pack(jnp.stack(ms, 1)), packed], 1)
        return x_out, 2.0 * _per_entry(self.mlp, feats) * pmask


class ScoreNetworkA(nnx.Module):
    """Graph multi-head attention over [A, A^2, ...]; per-entry MLP of all channels, zero diagonal.

    ``remat=True`` rematerialises each attention layer (``jax.checkpoint``), as ``remat`` on
    ``ScoreNetworkX`` does each GCN layer."""

    def __init__(self, max_feat: int, nhid: int, num_layers: int, num_linears: int, c_init: int, c_hid: int,
                 c_final: int, adim: int, heads: int = 4, *, remat: bool = False, rngs: nnx.Rngs):
        self.c_init = c_init
        self.remat = remat
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
        tri = _Triangle(adj.shape[-1])
        pmask = tri.pack(flags[:, :, None] * flags[:, None, :])[:, None]
        powers = [adj]
        for _ in range(self.c_init - 1):
            powers.append(powers[-1] @ adj)
        adjc = jnp.stack(powers, 1)
        packed = tri.pack(adjc)
        chans = [packed]
        block = remat_if(self.remat, lambda layer, x, adjc, packed: layer(x, adjc, packed, flags, tri, pmask))
        for i, layer in enumerate(self.layers):
            x, packed = block(layer, x, adjc, packed)
            chans.append(packed)
            if i < len(self.layers) - 1:
                adjc = tri.unpack(packed)
        score = _per_entry(self.final, jnp.concatenate(chans, 1))[:, 0] * pmask[:, 0] * tri.off_diagonal
        return tri.unpack(score)


def count_params(module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
