"""The torchrun engine: a parameter server on rank 0 and K worker processes over gloo.

    torchrun --standalone --nproc-per-node 16 -m byzshield.train engine=torchrun

Every step the server sends each worker a :class:`byzshield.server.wire.Control` message and
the flat parameters; worker w computes the gradients of ``placement.worker_files[w]``
with :func:`byzshield.compute.gradients.file_gradients`, Byzantine workers apply their attack
(unless it is omniscient: the server simulates those, :mod:`byzshield.server.forgery`), and
each sends a :class:`byzshield.server.wire.ReplyLayout` header and payload. The server receives
every payload straight into one buffer, reused every step, which becomes the rows of the
step's :class:`byzshield.server.copies.Copies`: worker w's l rows and, after them, spare rows for
its END marker and the slack that lets a message of the wrong length be named
(:class:`byzshield.server.wire.Slot`). Spare rows are never read and, never written,
cost no memory. The copies are handed over while the payloads are still arriving: the
robust update votes each file as soon as its last copy lands. A worker whose message is
malformed, that fails or that is late is dropped for the rest of the run: its copies
are erasures and its files vote among their other holders (:class:`TorchrunEngine`).

With ``ps_shards=S`` ranks 0..S-1 are the servers of a sharded parameter server and ranks
S..S+K-1 the workers (docs/shards.md). Rank 0 sends control and parameters, as before;
each worker sends every server a header and that server's columns of its payload;
servers 1..S-1 (:func:`run_shard_server`) run the robust update of their columns,
exchanging vote classes and partial sums with the others over gloo
(:class:`TorchrunPeers`), and send rank 0 their gradient slice, which rank 0 puts
together (:class:`byzshield.server.sharded.LeadUpdate`).

:mod:`~byzshield.engines.torchrun.server` is the server ranks' side,
:mod:`~byzshield.engines.torchrun.worker` the workers', :mod:`~byzshield.engines.torchrun.rank`
what every rank does from start to end (:func:`run_rank`).
"""

from byzshield.engines.torchrun.rank import StartError, run_rank
from byzshield.engines.torchrun.server import TorchrunEngine, TorchrunPeers, run_shard_server
from byzshield.engines.torchrun.worker import run_worker

__all__ = [
    "StartError",
    "TorchrunEngine",
    "TorchrunPeers",
    "run_rank",
    "run_shard_server",
    "run_worker",
]
