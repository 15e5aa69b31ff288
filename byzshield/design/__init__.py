"""The placement designs and the worst-case search: pure combinatorics.

The bottom layer: it imports nothing of byzshield beyond its own modules (NumPy only).

- :mod:`~byzshield.design.placements`: ``Placement`` and its builders (``baseline``,
  ``detox``, ``mols``, ``rama_one``, ``rama_two``, ``from_file``), over the finite fields
  of :mod:`~byzshield.design.fields` (``galois_field``).
- :mod:`~byzshield.design.bounds`: ``distorted_files``, ``naive_bound``, ``spectral_bound``.
- :mod:`~byzshield.design.search`: ``worst_case``, ``worst_case_table``, ``WorstCase``,
  ``detox_eps``, by the exhaustive search over parallel classes
  (:mod:`~byzshield.design.exhaustive`) or branch and bound
  (:mod:`~byzshield.design.branch_and_bound`) under a ``Budget``
  (:mod:`~byzshield.design.budget`).
- :mod:`~byzshield.design.selection`: which workers are Byzantine at each step
  (``build_selection``, ``Selection``, ``SELECTIONS``, ``random_selection``,
  ``detox_selection``).
"""
