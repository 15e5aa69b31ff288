"""Robust aggregators: hand-computed cases, properties, NaN/Inf, n-vs-f refusals, ByzFL."""

import itertools
import math
import multiprocessing
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzshield.aggregators import AGGREGATORS, RULES, AggregateResult, aggregate, build_aggregator
from byzshield.aggregators.columns import BLOCK_COLUMNS
from byzshield.aggregators.order import apply_network, selection_network, sorting_network
from byzshield.aggregators.pairwise import PairwiseDistances

NAMES = [
    "coord-median",
    "multi-krum",
    "bulyan",
    "mean",
    "trimmed-mean",
    "geometric-median",
    "centered-clipping",
    "sign-majority",
    "krum",
    "mda",
    "monna",
    "meamed",
    "caf",
    "smea",
]
# Rules whose output stays inside the honest per-coordinate range whatever f inputs say.
RANGE_ROBUST = ["coord-median", "multi-krum", "bulyan", "trimmed-mean", "krum", "mda", "meamed"]
RANGE_ROBUST += ["caf", "smea"]


def col(*values):
    """A (n, 1) stack from scalars."""
    return torch.tensor([[float(v)] for v in values])


def rand(n, d, seed=0, scale=1.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * scale


def max_f(name, n):
    """Largest f the rule accepts for n inputs (the requirement table)."""
    if name in ("multi-krum", "krum"):
        return (n - 3) // 2
    if name == "bulyan":
        return (n - 3) // 4
    if name == "mean":
        return n  # any f
    return (n - 1) // 2


# ---------------------------------------------------------------------------- registry


def test_registry_holds_exactly_the_config_names():
    assert sorted(RULES) == sorted(NAMES)
    assert AGGREGATORS is RULES  # one registry, under its old name too
    for name in RULES:
        out = build_aggregator(name)(rand(7, 3), f=1).value
        assert out.shape == (3,) and out.dtype == torch.float32, name


def test_aggregate_returns_value_and_nonfinite_rows():
    result = aggregate("coord-median", col(1, 2, 3), f=1)
    assert isinstance(result, AggregateResult)
    assert result.value.tolist() == [2.0] and result.nonfinite_rows == []
    assert result.selected is None


# ------------------------------------------------------------------ hand-computed cases


def test_coordinate_median_odd_count_is_middle_value():
    stack = torch.tensor([[3.0, -1.0], [1.0, 7.0], [2.0, 5.0]])
    assert aggregate("coord-median", stack, f=1).value.tolist() == [2.0, 5.0]


def test_coordinate_median_even_count_is_mean_of_two_middle_values():
    # torch.median would say 2.0 (the lower middle value)
    assert aggregate("coord-median", col(4, 1, 2, 100), f=1).value.tolist() == [3.0]


def test_coordinate_median_even_count_does_not_overflow_near_float32_max():
    big = 3.0e38
    assert aggregate("coord-median", col(big, big, -1, big), f=1).value.tolist() == [
        pytest.approx(big)
    ]


def buckets(num_buckets):
    """Keywords of a rule after a bucketing into num_buckets buckets (median of means)."""
    return {"pre": [("bucketing", {"num_buckets": num_buckets})]}


def contiguous(name, f, stack, **bucketing):
    pre = [("bucketing", {**bucketing, "shuffle": False})]
    return build_aggregator(name, pre=pre)(stack, f=f).value.tolist()


def test_coordinate_median_of_contiguous_bucket_means():
    stack = col(1, 2, 3, 4, 5, 6)
    # buckets (1,2) (3,4) (5,6): means 1.5 3.5 5.5
    assert contiguous("coord-median", 1, stack, num_buckets=3) == [3.5]
    # sizes as np.array_split: (1,2) (3,4) (5) (6): means 1.5 3.5 5 6 -> (3.5 + 5) / 2
    assert contiguous("coord-median", 1, stack, num_buckets=4) == [4.25]
    # ByzFL's bucket size: (1,2,3,4) (5,6): means 2.5 5.5 -> 4
    assert contiguous("coord-median", 0, stack, bucket_size=4) == [4.0]
    # one bucket per input is the plain median (nothing is drawn from the generator)
    out = aggregate("coord-median", stack, f=1, **buckets(6), generator=torch.Generator())
    assert out.value.tolist() == [3.5]
    assert contiguous("coord-median", 0, stack, num_buckets=1) == [3.5]  # the mean


def test_coordinate_median_with_buckets_refuses_to_run_without_a_generator():
    with pytest.raises(ValueError, match="pass generator="):
        aggregate("coord-median", col(1, 2, 3, 4, 5, 6), f=1, **buckets(3))


def test_coordinate_median_bucketing_with_generator_is_seeded():
    stack = rand(12, 5)
    one = aggregate(
        "coord-median", stack, f=1, **buckets(4), generator=torch.Generator().manual_seed(3)
    )
    two = aggregate(
        "coord-median", stack, f=1, **buckets(4), generator=torch.Generator().manual_seed(3)
    )
    one, two = one.value, two.value
    assert torch.equal(one, two)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    means = stack[perm].reshape(4, 3, 5).double().mean(dim=1).float()
    expected = 0.5 * means.sort(dim=0).values[1] + 0.5 * means.sort(dim=0).values[2]
    assert torch.equal(one, expected)


def test_multi_krum_averages_the_n_minus_f_lowest_scores():
    stack = col(0, 1, 2, 3, 100)
    # n=5, f=1: k = 2 neighbours; scores 5, 2, 2, 5, huge; m = 4
    result = aggregate("multi-krum", stack, f=1)
    assert result.selected == [0, 1, 2, 3]
    assert result.value.tolist() == [1.5]


def test_krum_ties_are_broken_by_more_neighbours_then_by_lower_index():
    stack = col(0, 1, 2, 3, 100)
    # k=2: rows 1 and 2 tie at 2; k=3: tie at 6; k=4: 6 + 99^2 > 6 + 98^2 -> row 2
    result = aggregate("multi-krum", stack, f=1, m=1)
    assert result.selected == [2]
    assert result.value.tolist() == [2.0]
    # symmetric: rows 1 and 2 tie for every neighbour count -> lower index
    assert aggregate("multi-krum", col(0, 1, 2, 3), f=0, m=1).selected == [1]


def test_multi_krum_neighbour_count_changes_the_scores():
    stack = col(0, 1, 3, 6, 10, 100)
    # n=6, f=1, k=3 (default n-f-2): scores 0:46 1:30 3:22 6:50 10:146
    assert aggregate("multi-krum", stack, f=1, m=2).selected == [1, 2]
    # k=1, nearest only: 0:1 1:1 3:4 6:9 10:16
    assert aggregate("multi-krum", stack, f=1, m=2, num_neighbours=1).selected == [0, 1]


def test_bulyan_matches_hand_computation():
    stack = col(0, 1, 2, 4, 8, 9, 1e6)
    # Krum rounds (k = 4, 3, 2, 1, 1 neighbours) pick 4, 2, 8, 1, 9 (the ties 2/4, 1/8,
    # 0/1 and 0/9 are broken by one more neighbour); median 4; closest three: 4, 2, 1
    result = aggregate("bulyan", stack, f=1)
    assert result.selected == [1, 2, 3, 4, 5]
    assert result.value.tolist() == [pytest.approx(7 / 3)]


def test_bulyan_keeps_values_closest_to_median_not_a_centred_window():
    # theta = n = 3 (f = 0): beta = 3, everything; with f = 1, n = 7 choose stack so the
    # closest-to-median window is off-centre: selected values 1.5 1.9 2 3 4.
    stack = col(1.5, 1.9, 2, 3, 4, 1e6, -1e6)
    result = aggregate("bulyan", stack, f=1)
    assert result.selected == [0, 1, 2, 3, 4]
    # median 2, distances .5 .1 0 1 2 -> keep 1.5 1.9 2 (a centred window would be 1.9 2 3)
    assert result.value.tolist() == [pytest.approx((1.5 + 1.9 + 2) / 3)]


def test_bulyan_with_f_zero_is_the_mean():
    stack = col(1, 2, 4)
    assert aggregate("bulyan", stack, f=0).value.tolist() == [pytest.approx(7 / 3)]


def test_mean_and_trimmed_mean_hand_cases():
    assert aggregate("mean", torch.tensor([[1.0, 2.0], [3.0, 4.0]]), f=0).value.tolist() == [
        2.0,
        3.0,
    ]
    assert aggregate("trimmed-mean", col(-50, 1, 2, 3, 50), f=1).value.tolist() == [2.0]
    assert aggregate("trimmed-mean", col(-50, 1, 2, 3, 50), f=2).value.tolist() == [2.0]
    assert aggregate("trimmed-mean", col(10, 1, 2, 3), f=1).value.tolist() == [2.5]
    assert aggregate("trimmed-mean", col(10, 1, 2, 3), f=0).value.tolist() == [4.0]


def test_mean_does_not_overflow_near_float32_max():
    assert aggregate("mean", col(3e38, 3e38), f=0).value.tolist() == [pytest.approx(3e38)]


def test_geometric_median_of_collinear_points_is_their_median():
    out = aggregate("geometric-median", col(0, 1, 5), f=1, num_iterations=50).value
    assert out.tolist() == [pytest.approx(1.0, abs=1e-5)]


def test_geometric_median_of_symmetric_points_is_the_centre():
    stack = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.0, 0.0]])
    out = aggregate(
        "geometric-median", stack, f=2, init=torch.tensor([0.3, -0.2]), num_iterations=100
    ).value
    assert torch.allclose(out, torch.zeros(2), atol=1e-5)


