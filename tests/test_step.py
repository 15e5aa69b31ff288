"""The robust update and the shared evaluation in one process (no process group)."""

import pytest
import torch

from byzshield.attacks import make_attack
from byzshield.config import MeanMode, MultiKrumMode
from byzshield.design.bounds import distorted_files
from byzshield.design.placements import detox, mols, rama_two
from byzshield.design.search import worst_case
from byzshield.server.copies import Copies, copy_index
from byzshield.server.update import RobustUpdate
from byzshield.server.vote import Rows


def received(placement, truth, losses=None):
    """Copies as honest torchrun workers send them: a (K * l, d) stack of file gradients."""
    K, l = placement.num_workers, placement.load
    rows = torch.empty(K * l, truth.shape[1])
    for w, fs in enumerate(placement.worker_files):
        for i, j in enumerate(fs):
            rows[w * l + i] = truth[j]
    index = copy_index(placement)
    losses = torch.ones(index.shape, dtype=torch.float64) if losses is None else losses
    return Copies(Rows(rows), index, losses)


def update(placement, attack=None, mode=None, f=0):
    attack = attack or make_attack("rev_grad")
    return RobustUpdate(placement, attack, (mode or MeanMode()).build(), rule_f=f, seed=0)


def test_vote_removes_every_file_the_byzantine_set_does_not_control():
    p = mols(5, 3)
    truth = torch.randn(p.num_files, 50, generator=torch.Generator().manual_seed(0))
    byz = worst_case(p, 4).byzantine
    copies = received(p, truth)
    for w in byz:
        copies.rows.blocks[0][w * p.load : (w + 1) * p.load] *= -100
    out = update(p)(copies, byz, step=0)
    m = out.metrics
    assert m["distorted_files"] == distorted_files(p, byz) and m["distorted"] == 5
    bad = torch.zeros(p.num_files, dtype=torch.bool)
    bad[m["distorted_files"]] = True
    expected = torch.cat([truth[~bad], -100 * truth[bad]]).mean(dim=0)
    assert torch.allclose(out.gradient, expected, atol=1e-5)
    assert m["all_strict"] and m["non_strict_files"] == 0


def test_omniscient_alie_gives_every_byzantine_copy_one_value_and_distorts_c_max_files():
    p = rama_two(5, 5)
    truth = torch.randn(p.num_files, 40, generator=torch.Generator().manual_seed(1))
    byz = worst_case(p, 6).byzantine
    attack = make_attack("alie", n=p.num_files, q=4)
    ru = update(p, attack)
    copies = received(p, truth)
    index, rows = ru.omniscient.forge(copies.rows, copies.index, set(byz), step=0)
    mu, sigma = truth.double().mean(0), truth.double().std(0)
    alie = (mu + attack.z_used * sigma).float()
    for j, ws in enumerate(p.file_workers):
        for i, w in enumerate(ws):
            assert torch.equal(rows[int(index[j, i])], alie if w in byz else truth[j])
    out = ru(received(p, truth), byz, step=0)
    assert out.metrics["distorted_files"] == distorted_files(p, byz)
    assert out.metrics["attack_s"] > 0


def test_step_loss_is_the_mean_of_the_losses_reported_with_each_winner():
    p = detox(6, 3)  # 2 files, holders (0, 1, 2) and (3, 4, 5)
    truth = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    losses = torch.tensor([[1.0, 1.0, 99.0], [3.0, 3.0, 3.0]], dtype=torch.float64)
    copies = received(p, truth, losses)
    copies.rows.blocks[0][2] *= -1  # worker 2 lies about file 0 and its loss: it loses
    out = update(p)(copies, (), step=0)
    assert out.metrics["loss"] == 2.0 and out.metrics["distorted"] == 0


def test_copies_sharing_one_row_need_no_comparison_and_give_the_same_vote():
    p = mols(3, 2)
    truth = torch.randn(p.num_files, 16, generator=torch.Generator().manual_seed(3))
    shared = Copies(
        Rows(truth.clone()),
        torch.arange(p.num_files)[:, None].repeat(1, p.replication),
        torch.ones(p.num_files, p.replication, dtype=torch.float64),
    )
    a = update(p, mode=MultiKrumMode())(received(p, truth), (), 0)
    b = update(p, mode=MultiKrumMode())(shared, (), 0)
    assert torch.equal(a.gradient, b.gradient)


def test_non_omniscient_attack_with_no_honest_holder_counts_as_distorted():
    p = detox(6, 3)
    truth = torch.randn(2, 8, generator=torch.Generator().manual_seed(4))
    copies = received(p, truth)
    copies.rows.blocks[0][:3] *= -100  # group 0 entirely Byzantine
    out = update(p)(copies, (0, 1, 2), step=0)
    assert out.metrics["distorted_files"] == [0]


