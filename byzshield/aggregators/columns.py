"""Column chunks over threads: how every kernel of the rules walks an (n, d) stack.

A kernel hands :func:`over_columns` a body ``body(lo, hi)`` and gets it run on fixed
blocks of :data:`BLOCK_COLUMNS` columns, spread over ``torch.get_num_threads()`` threads
(or as many as :func:`column_threads` says); NumPy releases the GIL inside its loops, so
the threads overlap. The blocks depend on d only, never on the thread count, so results
are bit-identical whatever it is. Inside a block a kernel walks chunks of
:func:`chunk_width` columns (n x ~10k values, in cache) on a zero-copy view of the stack.

Example::

    with column_threads(4):  # a server whose torch runs one intra-op thread
        res = aggregator(stack, f=f)  # the same bits as with column_threads(1)
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from byzshield.compute.threads import started_pool

__all__ = [
    "BLOCK_COLUMNS",
    "blas_single_threaded",
    "chunk_width",
    "chunks",
    "column_threads",
    "over_columns",
]

# Elements per (rows x columns) chunk a thread works on: small enough to stay in cache.
_CHUNK_ELEMENTS = 1 << 18
# Columns per block handed to a thread. Fixed, so per-block partial sums (distances) are
# combined in the same order whatever the thread count: results are bit-identical.
BLOCK_COLUMNS = 1 << 16

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] = (0, 0)  # (process id, threads): a forked child needs its own


def chunk_width(num_rows: int) -> int:
    """Columns per chunk of ``num_rows`` rows that stays in cache (at least 1,024)."""
    return max(1024, _CHUNK_ELEMENTS // max(num_rows, 1))


@functools.cache
def _per_thread_blas_limits() -> tuple[Callable[[int], int], ...]:
    """``openblas_set_num_threads_local`` (OpenBLAS >= 0.3.27) of every OpenBLAS mapped.

    numpy's wheel bundles one ``libscipy_openblas``, scipy's another: both are found
    among the shared objects this process has mapped. Empty elsewhere (MKL, older
    OpenBLAS, not Linux).
    """
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return ()
    paths = sorted({ln.split()[-1] for ln in maps if "openblas" in ln.split()[-1].lower()})
    limits = []
    for path in paths:
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        limits.append(fn)
    return tuple(limits)


_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved: list[int] = []


@contextlib.contextmanager
def _blas_on_calling_threads():
    """While the column threads run, OpenBLAS runs each call on the thread that made it.

    Our column threads already use every core. Otherwise each of their GEMMs wakes
    OpenBLAS's own threads, which busy-wait for work: with 2 column threads x 2 BLAS
    threads on 2 cores the Gram pass cost ~1 s of CPU instead of ~55 ms, and much more
    wall time on a loaded machine. In numpy's OpenBLAS build the "local" setting is
    process-wide, so it is set for the duration of the parallel section only (nested
    and concurrent sections share one save/restore) and restored afterwards.
    """
    global _blas_users, _blas_saved
    limits = _per_thread_blas_limits()
    with _blas_lock:
        if _blas_users == 0:
            _blas_saved = [limit(1) for limit in limits]
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for limit, previous in zip(limits, _blas_saved, strict=True):
                    limit(previous)


def blas_single_threaded() -> bool:
    """Whether BLAS calls from the column threads stay on their thread (see above)."""
    np.dot(np.ones((1, 1)), np.ones((1, 1)))  # make sure numpy's BLAS is loaded
    return bool(_per_thread_blas_limits())


def _executor(num_threads: int) -> ThreadPoolExecutor:
    global _pool, _pool_key
    key = (os.getpid(), num_threads)
    with _pool_lock:
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=False)
            # A pool inherited through fork() has no threads left: never reuse it.
            _pool = started_pool(num_threads, "byzshield-agg")
            _pool_key = key
        return _pool


_threads = threading.local()


@contextlib.contextmanager
def column_threads(num_threads: int | None):
    """Within the block, rules on this thread use ``num_threads`` column threads instead
    of ``torch.get_num_threads()`` (None: no change). Results do not depend on it (the
    column blocks are fixed), so a trainer whose torch runs one intra-op thread, as
    bit-identical gradients require, can still aggregate on every core."""
    saved = getattr(_threads, "count", None)
    if num_threads is not None:
        _threads.count = num_threads
    try:
        yield
    finally:
        _threads.count = saved


def over_columns(d: int, body: Callable[[int, int], object], width: int = BLOCK_COLUMNS) -> list:
    """Run ``body(lo, hi)`` on fixed column blocks of ``width`` covering [0, d), on the
    torch threads (or as many as :func:`column_threads` says).

    NumPy releases the GIL inside its loops, so the threads overlap. Returns the bodies'
    results in column order; the blocks do not depend on the thread count.
    """
    blocks = list(chunks(0, d, width))
    wanted = getattr(_threads, "count", None) or torch.get_num_threads()
    threads = min(wanted, len(blocks))
    if threads <= 1:
        return [body(lo, hi) for lo, hi in blocks]
    with _blas_on_calling_threads():
        return list(_executor(threads).map(lambda block: body(*block), blocks))


def chunks(lo: int, hi: int, width: int):
    """(start, end) of consecutive pieces of ``width`` covering [lo, hi), the last shorter."""
    for start in range(lo, hi, width):
        yield start, min(start + width, hi)
