"""The worst-case search: brute force as the oracle, bounds, DETOX's closed form."""

import itertools
import random

import numpy as np
import pytest

from byzshield.design.bounds import distorted_files, naive_bound, spectral_bound
from byzshield.design.branch_and_bound import branch_and_bound, greedy, local_search
from byzshield.design.exhaustive import ClassSolver
from byzshield.design.placements import Placement, baseline, detox, mols, rama_one, rama_two
from byzshield.design.search import worst_case, worst_case_table
from byzshield.design.selection import detox_selection


def brute_force(p: Placement, q: int) -> int:
    """max over all q-sets of the number of distorted files (numpy, small K only)."""
    inc = p.incidence().astype(np.int16)
    best = 0
    for s in itertools.combinations(range(p.num_workers), q):
        best = max(best, int((inc[list(s)].sum(axis=0) >= p.threshold).sum()))
    return best


SMALL = [
    mols(3, 2),
    mols(4, 3),
    mols(5, 3),
    rama_two(3, 3),
    rama_two(6, 3),
    rama_one(2, 5),
    detox(9, 3),
    detox(8, 2),
    baseline(6),
]


@pytest.mark.parametrize("p", SMALL, ids=lambda p: p.describe().split(":")[0])
def test_worst_case_table_equals_brute_force_on_small_designs(p):
    q_max = min(p.num_workers, 8)
    rows = worst_case_table(p, q_max)
    assert [r.c_max for r in rows] == [brute_force(p, q) for q in range(q_max + 1)]
    for r in rows:
        assert r.certified and r.upper_bound == r.c_max
        assert len(r.byzantine) <= r.q
        assert len(distorted_files(p, r.byzantine)) == r.c_max


def _random_design(rng: random.Random) -> Placement:
    """A random regular design: r random perfect matchings-like classes (no symmetry)."""
    f = rng.choice([6, 8, 9])
    load = rng.choice([1, 2]) if f % 2 == 0 else 1
    r = rng.choice([2, 3, 4])
    workers = []
    for _ in range(r):
        files = list(range(f))
        rng.shuffle(files)
        workers += [tuple(files[i : i + load]) for i in range(0, f, load)]
    return Placement("custom", tuple(workers), f)


@pytest.mark.parametrize("seed", range(6))
def test_branch_and_bound_equals_brute_force_on_random_designs(seed):
    p = _random_design(random.Random(seed))
    for q in range(0, min(p.num_workers, 6) + 1):
        value, byz, certified, upper = branch_and_bound(p, q, time_budget=30)
        assert certified and value == upper == brute_force(p, q), q
        assert len(distorted_files(p, byz)) == value


def test_worst_case_without_classes_is_certified_by_branch_and_bound():
    p = Placement("custom", mols(5, 3).worker_files, 25)  # classes and symmetries dropped
    rows = worst_case_table(p, 7, time_budget=60)
    assert [r.c_max for r in rows] == [0, 0, 1, 3, 5, 8, 12, 14]
    assert all(r.certified and r.method == "branch-and-bound" for r in rows)


def test_search_that_runs_out_of_time_says_certified_false_and_gives_a_bound():
    p = Placement("custom", mols(7, 5).worker_files, 49)
    row = worst_case(p, 9, time_budget=0.3)
    assert not row.certified
    assert row.c_max <= row.upper_bound <= row.naive_bound
    assert len(distorted_files(p, row.byzantine)) == row.c_max


