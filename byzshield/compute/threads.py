"""Thread pools that a Ctrl-C cannot leave half-made.

A :class:`~concurrent.futures.ThreadPoolExecutor` starts its threads lazily, inside
``submit``: ``Thread.start()`` waits for the new thread to report in, and a Ctrl-C that
lands in that wait raises KeyboardInterrupt after the thread is running but before the
pool has recorded it. Nobody joins such a thread: the interpreter either waits for it at
exit forever (it idles on the pool's queue) or finalizes under it while it runs torch
code (``terminate called without an active exception``, exit status -6). A run
interrupted in its first step after a resume did one or the other.

:func:`started_pool` starts every thread up front, with Ctrl-C held off while they start
(:func:`sigint_held`), so a pool never starts a thread afterwards and
``shutdown(wait=True)`` joins them all.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

__all__ = ["sigint_held", "started_pool"]


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """Within the block a Ctrl-C (SIGINT) is held; it is raised again, to the handler
    that was there before, when the block ends. Outside the main thread (where Python
    raises no KeyboardInterrupt anyway) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)


def started_pool(workers: int, prefix: str = "", timeout: float = 60.0) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads, all running when it is returned (see the module
    docstring): each thread is started by a task that waits for the others, so every
    ``submit`` starts one, and none is started later."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix=prefix)
    with sigint_held():
        everyone = threading.Barrier(workers, timeout=timeout)
        for future in [pool.submit(everyone.wait) for _ in range(workers)]:
            future.result()
    return pool
