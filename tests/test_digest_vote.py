"""vote=digest: the digest-first vote gives the full vote's bits at a fraction of the
bytes, catches workers whose copy does not match their digest, and the wire format of
digests and pulls round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from byzshield.engines.simulate import simulate
from byzshield.server.digest import DIGEST_VALUES, digest, pack_digests, unpack_digests
from byzshield.server.wire import Pull, ReplyLayout

DESIGNS = {
    "mols": ("approach=mols", "approach.l=4", "approach.r=3", "batch_size=96"),
    "rama_two": ("approach=rama_two", "approach.m=3", "approach.s=3", "batch_size=90"),
    "draco_lite": ("approach=draco_lite", "approach.K=9", "approach.r=3", "mode=mean"),
    "baseline": ("approach=baseline", "approach.K=6", "batch_size=60", "mode=mean"),
}
COMMON = ("adversary.q=2", "max_steps=3", "eval_freq=3", "seed=3", "threads=1")
TIMES = {"compute_s", "communication_s", "attack_s", "vote_s", "aggregation_s"}
TIMES |= {"update_s", "step_s", "other_s", "vote_tail_s"}


def _run(folder: Path, *overrides: str) -> tuple[dict, list[dict]]:
    simulate((*COMMON, *overrides), folder)
    last = sorted((folder / "checkpoints").glob("step_*.pt"))[-1]
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return torch.load(last, weights_only=True)["model"], [r for r in rows if "event" not in r]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _strip(rows: list[dict], *more: str) -> list[dict]:
    drop = TIMES | {"bytes_received", *more}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("attack", ["rev_grad", "constant", "label_flip", "alie", "ipm"])
def test_digest_vote_gives_the_full_votes_bits_and_metrics(tmp_path, design, attack):
    ovs = (*DESIGNS[design], f"attack={attack}", "adversary.selection=worst_case")
    full, rows_full = _run(tmp_path / "full", *ovs, "vote=full")
    dig, rows_dig = _run(tmp_path / "digest", *ovs, "vote=digest")
    assert _equal(full, dig)
    assert _strip(rows_full) == _strip(rows_dig)
    assert all(r["digest_liars"] == {} for r in rows_dig)


@pytest.mark.parametrize("design", ["mols", "rama_two", "draco_lite"])
def test_digest_vote_receives_a_fraction_of_the_bytes(tmp_path, design):
    ovs = (*DESIGNS[design], "attack=alie")
    _, full = _run(tmp_path / "full", *ovs, "vote=full")
    _, dig = _run(tmp_path / "digest", *ovs, "vote=digest")
    for a, b in zip(full, dig, strict=True):  # r = 3 in all three: ~ one copy per file
        assert a["bytes_received"] / b["bytes_received"] >= 0.95 * 3


def test_the_bytes_follow_the_wire_format(tmp_path):
    """mols l=4 r=3 (K=12, f=16), no attack: 12 headers with 4 digests each, then one
    pull per worker holding a first copy of some file (one message each)."""
    _, rows = _run(tmp_path, *DESIGNS["mols"], "attack=none", "adversary.q=0", "vote=digest")
    _, full = _run(tmp_path / "full", *DESIGNS["mols"], "attack=none", "adversary.q=0")
    layout_full = full[0]["bytes_received"] // 12  # one reply: 4 * (header + 1 + 4d + 1)
    header = 2 + 4 + DIGEST_VALUES * 4
    d = (layout_full // 4 - (2 + 4 + 1) - 1) // 4
    from byzshield.design.placements import mols

    p = mols(4, 3)
    firsts: dict[int, int] = {}
    for ws in p.file_workers:
        firsts[ws[0]] = firsts.get(ws[0], 0) + 1
    expected = 12 * 4 * (header + 1) + sum(4 * (n * d + 1) for n in firsts.values())
    assert ReplyLayout(4, d, digests=True).nbytes() == 4 * (header + 1)
    assert all(r["bytes_received"] == expected for r in rows), (rows[0], expected)


@pytest.mark.parametrize("attack", ["rev_grad", "alie"])
def test_a_wrong_digest_with_a_correct_tensor_is_caught_and_the_full_votes_bits_kept(
    tmp_path, attack
):
    ovs = (*DESIGNS["mols"], f"attack={attack}", "adversary.digest_lie=honest_tensor")
    full, _ = _run(tmp_path / "full", *ovs, "vote=full")
    for verify in ("first", "majority"):
        dig, rows = _run(tmp_path / verify, *ovs, "vote=digest", f"digest_verify={verify}")
        assert _equal(full, dig), verify
        caught = {w for r in rows for w in r["digest_liars"]}
        assert caught and caught <= {str(w) for r in rows for w in r["byzantine"]}


@pytest.mark.parametrize("attack", ["rev_grad", "alie"])
def test_a_correct_digest_with_a_wrong_tensor_never_wins_and_majority_matches_full(
    tmp_path, attack
):
    """The liar claims the honest digest and sends its own copy: with digest_verify=first
    its copy is rejected whenever it is pulled, so it distorts at most what the full vote
    lets it; with digest_verify=majority the winners are the full vote's."""
    ovs = (*DESIGNS["mols"], f"attack={attack}", "adversary.digest_lie=honest_digest")
    full, rows_full = _run(tmp_path / "full", *ovs, "vote=full")
    maj, rows_maj = _run(tmp_path / "maj", *ovs, "vote=digest", "digest_verify=majority")
    assert _equal(full, maj)
    assert [r["distorted"] for r in rows_full] == [r["distorted"] for r in rows_maj]
    _, rows_first = _run(tmp_path / "first", *ovs, "vote=digest", "digest_verify=first")
    for a, b in zip(rows_full, rows_first, strict=True):
        assert b["distorted"] <= a["distorted"]
    bad = {str(w) for r in rows_maj for w in r["byzantine"]}
    assert {w for r in rows_maj for w in r["digest_liars"]} == bad  # all of them caught


