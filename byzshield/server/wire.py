"""The wire format between the parameter server and a worker: one definition, both sides.

Every step the server sends each worker a :class:`Control` message (int64) and, unless
it says stop, the flat parameters (float32, d values). The worker answers with a
reply: a small float32 *header* message, then its gradients as a second
message, file by file in the order of ``placement.worker_files[w]``. Both worker
messages end with the :data:`END` marker::

    control  int64[2 + 3K]           step, stop, is_byzantine[worker 0 .. K-1] (lies this
                                     step), role[0 .. K-1] (whose files each computes:
                                     placement.relabel), is_excluded[0 .. K-1] (detect)
    header   float32[2 + load + 1]   payload length (load * d, its int32 bits: exact
                                     beyond float32's 2^24), compute seconds,
                                     loss per file, END
    payload  float32[load * d + 1]   gradient of each held file, in worker_files order, END

With ``vote=digest`` the header also carries the BLAKE3 digest of every held file
(:mod:`byzshield.server.digest`, 8 float32 values each, after the losses) and the payload is
not sent; a worker that is the first holder of some of its files pushes those right
after the header, and the server sends each worker :class:`Pull` messages, answered
with the requested gradients only::

    header   float32[2 + load + 8 * load + 1]   as above, then the digests, END
    pushed   float32[n * d + 1]                 the n files it is first holder of
                                                (:func:`byzshield.server.copies.pushed_slots`),
                                                in order, END; none when n = 0
    pull     int64[1 + load]                    more (1: a pull, 0: the step is over),
                                                then 1 for every held file to send
    pulled   float32[n * d + 1]                 the n requested gradients in order, END

Pushed and pulled messages are built by :func:`pack_gradients`; every size in bytes the
metrics report is one of this module's: :meth:`ReplyLayout.nbytes` (a reply),
:func:`gradients_nbytes` (a pushed or pulled message), :func:`message_nbytes` (any
worker message of a given length).

The header comes first so that the server learns what a worker is about to send before
it posts the receive for the payload; :meth:`ReplyLayout.check_header` refuses a header
that announces anything but ``load * d`` values. A worker may lie in its header, so
the server also receives each message into a :class:`Slot` twice its length and
:data:`SLACK` values more: gloo accepts a message shorter than the posted buffer
silently (the rest keeps stale memory) and aborts the whole receiving process
(SIGABRT) on one longer than it, so a message of the wrong length must land in a
buffer that is longer still, where the missing END (too short, or a wrong marker) or a
spare value overwritten (too long) names the sender. Twice the length: the same values
as float64 (twice the bytes) land too. The spare part of a slot is never written by an
honest worker and costs no memory (its pages are never touched). Only a message longer
than its slot (more than twice the length expected, plus the slack) still aborts the
server, inside gloo, where no Python code can name the sender.

    >>> import torch
    >>> from byzshield.server.wire import Control, ReplyLayout, Slot
    >>> Control(step=7, stop=False, byzantine=(False, True)).pack().tolist()
    [7, 0, 0, 1, 0, 1, 0, 0]
    >>> layout = ReplyLayout(load=2, d=3)
    >>> header = layout.pack_header(compute_s=0.5, losses=[1.0, 2.0])
    >>> layout.unpack_header(header).losses
    (1.0, 2.0)
    >>> slot = Slot(torch.empty(Slot.capacity(layout.header_size)), layout.header_size)
    >>> slot.arm()
    >>> slot.buffer[:3] = header[:3]  # what gloo leaves after a message that ends early
    >>> slot.check("rank 1 (worker 0)", "reply header")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: rank 1 (worker 0) sent a reply header without the end marker after value 4: ...

Both engines use this module: the torchrun engine sends these messages over
:mod:`byzshield.engines.torchrun.comm`; the simulate engine sends nothing but reports the
bytes these messages would carry (:meth:`ReplyLayout.nbytes`).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from byzshield.server.digest import DIGEST_VALUES, pack_digests, unpack_digests

__all__ = [
    "END",
    "SLACK",
    "VALUE_BYTES",
    "Control",
    "Header",
    "Pull",
    "ReplyLayout",
    "Slot",
    "control_size",
    "gradients_nbytes",
    "gradients_size",
    "message_nbytes",
    "pack_gradients",
]

_CONTROL_FIELDS = 2  # step, stop
_HEADER_FIELDS = 2  # payload length, compute seconds
_END_BITS = int.from_bytes(b"BYZ!", "little")  # as float32: about 7.4e-19, a normal number
END = torch.tensor([_END_BITS], dtype=torch.int32).view(torch.float32).item()
"""The last value of every message a worker sends (compared bit for bit)."""
SLACK = 1024
"""Spare values in the server's receive buffer beyond twice a message's length and END."""
VALUE_BYTES = 4
"""Bytes of one value of a worker message (float32)."""


def control_size(num_workers: int) -> int:
    """Length of the int64 control message for K = ``num_workers`` workers."""
    return _CONTROL_FIELDS + 3 * num_workers


def message_nbytes(size: int) -> int:
    """Bytes of a worker message of ``size`` float32 values and its END marker:
    ``4 * (size + 1)``."""
    return VALUE_BYTES * (size + 1)


def gradients_size(n: int, d: int) -> int:
    """Values before END of a pushed or pulled message: n file gradients of d values."""
    return n * d


def gradients_nbytes(n: int, d: int) -> int:
    """Bytes of a pushed or pulled message, ``float32[n * d + 1]``: ``4 * (n * d + 1)``."""
    return message_nbytes(gradients_size(n, d))


def pack_gradients(
    gradients: torch.Tensor, chosen: Sequence[int], out: torch.Tensor | None = None
) -> torch.Tensor:
    """vote=digest: a pushed or pulled message, the rows ``chosen`` (slots, in order) of
    a worker's (load, d) gradients and END, written into ``out`` when given."""
    d = gradients.shape[1]
    size = gradients_size(len(chosen), d)
    message = torch.empty(size + 1) if out is None else out
    message[:size].view(len(chosen), d).copy_(gradients[list(chosen)])
    message[size] = END
    return message


