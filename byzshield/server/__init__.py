"""The server layer: everything that decides the next gradient from what arrived.

No processes and no optimizer: given a step's copies it returns the gradient and the
step's metrics, the same bits in every engine (docs/design.md sections 4, 6 and 7). It
imports only the layers below it (design, compute, attacks, aggregators); the engines
and the trainer call it through :func:`byzshield.server.update.build_update`.

- :mod:`~byzshield.server.copies`: what arrived (:class:`~byzshield.server.copies.Copies`)
  and one step's receiving of the rest.
- :mod:`~byzshield.server.erasures`: the copies that do not vote (stragglers, dropped
  workers) and what is left to vote.
- :mod:`~byzshield.server.vote`: the majority votes, bit for bit or on digests.
- :mod:`~byzshield.server.digest`: the digests of the digest-first vote.
- :mod:`~byzshield.server.rule`: the aggregation rule as a step applies it.
- :mod:`~byzshield.server.forgery`: the omniscient attack simulated at step time, and
  the digest lies.
- :mod:`~byzshield.server.update`: the robust update and its one builder.
- :mod:`~byzshield.server.sharded`: S servers deciding one server's bits, their
  exchanges written once over a ``Peers`` interface.
- :mod:`~byzshield.server.metrics`: the step's outcome and its line of metrics.jsonl.
- :mod:`~byzshield.server.wire`: the messages between the server and its workers.
"""