def test_centered_clipping_clips_each_difference_to_tau():
    stack = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = aggregate("centered-clipping", stack, f=0, tau=1.0, center=torch.zeros(2)).value
    # (3, 4) has norm 5 -> (0.6, 0.8); mean with (0, 0)
    assert torch.allclose(out, torch.tensor([0.3, 0.4]))
    # starting from the median (1.5, 2): differences +-(1.5, 2) of norm 2.5 clip to 1
    out = aggregate("centered-clipping", stack, f=0, tau=1.0).value
    assert torch.allclose(out, torch.tensor([1.5, 2.0]))
    out = aggregate("centered-clipping", col(1, 2, 3, 1000), f=1, tau=1.0).value
    assert out.tolist() == [2.5]


def test_centered_clipping_iterations_approach_the_mean_of_close_inputs():
    stack = col(0, 1, 2, 3)
    out = aggregate(
        "centered-clipping", stack, f=1, tau=10.0, num_iterations=3, center=torch.tensor([15.0])
    ).value
    # 15 -> 5 (every difference clipped to -10) -> 1.5 (all within tau) -> 1.5
    assert out.tolist() == [pytest.approx(1.5)]


def test_sign_majority_votes_signs_and_reports_ties_as_zero():
    stack = torch.tensor([[0.5, -2.0, 1.0], [3.0, -1.0, -1.0], [-9.0, 4.0, 0.0]])
    assert aggregate("sign-majority", stack, f=1).value.tolist() == [1.0, -1.0, 0.0]
    # buckets (0.5, 3) (-9) (1): signs +, -, + -> +
    assert contiguous("sign-majority", 1, col(0.5, 3, -9, 1), num_buckets=3) == [1.0]


