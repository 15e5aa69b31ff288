"""The simulate engine: a whole run in one process, each file's gradient computed once.

    python -m byzshield.train engine=simulate approach=mols mode=bulyan attack=alie

Honest replicas are bit-identical by construction, so the vote's outcome depends only on
each file's gradient computed once. Every step this engine

1. loads the parameters into its model replicas (one per thread) and computes the
   gradient of every file with :func:`byzshield.compute.gradients.file_gradients`, the very
   function a torchrun worker calls, one intra-op thread per replica (a file's gradient
   does not depend on who computes it, so relabelling the roles changes only which
   copies are Byzantine: the copies are indexed by roles);
2. makes the Byzantine copies a torchrun worker would send, with the same attack code
   and generators (:func:`byzshield.attacks.attack_generator`): for a non-omniscient
   attack one copy per file with a Byzantine holder (all Byzantine copies of a file are
   equal: they are a function of the file, the step and the seed), for label flip and
   the backdoor the gradient on flipped labels or poisoned samples;
3. hands the trainer :class:`byzshield.server.copies.Copies` whose honest copies of file j
   all point at row j.

Omniscient attacks (ALIE, IPM) are then simulated in the robust update
(:mod:`byzshield.server.forgery`), as in the torchrun engine. Memory is the (f, d) honest
rows plus the Byzantine rows; there is no (K, l, d) tensor. Metrics report the bytes the
torchrun server would have received.
"""

from __future__ import annotations

import copy
import os
import time

import torch

from byzshield.attacks import attack_generator, data_poison
from byzshield.compute.gradients import file_gradients
from byzshield.compute.params import load_flat
from byzshield.compute.threads import started_pool
from byzshield.config import Run
from byzshield.server.copies import Copies
from byzshield.server.digest import digest
from byzshield.server.evidence import StepPlan
from byzshield.server.vote import Rows
from byzshield.server.wire import ReplyLayout
from byzshield.training.loop import Trainer
from byzshield.training.records import announce

__all__ = ["SimulateEngine", "simulate", "train_simulated"]