@dataclass(frozen=True)
class Control:
    """What the server tells every worker at the start of a step.

    Attributes:
        step: the step number (0-based); selects the batch (seed, step).
        stop: True when the worker should return instead of computing.
        byzantine: one flag per worker (0-based ids): who is Byzantine (lies) this step.
        roles: per worker, the role it plays this step (it computes the files of
            ``placement.worker_files[role]``); default: its own id.
        excluded: per worker, whether its copies leave this step's vote (detect=exclude);
            default: none.
    """

    step: int
    stop: bool
    byzantine: tuple[bool, ...]
    roles: tuple[int, ...] = ()
    excluded: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        K = len(self.byzantine)
        if not self.roles:
            object.__setattr__(self, "roles", tuple(range(K)))
        if not self.excluded:
            object.__setattr__(self, "excluded", (False,) * K)

    def pack(self) -> torch.Tensor:
        """The (2 + 3K,) int64 message."""
        K = len(self.byzantine)
        out = torch.zeros(control_size(K), dtype=torch.int64)
        out[0], out[1] = self.step, int(self.stop)
        out[_CONTROL_FIELDS:] = torch.tensor(
            [*self.byzantine, *self.roles, *self.excluded], dtype=torch.int64
        )
        return out

    @staticmethod
    def unpack(message: torch.Tensor) -> Control:
        values = message.tolist()
        K = (len(values) - _CONTROL_FIELDS) // 3
        flags = values[_CONTROL_FIELDS:]
        return Control(
            step=int(values[0]),
            stop=bool(values[1]),
            byzantine=tuple(bool(v) for v in flags[:K]),
            roles=tuple(int(v) for v in flags[K : 2 * K]),
            excluded=tuple(bool(v) for v in flags[2 * K :]),
        )

    @staticmethod
    def for_step(
        step: int,
        num_workers: int,
        byzantine: Sequence[int],
        roles: Sequence[int] | None = None,
        excluded: Sequence[int] = (),
    ) -> Control:
        """The control message of ``step`` with workers ``byzantine`` (0-based) flagged,
        worker w playing ``roles[w]`` (None: its own), workers ``excluded`` flagged."""
        bad, gone = set(byzantine), set(excluded)
        K = range(num_workers)
        return Control(
            step,
            False,
            tuple(w in bad for w in K),
            tuple(roles) if roles is not None else (),
            tuple(w in gone for w in K),
        )

    def byzantine_roles(self) -> tuple[int, ...]:
        """The roles of the workers flagged Byzantine, sorted."""
        return tuple(sorted(self.roles[w] for w, b in enumerate(self.byzantine) if b))

    def excluded_roles(self) -> tuple[int, ...]:
        """The roles of the workers flagged excluded, sorted."""
        return tuple(sorted(self.roles[w] for w, x in enumerate(self.excluded) if x))

    @staticmethod
    def stop_message(step: int, num_workers: int) -> Control:
        return Control(step, True, (False,) * num_workers)


@dataclass(frozen=True)
class Pull:
    """``vote=digest``: the server asks a worker for some of its file gradients, or
    (``more`` False) tells it the step is over.

    Attributes:
        more: True for a pull, False when the step needs nothing more from the worker.
        files: one flag per held file (``worker_files`` order): send this gradient.
    """

    more: bool
    files: tuple[bool, ...]

    def pack(self) -> torch.Tensor:
        """The (1 + load,) int64 message."""
        return torch.tensor([int(self.more), *map(int, self.files)], dtype=torch.int64)

    @staticmethod
    def unpack(message: torch.Tensor) -> Pull:
        values = message.tolist()
        return Pull(bool(values[0]), tuple(bool(v) for v in values[1:]))

    @staticmethod
    def size(load: int) -> int:
        return 1 + load


