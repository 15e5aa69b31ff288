"""Gradient digests for the digest-first vote (``vote=digest``).

A digest is BLAKE3 (32 bytes) of a copy's float32 bytes: two copies have the same
digest exactly when they are equal bit for bit (barring a BLAKE3 collision, which no
worker can forge: it is a cryptographic hash, unlike xxhash). Workers send the digest of
every file gradient they hold in their reply header; the server votes on digests and
pulls one full copy per trusted file, whose digest it checks
(:func:`byzshield.server.vote.digest_vote`).

On the wire a digest travels as :data:`DIGEST_VALUES` float32 values carrying its bits.

    >>> import torch
    >>> from byzshield.server.digest import digest, pack_digests, unpack_digests
    >>> rows = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, -2.0]])
    >>> [digest(r) for r in rows][0] == digest(rows[1]) != digest(rows[2])
    True
    >>> unpack_digests(pack_digests([digest(r) for r in rows])) == [digest(r) for r in rows]
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import blake3
import torch

__all__ = ["DIGEST_BYTES", "DIGEST_VALUES", "digest", "pack_digests", "unpack_digests"]

DIGEST_BYTES = 32
DIGEST_VALUES = DIGEST_BYTES // 4
"""float32 values per digest on the wire."""


def digest(row: torch.Tensor) -> bytes:
    """BLAKE3 of a contiguous float32 tensor's bytes (one file gradient)."""
    if row.dtype != torch.float32:
        raise ValueError(f"digests are of float32 gradients, got {row.dtype}")
    data = row.detach().contiguous().cpu().numpy().view("u1")
    return blake3.blake3(data).digest()


def pack_digests(digests: Sequence[bytes], out: torch.Tensor | None = None) -> torch.Tensor:
    """``len(digests) * DIGEST_VALUES`` float32 values carrying the digests' bits."""
    raw = b"".join(digests)
    if len(raw) != DIGEST_BYTES * len(digests):
        raise ValueError(f"every digest has {DIGEST_BYTES} bytes")
    values = torch.frombuffer(bytearray(raw), dtype=torch.float32)
    if out is None:
        return values.clone()
    out.copy_(values)
    return out


def unpack_digests(values: torch.Tensor) -> list[bytes]:
    """The digests carried by ``values`` (a multiple of DIGEST_VALUES float32)."""
    if values.numel() % DIGEST_VALUES:
        raise ValueError(f"digests travel as multiples of {DIGEST_VALUES} float32 values")
    raw = values.detach().contiguous().numpy().tobytes()
    return [raw[k : k + DIGEST_BYTES] for k in range(0, len(raw), DIGEST_BYTES)]
