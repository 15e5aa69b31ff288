"""The lockstep engine's batched robust update, for the cases whose semantics it
reproduces: attacks none, ALIE, IPM, Min-Max, Min-Sum, Fang, rev_grad, sign_flip and
constant; the rules coord-median (also its median of means, bucketing by
``num_buckets``), trimmed mean and mean; the full vote, no stragglers and no detection.
The omniscient attack, the vote of every file and the rule run as tensor operations over
the runs of a chunk (:func:`fast_updates`). Any other configuration takes the general
robust update
(:class:`byzshield.server.update.RobustUpdate`), and so does a step of a fast run that
meets a case the batched code does not handle (a tied vote, a non-finite winner).

The choice is made on the objects the run holds (its built attack and aggregator), not
on its config options.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch
from torch import Tensor

from byzshield import attacks as attack_lib
from byzshield.aggregators import RULES, Aggregator, build_aggregator
from byzshield.aggregators.pre import Bucketing
from byzshield.attacks.strongest import fang_bounds, largest_root
from byzshield.compute.sampling import derive_seed
from byzshield.config import Run
from byzshield.server.metrics import step_metrics
from byzshield.server.wire import ReplyLayout

__all__ = ["FastUpdate", "fast_update", "fast_updates"]

_ELEMENTWISE = (attack_lib.ReverseGradient, attack_lib.SignFlip, attack_lib.Constant)

_OMNISCIENT = {
    attack_lib.ALittleIsEnough: "alie",
    attack_lib.InnerProductManipulation: "ipm",
    attack_lib.MinMax: "min_max",
    attack_lib.MinSum: "min_sum",
    attack_lib.Fang: "fang",
}
"""The omniscient attack classes with a batched form (by exact class), and the form."""

_RULES = {
    RULES["coord-median"]: "median",
    RULES["mean"]: "mean",
    RULES["trimmed-mean"]: "trimmed",
}
"""The rule classes with a batched form, and the form."""


class FastUpdate:
    """Attack simulation, vote and rule of one run as tensor operations that
    :func:`fast_updates` applies to many runs at once; built only for the cases whose
    semantics it reproduces (:func:`fast_update`)."""

    def __init__(self, run: Run, robust_update, d: int, kind: str, rule: str, buckets):
        p = run.placement
        self.run, self.kind, self.rule, self.buckets = run, kind, rule, buckets
        self.r, self.f, self.K = p.replication, p.num_files, p.num_workers
        self.incidence = torch.zeros(self.K, self.f)
        for w, files in enumerate(p.worker_files):
            self.incidence[w, list(files)] = 1.0
        attack = run.attack
        self.attack = attack
        self.omniscient = bool(attack.needs_honest)
        self.z = float(getattr(attack, "z_used", 0.0))
        self.ddof = int(getattr(attack, "ddof", 0))
        self.eps = float(getattr(attack, "eps", 0.0))
        self.over = getattr(attack, "over", "copies")
        self.direction = getattr(attack, "direction", None)  # Min-Max's and Min-Sum's
        self.b = float(getattr(attack, "b", 0.0))  # Fang's
        self.seed = run.config.seed
        self.rule_f = robust_update.rule.f
        self.outside = robust_update.rule.outside(self.f)
        self.bytes_in = p.num_workers * ReplyLayout(p.load, d).nbytes()  # as torchrun's

    def signature(self) -> tuple:
        """Runs with equal signatures are updated in one batch."""
        nb = None if self.buckets is None else self.buckets.num_buckets
        trim = (self.rule_f, self.outside) if self.rule == "trimmed" else None
        return (
            self.kind,
            self.rule,
            nb,
            self.ddof,
            self.over,
            self.direction,
            trim,
            self.f,
            self.r,
        )


def fast_update(run: Run, robust_update, d: int) -> FastUpdate | None:
    """The batched update for ``run``, or None when it needs the general robust update
    (other attacks and rules, pre-aggregations but the median's bucketing by count, the
    hierarchical form, the digest vote, stragglers, digest lies, detection and relabelling,
    an adversary that lies only where it wins or evades; the data-side attacks, label flip
    and the backdoor, whose Byzantine copies are gradients on other data)."""
    cfg = run.config
    if cfg.vote != "full" or cfg.stragglers or cfg.adversary.digest_lie != "none":
        return None
    adv = cfg.adversary
    if (cfg.detect, cfg.placement.relabel, adv.lie_on, adv.evade) != ("off", "none", "all", False):
        return None  # the general update reports the evidence the detector needs
    attack = run.attack
    if isinstance(attack, attack_lib.NoAttack) or run.q == 0:
        kind = "none"
    elif type(attack) in _OMNISCIENT:
        kind = _OMNISCIENT[type(attack)]
    elif isinstance(attack, _ELEMENTWISE):
        kind = "elementwise"
    else:
        return None
    aggregator: Aggregator = run.rule
    rule = _RULES.get(type(aggregator.rule))
    if rule is None or aggregator.hierarchical is not None:
        return None
    buckets = None
    if aggregator.pre:  # the median of means: one bucketing by count, nothing else
        (stage, *more) = aggregator.pre
        if rule != "median" or more or not isinstance(stage, Bucketing):
            return None
        if stage.num_buckets is None:
            return None
        if stage.num_buckets < run.placement.num_files:  # else one file a bucket
            buckets = stage
    return FastUpdate(run, robust_update, d, kind, rule, buckets)


@functools.cache
def _rule(name: str) -> Aggregator:
    return build_aggregator(name)


def _median(x: Tensor) -> Tensor:
    """Coordinate-wise median over dim 1 of (m, n, d), by the coord-median rule's own
    comparator networks on the (n, m * d) stack (the mean of the two middle values for
    even n); 3x torch.median here."""
    m, n, d = x.shape
    stack = x.permute(1, 0, 2).reshape(n, m * d)
    return _rule("coord-median")(stack, f=0).value.view(m, d)


def _trimmed_mean(x: Tensor, f: int, outside: bool) -> Tensor:
    """Coordinate-wise trimmed mean over dim 1 of (m, n, d) with f, by the trimmed-mean
    rule itself on the (n, m * d) stack: the bits of each run's own call."""
    m, n, d = x.shape
    stack = x.permute(1, 0, 2).reshape(n, m * d)
    return _rule("trimmed-mean")(stack, f=f, outside_guarantee=outside).value.view(m, d)


