"""The server's vote on row indices (:func:`byzshield.server.vote.vote_positions`, through
tests/votes.py) agrees with the vote on the gathered copies."""

import pytest
import torch
from votes import vote_files, vote_rows


@pytest.mark.parametrize("seed", range(5))
def test_vote_rows_equals_vote_files_on_the_gathered_copies(seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(4, 64, generator=gen)
    # 30 rows drawn from 4 distinct values: groups of 5 copies with ties and majorities
    rows = values[torch.randint(0, 4, (30,), generator=gen)]
    groups = torch.stack([torch.randperm(30, generator=gen)[:5] for _ in range(7)])
    a, b = vote_rows(rows, groups), vote_files(rows[groups])
    assert torch.equal(a.winners, b.winners)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.counts, b.counts)
    assert torch.equal(a.strict, b.strict)


def test_vote_rows_outputs_byzantine_value_when_majority_corrupted():
    honest, bad = torch.ones(8), -100 * torch.ones(8)
    rows = torch.stack([honest, bad, bad, honest])
    out = vote_rows(rows, torch.tensor([[0, 1, 2], [0, 3, 1]]))
    assert torch.equal(out.winners[0], bad) and torch.equal(out.winners[1], honest)
    assert out.indices.tolist() == [1, 0] and out.counts.tolist() == [2, 2]


def test_vote_rows_rejects_out_of_range_indices():
    with pytest.raises(ValueError, match="out-of-range"):
        vote_rows(torch.zeros(3, 2), torch.tensor([[0, 3]]))


def test_vote_rows_rejects_groups_without_copies():
    with pytest.raises(ValueError, match="r >= 1"):
        vote_rows(torch.zeros(3, 2), torch.zeros(2, 0, dtype=torch.long))
