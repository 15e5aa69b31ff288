"""The lockstep engine: many runs of one shape trained together in one process.

:mod:`~byzshield.engines.lockstep.group` is the group's step loop and how a sweep's jobs
are collected and trained; :mod:`~byzshield.engines.lockstep.fast` the batched robust
update it takes for the cases it reproduces. Like the other engines it imports the
training layer and those below it (server, config, compute, aggregators, attacks).

    python -m byzshield.train -m engine=lockstep adversary.q=1,3 seed=0,1,2,3,4
"""

from byzshield.engines.lockstep.group import (
    CHUNK_SAMPLES,
    THREADS,
    LockstepGroup,
    Member,
    collect,
    lockstep,
    train_collected,
)

__all__ = [
    "CHUNK_SAMPLES",
    "THREADS",
    "LockstepGroup",
    "Member",
    "collect",
    "lockstep",
    "train_collected",
]
