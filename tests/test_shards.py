"""A sharded parameter server (ps_shards=S) decides the bits one server decides.

Each test runs S servers as threads of this process
(:class:`byzshield.server.sharded.ShardedUpdate`) and compares them with the unsharded
:class:`byzshield.server.update.RobustUpdate` on the same copies: gradients with
``torch.equal``, every metric but timings and traffic with ``==``.
"""

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_step import received

from byzshield.aggregators import column_shard, reduction_block
from byzshield.aggregators.pairwise import PairwiseDistances
from byzshield.attacks import attack_generator, make_attack
from byzshield.config import ConfigError
from byzshield.config.modes import MODES
from byzshield.design.placements import detox, mols
from byzshield.design.search import worst_case
from byzshield.engines.simulate import simulate
from byzshield.server.sharded import Exchange, ShardedUpdate, ThreadPeers, shard_bounds
from byzshield.server.update import RobustUpdate
from byzshield.server.vote import copy_classes

TRAFFIC = ("bytes_received", "bytes_per_server", "control_bytes", "slice_bytes")


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith("_s") and k not in TRAFFIC}


def same_metrics(a: dict, b: dict) -> bool:
    a, b = comparable(a), comparable(b)
    nan = [k for k, v in a.items() if isinstance(v, float) and v != v]
    return all(b[k] != b[k] for k in nan) and {k: v for k, v in a.items() if k not in nan} == {
        k: v for k, v in b.items() if k not in nan
    }


def updates(p, attack, mode, kw, f=2, shards=(2, 4), d=None):
    def build(shard=None):
        return RobustUpdate(p, attack, MODES[mode](**kw).build(), rule_f=f, seed=3, shard=shard)

    return build(), {S: ShardedUpdate(p, d, S, build) for S in shards}


def byzantine_copies(p, truth, byz, attack, step):
    copies = received(p, truth)
    if not attack.needs_honest:
        for w in byz:
            for i, j in enumerate(p.worker_files[w]):
                own = truth[j].clone()
                copies.rows.blocks[0][w * p.load + i] = attack(
                    own, generator=attack_generator(3, step, j)
                )
    return copies


# --------------------------------------------------------------------------- the slices


