"""Majority vote over replicas: exact bit agreement, deterministic no-majority policy."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from votes import VoteBatch, VoteResult, majority_vote, vote_files

from byzshield.server.vote import Rows, same_bits


def _rows(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_vote_outputs_honest_value_when_majority_honest():
    g = _rows([1.0, 2.0, 3.0])[0]
    result = majority_vote(torch.stack([g, -100 * g, g.clone()]))
    assert isinstance(result, VoteResult)
    assert torch.equal(result.winner, g)
    assert (result.index, result.count, result.strict, result.num_copies) == (0, 2, True, 3)


def test_vote_outputs_byzantine_value_when_majority_corrupted():
    g = _rows([1.0, 2.0])[0]
    bad = torch.full_like(g, -100.0)
    result = majority_vote(torch.stack([g, bad, bad.clone()]))
    assert torch.equal(result.winner, bad)
    assert (result.index, result.count, result.strict) == (1, 2, True)


def test_vote_without_strict_majority_picks_largest_group_then_lowest_index():
    a, b, c = _rows([1.0], [2.0], [3.0])
    # r = 4: groups {a: 2, b: 2}: a tie between equally large groups, a's first copy is 1.
    result = majority_vote(torch.stack([a, b, a, b]))
    assert torch.equal(result.winner, a) and result.index == 0
    assert (result.count, result.strict) == (2, False)
    # Largest group wins even when it is not first.
    result = majority_vote(torch.stack([c, a, b, b]))
    assert torch.equal(result.winner, b) and (result.index, result.count) == (2, 2)
    assert not result.strict  # 2 of 4 is not more than half


def test_vote_all_distinct_copies_returns_first_copy_not_strict():
    copies = _rows([3.0], [1.0], [2.0])
    result = majority_vote(copies)
    assert (result.index, result.count, result.strict) == (0, 1, False)


def test_vote_single_copy_is_a_strict_majority():
    result = majority_vote(_rows([5.0, 6.0]))
    assert (result.index, result.count, result.strict) == (0, 1, True)


def test_vote_is_exact_not_within_tolerance():
    g = _rows([1.0, 2.0])[0]
    nudged = torch.nextafter(g, torch.full_like(g, 10.0))  # one ulp away
    result = majority_vote(torch.stack([g, nudged, nudged.clone()]))
    assert torch.equal(result.winner, nudged) and result.count == 2


def test_vote_identical_nan_payloads_agree_and_zero_signs_differ():
    nan = _rows([float("nan"), 1.0])[0]
    result = majority_vote(torch.stack([_rows([0.0, 1.0])[0], nan, nan.clone()]))
    assert result.index == 1 and result.count == 2 and result.strict
    assert torch.isnan(result.winner[0])
    zeros = majority_vote(_rows([0.0], [-0.0], [-0.0]))
    assert zeros.index == 1 and zeros.count == 2


def test_vote_distinguishes_copies_that_differ_only_off_the_precheck_sample():
    g = torch.arange(100_000, dtype=torch.float32)
    other = g.clone()
    other[1] += 1  # index 1 is not on the stride-24 pre-check grid
    assert same_bits(g, g.clone()) and not same_bits(g, other)
    result = majority_vote(torch.stack([g, other, g.clone()]))
    assert result.count == 2 and result.index == 0


def test_same_bits_is_false_for_different_dtype_or_shape():
    g = torch.zeros(4)
    assert not same_bits(g, g.double())
    assert not same_bits(g, g.reshape(2, 2))


def test_vote_works_for_half_precision_and_non_contiguous_copies():
    base = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    copies = torch.stack([base.T, base.T.clone(), -base.T])  # rows are (3, 6), not contiguous
    result = majority_vote(copies)
    assert result.count == 2 and torch.equal(result.winner, base.T)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=9))
def test_vote_matches_brute_force_count(labels):
    values = torch.tensor([[float(v), -float(v)] for v in labels])
    result = majority_vote(values)
    counts = {v: labels.count(v) for v in labels}
    best = max(counts.values())
    expected = min(i for i, v in enumerate(labels) if counts[v] == best)
    assert (result.index, result.count) == (expected, best)
    assert result.strict == (2 * best > len(labels))
    assert torch.equal(result.winner, values[expected])


def test_vote_files_stacks_winners_and_reports_counts():
    g0, g1 = _rows([1.0, 1.0], [2.0, 2.0])
    bad = torch.full((2,), -100.0)
    files = [
        torch.stack([g0, g0.clone(), bad]),
        torch.stack([bad, bad.clone(), g1]),
        torch.stack([g1, bad, g0, g0.clone(), g1.clone()]),  # replication may differ
    ]
    batch = vote_files(files)
    assert isinstance(batch, VoteBatch)
    assert torch.equal(batch.winners, torch.stack([g0, bad, g1]))
    assert batch.counts.tolist() == [2, 2, 2] and batch.counts.dtype == torch.long
    assert batch.strict.tolist() == [True, True, False] and batch.strict.dtype == torch.bool
    assert batch.indices.tolist() == [0, 0, 0]
    assert not batch.all_strict and batch.num_files == 3


def test_vote_files_accepts_a_single_three_dimensional_tensor():
    copies = torch.zeros(4, 3, 5)
    batch = vote_files(copies)
    assert batch.winners.shape == (4, 5) and batch.all_strict


def test_vote_rejects_empty_or_mismatched_input():
    with pytest.raises(ValueError, match="r >= 1"):
        majority_vote(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="torch.Tensor"):
        majority_vote([[1.0]])
    with pytest.raises(ValueError, match="at least one file"):
        vote_files([])
    with pytest.raises(ValueError, match="file 1"):
        vote_files([torch.zeros(3, 4), torch.zeros(3, 5)])
    with pytest.raises(ValueError, match="dtype"):
        vote_files([torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.float64)])


@pytest.mark.parametrize("rows", [torch.zeros(3, 2), Rows(torch.zeros(2, 2), torch.ones(1, 2))])
def test_rows_gather_reads_across_blocks(rows):
    rows = rows if isinstance(rows, Rows) else Rows(rows)
    assert rows.gather([rows.num_rows - 1, 0]).shape == (2, 2)