@pytest.mark.parametrize(("K", "r"), [(15, 3), (15, 5), (12, 4), (9, 3), (10, 2)])
def test_detox_matches_its_closed_form_min_q_div_rprime_groups(K, r):
    p = detox(K, r)
    rp = r // 2 + 1
    rows = worst_case_table(p, K)
    assert [row.c_max for row in rows] == [min(q // rp, K // r) for q in range(K + 1)]
    for q in range(K + 1):
        assert len(distorted_files(p, detox_selection(p, q, "worst"))) == min(q // rp, K // r)


@pytest.mark.parametrize(
    "p", [mols(5, 4), rama_two(5, 5), rama_one(4, 5)], ids=lambda p: p.describe().split(":")[0]
)
def test_symmetry_pruning_gives_the_same_table_as_the_full_enumeration(p):
    bare = Placement(p.approach, p.worker_files, p.num_files, classes=p.classes)
    q_max = p.num_workers // 2
    assert [r.c_max for r in worst_case_table(p, q_max)] == [
        r.c_max for r in worst_case_table(bare, q_max)
    ]


def test_mols_k35_is_certified_for_every_q_up_to_13():
    rows = worst_case_table(mols(7, 5), 13)
    assert [r.c_max for r in rows] == [0, 0, 0, 1, 1, 2, 4, 5, 8, 10, 11, 14, 16, 20]
    assert all(r.certified for r in rows)


@pytest.mark.slow
def test_mols_k35_without_symmetry_gives_the_same_table():
    p = mols(7, 5)
    bare = Placement("mols", p.worker_files, p.num_files, classes=p.classes)
    assert [r.c_max for r in worst_case_table(bare, 13, time_budget=600)] == [
        r.c_max for r in worst_case_table(p, 13)
    ]


@pytest.mark.parametrize(
    "p",
    [mols(5, 3), mols(7, 3), rama_two(5, 5), rama_one(3, 7), mols(4, 3), rama_two(10, 5)],
    ids=lambda p: p.describe().split(":")[0],
)
def test_naive_and_spectral_bounds_are_upper_bounds_of_c_max(p):
    q_max = min(p.num_workers, 12)
    for row in worst_case_table(p, q_max):
        assert row.c_max <= row.naive_bound == naive_bound(p, row.q)
        spec = spectral_bound(p, row.q)
        assert spec is not None and row.c_max <= spec


def test_spectral_bound_is_none_for_even_or_unit_replication():
    # For even r the paper's formula is no bound: MOLS l=3, r=2 has c_max(1) = 3.
    assert spectral_bound(mols(3, 2), 1) is None
    assert spectral_bound(baseline(5), 2) is None


def test_distorted_files_needs_r_prime_byzantine_copies():
    p = mols(5, 3)  # r' = 2; workers 0 and 5 (squares 0 and 1) share exactly one file
    shared = set(p.worker_files[0]) & set(p.worker_files[5])
    assert distorted_files(p, [0, 5]) == sorted(shared)
    assert distorted_files(p, [0, 1]) == []  # same square: disjoint files
    assert distorted_files(p, []) == []


@pytest.mark.parametrize("bad", [-1, 15, 2.0, "3", None])
def test_bad_worker_ids_are_rejected(bad):
    with pytest.raises(ValueError, match="Byzantine worker ids"):
        distorted_files(mols(5, 3), [0, bad])


@pytest.mark.parametrize("q", [-1, 16, 1.5, True])
def test_q_outside_zero_to_k_is_rejected(q):
    with pytest.raises(ValueError, match="0..K=15"):
        worst_case(mols(5, 3), q)


def test_time_budget_must_be_positive():
    with pytest.raises(ValueError, match="time_budget"):
        worst_case_table(mols(5, 3), 3, time_budget=0)


def test_uncertified_rows_report_a_set_between_greedy_and_the_exact_value():
    exact = [r.c_max for r in worst_case_table(mols(7, 5), 11)]
    bare = Placement("custom", mols(7, 5).worker_files, 49)
    rows = worst_case_table(bare, 11, time_budget=3)
    for row in rows:
        start = len(distorted_files(bare, greedy(bare, row.q)))
        assert start <= row.c_max <= exact[row.q] <= row.upper_bound
        assert len(distorted_files(bare, row.byzantine)) == row.c_max


def test_local_search_finds_the_exact_worst_case_on_all_but_one_q_of_mols_7_5():
    exact = [r.c_max for r in worst_case_table(mols(7, 5), 13)]
    bare = Placement("custom", mols(7, 5).worker_files, 49)
    found = [len(distorted_files(bare, local_search(bare, q, 60))) for q in range(14)]
    assert all(a <= b for a, b in zip(found, exact, strict=True))
    assert sum(a == b for a, b in zip(found, exact, strict=True)) >= 13, (found, exact)


def test_a_design_too_large_to_enumerate_falls_back_to_the_bounded_search():
    """mols l=29 has classes of 29 workers (2^29 subsets each): no 2^29 x f table is
    built, the search is branch and bound within its budget."""
    solver = ClassSolver(mols(29, 3))
    assert not solver.feasible() and solver.cover is None
