"""TensorBoard's event files, written directly: scalars only, one event per record.

An event file is a sequence of TFRecords, each ``length (uint64) | masked CRC-32C of
the length (uint32) | data | masked CRC-32C of the data (uint32)``, all little-endian,
whose data is a serialized ``tensorboard.Event`` protocol buffer: the first holds
``file_version = "brain.Event:2"``, each later one a ``wall_time``, a ``step`` and a
``Summary`` of ``(tag, simple_value)`` pairs (the form ``SummaryWriter.add_scalar``
writes; TensorBoard reads several values per event alike). The few fields are encoded
here by hand, so that writing events loads neither TensorBoard nor protobuf: importing
``torch.utils.tensorboard`` costs a run about 0.35 CPU-s (it pulls in TensorBoard's
TensorFlow stub, and boto3 when installed) and its writer about 0.1 ms a scalar
(``benchmarks/startup.py``). The CRC is CRC-32C (Castagnoli, polynomial 0x82F63B78,
RFC 3720 appendix B.4), masked as TFRecord masks it.

    >>> hex(crc32c(b"123456789"))  # RFC 3720's check value
    '0xe3069283'
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from pathlib import Path

__all__ = ["EventWriter", "crc32c"]


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _table()
_FILES = itertools.count()  # a process's event files are numbered, as torch's writer does


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, reflected, initial value and final xor 0xFFFFFFFF."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # int64 as protobuf encodes it: two's complement, 10 bytes
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _float32(value: float) -> bytes:
    """float32, as TensorBoard stores a scalar: beyond its range, an infinity."""
    try:
        return struct.pack("<f", value)
    except OverflowError:
        return struct.pack("<f", float("inf") if value > 0 else float("-inf"))


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, *, step: int | None = None, body: bytes = b"") -> bytes:
    """Event: wall_time (1, double), step (2, int64), then ``body`` (its other fields)."""
    head = b"\x09" + struct.pack("<d", wall_time)
    if step is not None:
        head += b"\x10" + _varint(step)
    return head + body


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + _masked(length) + data + _masked(data)


class EventWriter:
    """Scalars into a new event file in ``folder`` (created), readable by TensorBoard.

    ``add_scalars(step, {tag: value})`` writes one event holding every value, flushed at
    once (TensorBoard may be reading the file as it grows).
    """

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_FILES)}"
        )
        self.path = folder / name
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._write(_event(time.time(), body=_field(3, b"brain.Event:2")))

    def _write(self, event: bytes) -> None:
        self.file.write(_record(event))
        self.file.flush()

    def add_scalars(self, step: int, values: dict[str, float]) -> None:
        """One event at ``step`` with a ``simple_value`` (float32) per tag."""
        summary = b"".join(
            _field(1, _field(1, tag.encode()) + b"\x15" + _float32(value))
            for tag, value in values.items()
        )
        self._write(_event(time.time(), step=step, body=_field(5, summary)))

    def close(self) -> None:
        self.file.close()
