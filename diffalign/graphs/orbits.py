"""Node orbit counts of the graphlets with 2 to 4 nodes (the 15 orbits ORCA counts with ``node 4``).

For every node, the number of *induced* connected subgraphs with up to four nodes in which
it occupies each orbit (Przulj 2007; Hocevar & Demsar, ORCA, 2014), in ORCA's numbering:

====  =========================  ===================================================
orbit graphlet                   the node's place
====  =========================  ===================================================
0     edge                       either end (orbit 0 = degree)
1, 2  path on 3 nodes            end, middle
3     triangle                   any
4, 5  path on 4 nodes            end, inner
6, 7  star (claw)                leaf, centre
8     4-cycle                    any
9-11  paw (triangle + pendant)   pendant end, triangle node of degree 2, node of degree 3
12,13 diamond (K4 minus an edge) node of degree 2, node of degree 3
14    K4                         any
====  =========================  ===================================================

Written here in Python (no compiled binary to build): connected induced subgraphs are
enumerated once each with Wernicke's ESU algorithm and classified by their degree sequence.
Tests compare the result with brute force over all node subsets.
"""

from __future__ import annotations

import numpy as np

NUM_ORBITS = 15


def _neighbour_sets(num_nodes: int, edges) -> list[set]:
    nbrs = [set() for _ in range(num_nodes)]
    for u, v in np.asarray(edges, np.int64).reshape(-1, 2).tolist():
        if u != v:
            nbrs[u].add(v)
            nbrs[v].add(u)
    return nbrs


def _classify(nodes: tuple, nbrs: list[set], counts: np.ndarray) -> None:
    """Add the orbits of the connected induced subgraph on ``nodes`` (3 or 4 of them)."""
    s = set(nodes)
    deg = [len(nbrs[v] & s) for v in nodes]
    m = sum(deg) // 2
    if len(nodes) == 3:
        if m == 2:  # path: ends orbit 1, middle orbit 2
            for v, d in zip(nodes, deg):
                counts[v, 1 if d == 1 else 2] += 1
        else:  # triangle
            for v in nodes:
                counts[v, 3] += 1
        return
    if m == 3:
        if max(deg) == 3:  # star
            for v, d in zip(nodes, deg):
                counts[v, 7 if d == 3 else 6] += 1
        else:  # path on four nodes
            for v, d in zip(nodes, deg):
                counts[v, 4 if d == 1 else 5] += 1
    elif m == 4:
        if max(deg) == 2:  # 4-cycle
            for v in nodes:
                counts[v, 8] += 1
        else:  # paw: degrees 1, 2, 2, 3
            for v, d in zip(nodes, deg):
                counts[v, {1: 9, 2: 10, 3: 11}[d]] += 1
    elif m == 5:  # diamond
        for v, d in zip(nodes, deg):
            counts[v, 12 if d == 2 else 13] += 1
    else:  # K4
        for v in nodes:
            counts[v, 14] += 1


def orbit_counts(num_nodes: int, edges) -> np.ndarray:
    """(num_nodes, 15) integer counts of the node orbits of graphlets with up to 4 nodes."""
    nbrs = _neighbour_sets(num_nodes, edges)
    counts = np.zeros((num_nodes, NUM_ORBITS), np.int64)
    counts[:, 0] = [len(n) for n in nbrs]
    # ESU: grow each subgraph from its smallest node v, adding only nodes > v that are
    # exclusive neighbours of the newest additions; each connected set is found exactly once.
    for v in range(num_nodes):
        ext = {u for u in nbrs[v] if u > v}
        stack = [((v,), ext, nbrs[v] | {v})]
        while stack:
            sub, ext, closed = stack.pop()
            ext = set(ext)
            while ext:
                w = ext.pop()
                new_sub = sub + (w,)
                if len(new_sub) >= 3:
                    _classify(new_sub, nbrs, counts)
                if len(new_sub) < 4:
                    excl = {u for u in nbrs[w] if u > v and u not in closed}
                    stack.append((new_sub, ext | excl, closed | nbrs[w]))
    return counts


def orbit_counts_brute_force(num_nodes: int, edges) -> np.ndarray:
    """The same counts by checking every 3- and 4-subset of nodes (for tests on small graphs)."""
    import itertools

    nbrs = _neighbour_sets(num_nodes, edges)
    counts = np.zeros((num_nodes, NUM_ORBITS), np.int64)
    counts[:, 0] = [len(n) for n in nbrs]
    for k in (3, 4):
        for nodes in itertools.combinations(range(num_nodes), k):
            if _connected(nodes, nbrs):
                _classify(nodes, nbrs, counts)
    return counts


def _connected(nodes, nbrs) -> bool:
    s = set(nodes)
    seen = {nodes[0]}
    todo = [nodes[0]]
    while todo:
        for u in nbrs[todo.pop()] & s:
            if u not in seen:
                seen.add(u)
                todo.append(u)
    return len(seen) == len(s)
