"""NSPDK MMD: the neighbourhood subgraph pairwise distance kernel (Costa & De Grave, ICML 2010),
with the feature extraction of EDeN's ``Vectorizer(complexity=4, discrete=True)`` as GDSS uses it.

For a labelled graph (node label = atom symbol, edge label = bond order):
1. every edge becomes a vertex carrying the edge's label, joined to both end atoms;
2. around each atom, breadth-first layers of the expanded graph up to depth 8; the
   neighbourhood of radius r (r = 0..4) is encoded by hashing, layer by layer, the sorted
   hashes of (label, degree) of its vertices (a running hash over layers 0..2r);
3. for every pair of atoms (v, u) at distance d (d = 0..4 in the original graph, 2d in the
   expanded one) and every radius r, the pair feature hash(sorted neighbourhood hashes, r, d)
   and the "context" feature hash(neighbourhood of u, r, d) each count once;
4. features are hashed into 2^16 buckets; each (r, d) block is scaled to unit norm, then the
   whole vector.
The kernel is linear, so the biased MMD^2 between two sets is ||mean(X) - mean(Y)||^2.

Like EDeN, feature ids are hashes: different hash functions give different (rare) bucket
collisions and so values that differ slightly; EDeN uses Python's salted ``hash`` of the
string labels, so its values change from process to process. Here the labels are hashed
with CRC32, so the values are reproducible.
"""

from __future__ import annotations

import zlib
from collections import defaultdict, deque

import numpy as np

NBITS = 16
_MASK = (1 << NBITS) - 1
_MASK32 = 4294967295


def _h(*items) -> int:
    """A feature bucket (16 bits, as ``nbits=16``)."""
    return (hash(items) & _MASK) + 1


def _h32(*items) -> int:
    """An intermediate hash (EDeN masks these to 32 bits)."""
    return (hash(items) & _MASK32) + 1


def _label_hash(label) -> int:
    if isinstance(label, (int, np.integer)):
        return (int(label) & _MASK) + 1
    return (zlib.crc32(str(label).encode()) & _MASK) + 1


def _running_hashes(values) -> list[int]:
    out, run = [], 0xAAAAAAAA
    for i, v in enumerate(values):
        run ^= hash((run, v, i))
        out.append((run & _MASK32) + 1)
    return out


def features(node_labels, edges, edge_labels, complexity: int = 4) -> dict:
    """Normalised sparse NSPDK feature vector {bucket: value} of one graph.

    ``node_labels[i]`` labels atom i; ``edges`` is a list of (i, j), ``edge_labels`` their labels.
    """
    n = len(node_labels)
    # the expanded graph: atoms 0..n-1, then one vertex per edge
    adj = [[] for _ in range(n)]
    labels = [_label_hash(lab) for lab in node_labels]
    for (i, j), lab in zip(edges, edge_labels):
        if i == j:
            continue
        w = len(adj)
        adj.append([i, j])
        adj[i].append(w)
        adj[j].append(w)
        labels.append(_label_hash(lab))
    vhash = [_h32(labels[v], len(adj[v])) for v in range(len(adj))]
    depth = 2 * complexity
    layers, neigh = [], []
    for root in range(n):
        dist = {root: 0}
        levels = [[root]]
        q = deque([root])
        while q:
            u = q.popleft()
            d = dist[u] + 1
            if d > depth:
                continue
            for v in adj[u]:
                if v not in dist:
                    dist[v] = d
                    if d == len(levels):
                        levels.append([])
                    levels[d].append(v)
                    q.append(v)
        layers.append(levels)
        neigh.append(_running_hashes([_h32(*sorted(vhash[v] for v in lvl)) for lvl in levels]))
    blocks: dict = defaultdict(lambda: defaultdict(float))
    for v in range(n):
        for dist in range(0, depth + 1, 2):
            if dist >= len(layers[v]):
                break
            for u in layers[v][dist]:
                if u >= n:
                    continue
                for radius in range(0, depth + 1, 2):
                    if radius < len(neigh[v]) and radius < len(neigh[u]):
                        hv, hu = neigh[v][radius], neigh[u][radius]
                        key = (radius, dist)
                        blocks[key][_h(min(hv, hu), max(hv, hu), radius, dist)] += 1.0
                        blocks[key][_h(hu, radius, dist)] += 1.0
    vec: dict = {}
    for block in blocks.values():
        norm = np.sqrt(sum(c * c for c in block.values()))
        for f, c in block.items():
            vec[f] = c / norm  # as EDeN: a bucket shared by two blocks keeps the later value
    total = np.sqrt(sum(c * c for c in vec.values()))
    return {f: c / total for f, c in vec.items()} if total > 0 else {}


def _mean_vector(graphs, complexity: int) -> np.ndarray:
    acc = np.zeros(_MASK + 2)
    for g in graphs:
        for f, c in features(*g, complexity=complexity).items():
            acc[f] += c
    return acc / max(len(graphs), 1)


def nspdk_mmd(reference, generated, complexity: int = 4) -> float:
    """Biased MMD^2 with the linear NSPDK kernel; each graph is (node_labels, edges, edge_labels)."""
    d = _mean_vector(reference, complexity) - _mean_vector(generated, complexity)
    return float(d @ d)


def mol_to_graph(mol):
    """(atom symbols, bonds, bond orders as ints) of an RDKit molecule, as GDSS labels them
    (aromatic bonds, order 1.5, become 1)."""
    atoms = [a.GetSymbol() for a in mol.GetAtoms()]
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
    orders = [int(b.GetBondTypeAsDouble()) for b in mol.GetBonds()]
    return atoms, bonds, orders
