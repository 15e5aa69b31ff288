"""The certificate: which workers are certainly Byzantine, from the disagreements alone.

Honest copies of a file are bit-identical, so whenever two holders of a file send
different bits at least one of them is Byzantine. Collect every such pair (u, v) over
the steps: the *disagreement graph*. No two honest workers are ever joined, so the
honest workers are an independent set of at least K - q vertices and the Byzantine
workers, at most q of them, touch every edge: they are a vertex cover of size <= q.
Which one the server cannot tell; but a worker v that lies in *every* vertex cover of
size <= q lies in the Byzantine one, so v is Byzantine for sure (and no honest worker
can be in all of them: the Byzantine set is one of them and holds no honest worker).

    certain(G, q) = intersection of { C : C covers every edge of G, |C| <= q }

v is certain exactly when no cover of size <= q avoids v. A cover avoiding v holds
every neighbour of v, so a worker that disagreed with more than q distinct workers is
certain at once (the fast test); otherwise :func:`byzshield.design.covers.cover_exists`
decides it exactly (a bounded search tree, fast for the K <= ~35 of the designs we
ship). When no cover of size <= q exists at all, more than q workers lied and the
certificate says nothing: :func:`certain_byzantine` raises.

Aspis (Konstantinidis & Ramamoorthy, "Aspis: Robust Detection for Distributed
Learning", 2021, arXiv:2108.02416) builds its detection on the same evidence (it looks
for cliques of agreeing workers); the certificate here is the exact one for a bound q on
the Byzantine workers.

    >>> sorted(certain_byzantine([(0, 1), (0, 2), (0, 3)], K=6, q=2))  # 0 met 3 > q workers
    [0]
    >>> sorted(certain_byzantine([(0, 1), (2, 3)], K=6, q=2))  # {0, 2}, {1, 3}, ...: nobody
    []
    >>> certain_byzantine([(0, 1), (2, 3)], K=6, q=1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: no set of at most q=1 workers touches every disagreement (the smallest has 2): ...
"""

from __future__ import annotations

from collections.abc import Iterable

from byzshield.design.covers import cover_exists, min_cover_size

__all__ = ["certain_byzantine", "graph_of"]


def graph_of(pairs: Iterable[tuple[int, int]], K: int) -> list[int]:
    """The disagreement graph of ``pairs`` as bitmasks (``adj[v]``: v's neighbours),
    each pair checked to be two different workers in 0..K-1."""
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be a number of workers >= 1, got {K!r}")
    adj = [0] * K
    for pair in pairs:
        a, b = _pair(pair, K)
        adj[a] |= 1 << b
        adj[b] |= 1 << a
    return adj


def _pair(pair, K: int) -> tuple[int, int]:
    try:
        a, b = pair
    except (TypeError, ValueError):
        raise ValueError(f"a disagreement is a pair of worker ids, got {pair!r}") from None
    for w in (a, b):
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w < K:
            raise ValueError(f"worker ids must be integers in 0..{K - 1}, got {pair!r}")
    if a == b:
        raise ValueError(f"a worker cannot disagree with itself, got {pair!r}")
    return a, b


def certain_byzantine(pairs: Iterable[tuple[int, int]], K: int, q: int) -> set[int]:
    """The workers in every set of at most q workers that touches every disagreement
    pair (every vertex cover of size <= q of the disagreement graph): certainly
    Byzantine when at most q of the K workers are.

    Args:
        pairs: worker pairs (u, v) that sent different bits for a file they both hold.
        K: the number of workers (ids 0..K-1).
        q: the most workers that may be Byzantine.

    Raises:
        ValueError: a pair is not two different ids in 0..K-1, q is not in 0..K, or no
            cover of size <= q exists (more than q workers lied; the line names the
            size of the smallest cover).
    """
    adj = graph_of(pairs, K)
    if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q <= K:
        raise ValueError(f"q must be an integer in 0..K={K}, got {q!r}")
    everyone = (1 << K) - 1
    if not cover_exists(adj, everyone, 0, q):
        smallest = min_cover_size(adj, everyone, q + 1)
        raise ValueError(
            f"no set of at most q={q} workers touches every disagreement (the smallest has "
            f"{smallest}): more than q workers lied"
        )
    certain = set()
    for v in range(K):
        degree = adj[v].bit_count()
        if degree and (degree > q or not cover_exists(adj, everyone, 1 << v, q)):
            certain.add(v)
    return certain