def test_bucketed_sign_majority_sums_signs_not_raw_values():
    # buckets (1, 1, -9) x 2 and (-1, -1, -1): sums of signs +1, +1, -3 -> +; the raw
    # sums -7, -7, -3 would all vote -
    stack = col(1, 1, -9, 1, 1, -9, -1, -1, -1)
    assert contiguous("sign-majority", 1, stack, bucket_size=3) == [1.0]


# -------------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", NAMES)
def test_rule_is_invariant_to_permuting_the_inputs(name):
    n, f = 11, 2
    stack = rand(n, 40, seed=1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    # MoNNA is relative to its trusted row: it moves with the permutation
    moved = {"idx": perm.tolist().index(0)} if name == "monna" else {}
    a = aggregate(name, stack, f=f).value
    b = aggregate(name, stack[perm], f=f, **moved).value
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)
    if name in ("coord-median", "trimmed-mean", "bulyan", "sign-majority"):
        assert torch.equal(a, b)  # order statistics: bit-identical


@pytest.mark.parametrize("name", [n for n in NAMES if n != "sign-majority"])
def test_rule_is_translation_equivariant(name):
    stack = rand(11, 30, seed=4)
    shift = rand(1, 30, seed=5)[0] * 10
    a = aggregate(name, stack, f=2).value + shift
    b = aggregate(name, stack + shift, f=2).value
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", RANGE_ROBUST)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_f_inputs_at_1e30_cannot_leave_the_honest_range(name, sign):
    n, f, d = 11, 2, 50
    honest = rand(n - f, d, seed=6)
    stack = torch.cat([torch.full((f, d), sign * 1e30), honest])
    out = aggregate(name, stack, f=f).value
    assert torch.isfinite(out).all()
    assert (out >= honest.min(dim=0).values).all() and (out <= honest.max(dim=0).values).all()