def test_bucketed_median_reshuffles_every_step_from_seed_and_step():
    from byzshield.config import CoordMedianMode

    p = mols(5, 3)
    truth = torch.randn(p.num_files, 32, generator=torch.Generator().manual_seed(5))
    ru = update(p, mode=CoordMedianMode(num_buckets=5), f=1)
    a0 = ru(received(p, truth), (), step=0).gradient
    a1 = ru(received(p, truth), (), step=1).gradient
    again = update(p, mode=CoordMedianMode(num_buckets=5), f=1)(received(p, truth), (), 0)
    assert not torch.equal(a0, a1) and torch.equal(a0, again.gradient)


def test_optimal_alie_does_at_least_the_damage_of_a_fixed_z_through_the_vote():
    from byzshield.config import CoordMedianMode

    p = mols(5, 3)
    truth = torch.randn(p.num_files, 40, generator=torch.Generator().manual_seed(6))
    byz = worst_case(p, 5).byzantine  # c_max = 8
    mean = truth.double().mean(0)

    def damage(attack):
        g = update(p, attack, mode=CoordMedianMode(), f=8)(received(p, truth), byz, 0).gradient
        return float(torch.linalg.vector_norm(g.double() - mean))

    optimal = make_attack("optimal_alie")
    assert damage(optimal) >= damage(make_attack("alie", z=1.0)) > 0
    assert optimal.last_factor is not None


def test_ipm_in_the_step_averages_over_the_honest_copies():
    p = detox(6, 3)  # files 0 and 1; worker 0 holds a copy of file 0
    truth = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ru = update(p, make_attack("ipm", eps=1.0))
    copies = received(p, truth)
    index, rows = ru.omniscient.forge(copies.rows, copies.index, {0}, step=0)
    expected = torch.tensor([-0.4, -0.6])  # -(2 * file 0 + 3 * file 1) / 5 honest copies
    assert torch.allclose(rows[int(index[0, 0])], expected)


def test_an_unflagged_liar_is_seen_in_lost_votes():
    p = mols(5, 3)
    truth = torch.randn(p.num_files, 20, generator=torch.Generator().manual_seed(7))
    copies = received(p, truth)
    copies.rows.blocks[0][6 * p.load : 7 * p.load] *= -100  # worker 6 lies, nobody flagged it
    m = update(p)(copies, (), step=0).metrics
    assert m["distorted"] == 0 and m["lost_votes"] == {"6": p.load}


def test_erasures_vote_over_the_copies_that_arrived_and_need_a_strict_majority_of_r():
    p = mols(5, 3)
    truth = torch.randn(p.num_files, 20, generator=torch.Generator().manual_seed(8))
    copies = received(p, truth)
    present = torch.ones(p.num_files, 3, dtype=torch.bool)
    present[0, :2] = False  # file 0: one copy of three arrived: not a majority of r
    present[1, 0] = False  # file 1: two agreeing copies of three: trusted
    copies.present = present
    out = update(p)(copies, (), step=0)
    assert out.metrics["non_strict_files"] == 1
    expected = truth[1:].mean(dim=0)
    assert torch.allclose(out.gradient, expected, atol=1e-6)


def _arriving(copies, order, log):
    """``copies`` with its payloads 'on the wire': worker w's rows hold garbage until
    the update asks for the next arrival, which fills them in ``order``."""
    p_rows = copies.rows.blocks[0]
    real = p_rows.clone()
    p_rows.fill_(float("nan"))
    load = p_rows.shape[0] // len(order)

    def arrivals():
        for w in order:
            p_rows[w * load : (w + 1) * load] = real[w * load : (w + 1) * load]
            log.append(w)
            yield w

    copies.arrivals = arrivals()
    return copies