@dataclass(frozen=True)
class Header:
    """A worker's reply header, as read back on the server.

    Attributes:
        length: number of float32 values the worker announces for its payload (sent
            as the bits of an int32, exact for any size up to 2^31 - 1).
        compute_s: the worker's own measurement of its compute time (untrusted).
        losses: the training loss it computed for each of its files, in order.
        digests: ``vote=digest``: the digest of each of its files, in order; else ().
    """

    length: int
    compute_s: float
    losses: tuple[float, ...]
    digests: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class ReplyLayout:
    """Sizes of one worker's reply for a placement with ``load`` files per worker and a
    model of ``d`` parameters. Sizes count values before the END marker."""

    load: int
    d: int
    digests: bool = False  # vote=digest: digests in the header, no payload message

    @property
    def header_size(self) -> int:
        return _HEADER_FIELDS + self.load + (DIGEST_VALUES * self.load if self.digests else 0)

    @property
    def payload_size(self) -> int:
        return self.load * self.d

    def nbytes(self) -> int:
        """Bytes of one reply (header and, for the full vote, payload, each with its END
        marker, float32)."""
        if self.digests:
            return message_nbytes(self.header_size)
        return message_nbytes(self.header_size) + message_nbytes(self.payload_size)

    def pack_header(
        self,
        *,
        compute_s: float,
        losses: Sequence[float],
        digests: Sequence[bytes] = (),
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The float32 header announcing a payload of ``load * d`` values (with the
        files' digests when the layout has them) and END."""
        if len(losses) != self.load:
            raise ValueError(f"a reply carries {self.load} losses, got {len(losses)}")
        if len(digests) != (self.load if self.digests else 0):
            raise ValueError(f"a reply carries {self.load if self.digests else 0} digests")
        out = torch.empty(self.header_size + 1) if out is None else out
        out[0:1].view(torch.int32)[0] = self.payload_size
        out[1] = compute_s
        end = _HEADER_FIELDS + self.load
        out[_HEADER_FIELDS:end] = torch.tensor(list(losses), dtype=torch.float32)
        if self.digests:
            pack_digests(digests, out=out[end : self.header_size])
        out[self.header_size] = END
        return out

    def unpack_header(self, message: torch.Tensor) -> Header:
        """Read a header from the first ``header_size`` values of ``message``."""
        end = _HEADER_FIELDS + self.load
        values = message[:end].tolist()
        values[0] = int(message[0:1].view(torch.int32)[0])
        digests = ()
        if self.digests:
            digests = tuple(unpack_digests(message[end : self.header_size]))
        return Header(values[0], values[1], tuple(values[_HEADER_FIELDS:]), digests)

    def check_header(self, header: Header, who: str) -> None:
        """Refuse a header that announces a payload of the wrong size (one line)."""
        if header.length != self.payload_size:
            raise ValueError(
                f"{who} announced a reply of {header.length} values; expected "
                f"load * d = {self.load} * {self.d} = {self.payload_size}"
            )

    def payload_message(self) -> torch.Tensor:
        """A worker's (load * d + 1,) float32 payload message, END already in place."""
        out = torch.empty(self.payload_size + 1)
        out[self.payload_size] = END
        return out

    def payload(self, message: torch.Tensor) -> torch.Tensor:
        """The (load, d) gradients of a payload message (a view: write them in place)."""
        return message[: self.payload_size].view(self.load, self.d)


class Slot:
    """Where the server receives one worker message of ``size`` values and its END.

    ``buffer`` (1-D float32) must hold at least ``2 * (size + 1) + SLACK`` values
    (:meth:`capacity`: the message as float64 lands too). Call
    :meth:`arm` before posting the receive and :meth:`check` once it completed: the
    value after the END position and the END position itself are set to fresh random
    bits, which a worker cannot know, so a short message (END missing) and a long one
    (the spare value overwritten) are told apart from a message of the right length.
    """

    def __init__(self, buffer: torch.Tensor, size: int):
        if buffer.dim() != 1 or buffer.dtype != torch.float32 or not buffer.is_contiguous():
            raise ValueError("a slot's buffer must be a contiguous 1-D float32 tensor")
        if buffer.numel() < Slot.capacity(size):
            raise ValueError(
                f"a slot for {size} values needs {Slot.capacity(size)} "
                f"(2 * (size + END) + SLACK), got {buffer.numel()}"
            )
        self.buffer, self.size = buffer, size
        self._bits = buffer.view(torch.int32).numpy()  # shares memory; cheap to index
        self._spare = 0

    @staticmethod
    def capacity(size: int) -> int:
        """The least buffer length for a slot of ``size`` values: the message and its END
        twice over (the same values as float64), and :data:`SLACK`."""
        return 2 * (size + 1) + SLACK

    def arm(self) -> None:
        end, spare = secrets.randbits(32) - 2**31, secrets.randbits(32) - 2**31
        if end == _END_BITS:
            end ^= 1
        self._spare = spare
        self._bits[self.size], self._bits[self.size + 1] = end, spare

    def check(self, who: str, what: str) -> None:
        """Refuse a message that was not exactly ``size`` values and END (one line)."""
        if int(self._bits[self.size + 1]) != self._spare:
            raise ValueError(f"{who} sent a {what} longer than the {self.size} values expected")
        if int(self._bits[self.size]) != _END_BITS:
            raise ValueError(
                f"{who} sent a {what} without the end marker after value {self.size}: "
                f"shorter than the {self.size} values expected, or a wrong marker"
            )
