"""Certified detection of Byzantine workers from the vote's own evidence.

Honest copies of a file are bit-identical, so two holders of a file that send different
bits include at least one Byzantine worker. This layer is the combinatorics of that
evidence (docs/detection.md), below the server that collects it; it imports only
:mod:`byzshield.design` and :mod:`byzshield.compute` (for the seeds).

- :mod:`~byzshield.detection.cover`: ``certain_byzantine(pairs, K, q)``, the workers in
  every vertex cover of size <= q of the disagreement graph.
- :mod:`~byzshield.detection.graph`: ``DisagreementGraph``, the pairs of a run with the
  step each was first seen, and the step each worker was caught.
- :mod:`~byzshield.detection.relabel`: ``relabel_roles``, the moving placement.
- :mod:`~byzshield.detection.evade`: where the adversary lies (``lie_on``) and the
  evading adversary (``evading_liars``).

    >>> from byzshield.detection import certain_byzantine
    >>> certain_byzantine([(0, 1), (0, 2), (0, 3), (1, 4)], K=6, q=2)
    {0}
"""

from byzshield.detection.cover import certain_byzantine
from byzshield.detection.evade import LIE_ON, evading_liars, lie_pairs, lied_files
from byzshield.detection.graph import DisagreementGraph
from byzshield.detection.relabel import RELABELS, inverse, relabel_roles

__all__ = [
    "LIE_ON",
    "RELABELS",
    "DisagreementGraph",
    "certain_byzantine",
    "evading_liars",
    "inverse",
    "lie_pairs",
    "lied_files",
    "relabel_roles",
]