@pytest.mark.parametrize(
    ("design", "attack", "q", "erase"),
    [
        (mols(5, 3), "rev_grad", 3, ()),
        (mols(5, 3), "constant", 4, (7,)),
        (rama_two(5, 5), "alie", 4, ()),
        (detox(15, 3), "rev_grad", 2, (0, 1)),
        (detox(6, 1), "rev_grad", 2, (3,)),  # the baseline: one copy per file
    ],
)
def test_voting_files_as_their_copies_arrive_gives_the_bits_of_voting_all_at_once(
    design, attack, q, erase
):
    p = design
    truth = torch.randn(p.num_files, 30, generator=torch.Generator().manual_seed(7))
    byz = worst_case(p, q).byzantine
    made = make_attack(attack, n=p.num_files, q=q) if attack == "alie" else make_attack(attack)

    def copies():
        losses = torch.rand(p.num_files, p.replication, generator=torch.Generator().manual_seed(2))
        c = received(p, truth, losses.double())
        if not made.needs_honest:
            for w in byz:
                c.rows.blocks[0][w * p.load : (w + 1) * p.load] *= -7
        if erase:
            c.present = torch.tensor([[w not in erase for w in ws] for ws in p.file_workers])
        return c

    expected = update(p, made)(copies(), byz, step=3)
    order = torch.randperm(p.num_workers, generator=torch.Generator().manual_seed(1)).tolist()
    log: list[int] = []
    arriving = _arriving(copies(), order, log)
    got = update(p, made)(arriving, byz, step=3)
    assert log == order and arriving.arrivals is None  # every payload was taken
    m = got.metrics
    assert 0 <= m["vote_tail_s"] <= m["vote_s"] + 1e-3 and m["receive_s"] > 0
    assert torch.equal(got.gradient, expected.gradient)
    times = {"attack_s", "vote_s", "vote_tail_s", "aggregation_s", "receive_s"}
    assert {k: v for k, v in got.metrics.items() if k not in times} == {
        k: v for k, v in expected.metrics.items() if k not in times
    }


def test_a_file_is_voted_when_its_last_copy_lands_not_after_every_payload():
    p = detox(6, 3)  # files 0 (workers 0, 1, 2) and 1 (workers 3, 4, 5)
    truth = torch.randn(2, 5, generator=torch.Generator().manual_seed(3))
    copies = received(p, truth)
    ru = update(p)
    seen = []

    def arrivals():
        for w in range(6):
            winners = ru._winners
            seen.append(None if winners is None else winners[0].clone())
            yield w

    copies.arrivals = arrivals()
    out = ru(copies, (), step=0)
    assert not any(s is not None and torch.equal(s, truth[0]) for s in seen[:3])
    assert all(torch.equal(s, truth[0]) for s in seen[3:])  # voted before 3, 4, 5 landed
    assert torch.allclose(out.gradient, truth.mean(0))


def _digested(copies: Copies) -> Copies:
    """The copies with each sender's digest (vote=digest), every row already received."""
    from byzshield.server.digest import digest

    rows, table = copies.rows, copies.index.tolist()
    copies.claims = [[digest(rows[r]) for r in rs] for rs in table]
    return copies


@pytest.mark.parametrize(
    ("attack", "vote", "lie"),
    [
        ("alie", "full", "none"),
        ("ipm", "full", "none"),
        ("rev_grad", "full", "honest_tensor"),
        ("alie", "digest", "none"),
        ("rev_grad", "digest", "honest_digest"),
    ],
)
def test_an_erased_workers_rows_are_never_read(attack, vote, lie):
    """A dropped worker's buffer may still be written by gloo (a late message): the
    vote, the omniscient attack, the distorted count and the digest lies read only copies
    that arrived. Garbage in an erased worker's rows changes nothing."""
    p = detox(9, 3)  # files 0, 1, 2: holders (0, 1, 2), (3, 4, 5), (6, 7, 8)
    truth = torch.randn(p.num_files, 12, generator=torch.Generator().manual_seed(6))
    byz, gone = (0, 2, 3), (1, 6)  # 1 and 6: the first honest holders of files 0 and 2
    present = torch.tensor([[w not in gone for w in ws] for ws in p.file_workers])
    outcomes = []
    for fill in (None, float("nan")):
        copies = received(p, truth)
        if fill is not None:
            for w in gone:
                copies.rows.blocks[0][w * p.load : (w + 1) * p.load] = fill
        if vote == "digest":
            copies = _digested(copies)
            for j, ws in enumerate(p.file_workers):
                for i, w in enumerate(ws):
                    if w in gone and fill is not None:
                        copies.claims[j][i] = b"garbage"
        copies.present = present
        ru = RobustUpdate(
            p,
            make_attack(attack, n=p.num_files, q=1) if attack == "alie" else make_attack(attack),
            MeanMode().build(),
            rule_f=0,
            seed=0,
            lie=lie,
        )
        outcomes.append(ru(copies, byz, step=0))
    clean, dirty = outcomes
    assert torch.equal(clean.gradient, dirty.gradient)
    assert torch.isfinite(dirty.gradient).all()
    keys = [k for k in clean.metrics if not k.endswith("_s")]
    assert {k: dirty.metrics[k] for k in keys} == {k: clean.metrics[k] for k in keys}