def test_digests_and_pulls_round_trip_on_the_wire():
    rows = torch.randn(3, 5)
    rows[2] = rows[0]
    sums = [digest(r) for r in rows]
    assert sums[0] == sums[2] != sums[1] and len(sums[0]) == 32
    assert unpack_digests(pack_digests(sums)) == sums
    neg_zero = torch.tensor([0.0]), torch.tensor([-0.0])
    assert digest(neg_zero[0]) != digest(neg_zero[1])  # bits, not values
    layout = ReplyLayout(3, 5, digests=True)
    header = layout.pack_header(compute_s=0.25, losses=[1.0, 2.0, 3.0], digests=sums)
    back = layout.unpack_header(header)
    assert back.digests == tuple(sums) and back.losses == (1.0, 2.0, 3.0)
    assert back.length == 15 and header.numel() == layout.header_size + 1
    assert Pull.unpack(Pull(True, (True, False, True)).pack()) == Pull(True, (True, False, True))
    with pytest.raises(ValueError, match="digests"):
        layout.pack_header(compute_s=0.0, losses=[1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("vote=fast", "vote must be one of full, digest"),
        ("digest_verify=all", "digest_verify must be one of first, majority"),
        ("adversary.digest_lie=yes", "adversary.digest_lie must be one of none, honest_digest"),
    ],
)
def test_bad_vote_options_are_one_line(tmp_path, override, message):
    from byzshield.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match=message):
        simulate((*COMMON, override), tmp_path)


def _three_files():
    """Claims of three files with r = 3 (workers 0..8) and the pushed copies' digests:
    worker 6's bytes (x) are not the digest it claims (c)."""
    a, b, c, d, x = (bytes([k]) * 32 for k in range(5))
    claims = [[a, a, b], [c, b, b], [c, c, d]]
    holders = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    known = {(0, 0): a, (1, 0): c, (2, 0): x}
    return claims, holders, known, x


