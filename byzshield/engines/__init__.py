"""The two ways the copies of a step's files reach the parameter server.

- :mod:`byzshield.engines.torchrun`: rank 0 is the server, ranks 1..K the workers;
  each worker computes its files and sends them over gloo (:mod:`byzshield.comm`).
- :mod:`byzshield.engines.simulate`: one process computes each file's gradient once
  with the function a worker calls and builds the Byzantine copies with the same attack
  code and generators; no torch.distributed.

Both hand the trainer (:mod:`byzshield.trainer`) a :class:`byzshield.step.Copies`, and
the same robust update (:mod:`byzshield.step`) decides the gradient: for the same
config they give the same bits.
"""
