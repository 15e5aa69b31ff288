"""The disagreement graph a run accumulates, and what it certifies as it grows.

Every step the vote yields pairs of workers that sent different bits for a file they
both hold (:mod:`byzshield.server.evidence`); :class:`DisagreementGraph` keeps each pair
with the step it was first seen, and after every step that adds one recomputes the
workers certainly Byzantine (:func:`byzshield.detection.certain_byzantine`). Adding edges
only removes covers, so the certain set only grows: each worker is caught once, at the
step whose evidence certified it. When the evidence shows more than q liars (no cover of
size <= q), the certificate no longer holds: the graph records the step
(:attr:`DisagreementGraph.refuted`) and certifies nothing from then on.

It is part of a run's checkpoint (:meth:`DisagreementGraph.state_dict`: plain lists,
loadable with ``weights_only=True``), so a resumed run holds the same graph.

    >>> g = DisagreementGraph(K=6, q=1)
    >>> g.add(0, [(0, 1), (0, 2)])  # worker 0 met two workers: more than q = 1
    [0]
    >>> g.caught, g.add(1, [(0, 3)])
    ({0: 0}, [])
"""

from __future__ import annotations

from collections.abc import Iterable

from byzshield.detection.cover import certain_byzantine

__all__ = ["DisagreementGraph"]


class DisagreementGraph:
    """Disagreement pairs over a run of K workers with at most q Byzantine.

    Attributes:
        K, q: the workers and the bound on the Byzantine ones.
        edges: {(u, v) with u < v: the step the pair first disagreed}.
        caught: {worker: the step it became certainly Byzantine}, in the order caught.
        refuted: the step whose evidence showed more than q liars, or None.
        why: that step's line (:func:`certain_byzantine`'s), or "".
    """

    def __init__(self, K: int, q: int):
        self.K, self.q = K, q
        self.edges: dict[tuple[int, int], int] = {}
        self.caught: dict[int, int] = {}
        self.refuted: int | None = None
        self.why = ""

    @property
    def suspects(self) -> list[int]:
        """The workers certainly Byzantine so far, in id order."""
        return sorted(self.caught)

    def add(self, step: int, pairs: Iterable[tuple[int, int]]) -> list[int]:
        """Add ``step``'s pairs; returns the workers this step certified, in id order."""
        new = False
        for a, b in pairs:
            key = (min(a, b), max(a, b))
            if key not in self.edges:
                self.edges[key] = step
                new = True
        if not new or self.refuted is not None:
            return []
        try:
            certain = certain_byzantine(self.edges, self.K, self.q)
        except ValueError as exc:
            self.refuted, self.why = step, str(exc)
            return []
        fresh = sorted(certain - set(self.caught))
        for w in fresh:
            self.caught[w] = step
        return fresh

    def certain_with(self, pairs: Iterable[tuple[int, int]]) -> set[int] | None:
        """The certain workers if ``pairs`` were added (nothing is added); None when
        they would show more than q liars, or the graph already did."""
        if self.refuted is not None:
            return None
        extra = [p for p in pairs if (min(p), max(p)) not in self.edges]
        if not extra:
            return set(self.caught)
        try:
            return certain_byzantine([*self.edges, *extra], self.K, self.q)
        except ValueError:
            return None

    def state_dict(self) -> dict:
        """The graph as plain values: edges [[u, v, step], ...] in the order seen,
        caught [[worker, step], ...], refuted (-1: never) and its line."""
        return {
            "edges": [[a, b, s] for (a, b), s in self.edges.items()],
            "caught": [[w, s] for w, s in self.caught.items()],
            "refuted": -1 if self.refuted is None else self.refuted,
            "why": self.why,
        }

    def load_state_dict(self, state: dict) -> None:
        self.edges = {(int(a), int(b)): int(s) for a, b, s in state["edges"]}
        self.caught = {int(w): int(s) for w, s in state["caught"]}
        refuted = int(state["refuted"])
        self.refuted = None if refuted < 0 else refuted
        self.why = str(state.get("why", ""))