def test_f_inputs_at_1e30_move_geometric_median_and_clipping_only_boundedly():
    n, f, d = 11, 2, 50
    honest = rand(n - f, d, seed=7)
    stack = torch.cat([torch.full((f, d), 1e30), honest])
    lo, hi = honest.min(dim=0).values, honest.max(dim=0).values
    tau = 0.5
    out = aggregate("centered-clipping", stack, f=f, tau=tau).value
    # median start in range, honest part a convex mix, each outlier moves <= tau / n
    slack = f * tau / n + 1e-6
    assert (out >= lo - slack).all() and (out <= hi + slack).all()
    out = aggregate("geometric-median", stack, f=f).value
    centre = honest.mean(dim=0)
    radius = (honest - centre).norm(dim=1).max()
    # Minsker 2015: |GM - y| <= 2 (n - f) / (n - 2f) * radius for honest points in B(y, r)
    assert (out - centre).norm() <= 2 * (n - f) / (n - 2 * f) * radius


def test_sign_majority_follows_unanimous_honest_signs_against_f_outliers():
    n, f = 9, 4
    honest = rand(n - f, 20, seed=8).abs() + 0.1
    stack = torch.cat([torch.full((f, 20), -1e30), honest])
    assert torch.equal(aggregate("sign-majority", stack, f=f).value, torch.ones(20))


@pytest.mark.parametrize("name", [n for n in NAMES if n != "sign-majority"])
def test_rule_equals_the_input_when_all_inputs_agree(name):
    x = rand(1, 64, seed=9)[0]
    stack = x.repeat(11, 1)
    out = aggregate(name, stack, f=2).value
    assert torch.allclose(out, x, rtol=1e-6, atol=0)
    if name in ("coord-median", "multi-krum", "bulyan", "mean", "trimmed-mean"):
        assert torch.equal(out, x)


def test_sign_majority_equals_the_sign_when_all_inputs_agree():
    x = rand(1, 64, seed=9)[0]
    assert torch.equal(aggregate("sign-majority", x.repeat(5, 1), f=2).value, torch.sign(x))