def test_the_digest_vote_pulls_only_what_verifies_a_winner_and_names_a_liar():
    from byzshield.server.vote import digest_vote

    claims, holders, known, x = _three_files()
    rounds = []

    def pull(requests):
        rounds.append(requests)
        return [claims[j][i] for j, i in requests]  # honest copies: bytes as claimed

    out = digest_vote(claims, holders, known, pull)
    assert rounds == [[(1, 1)]]  # file 0 is verified by its pushed copy, file 2 has no winner
    assert out.positions == [0, 1, 0] and out.trusted == [True, True, False]
    assert out.votes[2] == {0: x, 1: claims[2][1], 2: claims[2][2]} and out.liars == {6: 1}


def test_the_digest_vote_verifying_a_majority_pulls_every_copy_of_an_undecided_file():
    from byzshield.server.vote import digest_vote

    claims, holders, known, _ = _three_files()
    rounds = []

    def pull(requests):
        rounds.append(requests)
        return [claims[j][i] for j, i in requests]

    present = [[True] * 3, [True] * 3, [False, True, True]]  # worker 6's copy is erased
    out = digest_vote(claims, holders, known, pull, verify="majority", present=present)
    assert rounds == [[(0, 1), (1, 1), (1, 2), (2, 1), (2, 2)]]
    assert out.positions == [0, 1, 1] and out.trusted == [True, True, False]
    assert out.liars == {}  # an erased copy does not vote, so it cannot lie


def _claimed_copies(placement, truth, byz=(), scale=-5.0):
    """Copies as torchrun delivers them to the digest vote: every row's digest claimed
    (Byzantine rows scaled by ``scale``), and a fetch that records each round."""
    from byzshield.server.copies import Copies, copy_index
    from byzshield.server.vote import Rows

    K, l = placement.num_workers, placement.load
    rows = torch.empty(K * l, truth.shape[1])
    for w, fs in enumerate(placement.worker_files):
        for i, j in enumerate(fs):
            rows[w * l + i] = truth[j] * (scale if w in byz else 1.0)
    index = copy_index(placement)
    claims = [[digest(rows[int(r)]) for r in rs] for rs in index.tolist()]
    rounds: list[list[int]] = []
    copies = Copies(
        Rows(rows),
        index,
        torch.ones(index.shape, dtype=torch.float64),
        claims=claims,
        fetch=lambda wire: rounds.append(sorted(row for _, _, row in wire)),
    )
    return copies, rounds


def test_the_first_holders_copies_ride_with_the_digests_so_an_honest_step_pulls_nothing():
    from byzshield.attacks import make_attack
    from byzshield.config import MeanMode
    from byzshield.design.placements import mols
    from byzshield.server.copies import copy_index, pushed_slots
    from byzshield.server.update import RobustUpdate

    p = mols(5, 3)
    truth = torch.randn(p.num_files, 20, generator=torch.Generator().manual_seed(5))
    first = sorted(int(rs[0]) for rs in copy_index(p).tolist())
    pushed = sorted(w * p.load + i for w in range(p.num_workers) for i in pushed_slots(p, w))
    assert first == pushed  # what the workers push is what the vote takes as pushed

    def vote(byz):
        ru = RobustUpdate(p, make_attack("rev_grad"), MeanMode().build(), rule_f=0, seed=0)
        copies, rounds = _claimed_copies(p, truth, byz)
        return ru(copies, byz, step=0), rounds

    out, rounds = vote(())
    assert rounds == [first]  # the push and nothing else
    assert out.metrics["bytes_received"] == sum(
        4 * (len(pushed_slots(p, w)) * 20 + 1) for w in range(p.num_workers) if pushed_slots(p, w)
    )
    byz = (0, 1, 2)
    out, rounds = vote(byz)
    assert rounds[0] == first and len(rounds) == 2  # files whose first holder lost: pulled
    lost = {j for j, ws in enumerate(p.file_workers) if ws[0] in byz}
    won = set(out.metrics["distorted_files"])
    assert len(rounds[1]) == len(lost - won)
