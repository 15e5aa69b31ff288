"""`python -m byzshield.train`, except that worker rank FAULTY_RANK sends payloads of
FAULTY_EXTRA values too many (or too few, if negative) while its header still announces
the right length, or headers of the wrong length with FAULTY_MESSAGE=header, or its
payloads as float64 (the same values, twice the bytes) with FAULTY_MESSAGE=float64, or
(with vote=digest, FAULTY_MESSAGE=pulled) the negated gradients when pulled, after a
header with the true digests: a test stand-in for a buggy or lying worker. Production code has no
such switch; this script patches
:meth:`byzshield.engines.torchrun.comm.Comm.send_to_server` and runs
the real entry point.

    FAULTY_RANK=2 FAULTY_EXTRA=-10 torchrun --standalone --nproc-per-node 4 \\
        tests/faulty_train.py approach=baseline approach.K=3 batch_size=30
"""

from __future__ import annotations

import os
import runpy

import torch

from byzshield.engines.torchrun.comm import Comm
from byzshield.server.wire import END

RANK, EXTRA = int(os.environ["FAULTY_RANK"]), int(os.environ.get("FAULTY_EXTRA", "0"))
MESSAGE = os.environ.get("FAULTY_MESSAGE", "payload")
PAYLOAD = MESSAGE == "payload"
_send = Comm.send_to_server
_sent = [0]


def send_to_server(self: Comm, tensor: torch.Tensor) -> None:
    _sent[0] += 1
    if MESSAGE == "pulled":
        if self.rank == RANK and tensor.numel() > 1000:  # pulled gradients, not a header
            tensor = torch.cat([-tensor[:-1], torch.tensor([END])])
    elif MESSAGE == "float64":
        if self.rank == RANK and _sent[0] % 2 == 0:  # header, payload, ...
            tensor = tensor.double()
    elif self.rank == RANK and (_sent[0] % 2 == 0) == PAYLOAD:  # header, payload, ...
        body = tensor[:-1]
        body = body[:EXTRA] if EXTRA < 0 else torch.cat([body, torch.zeros(EXTRA)])
        tensor = torch.cat([body, torch.tensor([END])])
    _send(self, tensor)


Comm.send_to_server = send_to_server
runpy.run_module("byzshield.train", run_name="__main__", alter_sys=True)
