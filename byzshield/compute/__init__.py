"""What a worker computes: from (seed, step, file) to the file's gradient.

Above the designs, below everything else: it imports no other layer of byzshield.

- :mod:`~byzshield.compute.sampling`: the seeds (``derive_seed``) and the
  (seed, step, file) -> samples contract every replica of a file shares.
- :mod:`~byzshield.compute.partition`: heterogeneous files (Dirichlet class mixes, k
  classes per file) under the same contract, and ``label_tv``.
- :mod:`~byzshield.compute.datasets`: the datasets in memory (``load_dataset``,
  ``DATASETS``), with the shipped ones in ``assets/``.
- :mod:`~byzshield.compute.networks`: the networks (``build_network``, ``NETWORKS``).
- :mod:`~byzshield.compute.params`: a model's parameters as one flat vector.
- :mod:`~byzshield.compute.gradients`: ``file_gradients``, the one function that turns a
  model and a file into a gradient (and ``flip_labels``, the label-flip attack's data);
  :mod:`~byzshield.compute.batched` computes many files and runs in one pass.
"""