@pytest.mark.parametrize("d", [257, 5_000, 61_706, 131_080, 11_173_962])
@pytest.mark.parametrize("S", [1, 2, 3, 4])
def test_shards_are_whole_reduction_blocks_that_cover_the_vector_balanced(d, S):
    block = reduction_block(d)
    if -(-d // block) < S:
        with pytest.raises(ValueError, match="more than the"):
            shard_bounds(d, S)
        return
    bounds = shard_bounds(d, S)
    assert bounds[0][0] == 0 and bounds[-1][1] == d and len(bounds) == S
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    assert all(lo % block == 0 and hi > lo for lo, hi in bounds)
    if d >= 4 * S * block:  # each cut within half a block of s d / S
        assert all(abs((hi - lo) - d / S) <= block for lo, hi in bounds)


def test_more_shards_than_blocks_is_refused_naming_the_most_allowed():
    with pytest.raises(ValueError, match=r"ps_shards=4 is more than the 3 blocks .* at most 3"):
        shard_bounds(3_000, 4)
    with pytest.raises(ValueError, match="ps_shards must be an integer >= 1, got 0"):
        shard_bounds(300, 0)


def test_sharded_distances_add_the_unsharded_partials_in_the_same_order():
    """The float64 Gram distances of S servers equal one server's bit for bit: each adds
    its blocks' partials to the running total of the servers before it."""
    x = np.random.default_rng(0).standard_normal((9, 20_000)).astype(np.float32) * 1e3
    whole = PairwiseDistances(x, range(9)).dist
    for S in (2, 4):
        exchanges = [Exchange(peers) for peers in ThreadPeers.group(S)]
        out = [None] * S

        def serve(s, lo, hi, exchanges=exchanges, out=out):
            with column_shard(exchanges[s].shard(lo, x.shape[1])):
                out[s] = PairwiseDistances(np.ascontiguousarray(x[:, lo:hi]), range(9)).dist

        threads = [
            threading.Thread(target=serve, args=(s, lo, hi))
            for s, (lo, hi) in enumerate(shard_bounds(x.shape[1], S))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for part in out:
            assert np.array_equal(part, whole)
        assert exchanges[0].sent == 9 * 9 * 8  # the running total, once, to the next server


# ------------------------------------------------------------------ rules and attacks

FAMILIES = [
    ("coord-median", {}),
    ("trimmed-mean", {}),
    ("mean", {"pre": [{"name": "bucketing", "num_buckets": 5}]}),
    ("sign-majority", {}),
    ("meamed", {}),
    ("multi-krum", {}),
    ("krum", {}),
    ("bulyan", {}),
    ("coord-median", {"pre": ["nnm"]}),
    ("multi-krum", {"pre": ["clipping"]}),
    ("geometric-median", {}),
    ("centered-clipping", {}),
    ("caf", {}),
    ("caf", {"power_iterations": 2}),
    ("smea", {}),
    ("mda", {}),
]


CASES = (
    [(m, kw, "rev_grad") for m, kw in FAMILIES]
    + [
        (m, {}, a)  # omniscient attacks: per-slice statistics, a reduced objective
        for m in ("coord-median", "multi-krum", "centered-clipping", "geometric-median")
        for a in ("alie", "optimal_ipm")
    ]
    + [  # whole-vector sums (gamma) and whole-vector draws (Fang), cut to each server
        ("coord-median", {}, "min_max"),
        ("multi-krum", {}, "min_sum"),
        ("trimmed-mean", {}, "fang"),
    ]
)


@pytest.mark.parametrize(
    "mode,kw,attack_name", CASES, ids=[f"{m}{kw or ''}-{a}" for m, kw, a in CASES]
)
def test_sharded_server_gives_the_unsharded_bits_for_every_rule_family(mode, kw, attack_name):
    p, d = mols(5, 3), 4_500  # 5 reduction blocks: S = 4 has whole ones
    attack = make_attack("alie", n=p.num_files, q=4) if attack_name == "alie" else None
    attack = attack or make_attack(attack_name)
    byz = worst_case(p, 4).byzantine
    whole, sharded = updates(p, attack, mode, kw, d=d)
    for step in range(2):  # twice: centered clipping's centre is state
        g = torch.Generator().manual_seed(step)
        truth = torch.randn(p.num_files, d, generator=g) * (1 + torch.arange(d) % 7)
        a = whole(byzantine_copies(p, truth, byz, attack, step), byz, step)
        for S, update in sharded.items():
            b = update(byzantine_copies(p, truth, byz, attack, step), byz, step)
            assert torch.equal(a.gradient, b.gradient), (S, step)
            assert same_metrics(a.metrics, b.metrics), (S, step)
    for update in sharded.values():  # the rule's state, put together, is one server's
        state = update.state_dict()
        assert state.keys() == whole.state_dict().keys()
        assert all(torch.equal(v, whole.state_dict()[k]) for k, v in state.items())
        update.close()


def test_the_means_finite_shortcut_is_decided_on_every_shards_columns():
    """The mean skips its non-finite scan when its value is finite; sharded, a row that is
    Inf only in the last server's columns must be dropped on every server, as unsharded."""
    p, d = mols(5, 3), 4_500
    truth = torch.randn(p.num_files, d, generator=torch.Generator().manual_seed(4))
    truth[6, d - 1] = math.inf  # file 6: non-finite on the last shard only
    whole, sharded = updates(p, make_attack("rev_grad"), "mean", {}, f=2, d=d)
    a = whole(received(p, truth), (), 0)
    assert a.metrics["nonfinite_winners"] == 1
    assert torch.isfinite(a.gradient).all()
    for S, update in sharded.items():
        b = update(received(p, truth), (), 0)
        assert torch.equal(a.gradient, b.gradient), S
        assert same_metrics(a.metrics, b.metrics), S
        update.close()


# -------------------------------------------------------------------------- the vote


def split_liars(d):
    """detox(6, 3): workers 0 and 1, two of file 0's three holders, each forge a
    different server's slice and send the other server the honest one."""
    p = detox(6, 3)
    truth = torch.randn(2, d, generator=torch.Generator().manual_seed(0))
    (_, cut), _ = shard_bounds(d, 2)
    copies = received(p, truth)
    rows = copies.rows.blocks[0]
    rows[0, cut:] *= -5  # worker 0: honest to server 0, forged to server 1
    rows[1, :cut] *= -5  # worker 1: forged to server 0, honest to server 1
    return p, truth, copies, cut


def test_split_vote_liars_are_judged_on_the_whole_vector_as_one_server_judges_them():
    d = 2048
    p, truth, copies, cut = split_liars(d)
    # each server alone sees a strict honest majority of file 0 (2 of 3 copies agree)...
    for lo, hi in ((0, cut), (cut, d)):
        part = copies.rows.blocks[0][:, lo:hi]
        labels = copy_classes(part, copies.index)[0]
        assert max(labels.count(k) for k in set(labels)) == 2
    # ...but no two copies of file 0 agree on every slice: it is dropped, as unsharded
    whole, sharded = updates(p, make_attack("rev_grad"), "mean", {}, f=0, shards=(2,), d=d)
    a = whole(split_liars(d)[2], (0, 1), 0)
    b = sharded[2](split_liars(d)[2], (0, 1), 0)
    assert a.metrics["non_strict_files"] == b.metrics["non_strict_files"] == 1
    assert torch.equal(a.gradient, b.gradient) and torch.equal(b.gradient, truth[1])
    assert same_metrics(a.metrics, b.metrics)


def test_colluding_liars_that_forge_the_same_split_win_the_file_on_every_server():
    d = 2048
    p, truth, copies, cut = split_liars(d)
    rows = copies.rows.blocks[0]
    rows[1] = rows[0]  # worker 1 now sends worker 0's split copy: a strict majority
    whole, sharded = updates(p, make_attack("rev_grad"), "mean", {}, f=0, shards=(2,), d=d)
    a = whole(copies, (0, 1), 0)
    p, truth, again, cut = split_liars(d)
    again.rows.blocks[0][1] = again.rows.blocks[0][0]
    b = sharded[2](again, (0, 1), 0)
    assert b.metrics["distorted_files"] == a.metrics["distorted_files"] == [0]
    assert b.metrics["lost_votes"] == a.metrics["lost_votes"] == {"2": 1}
    assert torch.equal(a.gradient, b.gradient)


def test_erased_copies_vote_the_same_on_a_sharded_server():
    p, d = mols(5, 3), 4_500
    truth = torch.randn(p.num_files, d, generator=torch.Generator().manual_seed(4))
    attack = make_attack("rev_grad")
    byz = worst_case(p, 3).byzantine
    gone = {w for w in range(p.num_workers) if w not in byz}
    gone = set(sorted(gone)[:2])
    present = torch.tensor([[w not in gone for w in ws] for ws in p.file_workers])
    whole, sharded = updates(p, attack, "coord-median", {}, d=d)
    first = byzantine_copies(p, truth, byz, attack, 0)
    first.present = present
    a = whole(first, byz, 0)
    for update in sharded.values():
        copies = byzantine_copies(p, truth, byz, attack, 0)
        copies.present = present
        b = update(copies, byz, 0)
        assert torch.equal(a.gradient, b.gradient) and same_metrics(a.metrics, b.metrics)


class LosesItsDisk:
    """A rule that fails while ``broken`` (and is the rule it wraps otherwise)."""

    def __init__(self, rule):
        self.rule, self.broken = rule, True

    def __getattr__(self, name):
        return getattr(self.rule, name)

    def __call__(self, *args, **kwargs):
        if self.broken:
            raise RuntimeError("server 2 lost its disk")
        return self.rule(*args, **kwargs)


def test_a_server_that_fails_releases_the_others_and_its_error_is_raised():
    p, d = mols(5, 3), 4_500
    truth = torch.randn(p.num_files, d, generator=torch.Generator().manual_seed(5))
    disk = LosesItsDisk(MODES["multi-krum"]().build())
    third = shard_bounds(d, 4)[2][0]

    def build(shard):
        rule = disk if shard.offset == third else MODES["multi-krum"]().build()
        return RobustUpdate(p, make_attack("rev_grad"), rule, rule_f=2, seed=3, shard=shard)

    update = ShardedUpdate(p, d, 4, build)
    with pytest.raises(RuntimeError, match="server 2 lost its disk"):
        update(received(p, truth), (), 0)
    disk.broken = False
    assert torch.isfinite(update(received(p, truth), (), 1).gradient).all()  # usable again
    update.close()


# --------------------------------------------------------------- the simulate engine


def run_folder(tmp_path: Path, S: int, extra=()) -> tuple[dict, list[dict]]:
    folder = tmp_path / f"s{S}"
    simulate(
        [
            "approach=mols",
            "mode=multi-krum",
            "attack=alie",
            "adversary.q=3",
            "max_steps=6",
            "eval_freq=3",
            f"ps_shards={S}",
            *extra,
        ],
        folder,
    )
    state = torch.load(sorted((folder / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return state, [x for x in lines if "event" not in x]


def test_simulate_engine_with_shards_trains_the_same_bits_and_reports_bytes_per_server(
    tmp_path,
):
    base, lines = run_folder(tmp_path, 1)
    for S in (2, 4):
        state, sharded = run_folder(tmp_path, S)
        assert all(torch.equal(v, state["model"][k]) for k, v in base["model"].items())
        assert [comparable(x) for x in sharded] == [comparable(x) for x in lines]
        per_server = sharded[0]["bytes_per_server"]
        assert len(per_server) == S
        total = lines[0]["bytes_received"]  # one server's: every gradient whole
        assert all(abs(b - total / S) <= 0.05 * total / S for b in per_server)
        assert 0 < sharded[0]["control_bytes"] < 0.05 * total


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["ps_shards=0"], "ps_shards must be an integer >= 1, got 0"),
        (["ps_shards=2", "vote=digest"], "ps_shards=2 runs the full vote only"),
        (
            ["ps_shards=2", "engine=lockstep"],
            "ps_shards=2 runs in the simulate and torchrun engines",
        ),
    ],
)
def test_shard_settings_it_cannot_run_are_refused_in_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        simulate(["max_steps=1", *overrides], tmp_path / "x")


# -------------------------------------------------------------- the torchrun engine

RAMA = ("approach=rama_two", "approach.m=3", "approach.s=3", "batch_size=90")  # K=9, f=9


def torchrun_threads(overrides, folder, **kw):
    from threaded import run_threaded

    result, errors = run_threaded(list(overrides), folder, **kw)
    assert not errors and isinstance(result, dict), (result, errors)
    return result


def checkpoint(folder: Path) -> dict:
    return torch.load(sorted((folder / "checkpoints").glob("*.pt"))[-1], weights_only=True)


def steps_of(folder: Path) -> list[dict]:
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "event" not in x]


def assert_same_bits(a: Path, b: Path, *, traffic: bool = False) -> None:
    sa, sb = checkpoint(a), checkpoint(b)
    for part in ("model", "aggregator"):
        assert sa[part].keys() == sb[part].keys()
        assert all(torch.equal(v, sb[part][k]) for k, v in sa[part].items()), part

    def keep(m: dict) -> dict:
        return {k: v for k, v in m.items() if not k.endswith("_s")} if traffic else comparable(m)

    assert [keep(x) for x in steps_of(a)] == [keep(x) for x in steps_of(b)]


@pytest.mark.parametrize(
    "S,extra",
    [
        (2, ("mode=centered-clipping", "attack=alie", "stragglers=1")),
        (3, ("mode=bulyan", "attack=rev_grad", "aggregator_f=1")),
        (2, ("mode=trimmed-mean", "attack=min_max")),  # scalar sums (||mu||) over gloo
    ],
)
def test_torchrun_sharded_servers_give_the_bits_of_one_server_and_of_simulate(tmp_path, S, extra):
    """Ranks 0..S-1 the servers, S..S+K-1 the workers (as threads over gloo: the code of
    real processes): the same parameters, rule state and metrics as one server, and the
    same traffic as the simulate engine's S servers."""
    ovs = (*RAMA, *extra, "adversary.q=2", "max_steps=4", "eval_freq=2")
    torchrun_threads((*ovs, f"ps_shards={S}"), tmp_path / "torchrun")
    simulate(ovs, tmp_path / "one")
    simulate((*ovs, f"ps_shards={S}"), tmp_path / "simulate")
    assert_same_bits(tmp_path / "torchrun", tmp_path / "one")
    assert_same_bits(tmp_path / "torchrun", tmp_path / "simulate", traffic=True)
    first = steps_of(tmp_path / "torchrun")[0]
    assert len(first["bytes_per_server"]) == S and first["control_bytes"] > 0
    assert first["slice_bytes"] > 0


def test_a_sharded_torchrun_run_resumes_to_the_bits_of_an_uninterrupted_one(tmp_path):
    """The rule's state (centered clipping's centre) is gathered into server 0's
    checkpoint and cut again for the other servers on resume, with S = 2 then S = 3."""
    ovs = (*RAMA, "mode=centered-clipping", "attack=alie", "adversary.q=2", "eval_freq=2")
    simulate((*ovs, "max_steps=4"), tmp_path / "whole")
    torchrun_threads((*ovs, "max_steps=2", "ps_shards=2"), tmp_path / "resumed")
    torchrun_threads((*ovs, "max_steps=4", "ps_shards=3"), tmp_path / "resumed")
    assert [x["step"] for x in steps_of(tmp_path / "resumed")] == [0, 1, 2, 3]
    assert_same_bits(tmp_path / "resumed", tmp_path / "whole")


def test_a_split_vote_liar_over_torchrun_is_judged_as_one_server_judges_it(tmp_path, monkeypatch):
    """Worker 0 sends server 0 its honest columns and server 1 forged ones; every server
    sees the whole-vector forgery, as the simulate engine's servers and one server do."""
    from byzshield.engines.torchrun import worker

    honest_send = worker._ShardReplies.send

    def lying_send(self, comm, payload, *, compute_s, losses):
        if comm.worker == 0:
            lo, hi, _ = self.parts[1]
            payload = payload.clone()
            payload[:, lo:hi] *= -3
        honest_send(self, comm, payload, compute_s=compute_s, losses=losses)

    monkeypatch.setattr(worker._ShardReplies, "send", lying_send)
    ovs = (*RAMA, "mode=coord-median", "attack=none", "adversary.q=0", "max_steps=2")
    torchrun_threads((*ovs, "ps_shards=2", "eval_freq=0"), tmp_path / "torchrun")
    # server 0 saw worker 0's columns agree: it learns the disagreement from server 1
    lost = [x["lost_votes"] for x in steps_of(tmp_path / "torchrun")]
    assert lost == [{"0": 3}, {"0": 3}]  # every copy of worker 0 lost its vote
    simulate((*ovs, "eval_freq=0"), tmp_path / "honest")  # the honest majorities won
    model = checkpoint(tmp_path / "honest")["model"]
    assert all(
        torch.equal(v, checkpoint(tmp_path / "torchrun")["model"][k]) for k, v in model.items()
    )
