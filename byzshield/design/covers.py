"""Vertex covers of small graphs, exactly: is there a set of at most k vertices that
touches every edge?

Graphs are bitmasks over at most a few dozen vertices: ``adj[v]`` has bit u set when
(u, v) is an edge. Two callers: MDA's minimum-diameter subset (the inputs to drop are a
cover of the graph of pairs too far apart, :mod:`byzshield.aggregators.distance`) and the
certificate of :func:`byzshield.detection.certain_byzantine` (a worker is certainly
Byzantine when every cover of at most q vertices of the disagreement graph holds it).

The search is the classic bounded search tree for k-vertex cover (Downey & Fellows,
"Parameterized Complexity", 1999): take a vertex v of largest degree; either v is in
the cover, or all its neighbours are. It prunes with two counting bounds: a vertex of
degree > k must be in the cover, and k vertices of degree at most D cover at most k D
edges. At most O(2^k K^2) work for K vertices, far less on the sparse graphs both
callers build.

    >>> path = [0b010, 0b101, 0b010]  # the path 0 - 1 - 2
    >>> cover_exists(path, 0b111, 0, 1), cover_exists(path, 0b111, 0b010, 1)
    (True, False)
    >>> min_cover_size(path, 0b111)
    1
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["cover_exists", "min_cover_size"]


def cover_exists(adj: Sequence[int], alive: int, keep: int, budget: int) -> bool:
    """Whether at most ``budget`` vertices of ``alive``, none of them in ``keep``, touch
    every edge between vertices of ``alive`` (bitmasks; ``adj[v]``: v's neighbours)."""
    best, best_deg, rest, edges2 = -1, 0, alive, 0
    while rest:
        low = rest & -rest
        v = low.bit_length() - 1
        rest ^= low
        deg = (adj[v] & alive).bit_count()
        edges2 += deg
        if deg > best_deg:
            best, best_deg = v, deg
    if best_deg == 0:
        return True
    if budget == 0 or edges2 > 2 * budget * best_deg:  # k vertices cover <= k * D edges
        return False
    nb = adj[best] & alive
    keep_v = (keep >> best) & 1
    if not keep_v and cover_exists(adj, alive & ~(1 << best), keep, budget - 1):
        return True
    if nb & keep or best_deg > budget:
        return False
    return cover_exists(adj, alive & ~nb, keep | (1 << best), budget - best_deg)


def min_cover_size(adj: Sequence[int], alive: int, start: int = 0) -> int:
    """The size of a smallest vertex cover of the graph on ``alive`` (at least
    ``start``: the caller knows no smaller one exists)."""
    k = start
    while not cover_exists(adj, alive, 0, k):
        k += 1
    return k
