"""The engines: how the copies of a step's files reach the parameter server.

- :mod:`byzshield.engines.torchrun`: rank 0 is the server, the next ranks the workers;
  each worker computes its files and sends them over gloo
  (:mod:`byzshield.engines.torchrun.comm`).
- :mod:`byzshield.engines.simulate`: one process computes each file's gradient once
  with the function a worker calls and builds the Byzantine copies with the same attack
  code and generators; no torch.distributed.
- :mod:`byzshield.engines.lockstep`: many runs of one shape in one process, their files
  in batched matrix products.

torchrun and simulate hand the trainer (:mod:`byzshield.training.loop`) a
:class:`byzshield.server.copies.Copies`, and the same robust update
(:mod:`byzshield.server.update`) decides the gradient: for the same config they give the
same bits. An engine imports the training layer and those below it, never a front end.
"""