def _min_max_sum(honest: Tensor, kind: str, direction: str) -> tuple[Tensor, list[float]]:
    """Min-Max's or Min-Sum's vector mu + gamma p of each run, (m, 1, d), and the gammas:
    :func:`byzshield.attacks.strongest.min_max_gamma` and ``min_sum_gamma`` batched over
    the runs, in float64 (the simulate engine sums over reduction blocks instead: the
    gammas agree to float64 rounding)."""
    h = honest.to(torch.float64)
    m, f, d = h.shape
    mu = h.mean(dim=1)
    if direction == "unit_vec":
        size = mu.norm(dim=1, keepdim=True)
        p = torch.where(size > 0, -mu / size.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    elif direction == "sign":
        p = -torch.sign(mu)
    else:
        p = -h.std(dim=1, correction=1) if f > 1 else torch.zeros_like(mu)
    c = h - mu[:, None, :]
    gram = torch.bmm(c, c.transpose(1, 2)).numpy()
    proj = torch.bmm(c, p[:, :, None])[:, :, 0].numpy()
    pp = (p * p).sum(dim=1).numpy()
    sq = np.diagonal(gram, axis1=1, axis2=2)
    dist = np.clip(sq[:, :, None] + sq[:, None, :] - 2.0 * gram, 0.0, None)
    if kind == "min_max":
        bound = dist.max(axis=(1, 2))
        gamma = largest_root(pp[:, None], -2.0 * proj, sq - bound[:, None]).min(axis=1)
    else:
        bound = dist.sum(axis=2).max(axis=1)
        gamma = largest_root(f * pp, -2.0 * proj.sum(axis=1), sq.sum(axis=1) - bound)
    gamma = np.where((pp > 0) & np.isfinite(pp) & np.isfinite(gamma), gamma, 0.0)
    forged = mu + torch.from_numpy(gamma)[:, None] * p
    return forged.to(honest.dtype)[:, None, :], gamma.tolist()


def _fang(fasts: list[FastUpdate], honest: Tensor, counts: Tensor, steps) -> Tensor:
    """Fang's copies (m, f, d): each attacked file's row drawn from its generator as
    :meth:`byzshield.attacks.Fang.forge` draws it; the other rows are the honest ones."""
    h = honest.to(torch.float64)
    b = torch.tensor([fu.b for fu in fasts], dtype=torch.float64)[:, None]
    lo, hi = fang_bounds(h, b, dim=1)
    forged = honest.clone()
    d = honest.shape[2]
    for k, (fu, step) in enumerate(zip(fasts, steps, strict=True)):
        for j in torch.nonzero(counts[k] > 0).flatten().tolist():
            g = attack_lib.attack_generator(fu.seed, step, j)
            u = torch.rand(d, generator=g, dtype=torch.float64)
            forged[k, j] = (lo[k] + u * (hi[k] - lo[k])).to(honest.dtype)
    return forged


def fast_updates(fasts: list[FastUpdate], honest: Tensor, losses: Tensor, byz, steps):
    """The gradients (m, d) and per-run metrics of m runs sharing a signature, or None
    for a run (by position) whose step needs the general robust update. ``honest`` is
    (m, f, d) and finite, ``losses`` (m, f), ``byz`` the Byzantine sets, ``steps`` their
    steps. ALIE's and IPM's statistics are float32 here (float64 in the robust update):
    the forged vector agrees to float32 rounding."""
    head = fasts[0]
    m, f, d = honest.shape
    r = head.r
    t0 = time.perf_counter()
    bad = torch.zeros(m, head.K)
    for k, workers in enumerate(byz):
        if workers:
            bad[k, list(workers)] = 1.0
    counts = bad @ head.incidence  # (m, f) Byzantine holders of each file
    win = 2 * counts > r
    ok = ~(2 * counts == r).any(dim=1)  # a tie drops the file: the general update does it
    forged = None
    factors: list[float | None] = [None] * m  # what the attack reports as attack_factor
    if head.kind == "alie":
        z = torch.tensor([fu.z for fu in fasts])[:, None]
        mean = honest.sum(dim=1) / f
        dev = honest - mean[:, None, :]
        sigma = ((dev * dev).sum(dim=1) / (f - head.ddof)).sqrt_()
        forged = (mean + z * sigma)[:, None, :]
    elif head.kind == "ipm":
        eps = torch.tensor([fu.eps for fu in fasts])[:, None]
        mean = honest.sum(dim=1) / f
        if head.over == "copies":
            weights = r - counts  # honest copies of each file
            total = weights.sum(dim=1)
            weighted = torch.bmm(weights[:, None, :], honest)[:, 0] / total.clamp_min(1)[:, None]
            mean = torch.where(total[:, None] > 0, weighted, mean)
        forged = (mean * -eps)[:, None, :]
    elif head.kind in ("min_max", "min_sum"):
        forged, factors = _min_max_sum(honest, head.kind, head.direction)
    elif head.kind == "fang":
        forged = _fang(fasts, honest, counts, steps)
    elif head.kind == "elementwise":
        forged = torch.stack([fu.attack(h) for fu, h in zip(fasts, honest, strict=True)])
    t1 = time.perf_counter()
    if forged is None or not bool(win.any()):
        winners = honest
        differs = torch.zeros(m, f, dtype=torch.bool)
        if forged is not None:
            differs = (counts > 0) & (forged != honest).any(dim=2)
    else:
        ok &= torch.isfinite(forged).flatten(1).all(dim=1)
        differs = (forged != honest).any(dim=2)
        winners = torch.where(win[:, :, None], forged, honest)
    every = counts == r
    distorted = win & (differs | (every & (not head.omniscient)))
    # copies that lost their file's vote: honest holders where the Byzantine copies won,
    # Byzantine holders where they lost (only where the copies differ)
    lost_honest = (win & differs & ~every).to(torch.float32) @ head.incidence.T  # (m, K)
    lost_bad = (~win & differs & (counts > 0)).to(torch.float32) @ head.incidence.T
    lost = lost_honest * (1 - bad) + lost_bad * bad
    t2 = time.perf_counter()
    if head.rule == "mean":
        gradient = winners.sum(dim=1) / f
    elif head.rule == "trimmed":
        gradient = _trimmed_mean(winners, head.rule_f, head.outside)
    else:
        inputs = winners
        if head.buckets is not None:  # median of means: each run's own shuffle
            order = []
            for fu, step in zip(fasts, steps, strict=True):
                g = torch.Generator().manual_seed(
                    derive_seed("aggregate", fu.run.config.seed, step)
                )
                order.append(fu.buckets.split(range(f), g))
            sizes = {len(b) for groups in order for b in groups}
            if len(sizes) == 1:  # equal buckets: one gather
                (size,) = sizes
                index = torch.tensor([[j for b in groups for j in b] for groups in order])
                picked = winners.gather(1, index[:, :, None].expand(m, f, d))
                inputs = picked.view(m, f // size, size, d).sum(dim=2) / size
            else:
                inputs = torch.stack(
                    [
                        torch.stack([winners[k, list(b)].sum(dim=0) / len(b) for b in groups])
                        for k, groups in enumerate(order)
                    ]
                )
        gradient = _median(inputs)
    t3 = time.perf_counter()
    dist_rows = distorted.tolist()
    lost_rows = lost.tolist()
    loss_rows = losses.tolist()
    oks = ok.tolist()
    shares = {
        "attack_s": (t1 - t0) / m,
        "vote_s": (t2 - t1) / m,
        "aggregation_s": (t3 - t2) / m,
    }
    out = []
    for k, fu in enumerate(fasts):
        if not oks[k]:
            out.append(None)
            continue
        out.append(
            step_metrics(
                losses=loss_rows[k],
                distorted=[j for j, x in enumerate(dist_rows[k]) if x],
                dropped=0,  # a run with a tied file went to the general update (ok)
                lost={str(w): int(c) for w, c in enumerate(lost_rows[k]) if c},
                liars={},
                nonfinite=0,
                outside=fu.outside,
                factor=factors[k] if byz[k] else None,
                nbytes=fu.bytes_in,
                times={"receive_s": 0.0, **shares, "vote_tail_s": shares["vote_s"]},
            )
        )
    return gradient, out
