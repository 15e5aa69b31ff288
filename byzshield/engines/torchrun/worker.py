"""The worker ranks of the torchrun engine: serve steps until the server says stop
(:func:`run_worker`): compute the held files' gradients, attack them when Byzantine, and
send the reply (to every server of a sharded server, :class:`_ShardReplies`). The files
are those of the role the control message names (``placement.relabel``: a new one every
step); a Byzantine worker lies on the files ``adversary.lie_on`` says
(:func:`byzshield.detection.lied_files`)."""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from byzshield.attacks import attack_generator, data_poison
from byzshield.compute.gradients import file_gradients
from byzshield.compute.params import load_flat, num_params
from byzshield.compute.threads import started_pool
from byzshield.config import Run
from byzshield.detection import lied_files
from byzshield.engines.torchrun.comm import Comm, RankFailure
from byzshield.server.copies import pushed_slots
from byzshield.server.digest import digest
from byzshield.server.sharded import shard_bounds
from byzshield.server.wire import (
    Control,
    Pull,
    ReplyLayout,
    control_size,
    gradients_size,
    pack_gradients,
)

__all__ = ["run_worker"]

log = logging.getLogger("byzshield.engines.torchrun")


def run_worker(comm: Comm, run: Run) -> None:
    """Serve steps until the server says stop (worker index = rank - 1). A worker the
    server dropped returns when its wait for the server ends, saying why in its log."""
    try:
        _serve_steps(comm, run)
    except RankFailure:
        note = comm.dropped_note()
        if note is None:
            raise
        log.warning("the parameter server dropped this worker: %s", note)


def _serve_steps(comm: Comm, run: Run) -> None:
    cfg, p = run.config, run.placement
    w = comm.worker
    model = run.build_model()
    d = num_params(model)
    digests = cfg.vote == "digest"
    layout = ReplyLayout(p.load, d, digests=digests)
    slices = _ShardReplies(p.load, d, cfg.ps_shards)  # ps_shards > 1: a slice per server
    control = torch.zeros(control_size(p.num_workers), dtype=torch.int64)
    pull = torch.zeros(Pull.size(p.load), dtype=torch.int64)
    params = torch.empty(d)
    reply = layout.payload_message()
    payload = layout.payload(reply)  # the gradients, written in place
    header = torch.empty(layout.header_size + 1)  # + END
    attack = run.attack  # None for omniscient attacks: the server simulates them
    lie_on = cfg.adversary.lie_on
    hasher = started_pool(1, "digest") if digests else None
    push = torch.empty(gradients_size(p.load, d) + 1)  # the pushed gradients, END; reused
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
        step, byzantine, role = message.step, message.byzantine[w], message.roles[w]
        files = p.worker_files[role]
        pushed = pushed_slots(p, role) if digests else []
        lies = [True] * len(files)  # which of its files a Byzantine worker lies on
        if byzantine and lie_on != "all":
            won = set(lied_files(p, message.byzantine_roles(), lie_on, message.excluded_roles()))
            lies = [j in won for j in files]
        t0 = time.perf_counter()
        hashing: list = []  # vote=digest: each file hashed on a thread once it is final
        forged = byzantine and attack is not None and any(lies)
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
            flip=forged and attack.flips_labels and all(lies),
            poison=data_poison(attack) if forged and all(lies) else None,
            out=payload,
            batched=run.batched_files,
            on_file=on_file,
            partition=run.partition,
        )
        lied = [i for i, lie in enumerate(lies) if lie] if forged else []
        poison = data_poison(attack) if forged else None
        if forged and (attack.flips_labels or poison is not None) and len(lied) < len(files):
            # a data-side attack that lies on some of its files only: those recomputed
            flipped, flipped_losses = file_gradients(
                model,
                run.train_data,
                [files[i] for i in lied],
                seed=cfg.seed,
                step=step,
                batch_size=cfg.batch_size,
                num_files=p.num_files,
                flip=attack.flips_labels,
                poison=poison,
                batched=run.batched_files,
                partition=run.partition,
            )
            for k, i in enumerate(lied):
                payload[i], losses[i] = flipped[k], flipped_losses[k]
        for i in lied:
            payload[i] = attack(payload[i], generator=attack_generator(cfg.seed, step, files[i]))
        if not digests:
            sums = ()
        elif hashing:
            sums = [h.result() for h in hashing]
        else:
            sums = [digest(g) for g in payload]
        compute_s = time.perf_counter() - t0
        if slices.servers > 1:  # a header and its columns of the payload to each server
            slices.send(comm, payload, compute_s=compute_s, losses=losses)
        else:
            layout.pack_header(compute_s=compute_s, losses=losses, digests=sums, out=header)
            comm.send_to_server(header)
            if not digests:
                comm.send_to_server(reply)
            elif pushed:
                size = gradients_size(len(pushed), d) + 1  # its part of the reused buffer
                comm.send_to_server(pack_gradients(payload, pushed, push[:size]))
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


class _ShardReplies:
    """A worker's replies to a sharded server: every server gets the reply header and
    its columns of the payload (:class:`ReplyLayout` at its width), sent in server
    order. One server: nothing to do here (the unsharded path sends the reply)."""

    def __init__(self, load: int, d: int, servers: int):
        self.servers = servers
        bounds = shard_bounds(d, servers) if servers > 1 else []
        self.parts = [(lo, hi, ReplyLayout(load, hi - lo)) for lo, hi in bounds]
        self.messages = [layout.payload_message() for _, _, layout in self.parts]
        self.header = torch.empty(ReplyLayout(load, d).header_size + 1)  # + END; reused

    def send(self, comm: Comm, payload: torch.Tensor, *, compute_s: float, losses) -> None:
        for server, (lo, hi, layout) in enumerate(self.parts):
            message = self.messages[server]
            layout.payload(message).copy_(payload[:, lo:hi])
            layout.pack_header(compute_s=compute_s, losses=losses, digests=(), out=self.header)
            comm.send_to_server(self.header, server)
            comm.send_to_server(message, server)
