"""The two ways the copies of a step's files reach the parameter server.

- :mod:`byzshield.engines.torchrun`: rank 0 is the server, ranks 1..K the workers;
  each worker computes its files and sends them over gloo (:mod:`byzshield.engines.torchrun.comm`).
- :mod:`byzshield.engines.simulate`: one process computes each file's gradient once
  with the function a worker calls and builds the Byzantine copies with the same attack
  code and generators; no torch.distributed.

Both hand the trainer (:mod:`byzshield.training.loop`) a
:class:`byzshield.server.update.Copies`, and
the same robust update (:mod:`byzshield.server.update`) decides the gradient: for the same
config they give the same bits.
"""


def build_engine(name: str, run, comm=None):
    """The engine ``name`` (``torchrun`` on rank 0 of a process group, or ``simulate``)."""
    from byzshield.compute.params import num_params
    from byzshield.engines.simulate import SimulateEngine
    from byzshield.engines.torchrun import TorchrunEngine

    d = num_params(run.build_model())
    if name == "torchrun":
        return TorchrunEngine(comm, run, d)
    return SimulateEngine(run, d, threads=run.config.threads, device=run.config.device)