class SimulateEngine:
    """Computes every copy the torchrun workers would send, each distinct one once.

    ``model``: the network whose copies are its replicas (the trainer's, before it is
    trained); by default the run builds one."""

    name = "simulate"

    def __init__(
        self,
        run: Run,
        d: int,
        *,
        threads: int | None = None,
        device: str = "cpu",
        model: torch.nn.Module | None = None,
    ):
        p = run.placement
        self.run, self.d, self.device = run, d, torch.device(device)
        self.f = p.num_files
        self.holders = [list(ws) for ws in p.file_workers]
        self.threads = max(1, min(threads or os.cpu_count() or 1, self.f))
        base = (run.build_model() if model is None else copy.deepcopy(model)).to(self.device)
        self.replicas = [base] + [copy.deepcopy(base) for _ in range(self.threads - 1)]
        self.pool = started_pool(self.threads, "simulate") if self.threads > 1 else None
        self.honest = torch.empty(self.f, d)  # reused: no page faults per step
        self.attack = run.worker_attack  # what the workers themselves send
        self.batched = run.batched_files  # as the workers: one batched pass over the files
        self.digests = run.config.vote == "digest"
        layout = ReplyLayout(p.load, d, digests=self.digests)
        self.bytes_in = p.num_workers * layout.nbytes()  # what the torchrun server receives
        self.dropped: dict[int, str] = {}  # no worker is ever dropped in process
        self.peers = None  # a sharded server's servers are threads (ShardedUpdate)

    def _gradients(
        self, files: list[int], step: int, *, flip: bool, out: torch.Tensor, poison=None
    ):
        """Gradients of ``files`` into ``out`` rows, split over the replicas; losses
        (``flip``, ``poison``: a data-side attack's, as in :func:`file_gradients`)."""
        cfg = self.run.config
        chunks = [c for c in _split(len(files), self.threads) if c[0] < c[1]]

        def work(k: int, lo: int, hi: int) -> list[float]:
            return file_gradients(
                self.replicas[k],
                self.run.train_data,
                files[lo:hi],
                seed=cfg.seed,
                step=step,
                batch_size=cfg.batch_size,
                num_files=self.f,
                flip=flip,
                poison=poison,
                out=out[lo:hi],
                batched=self.batched,
                partition=self.run.partition,
            )[1]

        if self.pool is None or len(chunks) == 1:
            parts = [work(k, lo, hi) for k, (lo, hi) in enumerate(chunks)]
        else:
            parts = list(self.pool.map(lambda a: work(*a), [(k, *c) for k, c in enumerate(chunks)]))
        return [x for part in parts for x in part]

    def gather(self, step: int, params: torch.Tensor, plan: StepPlan):
        t0 = time.perf_counter()
        flat = params.to(self.device)
        for model in self.replicas:
            load_flat(model, flat)
        t1 = time.perf_counter()
        losses = self._gradients(list(range(self.f)), step, flip=False, out=self.honest)
        liars = plan.as_roles(plan.liars)
        copies = self.copies(step, self.honest, losses, liars, plan.lied(self.run.placement))
        return copies, {"compute_s": time.perf_counter() - t1, "communication_s": t1 - t0}

    def copies(
        self,
        step: int,
        honest: torch.Tensor,
        losses: list[float],
        byzantine: tuple[int, ...],
        lied: list[int] | None = None,
    ) -> Copies:
        """What the torchrun server would receive, given the (f, d) honest gradients and
        losses of the step: the copies the ``byzantine`` roles' workers send (the attack
        applied, or the gradients on flipped labels or poisoned samples, on the files
        ``lied``, None: every file they hold; omniscient attacks are left to the robust
        update), and with the digest vote every copy's digest. The replicas must hold the
        step's parameters when the attack changes the data."""
        bad = set(byzantine)
        attack = self.attack if bad else None
        attacked = sorted({j for w in bad for j in self.run.placement.worker_files[w]})
        if lied is not None:
            attacked = [j for j in attacked if j in set(lied)]
        rows = Rows(honest)
        row_of: dict[int, int] = {}
        bad_losses: dict[int, float] = {}
        if attack is not None and attacked:
            forged = torch.empty(len(attacked), self.d)
            poison = data_poison(attack)
            if attack.flips_labels or poison is not None:
                flipped = self._gradients(
                    attacked, step, flip=attack.flips_labels, poison=poison, out=forged
                )
                bad_losses = dict(zip(attacked, flipped, strict=True))
            else:
                forged.copy_(honest[attacked])
            seed = self.run.config.seed
            for k, j in enumerate(attacked):
                forged[k] = attack(forged[k], generator=attack_generator(seed, step, j))
            start = rows.append(forged)
            row_of = {j: start + k for k, j in enumerate(attacked)}
        sent = [  # (row, loss) of each copy, as lists: one tensor each, not f * r writes
            [
                (row_of[j], bad_losses.get(j, losses[j]))
                if w in bad and j in row_of
                else (j, losses[j])
                for w in ws
            ]
            for j, ws in enumerate(self.holders)
        ]
        index = torch.tensor([[row for row, _ in file] for file in sent], dtype=torch.long)
        copy_losses = torch.tensor([[x for _, x in file] for file in sent], dtype=torch.float64)
        claims = None
        if self.digests:  # each worker's digest of what it sends (each row hashed once)
            of_row: dict[int, bytes] = {}
            table = index.tolist()
            for row in {r for rs in table for r in rs}:
                of_row[row] = digest(rows[row])
            claims = [[of_row[r] for r in rs] for rs in table]
        return Copies(rows, index, copy_losses, claims=claims, bytes_in=self.bytes_in)

    def close(self, step: int) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering 0..n, sizes differing by at most one."""
    size, extra = divmod(n, parts)
    out, lo = [], 0
    for k in range(parts):
        hi = lo + size + (1 if k < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


def train_simulated(run: Run, folder, resume=None) -> dict:
    """Train ``run`` with this engine in ``folder``, which this process holds
    (:func:`byzshield.training.runfolder.prepare`, which also gives ``resume``): the
    network is built once, trained by the :class:`~byzshield.training.loop.Trainer`
    and copied into the engine's replicas. Prints the run's lines; returns the final
    evaluation."""
    cfg = run.config
    model = run.build_model()
    engine = SimulateEngine(
        run, run.num_params, threads=cfg.threads, device=cfg.device, model=model
    )
    announce(run, folder, "simulate")
    return Trainer(run, engine, folder, device=cfg.device, resume=resume, model=model).train()


def simulate(overrides: list[str] | tuple[str, ...], folder, *, quiet: bool = True) -> dict:
    """Run a whole training job in this process, as ``python -m byzshield.train
    engine=simulate OVERRIDES train_dir=FOLDER`` would (without Hydra's .hydra/ folder);
    returns the final evaluation. For notebooks and tests.

        >>> from byzshield.engines.simulate import simulate
        >>> simulate(["max_steps=5", "eval_freq=0"], "/tmp/sim")["top1"] > 0  # doctest: +SKIP
        True
    """
    import contextlib
    import io
    from pathlib import Path

    from byzshield.compute.networks import use_kernels
    from byzshield.config import build_run
    from byzshield.config.overrides import compose_config
    from byzshield.training.runfolder import PROGRESS, prepare, release

    PROGRESS.clear()  # a new command: what a Ctrl-C line reports is about this run
    config = compose_config([*overrides, f"train_dir={folder}"])
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    use_kernels(config.network.name)  # as a worker: one intra-op thread per replica
    try:
        run = build_run(config)
        folder, resume = prepare(Path(folder), run)  # the folder's lock, until the end
        try:
            out = io.StringIO()
            with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
                return train_simulated(run, folder, resume)
        finally:
            release(folder)
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn
