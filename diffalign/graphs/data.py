"""Graph data sets as dense padded batches (GDSS, Jo et al. 2022), read from the shared edge lists.

A graph is (X, A, flags) padded to N nodes: A (N, N) the adjacency (generic graphs: 0/1;
molecules: bond order 0/1/2/3 as one real channel), X (N, F) one-hot node features (generic
graphs: one-hot degree; molecules: one-hot atom type), flags (N,) the real nodes. As in
GDSS, a node is real iff its row of the clean A is non-zero, so isolated nodes are padding.

Edge-list files (``<name>.npz``) hold ``num_nodes`` [G], ``edge_offsets`` [G+1], ``edges``
[E, 2] (undirected, u < v, indices in each graph's node order) and ``test_size``; the split
is GDSS's: test = the first ``test_size`` graphs, train = the rest. The same format is what
``diffalign graphs sample`` writes and ``diffalign graphs evaluate`` reads.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

# Per data set: (padding size N, number of degree classes F) of GDSS's configs.
GENERIC = {
    "community_small": (20, 10),
    "ego_small": (18, 17),
    "ENZYMES": (125, 10),
    "grid": (361, 5),
}


def default_data_dir() -> str | None:
    """``$DIFFALIGN_DATA``, else ``../shared/data`` beside the checkout, if present."""
    env = os.environ.get("DIFFALIGN_DATA")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    for up in (3, 4):
        cand = os.path.join(here, *([".."] * up), "shared", "data")
        if os.path.isdir(cand):
            return os.path.abspath(cand)
    return None


def resolve(path: str | None, *parts: str) -> str:
    base = path or default_data_dir()
    if base is None:
        raise FileNotFoundError(
            "no data directory: pass --data-dir (the folder holding graphs/ and molecules/) or set DIFFALIGN_DATA"
        )
    full = os.path.join(base, *parts)
    if not os.path.exists(full):
        raise FileNotFoundError(f"data file {full} not found (data directory {base})")
    return full


@dataclasses.dataclass(frozen=True)
class EdgeLists:
    """Graphs as edge lists: ``edges[i]`` is an (E_i, 2) int array, ``num_nodes[i]`` its node count."""

    num_nodes: np.ndarray
    edges: tuple
    test_size: int = 0

    def __len__(self):
        return len(self.num_nodes)

    def subset(self, idx) -> "EdgeLists":
        idx = list(idx)
        return EdgeLists(self.num_nodes[idx], tuple(self.edges[i] for i in idx), 0)

    def split(self) -> tuple["EdgeLists", "EdgeLists"]:
        """(train, test) by GDSS's rule: test = the first ``test_size`` graphs."""
        n = len(self)
        return self.subset(range(self.test_size, n)), self.subset(range(self.test_size))

    def to_networkx(self):
        import networkx as nx

        out = []
        for n, e in zip(self.num_nodes, self.edges):
            g = nx.Graph()
            g.add_nodes_from(range(int(n)))
            g.add_edges_from(map(tuple, np.asarray(e).tolist()))
            out.append(g)
        return out


def read_npz(path: str, required, optional=(), what: str = "the expected file") -> dict:
    """The named arrays of an ``.npz`` file, read eagerly, with a clear error for a missing,
    truncated or corrupt file or one without the required arrays."""
    import zipfile
    import zlib

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found")
    try:
        d = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read {path}: not a readable .npz archive (truncated or corrupt?): {e}") from e
    if not isinstance(d, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not {what} (an .npz archive with {list(required)})")
    with d:
        missing = set(required) - set(d.files)
        if missing:
            raise ValueError(f"{path} is not {what}: missing arrays {sorted(missing)} (it has {d.files})")
        try:
            return {k: d[k] for k in (*required, *optional) if k in d.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise ValueError(f"cannot read {path}: an array in it is corrupt: {e}") from e


def read_edge_lists(path: str) -> EdgeLists:
    """Read the shared ``.npz`` edge-list format, validating it."""
    arrays = read_npz(path, ("num_nodes", "edge_offsets", "edges"), ("test_size",), "an edge-list file")
    n, off, edges = (arrays[k].astype(np.int64) for k in ("num_nodes", "edge_offsets", "edges"))
    if n.ndim != 1 or len(n) == 0:
        raise ValueError(f"{path}: num_nodes must be a non-empty 1-D array (one count per graph), got shape {n.shape}")
    if off.shape != (len(n) + 1,) or off[0] != 0 or off[-1] != len(edges) or np.any(np.diff(off) < 0):
        raise ValueError(f"{path}: edge_offsets must run from 0 to the number of edges, non-decreasing")
    if edges.ndim != 2 or (len(edges) and edges.shape[1] != 2):
        raise ValueError(f"{path}: edges must have shape (E, 2), got {edges.shape}")
    per = []
    for i in range(len(n)):
        e = edges[off[i] : off[i + 1]]
        if len(e) and (e.min() < 0 or e.max() >= n[i]):
            raise ValueError(f"{path}: graph {i} has an edge to a node outside 0..{n[i] - 1}")
        per.append(e)
    return EdgeLists(n, tuple(per), int(arrays["test_size"]) if "test_size" in arrays else 0)


def write_edge_lists(path: str, graphs: EdgeLists) -> str:
    """Write graphs in the shared ``.npz`` edge-list format (u < v, no self-loops)."""
    clean = []
    for e in graphs.edges:
        e = np.asarray(e, np.int64).reshape(-1, 2)
        e = e[e[:, 0] != e[:, 1]]
        e = np.unique(np.sort(e, axis=1), axis=0)
        clean.append(e)
    off = np.concatenate([[0], np.cumsum([len(e) for e in clean])]).astype(np.int64)
    edges = np.concatenate(clean).astype(np.int32) if clean else np.zeros((0, 2), np.int32)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, num_nodes=np.asarray(graphs.num_nodes, np.int32), edge_offsets=off, edges=edges,
                        test_size=np.int32(graphs.test_size))
    os.replace(tmp, path)
    return path


def to_dense(graphs: EdgeLists, max_nodes: int, max_feat: int):
    """(X, A, flags) float32 arrays of shapes (G, N, F), (G, N, N), (G, N).

    X is the one-hot degree (GDSS ``init: deg``), masked by the flags.
    """
    g = len(graphs)
    adj = np.zeros((g, max_nodes, max_nodes), np.float32)
    for i, (n, e) in enumerate(zip(graphs.num_nodes, graphs.edges)):
        if n > max_nodes:
            raise ValueError(f"graph {i} has {n} nodes, more than the padding size {max_nodes}")
        if len(e):
            adj[i, e[:, 0], e[:, 1]] = 1.0
            adj[i, e[:, 1], e[:, 0]] = 1.0
    np.einsum("gii->gi", adj)[:] = 0.0
    flags = (np.abs(adj).sum(-1) > 1e-5).astype(np.float32)
    deg = adj.sum(-1).astype(np.int64)
    if deg.max(initial=0) >= max_feat:
        raise ValueError(f"a node has degree {deg.max()}, more than the {max_feat} degree classes allow")
    x = np.eye(max_feat, dtype=np.float32)[deg] * flags[..., None]
    return x, adj, flags


def load_generic(name: str, data_dir: str | None = None):
    """(train, test) EdgeLists of one of GDSS's generic graph sets."""
    if name not in GENERIC:
        raise ValueError(f"unknown graph data set {name!r}; expected one of {tuple(GENERIC)}")
    return read_edge_lists(resolve(data_dir, "graphs", f"{name}.npz")).split()
