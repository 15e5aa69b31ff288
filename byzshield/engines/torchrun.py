"""The torchrun engine: a parameter server on rank 0 and K worker processes over gloo.

    torchrun --standalone --nproc-per-node 16 -m byzshield.train engine=torchrun

Every step the server sends each worker a :class:`byzshield.protocol.Control` message and
the flat parameters; worker w computes the gradients of ``placement.worker_files[w]``
with :func:`byzshield.gradients.file_gradients`, Byzantine workers apply their attack
(unless it is omniscient: the server simulates those, :mod:`byzshield.omniscient`), and
each sends a :class:`byzshield.protocol.ReplyLayout` header and payload. The server receives
every payload straight into one buffer, reused every step, which becomes the rows of the
step's :class:`byzshield.step.Copies`: worker w's l rows and, after them, spare rows for
its END marker and the slack that lets a message of the wrong length be named
(:class:`byzshield.protocol.Slot`). Spare rows are never read and, never written,
cost no memory. The copies are handed over while the payloads are still arriving: the
robust update votes each file as soon as its last copy lands.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from byzshield.attacks import attack_generator
from byzshield.comm import Comm, RankFailure
from byzshield.config import Run
from byzshield.digest import digest
from byzshield.gradients import file_gradients, load_flat, num_params
from byzshield.protocol import (
    Control,
    Pull,
    ReplyLayout,
    Slot,
    control_size,
    gradients_size,
    pack_gradients,
)
from byzshield.step import Copies, copy_index, pushed_slots
from byzshield.vote import Rows

__all__ = ["TorchrunEngine", "run_worker"]

log = logging.getLogger("byzshield.engines.torchrun")


class TorchrunEngine:
    """The parameter server's side: send control and parameters, receive the replies."""

    name = "torchrun"

    def __init__(self, comm: Comm, run: Run, d: int):
        p = run.placement
        self.comm, self.run, self.d = comm, run, d
        self.K, self.load = p.num_workers, p.load
        self.digests = run.config.vote == "digest"
        self.layout = ReplyLayout(p.load, d, digests=self.digests)
        self.pulling = False  # vote=digest: workers wait for Pull messages of this step
        n = self.layout.payload_size
        spare = math.ceil((Slot.capacity(n) - n) / d)  # whole rows for END and the slack
        self.stride = p.load + spare  # rows per worker in the receive buffer
        self.loss_index = copy_index(p)  # w * l + i: worker w's i-th file
        self.index = self.loss_index // p.load * self.stride + self.loss_index % p.load
        self.rows = torch.empty(self.K * self.stride, d)  # reused: no page faults per step
        region = self.rows.view(self.K, self.stride * d)
        self.payloads = [Slot(region[w], self.layout.payload_size) for w in range(self.K)]
        headers = torch.empty(self.K, Slot.capacity(self.layout.header_size))
        self.headers = [Slot(headers[w], self.layout.header_size) for w in range(self.K)]
        # vote=digest: what each worker pushes after its digests (its first-holder files),
        # received into slots kept across steps
        pushers = range(self.K) if self.digests else ()
        self.pushed = {w: slots for w in pushers if (slots := pushed_slots(p, w))}
        self.push_slots = {w: self._slot(len(slots)) for w, slots in self.pushed.items()}
        self.pushed_rows = {w * self.stride + s for w, ss in self.pushed.items() for s in ss}
        self.idle = True  # every worker waits for a control message (none is mid-send)

    def gather(self, step: int, params: torch.Tensor, byzantine: tuple[int, ...]):
        t0 = time.perf_counter()
        self._end_pulls()
        self.idle = False
        self.comm.send_to_workers(Control.for_step(step, self.K, byzantine).pack())
        self.comm.send_to_workers(params)
        self._receive(self.headers, "reply header")
        headers = [self.layout.unpack_header(slot.buffer) for slot in self.headers]
        for w, header in enumerate(headers):
            with _named(w):
                self.layout.check_header(header, _who(w))
        if self.digests:  # the pushed copies now; the rest wait until the vote pulls them
            self.pulling = True
            self._receive_pushed()
        wait = time.perf_counter() - t0
        reported = [h.compute_s for h in headers]
        compute = max((c for c in reported if c == c), default=0.0)  # NaN-safe
        compute = min(max(compute, 0.0), wait)  # a worker's own figure, clamped to the wait
        losses = torch.tensor([x for h in headers for x in h.losses], dtype=torch.float64)
        claims = None
        if self.digests:
            table = self.index.tolist()
            by_row = {
                w * self.stride + i: g
                for w, h in enumerate(headers)
                for i, g in enumerate(h.digests)
            }
            claims = [[by_row[r] for r in rs] for rs in table]
        copies = Copies(
            Rows(self.rows),
            self.index,
            losses[self.loss_index],
            claims=claims,
            fetch=self._fetch if self.digests else None,
            bytes_in=self.K * self.layout.nbytes(),
            arrivals=None if self.digests else self._arrivals(),
        )
        return copies, {"compute_s": compute, "communication_s": wait - compute}

    def _slot(self, n: int) -> Slot:
        """A staging slot for a pushed or pulled message of n gradients."""
        size = gradients_size(n, self.d)
        return Slot(torch.empty(Slot.capacity(size)), size)

    def _receive_into_rows(self, wanted: dict[int, list[int]], slots: dict[int, Slot], what):
        """Worker w's next message, its gradients of slots ``wanted[w]`` in slot order
        and END, into the staging slot ``slots[w]`` (a wrong length names the rank),
        then copied to their rows (row w * stride + s is worker w's s-th file)."""
        for slot in slots.values():
            slot.arm()
        self.comm.receive_each({w: slot.buffer for w, slot in slots.items()})
        self.idle = True  # every worker waits for a pull or the end of the step
        for w, wanted_slots in wanted.items():
            with _named(w):
                slots[w].check(_who(w), what)
            n = len(wanted_slots)
            got = slots[w].buffer[: gradients_size(n, self.d)].view(n, self.d)
            self.rows[[w * self.stride + s for s in wanted_slots]] = got

    def _receive_pushed(self) -> None:
        """vote=digest: every worker's pushed gradients (its first-holder files) into
        their rows."""
        self._receive_into_rows(self.pushed, self.push_slots, "pushed gradients")

    def _fetch(self, wire: list[tuple[int, int, int]]) -> None:
        """vote=digest: one round of pulls; each worker asked sends the requested
        gradients in slot order (:meth:`_receive_into_rows`). Rows pushed this step are
        there already."""
        wire = [item for item in wire if item[2] not in self.pushed_rows]
        if not wire:
            return
        wanted: dict[int, list[int]] = {}
        for _, _, row in wire:
            w, slot = divmod(row, self.stride)
            if slot not in wanted.setdefault(w, []):
                wanted[w].append(slot)
        for slots in wanted.values():
            slots.sort()
        self.idle = False
        self.comm.send_each(
            {
                w: Pull(True, tuple(s in slots for s in range(self.load))).pack()
                for w, slots in wanted.items()
            }
        )
        staging = {w: self._slot(len(slots)) for w, slots in wanted.items()}
        self._receive_into_rows(wanted, staging, "pulled gradients")

    def _arrivals(self) -> Iterator[int]:
        """The full vote: every worker's payload into its slot, yielding w as worker w's
        lands and passes its check (a wrong length names the rank), in arrival order;
        the robust update votes each file as its last copy lands."""
        for slot in self.payloads:
            slot.arm()
        for w in self.comm.receive_as_completed([slot.buffer for slot in self.payloads]):
            with _named(w):
                self.payloads[w].check(_who(w), "payload")
            yield w
        self.idle = True  # after a step's last message every worker waits for the next

    def _end_pulls(self) -> None:
        """vote=digest: tell every worker the last step needs nothing more."""
        if self.pulling:
            self.comm.send_to_workers(Pull(False, (False,) * self.load).pack())
            self.pulling = False

    def _receive(self, slots: list[Slot], what: str) -> None:
        """Every worker's next message into its slot; a message of the wrong length is
        refused naming its rank (see :class:`byzshield.protocol.Slot`)."""
        for slot in slots:
            slot.arm()
        self.comm.receive_from_workers([slot.buffer for slot in slots])
        for w, slot in enumerate(slots):
            with _named(w):
                slot.check(_who(w), what)

    def close(self, step: int) -> None:
        """Tell the workers to return (best effort: a dead worker must not hang us). After
        a failed step some workers may be blocked sending to us: they cannot take the
        message, and learn that the server is gone when its process exits."""
        if self.idle:
            with contextlib.suppress(Exception):
                self._end_pulls()
                self.comm.send_to_workers(Control.stop_message(step, self.K).pack())