@settings(max_examples=25, deadline=None)
@given(
    st.integers(3, 12),
    st.integers(1, 6),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["coord-median", "trimmed-mean"]),
)
def test_order_statistic_rules_match_a_sort_based_oracle(n, d, seed, name):
    f = (n - 1) // 2
    stack = rand(n, d, seed=seed)
    srt = np.sort(stack.numpy(), axis=0).astype(np.float64)
    if name == "coord-median":
        expected = 0.5 * srt[(n - 1) // 2] + 0.5 * srt[n // 2]
    else:
        expected = srt[f : n - f].sum(axis=0) / (n - 2 * f)
    out = aggregate(name, stack, f=f).value
    assert np.allclose(out.numpy(), expected.astype(np.float32), rtol=1e-6, atol=1e-7)


def _exact_sq_distances(x):
    x = x.astype(np.float64)
    n = len(x)
    return np.array([[float(((x[i] - x[j]) ** 2).sum()) for j in range(n)] for i in range(n)])


def _krum_key(dist, i, candidates, k):
    """(sum of k nearest, sum of k + 1 nearest, ..., i): Krum score with tie-breaks."""
    near = sorted(dist[i][j] for j in candidates if j != i)
    return (*(sum(near[:t]) for t in range(k, len(near) + 1)), i)


def _krum_oracle(x, f, m, k=None):
    n = len(x)
    dist = _exact_sq_distances(x)
    k = n - f - 2 if k is None else k
    return sorted(sorted(range(n), key=lambda i: _krum_key(dist, i, range(n), k))[:m])


def _bulyan_oracle(x, f):
    """Straightforward per-coordinate Bulyan (El Mhamdi et al.), Python loops."""
    n = len(x)
    dist = _exact_sq_distances(x)
    active, chosen = list(range(n)), []
    while len(chosen) < n - 2 * f:
        k = max(len(active) - f - 2, 1)
        best = min(active, key=lambda i: _krum_key(dist, i, active, k))
        chosen.append(best)
        active.remove(best)
    sel = x[sorted(chosen)]
    theta, beta = len(sel), len(sel) - 2 * f
    out = np.empty(x.shape[1], dtype=np.float32)
    for c in range(x.shape[1]):
        vals = sorted(sel[:, c].tolist())
        if theta % 2:
            med = vals[theta // 2]
        else:  # mean of the two middle values, in float32 as 0.5 a + 0.5 b
            half = np.float32(0.5)
            med = float(
                half * np.float32(vals[theta // 2 - 1]) + half * np.float32(vals[theta // 2])
            )
        kept = sorted(sorted(vals, key=lambda v: (abs(v - med), v))[:beta])
        out[c] = np.float32(sum(kept) / beta)
    return sorted(chosen), out


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(0, 4), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_bulyan_is_identical_to_a_straightforward_oracle(f, extra, d, seed):
    n = 4 * f + 3 + extra
    stack = rand(n, d, seed=seed)
    stack[:f] *= 50  # some far-away inputs
    result = aggregate("bulyan", stack, f=f)
    chosen, expected = _bulyan_oracle(stack.numpy(), f)
    assert result.selected == chosen
    assert np.array_equal(result.value.numpy(), expected)


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 12), st.integers(1, 6), st.integers(0, 2**31 - 1), st.booleans())
def test_multi_krum_selects_the_same_inputs_as_an_exact_oracle(n, d, seed, byzfl_neighbours):
    f = (n - 3) // 2
    stack = rand(n, d, seed=seed)
    k = n - f - 1 if byzfl_neighbours else None
    for m in {1, n - f}:
        got = aggregate("multi-krum", stack, f=f, m=m, num_neighbours=k).selected
        assert got == _krum_oracle(stack.numpy(), f, m, k)


def test_multi_krum_selection_is_exact_for_nearly_identical_large_inputs():
    # Inputs 1e4 in norm that differ by a few ulps: a float64 Gram matrix cannot order
    # their distances (its error ~1e-16 * |x|^2 exceeds them); the exact recomputation can.
    d, n, f = 4096, 9, 2
    base = rand(1, d, seed=10)[0] * 100
    stack = base.repeat(n, 1)
    gen = np.random.default_rng(0)
    for i in range(n):
        idx = gen.choice(d, size=i + 1, replace=False)  # row i differs in i + 1 places
        stack[i, idx] = torch.nextafter(stack[i, idx], torch.full((i + 1,), math.inf))
    dist = PairwiseDistances(stack.numpy(), list(range(n)))
    assert (dist.err[~np.eye(n, dtype=bool)] > dist.dist[~np.eye(n, dtype=bool)]).any()
    for m in (1, 3, n - f):
        assert aggregate("multi-krum", stack, f=f, m=m).selected == _krum_oracle(
            stack.numpy(), f, m
        )


def test_multi_krum_handles_duplicate_inputs_with_lowest_index_ties():
    x = rand(3, 16, seed=11)
    stack = torch.cat([x[[0, 0, 1, 1, 2, 2]], rand(1, 16, seed=12) * 100])
    assert aggregate("multi-krum", stack, f=2, m=1).selected == _krum_oracle(stack.numpy(), 2, 1)


def test_sorting_network_sorts_every_zero_one_input():
    # 0-1 principle (Knuth 5.3.4): a comparator network sorting all 0-1 inputs sorts all.
    for n in range(1, 15):
        bits = ((np.arange(2**n)[None, :] >> np.arange(n)[:, None]) & 1).astype(np.float32)
        rows = [bits[i].copy() for i in range(n)]
        apply_network(rows, np.empty(2**n, np.float32), sorting_network(n))
        assert np.array_equal(np.stack(rows), np.sort(bits, axis=0)), n
        for outputs in [(n // 2,), ((n - 1) // 2, n // 2), tuple(range(n // 3, n - n // 3))]:
            rows = [bits[i].copy() for i in range(n)]
            net = selection_network(n, outputs)
            apply_network(rows, np.empty(2**n, np.float32), net)
            for o in outputs:
                assert np.array_equal(rows[o], np.sort(bits, axis=0)[o]), (n, outputs)


def test_result_does_not_depend_on_the_thread_count():
    stack = rand(9, 70_000, seed=13)  # wide enough to be split across threads
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = {name: aggregate(name, stack, f=1).value for name in NAMES}
        torch.set_num_threads(2)
        two = {name: aggregate(name, stack, f=1).value for name in NAMES}
    finally:
        torch.set_num_threads(before)
    for name in NAMES:
        assert torch.equal(one[name], two[name]), name


def _median_in_child(d):
    stack = torch.from_numpy(np.arange(5 * d, dtype=np.float32).reshape(5, d))
    return aggregate("coord-median", stack, f=1).value[:3].tolist()


def test_aggregation_works_in_a_child_forked_after_the_threads_started():
    before = torch.get_num_threads()
    d = 3 * BLOCK_COLUMNS  # several blocks: the work goes to the thread pool
    try:
        torch.set_num_threads(2)
        aggregate("coord-median", rand(5, d), f=1)  # the parent's pool now has threads
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_median_in_child, (d,)).get(timeout=60)
    finally:
        torch.set_num_threads(before)
    assert got == [2.0 * d, 2.0 * d + 1, 2.0 * d + 2]


def test_float64_stacks_give_float64_results():
    stack = rand(7, 5).double()
    for name in NAMES:
        assert aggregate(name, stack, f=1).value.dtype == torch.float64, name


@pytest.mark.parametrize("name", ["coord-median", "trimmed-mean", "bulyan", "mean"])
def test_rule_allocates_less_than_one_stack_in_numpy_buffers(name):
    stack = rand(25, 100_000, seed=14)
    aggregate(name, stack, f=5)  # warm caches (networks, thread pool)
    tracemalloc.start()
    aggregate(name, stack, f=5)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < stack.numel() * 4


# ----------------------------------------------------------------------------- NaN/Inf


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_rows_are_dropped_reported_and_never_reach_the_output(name):
    n, f, d = 11, 2, 20
    clean = rand(n - 2, d, seed=15)
    stack = torch.cat([clean[:3], torch.full((1, d), math.nan), clean[3:]])
    stack = torch.cat([stack[:7], rand(1, d, seed=16), stack[7:]])
    stack[7, 4] = math.inf
    stack[7, 5] = -math.inf
    result = aggregate(name, stack, f=f)
    assert result.nonfinite_rows == [3, 7]
    assert torch.isfinite(result.value).all()
    expected = aggregate(name, clean, f=0).value  # both Byzantine rows were the bad ones
    assert torch.allclose(result.value, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_rows_count_against_f(name):
    n, f, d = 11, 2, 20
    clean = rand(n - 1, d, seed=18)
    stack = torch.cat([clean[:5], torch.full((1, d), -math.inf), clean[5:]])
    result = aggregate(name, stack, f=f)
    assert result.nonfinite_rows == [5]
    expected = aggregate(name, clean, f=1).value  # one of the f Byzantine rows is known
    assert torch.allclose(result.value, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_all_rows_nonfinite_gives_zeros(name):
    stack = torch.full((7, 3), math.nan)
    result = aggregate(name, stack, f=1)
    assert result.nonfinite_rows == list(range(7))
    assert torch.equal(result.value, torch.zeros(3))


def test_more_nonfinite_rows_than_f_falls_back_to_the_mean_of_what_is_left():
    stack = torch.cat([torch.full((5, 2), math.inf), torch.tensor([[1.0, 2.0], [3.0, 4.0]])])
    result = aggregate("multi-krum", stack, f=2)  # 2 finite rows: too few for Krum
    assert result.nonfinite_rows == [0, 1, 2, 3, 4]
    assert result.value.tolist() == [2.0, 3.0]


def test_finite_rows_whose_sum_overflows_are_not_called_nonfinite():
    stack = torch.cat([torch.full((2, 4), 3e38), torch.ones(3, 4)])
    result = aggregate("coord-median", stack, f=2)
    assert result.nonfinite_rows == [] and result.value.tolist() == [1.0] * 4


# ------------------------------------------------------------------ requirements (n, f)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 11, 12])
def test_rule_accepts_n_at_its_bound_and_refuses_one_more_f(name, n):
    f = max_f(name, n)
    if f < 0:
        with pytest.raises(ValueError, match=f"{name} needs"):
            build_aggregator(name).check(n, 0)
        with pytest.raises(ValueError, match=f"{name} needs"):
            aggregate(name, rand(n, 2), f=0)
        return
    build_aggregator(name).check(n, f)
    assert torch.isfinite(aggregate(name, rand(n, 2), f=f).value).all()
    if name == "mean":
        return
    with pytest.raises(ValueError, match=f"{name} needs .*got n={n}, f={f + 1}"):
        build_aggregator(name).check(n, f + 1)
    with pytest.raises(ValueError, match=f"{name} needs"):
        build_aggregator(name)(rand(n, 2), f=f + 1)
    assert build_aggregator(name).max_f(n) == f


def test_requirement_messages_state_the_rule():
    with pytest.raises(ValueError, match=r"n > 2f \+ 2"):
        build_aggregator("multi-krum").check(6, 2)
    with pytest.raises(ValueError, match=r"n >= 4f \+ 3"):
        build_aggregator("bulyan").check(10, 2)
    with pytest.raises(ValueError, match=r"n > 2f"):
        build_aggregator("coord-median").check(4, 2)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("coord-median", buckets(2), r"sees 2 .*coord-median needs n > 2f.*n=2, f=2"),
        ("coord-median", buckets(12), r"num_buckets must be in \[1, 11\]"),
        ("coord-median", buckets(0), "num_buckets must be"),
        ("coord-median", buckets(2.5), "must be an integer"),
        ("sign-majority", buckets(4), "sees 4 .*sign-majority needs n > 2f"),
        ("multi-krum", {"m": 0}, r"m must be >= 1"),
        ("multi-krum", {"m": "n+f"}, r"m must be an integer, None or 'n-f-j'"),
        ("multi-krum", {"m": "n-f-9"}, r"m = n-f-9 must be >= 1"),
        ("multi-krum", {"m": 10}, r"m must be in \[1, 9\]"),
        ("multi-krum", {"num_neighbours": 11}, r"num_neighbours must be in \[1, 10\]"),
        ("multi-krum", {"num_neighbours": 0}, "num_neighbours"),
        ("krum", {"m": 2}, "krum has no parameter m; allowed: num_neighbours"),
        ("monna", {"idx": 11}, r"idx must be in \[0, 10\]"),
        ("caf", {"power_iterations": 0}, "power_iterations must be >= 1"),
        ("geometric-median", {"num_iterations": 0}, "num_iterations"),
        ("geometric-median", {"nu": 0.0}, "nu must be"),
        ("geometric-median", {"tol": -1.0}, "tol must be"),
        ("geometric-median", {"init": [0.0]}, "init must be"),
        ("centered-clipping", {"tau": -1.0}, "tau must be"),
        ("centered-clipping", {"tau": math.inf}, "tau must be"),
        ("centered-clipping", {"num_iterations": 0}, "num_iterations"),
        ("bulyan", {"m": 3}, "bulyan has no parameter m; allowed: none"),
        ("mean", {"num_buckets": 3}, "no parameter num_buckets"),
    ],
)
def test_bad_parameters_are_refused_naming_the_value(name, params, match):
    with pytest.raises(ValueError, match=match):
        build_aggregator(name, **params).check(11, 2)
    with pytest.raises(ValueError, match=match):
        aggregate(name, rand(11, 3), f=2, **params)


def test_a_generator_that_is_not_a_torch_generator_is_refused():
    with pytest.raises(ValueError, match="torch.Generator"):
        aggregate("coord-median", rand(11, 3), f=2, generator=3)


def test_bad_names_counts_and_stacks_are_refused():
    with pytest.raises(ValueError, match="unknown aggregator 'krumm'; choose one of"):
        build_aggregator("krumm").check(11, 2)
    with pytest.raises(ValueError, match="f .* must be >= 0"):
        build_aggregator("coord-median").check(11, -1)
    with pytest.raises(ValueError, match="must be an integer"):
        build_aggregator("coord-median").check(11, True)
    with pytest.raises(ValueError, match="must be an integer"):
        build_aggregator("coord-median").check(11, 1.0)
    with pytest.raises(ValueError, match="n .* must be >= 1"):
        build_aggregator("mean").check(0, 0)
    with pytest.raises(ValueError, match="shape"):
        aggregate("coord-median", torch.zeros(5), f=1)
    with pytest.raises(ValueError, match="shape"):
        aggregate("coord-median", torch.zeros(5, 0), f=1)
    with pytest.raises(ValueError, match="float32 or float64"):
        aggregate("coord-median", torch.zeros(5, 2, dtype=torch.int64), f=1)
    with pytest.raises(ValueError, match="torch.Tensor"):
        aggregate("coord-median", np.zeros((5, 2), np.float32), f=1)
    with pytest.raises(ValueError, match=r"init must have shape \(3,\)"):
        aggregate("geometric-median", rand(5, 3), f=1, init=torch.zeros(4))
    with pytest.raises(ValueError, match="center must be finite"):
        aggregate("centered-clipping", rand(5, 3), f=1, center=torch.full((3,), math.nan))


def test_requirement_table_is_monotone_in_f():
    # Sanity of the table itself: whatever is refused at f stays refused at f + 1.
    for name, n in itertools.product(NAMES, range(1, 16)):
        refused = False
        for f in range(n + 1):
            try:
                build_aggregator(name).check(n, f)
                assert not refused, (name, n, f)
            except ValueError:
                refused = True


_GRAM_CPU_SCRIPT = """
import json, time, torch
from byzshield.aggregators import columns
from byzshield.aggregators.pairwise import PairwiseDistances
torch.set_num_threads(2)
x = torch.randn(25, 400_000, generator=torch.Generator().manual_seed(0)).numpy()
PairwiseDistances(x, range(25))  # warm up the pool
limits = columns._per_thread_blas_limits()
before = [limit(limit(1)) for limit in limits]  # read the setting: set it back at once
start = time.process_time()
for _ in range(3):
    PairwiseDistances(x, range(25))
cpu = time.process_time() - start
after = [limit(limit(1)) for limit in limits]
print(json.dumps({"cpu": cpu, "before": before, "after": after, "found": len(limits)}))
"""


def _gram_cpu(env_update):
    import json
    import os
    import subprocess
    import sys

    env = {
        k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    env.update(env_update)
    out = subprocess.run(
        [sys.executable, "-c", _GRAM_CPU_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_column_threads_do_not_wake_busy_waiting_blas_threads():
    # Regression: each column thread's GEMM used to wake OpenBLAS's own threads (2 x 2
    # threads on 2 cores), whose busy-waiting made the Gram pass cost 10-20x its CPU time.
    default = _gram_cpu({})
    if not default["found"]:
        pytest.skip("numpy's BLAS has no openblas_set_num_threads_local (Gram blocks shrink)")
    single = _gram_cpu({"OPENBLAS_NUM_THREADS": "1"})
    assert default["cpu"] < 2.0 * single["cpu"], (default, single)
    assert default["after"] == default["before"]  # the BLAS setting is restored
