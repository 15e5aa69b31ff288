"""The torchrun engine: a parameter server on rank 0 and K worker processes over gloo.

    torchrun --standalone --nproc-per-node 16 -m byzshield.train engine=torchrun

Every step the server sends each worker a :class:`byzshield.protocol.Control` message and
the flat parameters; worker w computes the gradients of ``placement.worker_files[w]``
with :func:`byzshield.gradients.file_gradients`, Byzantine workers apply their attack
(unless it is omniscient: the server simulates those, :mod:`byzshield.step`), and each
sends a :class:`byzshield.protocol.ReplyLayout` header and payload. The server receives
every payload straight into one (K * l, d) buffer, reused every step, which becomes the
rows of the step's :class:`byzshield.step.Copies`.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch

from byzshield.attacks import attack_generator
from byzshield.comm import Comm, RankFailure
from byzshield.config import Run
from byzshield.gradients import file_gradients, load_flat, num_params
from byzshield.protocol import Control, ReplyLayout, control_size
from byzshield.step import Copies, copy_index
from byzshield.vote import Rows

__all__ = ["TorchrunEngine", "run_worker"]

log = logging.getLogger("byzshield.engines.torchrun")


class TorchrunEngine:
    """The parameter server's side: send control and parameters, receive the replies."""

    name = "torchrun"

    def __init__(self, comm: Comm, run: Run, d: int):
        p = run.placement
        self.comm, self.run, self.d = comm, run, d
        self.K, self.load = p.num_workers, p.load
        self.layout = ReplyLayout(p.load, d)
        self.index = copy_index(p)
        self.rows = torch.empty(self.K * self.load, d)  # reused: no page faults per step
        self.headers = torch.empty(self.K, self.layout.header_size)

    def gather(self, step: int, params: torch.Tensor, byzantine: tuple[int, ...]):
        t0 = time.perf_counter()
        self.comm.send_to_workers(Control.for_step(step, self.K, byzantine).pack())
        self.comm.send_to_workers(params)
        self.comm.receive_from_workers(self.headers)
        headers = [self.layout.unpack_header(self.headers[w]) for w in range(self.K)]
        for w, header in enumerate(headers):
            try:
                self.layout.check_header(header, f"rank {w + 1} (worker {w})")
            except ValueError as exc:
                raise RankFailure(w + 1, str(exc)) from None
        l = self.load  # noqa: E741
        self.comm.receive_from_workers([self.rows[w * l : (w + 1) * l] for w in range(self.K)])
        wait = time.perf_counter() - t0
        reported = [h.compute_s for h in headers]
        compute = max((c for c in reported if c == c), default=0.0)  # NaN-safe
        compute = min(max(compute, 0.0), wait)  # a worker's own figure, clamped to the wait
        losses = torch.tensor([x for h in headers for x in h.losses], dtype=torch.float64)
        copies = Copies(Rows(self.rows), self.index, losses[self.index])
        return copies, {"compute_s": compute, "communication_s": wait - compute}

    def close(self, step: int) -> None:
        """Tell the workers to return (best effort: a dead worker must not hang us)."""
        with contextlib.suppress(Exception):
            self.comm.send_to_workers(Control.stop_message(step, self.K).pack())


def run_worker(comm: Comm, run: Run) -> None:
    """Serve steps until the server says stop (worker index = rank - 1)."""
    cfg, p = run.config, run.placement
    w = comm.rank - 1
    files = p.worker_files[w]
    model = run.build_model()
    d = num_params(model)
    layout = ReplyLayout(p.load, d)
    control = torch.zeros(control_size(p.num_workers), dtype=torch.int64)
    params = torch.empty(d)
    payload = layout.payload()
    header = torch.empty(layout.header_size)
    attack = run.attack  # None for omniscient attacks: the server simulates them
    while True:
        comm.receive_from_server(control)
        message = Control.unpack(control)
        if message.stop:
            log.info("stop after %d steps", message.step)
            return
        comm.receive_from_server(params)
        load_flat(model, params)
        step, byzantine = message.step, message.byzantine[w]
        t0 = time.perf_counter()
        _, losses = file_gradients(
            model,
            run.train_data,
            files,
            seed=cfg.seed,
            step=step,
            batch_size=cfg.batch_size,
            num_files=p.num_files,
            flip=byzantine and attack is not None and attack.flips_labels,
            out=payload,
        )
        if byzantine and attack is not None:
            for i, j in enumerate(files):
                payload[i] = attack(payload[i], generator=attack_generator(cfg.seed, step, j))
        layout.pack_header(compute_s=time.perf_counter() - t0, losses=losses, out=header)
        comm.send_to_server(header)
        comm.send_to_server(payload)
        if step % 50 == 0:
            log.info(
                "step %d sent %d file gradients%s",
                step,
                len(files),
                " (Byzantine)" if byzantine else "",
            )
