"""The server ranks of the torchrun engine: :class:`TorchrunEngine` (what every server
receives from the workers, and the workers it drops), and with ``ps_shards=S`` the
channels between the S servers over gloo (:class:`TorchrunPeers`, the transport of
:mod:`byzshield.server.sharded`'s exchanges) and servers 1..S-1's loop
(:func:`run_shard_server`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator

import numpy as np
import torch

from byzshield.config import Run, add_server_parts
from byzshield.detection import inverse
from byzshield.engines.torchrun.comm import Comm, RankFailure
from byzshield.server.copies import Copies, copy_index, pushed_slots
from byzshield.server.erasures import erase, present_copies, stragglers
from byzshield.server.evidence import StepPlan
from byzshield.server.sharded import Exchange, receive_start, shard_bounds
from byzshield.server.update import build_update
from byzshield.server.vote import Rows
from byzshield.server.wire import Control, Pull, ReplyLayout, Slot, control_size, gradients_size

__all__ = ["TorchrunEngine", "TorchrunPeers", "run_shard_server"]

log = logging.getLogger("byzshield.engines.torchrun")


class TorchrunEngine:
    """The parameter server's side: send control and parameters, receive the replies.

    A worker whose message is malformed (the wrong length, no end marker, a header that
    announces another length), that fails or closes its connection, or that is not heard
    from within ``timeout`` is **dropped** for the rest of the run (:attr:`dropped`):
    never sent to or received from again, its copies erasures (``Copies.present``), so
    its files vote among their other holders. With a sharded server every server ends
    each step with the same dropped workers (:meth:`_agree`), so all decide the same bits;
    :attr:`peers` are then the channels between the servers (None with one server).

    With ``placement.relabel=step`` worker w plays role ``roles[w]`` (the control message
    says which): its reply lands in its own slot, and the step's copies are indexed by
    roles, as the robust update reads them (:meth:`_relabel`).
    """

    name = "torchrun"

    def __init__(self, comm: Comm, run: Run, d: int, *, server: int = 0):
        p = run.placement
        self.comm, self.run = comm, run
        self.K, self.load = p.num_workers, p.load
        self.digests = run.config.vote == "digest"
        # a sharded server: this server receives its columns of every copy
        self.lo, hi = shard_bounds(d, run.config.ps_shards)[server]
        self.d = d = hi - self.lo
        self.servers = run.config.ps_shards
        self.others = range(1, self.servers) if server == 0 else range(0)  # told each step
        self.peers = TorchrunPeers(comm, self.servers) if self.servers > 1 else None
        self.layout = ReplyLayout(p.load, d, digests=self.digests)
        self.pulling = False  # vote=digest: workers wait for Pull messages of this step
        n = self.layout.payload_size
        spare = math.ceil((Slot.capacity(n) - n) / d)  # whole rows for END and the slack
        self.stride = p.load + spare  # rows per worker in the receive buffer
        self.role_index = copy_index(p)  # k * l + i: role k's i-th file
        self.roles: tuple[int, ...] | None = None  # roles[w]: whose files worker w computes
        self._relabel(tuple(range(self.K)))
        self.rows = torch.empty(self.K * self.stride, d)  # reused: no page faults per step
        region = self.rows.view(self.K, self.stride * d)
        self.payloads = [Slot(region[w], self.layout.payload_size) for w in range(self.K)]
        headers = torch.empty(self.K, Slot.capacity(self.layout.header_size))
        self.headers = [Slot(headers[w], self.layout.header_size) for w in range(self.K)]
        self.idle = True  # every worker waits for a control message (none is mid-send)
        self.dropped: dict[int, str] = {}  # worker -> why, in the order they were dropped
        self.copies: Copies | None = None  # this step's, once made (a drop erases copies)

    def _relabel(self, roles: tuple[int, ...]) -> None:
        """Worker w plays role ``roles[w]``: the (f, r) index of the step's copies (row
        ``w * stride + i``: worker w's i-th file, as received), its losses, and with the
        digest vote what each worker pushes after its digests (the files its role is
        first holder of), received into staging slots kept across steps."""
        if roles == self.roles:
            return
        self.roles, l = roles, self.load
        who = torch.tensor(inverse(roles))[self.role_index // l]  # the worker of each copy
        self.loss_index = who * l + self.role_index % l
        self.index = who * self.stride + self.role_index % l
        pushers = range(self.K) if self.digests else ()
        self.pushed = {w: ss for w in pushers if (ss := pushed_slots(self.run.placement, roles[w]))}
        slots = getattr(self, "push_slots", {})
        self.push_slots = {
            w: slots[w] if w in slots and slots[w].size == gradients_size(len(ss), self.d)
            else self._slot(len(ss))
            for w, ss in self.pushed.items()
        }  # fmt: skip
        self.pushed_rows = {w * self.stride + s for w, ss in self.pushed.items() for s in ss}

    def _erased(self, workers) -> torch.Tensor:
        """(f, r) bool: the copies that arrive when ``workers`` (physical) send none."""
        return present_copies(self.run.placement, [self.roles[w] for w in workers])

    @property
    def live(self) -> list[int]:
        """The workers not dropped."""
        return [w for w in range(self.K) if w not in self.dropped]

    def gather(self, step: int, params: torch.Tensor, plan: StepPlan):
        t0 = time.perf_counter()
        self._end_pulls()
        self.idle = False
        control = Control.for_step(step, self.K, plan.liars, plan.roles, plan.excluded).pack()
        for server in self.others:  # servers 1..S-1 of a sharded server: the step starts
            self.comm.send_to_server(control, server)
        self._drop_failed(self.comm.send_to_workers(control, self.live))
        self._drop_failed(self.comm.send_to_workers(params, self.live))
        return self.collect(t0, plan.roles)

    def collect(self, t0: float, roles: tuple[int, ...] | None = None):
        """The step's replies (this server's columns of them) from the workers not
        dropped: headers now, payloads as they land (the copies' ``arrivals``); with the
        control and parameters sent at ``t0`` (``time.perf_counter()``), worker w playing
        ``roles[w]`` (None: its own)."""
        self.copies = None
        self._relabel(tuple(range(self.K)) if roles is None else tuple(roles))
        self._receive(self.headers, "reply header")
        headers = {}
        for w in self.live:
            header = self.layout.unpack_header(self.headers[w].buffer)
            try:
                self.layout.check_header(header, _who(w, self.servers))
            except ValueError as exc:
                self._drop(w, str(exc))
                continue
            headers[w] = header
        if self.digests:  # the pushed copies now; the rest wait until the vote pulls them
            self.pulling = True
            self._receive_pushed()
        wait = time.perf_counter() - t0
        reported = [h.compute_s for w, h in headers.items() if w not in self.dropped]
        compute = max((c for c in reported if c == c), default=0.0)  # NaN-safe
        compute = min(max(compute, 0.0), wait)  # a worker's own figure, clamped to the wait
        nothing = (math.nan,) * self.load  # a dropped worker's: never read (erasures)
        reported_losses = [headers[w].losses if w in headers else nothing for w in range(self.K)]
        losses = torch.tensor([x for ls in reported_losses for x in ls], dtype=torch.float64)
        claims = None
        if self.digests:
            table = self.index.tolist()
            by_row = {
                w * self.stride + i: g for w, h in headers.items() for i, g in enumerate(h.digests)
            }
            claims = [[by_row.get(r, b"") for r in rs] for rs in table]
        self.copies = copies = Copies(
            Rows(self.rows),
            self.index,
            losses[self.loss_index],
            present=self._erased(self.dropped) if self.dropped else None,
            claims=claims,
            fetch=self._fetch if self.digests else None,
            bytes_in=len(headers) * self.layout.nbytes(),
        )
        if not self.digests:
            copies.arrivals = self._arrivals()
        if self.peers is not None:  # every server's copies in, then the same drops
            for _ in copies.arrivals or ():
                pass
            copies.arrivals = None
            self._agree()
        return copies, {"compute_s": compute, "communication_s": wait - compute}

    def _drop(self, w: int, why: str) -> None:
        """Drop worker w for the rest of the run: its copies of this step are erasures
        from now on, and no message goes to or comes from it again."""
        if w in self.dropped:
            return
        self.dropped[w] = why
        log.warning("dropped worker %d for the rest of the run: %s", w, why)
        self.comm.tell_dropped(w, why)
        if self.copies is not None:
            gone = self._erased((w,))
            present = self.copies.present
            self.copies.present = gone if present is None else present & gone

    def _drop_failed(self, failures: dict[int, RankFailure]) -> None:
        for w, failure in failures.items():
            self._drop(w, str(failure))

    def _agree(self) -> None:
        """ps_shards > 1: every server ends the step with the union of the workers the
        servers dropped, so that every server votes on the same copies. The servers
        exchange a mask of K bytes each step and, when they differ, why (an exchange of its
        own: not counted in the update's ``control_bytes``)."""
        agreement = Exchange(self.peers)
        mine = np.array([w in self.dropped for w in range(self.K)], dtype=bool)
        masks = agreement.gather([mine])
        union = np.logical_or.reduce(masks)
        if all(np.array_equal(m, union) for m in masks):
            return
        news = {w: why for w, why in self.dropped.items() if not all(m[w] for m in masks)}
        text = json.dumps({"server": self.comm.rank, "dropped": news})
        notes = agreement.gather([np.frombuffer(_padded(text, self.K), dtype=np.uint8).copy()])
        for note in notes:
            told = json.loads(bytes(note).rstrip(b"\0").decode())
            for w, why in told["dropped"].items():
                if told["server"] != self.comm.rank:
                    self._drop(int(w), f"{why} (seen by parameter server rank {told['server']})")

    def _slot(self, n: int) -> Slot:
        """A staging slot for a pushed or pulled message of n gradients."""
        size = gradients_size(n, self.d)
        return Slot(torch.empty(Slot.capacity(size)), size)

    def _receive_into_rows(self, wanted: dict[int, list[int]], slots: dict[int, Slot], what):
        """Worker w's next message, its gradients of slots ``wanted[w]`` in slot order
        and END, into the staging slot ``slots[w]`` (the worker is dropped if it fails
        or the message is malformed), then copied to their rows (row w * stride + s is
        worker w's s-th file)."""
        for slot in slots.values():
            slot.arm()
        failures = self.comm.receive_each({w: slot.buffer for w, slot in slots.items()})
        self.idle = True  # every worker waits for a pull or the end of the step
        for w, wanted_slots in wanted.items():
            if not self._check(w, slots[w], what, failures.get(w)):
                continue
            n = len(wanted_slots)
            got = slots[w].buffer[: gradients_size(n, self.d)].view(n, self.d)
            self.rows[[w * self.stride + s for s in wanted_slots]] = got

    def _check(self, w: int, slot: Slot, what: str, failure: RankFailure | None) -> bool:
        """Whether worker w's message landed in ``slot`` whole; else w is dropped."""
        if failure is None:
            try:
                slot.check(_who(w, self.servers), what)
                return True
            except ValueError as exc:
                failure = str(exc)
        self._drop(w, str(failure))
        return False

    def _receive_pushed(self) -> None:
        """vote=digest: every live worker's pushed gradients (its first-holder files)
        into their rows."""
        live = [w for w in self.pushed if w not in self.dropped]
        wanted = {w: self.pushed[w] for w in live}
        self._receive_into_rows(wanted, {w: self.push_slots[w] for w in live}, "pushed gradients")

    def _fetch(self, wire: list[tuple[int, int, int]]) -> None:
        """vote=digest: one round of pulls; each worker asked sends the requested
        gradients in slot order (:meth:`_receive_into_rows`). Rows pushed this step are
        there already; a dropped worker is not asked (its copies are erasures: only a
        simulated digest lie may point a Byzantine copy at one, which then reads what
        that row held, never a buffer gloo may still write: pulls land in staging)."""
        wanted: dict[int, list[int]] = {}
        for _, _, row in wire:
            w, slot = divmod(row, self.stride)
            if row in self.pushed_rows or w in self.dropped:
                continue  # pushed this step; or an erasure, its row left as it is
            if slot not in wanted.setdefault(w, []):
                wanted[w].append(slot)
        if not wanted:
            return
        for slots in wanted.values():
            slots.sort()
        self.idle = False
        failures = self.comm.send_each(
            {
                w: Pull(True, tuple(s in slots for s in range(self.load))).pack()
                for w, slots in wanted.items()
            }
        )
        self._drop_failed(failures)
        wanted = {w: slots for w, slots in wanted.items() if w not in failures}
        staging = {w: self._slot(len(slots)) for w, slots in wanted.items()}
        self._receive_into_rows(wanted, staging, "pulled gradients")

    def _arrivals(self) -> Iterator[int]:
        """The full vote: every live worker's payload into its slot, yielding w as worker
        w's lands and passes its check, in arrival order (a worker that fails or sends a
        malformed payload is dropped and not yielded); the robust update votes each file
        as its last copy lands."""
        slots = {w: self.payloads[w] for w in self.live}
        for slot in slots.values():
            slot.arm()
        for w, failure in self.comm.receive_as_completed({w: s.buffer for w, s in slots.items()}):
            if self._check(w, slots[w], "payload", failure):
                yield self.roles[w]  # the update reads copies by role
        self.idle = True  # after a step's last message every worker waits for the next

    def _end_pulls(self) -> None:
        """vote=digest: tell every live worker the last step needs nothing more."""
        if self.pulling:
            end = Pull(False, (False,) * self.load).pack()
            self._drop_failed(self.comm.send_to_workers(end, self.live))
            self.pulling = False

    def _receive(self, slots: list[Slot], what: str) -> None:
        """Every live worker's next message into its slot; a worker that fails or sends
        a message of the wrong length is dropped (:class:`byzshield.server.wire.Slot`)."""
        live = self.live
        for w in live:
            slots[w].arm()
        failures = self.comm.receive_each({w: slots[w].buffer for w in live})
        for w in live:
            self._check(w, slots[w], what, failures.get(w))

    def close(self, step: int) -> None:
        """Tell the live workers to return (best effort: a dead worker must not hang us;
        a dropped one is not told). After a failed step some workers may be blocked
        sending to us: they cannot take the message, and learn that the server is gone
        when its process exits."""
        if self.idle:
            with contextlib.suppress(Exception):
                self._end_pulls()
                stop = Control.stop_message(step, self.K).pack()
                for server in self.others:
                    self.comm.send_to_server(stop, server)
                self.comm.send_to_workers(stop, self.live)


def _who(w: int, servers: int = 1) -> str:
    return f"rank {w + servers} (worker {w})"


def _padded(text: str, K: int) -> bytes:
    """``text`` in a message of K * 512 bytes (zero padded), as every server sends."""
    raw = text.encode()[: K * 512]
    return raw + bytes(K * 512 - len(raw))


# --------------------------------------------------------------------------------------
# A sharded parameter server (ps_shards = S): servers 0..S-1, workers S..S+K-1
# --------------------------------------------------------------------------------------


class TorchrunPeers:
    """The channels between the S servers of a sharded parameter server over gloo, the
    :class:`byzshield.server.sharded.Peers` of a server rank (rank s is server s).
    Arrays travel as tensors of their own shape; bools as uint8, int16 as int32."""

    def __init__(self, comm: Comm, servers: int):
        self.comm, self.server, self.num_servers = comm, comm.rank, servers

    def send(self, array: np.ndarray, to: int) -> None:
        self.comm.send_to_server(_wire(array), to)

    def receive(self, like: np.ndarray, source: int) -> np.ndarray:
        buffer = _wire(np.empty_like(like))
        self.comm.receive_from_server(buffer, source)
        # like's own shape: a 0-d array (a scalar partial sum) travels as shape (1,)
        return buffer.numpy().astype(like.dtype, copy=False).reshape(like.shape)


def _wire(array: np.ndarray) -> torch.Tensor:
    """A NumPy array as a tensor gloo carries (bool as uint8, int16 as int32)."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.int16:
        array = array.astype(np.int32)
    return torch.from_numpy(np.ascontiguousarray(array))


def run_shard_server(comm: Comm, run: Run) -> None:
    """Server s of a sharded parameter server (rank s, 0 < s < S): serve steps until
    server 0 says stop. First what server 0 decided at start-up (the f the rule assumes,
    the rule's state: :func:`byzshield.server.sharded.receive_start`); then each step
    server 0's control message (who lies, the roles, who is excluded), every worker's
    header and columns s of its payload, and the robust update of those columns
    (:class:`byzshield.server.sharded.ShardServer`)."""
    cfg, p = run.config, run.placement
    s = comm.rank
    d = run.num_params
    peers = TorchrunPeers(comm, cfg.ps_shards)
    lo, hi = shard_bounds(d, cfg.ps_shards)[s]
    told = receive_start(peers, hi - lo)
    run = add_server_parts(run, rule_f=told.rule_f)
    spec = dataclasses.replace(
        run.update_spec(), outside_guarantee=told.outside_guarantee, f_after=told.f_after
    )
    server = build_update(spec, d, peers=peers)
    server.load_state_dict(told.state)
    engine = TorchrunEngine(comm, run, d, server=s)
    control = torch.zeros(control_size(p.num_workers), dtype=torch.int64)
    while True:
        comm.receive_from_server(control, 0)
        message = Control.unpack(control)
        if message.stop:
            log.info("server %d: stop after %d steps", s, message.step)
            return
        step, roles = message.step, message.roles
        copies, _ = engine.collect(time.perf_counter(), roles)
        missing = stragglers(p, cfg.stragglers, seed=cfg.seed, step=step)
        erase(copies, p, tuple(sorted(roles[w] for w in missing)))
        server(copies, message.byzantine_roles(), step, message.excluded_roles())
