"""The wire format between the parameter server and a worker: one definition, both sides.

Every step the server sends each worker a :class:`Control` message (int64) and, unless
it says stop, the flat parameters (float32, d values). The worker answers with a
:class:`Reply`: a small float32 *header* message, then its gradients as a second
message of exactly ``load * d`` float32 values, file by file in the order of
``placement.worker_files[w]``::

    control  int64[2 + K]        step, stop, is_byzantine[worker 0 .. K-1]
    header   float32[2 + load]   payload length (load * d), compute seconds, loss per file
    payload  float32[load * d]   gradient of each held file, in worker_files order

The header comes first so that the server learns what a worker is about to send before
it posts the receive for the payload; :meth:`ReplyLayout.check_header` refuses a header
that announces anything but ``load * d`` values.

    >>> import torch
    >>> from byzshield.protocol import Control, ReplyLayout
    >>> Control(step=7, stop=False, byzantine=(False, True)).pack().tolist()
    [7, 0, 0, 1]
    >>> layout = ReplyLayout(load=2, d=3)
    >>> header = layout.pack_header(compute_s=0.5, losses=[1.0, 2.0])
    >>> layout.unpack_header(header).losses
    (1.0, 2.0)

Both engines use this module: the torchrun engine sends these messages over
:mod:`byzshield.comm`; the simulate engine sends nothing but reports the bytes these
messages would carry (:meth:`ReplyLayout.nbytes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Control", "Header", "ReplyLayout", "control_size"]

_CONTROL_FIELDS = 2  # step, stop
_HEADER_FIELDS = 2  # payload length, compute seconds


def control_size(num_workers: int) -> int:
    """Length of the int64 control message for K = ``num_workers`` workers."""
    return _CONTROL_FIELDS + num_workers


@dataclass(frozen=True)
class Control:
    """What the server tells every worker at the start of a step.

    Attributes:
        step: the step number (0-based); selects the batch (seed, step).
        stop: True when the worker should return instead of computing.
        byzantine: one flag per worker (0-based ids): who is Byzantine this step.
    """

    step: int
    stop: bool
    byzantine: tuple[bool, ...]

    def pack(self) -> torch.Tensor:
        """The (2 + K,) int64 message."""
        out = torch.zeros(control_size(len(self.byzantine)), dtype=torch.int64)
        out[0], out[1] = self.step, int(self.stop)
        out[_CONTROL_FIELDS:] = torch.tensor(self.byzantine, dtype=torch.int64)
        return out

    @staticmethod
    def unpack(message: torch.Tensor) -> Control:
        values = message.tolist()
        return Control(
            step=int(values[0]),
            stop=bool(values[1]),
            byzantine=tuple(bool(v) for v in values[_CONTROL_FIELDS:]),
        )

    @staticmethod
    def for_step(step: int, num_workers: int, byzantine: Sequence[int]) -> Control:
        """The control message of ``step`` with workers ``byzantine`` (0-based) flagged."""
        bad = set(byzantine)
        return Control(step, False, tuple(w in bad for w in range(num_workers)))

    @staticmethod
    def stop_message(step: int, num_workers: int) -> Control:
        return Control(step, True, (False,) * num_workers)


@dataclass(frozen=True)
class Header:
    """A worker's reply header, as read back on the server.

    Attributes:
        length: number of float32 values the worker announces for its payload.
        compute_s: the worker's own measurement of its compute time (untrusted).
        losses: the training loss it computed for each of its files, in order.
    """

    length: float
    compute_s: float
    losses: tuple[float, ...]


@dataclass(frozen=True)
class ReplyLayout:
    """Sizes of one worker's reply for a placement with ``load`` files per worker and a
    model of ``d`` parameters."""

    load: int
    d: int

    @property
    def header_size(self) -> int:
        return _HEADER_FIELDS + self.load

    @property
    def payload_size(self) -> int:
        return self.load * self.d

    def nbytes(self) -> int:
        """Bytes of one reply (header + payload, float32)."""
        return 4 * (self.header_size + self.payload_size)

    def pack_header(
        self, *, compute_s: float, losses: Sequence[float], out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The (2 + load,) float32 header announcing a payload of ``load * d`` values."""
        if len(losses) != self.load:
            raise ValueError(f"a reply carries {self.load} losses, got {len(losses)}")
        out = torch.empty(self.header_size) if out is None else out
        out[0] = float(self.payload_size)
        out[1] = compute_s
        out[_HEADER_FIELDS:] = torch.tensor(list(losses), dtype=torch.float32)
        return out

    def unpack_header(self, message: torch.Tensor) -> Header:
        values = message.tolist()
        return Header(values[0], values[1], tuple(values[_HEADER_FIELDS:]))

    def check_header(self, header: Header, who: str) -> None:
        """Refuse a header that announces a payload of the wrong size (one line)."""
        if not math.isfinite(header.length) or header.length != self.payload_size:
            raise ValueError(
                f"{who} announced a reply of {header.length:g} values; expected "
                f"load * d = {self.load} * {self.d} = {self.payload_size}"
            )

    def payload(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """A (load, d) float32 buffer for the payload (contiguous: sent as one message)."""
        return torch.empty(self.load, self.d) if out is None else out.view(self.load, self.d)