def _who(w: int) -> str:
    return f"rank {w + 1} (worker {w})"


@contextlib.contextmanager
def _named(w: int) -> Iterator[None]:
    """Turn a refused message of worker ``w`` into a RankFailure naming its rank."""
    try:
        yield
    except ValueError as exc:
        raise RankFailure(w + 1, str(exc)) from None


def run_worker(comm: Comm, run: Run) -> None:
    """Serve steps until the server says stop (worker index = rank - 1)."""
    cfg, p = run.config, run.placement
    w = comm.rank - 1
    files = p.worker_files[w]
    model = run.build_model()
    d = num_params(model)
    digests = cfg.vote == "digest"
    layout = ReplyLayout(p.load, d, digests=digests)
    control = torch.zeros(control_size(p.num_workers), dtype=torch.int64)
    pull = torch.zeros(Pull.size(p.load), dtype=torch.int64)
    params = torch.empty(d)
    reply = layout.payload_message()
    payload = layout.payload(reply)  # the gradients, written in place
    header = torch.empty(layout.header_size + 1)  # + END
    attack = run.attack  # None for omniscient attacks: the server simulates them
    pushed = pushed_slots(p, w) if digests else []
    hasher = ThreadPoolExecutor(1, thread_name_prefix="digest") if digests else None
    push = torch.empty(gradients_size(len(pushed), d) + 1)  # the pushed gradients, END; reused
    while True:
        comm.receive_from_server(control)
        message = Control.unpack(control)
        if message.stop:
            log.info("stop after %d steps", message.step)
            if hasher is not None:
                hasher.shutdown()
            return
        comm.receive_from_server(params)
        load_flat(model, params)
        step, byzantine = message.step, message.byzantine[w]
        t0 = time.perf_counter()
        hashing: list = []  # vote=digest: each file hashed on a thread once it is final
        forged = byzantine and attack is not None
        on_file = None
        if digests and not forged:
            on_file = functools.partial(_hash_row, hasher, payload, hashing)
        _, losses = file_gradients(
            model,
            run.train_data,
            files,
            seed=cfg.seed,
            step=step,
            batch_size=cfg.batch_size,
            num_files=p.num_files,
            flip=byzantine and attack is not None and attack.flips_labels,
            out=payload,
            batched=run.batched_files,
            on_file=on_file,
        )
        if forged:
            for i, j in enumerate(files):
                payload[i] = attack(payload[i], generator=attack_generator(cfg.seed, step, j))
        if not digests:
            sums = ()
        elif hashing:
            sums = [h.result() for h in hashing]
        else:
            sums = [digest(g) for g in payload]
        layout.pack_header(
            compute_s=time.perf_counter() - t0, losses=losses, digests=sums, out=header
        )
        comm.send_to_server(header)
        if not digests:
            comm.send_to_server(reply)
        elif pushed:
            comm.send_to_server(pack_gradients(payload, pushed, push))
        while digests:  # the server pulls some of the gradients, then ends the step
            comm.receive_from_server(pull)
            request = Pull.unpack(pull)
            if not request.more:
                break
            chosen = [i for i, wanted in enumerate(request.files) if wanted]
            comm.send_to_server(pack_gradients(payload, chosen))
        if step % 50 == 0:
            log.info(
                "step %d sent %d file gradients%s",
                step,
                len(files),
                " (Byzantine)" if byzantine else "",
            )


def _hash_row(hasher: ThreadPoolExecutor, payload: torch.Tensor, out: list, i: int) -> None:
    """Start hashing row i of the payload on the digest thread (its future into out)."""
    out.append(hasher.submit(digest, payload[i]))
