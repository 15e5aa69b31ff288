"""build_aggregator: the rule objects, pre-aggregations, bucketing, DETOX's hierarchy, state."""

import doctest
import importlib
import io
import itertools
import math
import pkgutil
from fractions import Fraction

import numpy as np
import pytest
import torch

import byzshield.aggregators
from byzshield.aggregators import (
    PRE_AGGREGATIONS,
    RULES,
    aggregate,
    build_aggregator,
    preaggregate,
    split_rows,
)


def col(*values):
    return torch.tensor([[float(v)] for v in values])


def rand(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def step_generator(seed, step):
    """What the trainer passes: a generator seeded from (seed, step)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


# ------------------------------------------------------------------------------ building


def test_unknown_names_and_parameters_are_refused_in_one_line():
    cases = [
        (lambda: build_aggregator("krumm"), "unknown aggregator 'krumm'; choose one of"),
        (lambda: build_aggregator("multi-krum", q=1), "multi-krum has no parameter q; allowed"),
        (lambda: build_aggregator("mean", pre=["buckets"]), "unknown pre-aggregation 'buckets'"),
        (
            lambda: build_aggregator("mean", pre=[("bucketing", {"s": 2})]),
            "bucketing has no parameter s; allowed: bucket_size, num_buckets, shuffle",
        ),
        (
            lambda: build_aggregator("mean", pre=[("bucketing", {})]),
            "bucketing takes exactly one of bucket_size and num_buckets",
        ),
        (lambda: build_aggregator("mean", pre=[3]), "a pre-aggregation must be a name"),
        (lambda: build_aggregator("mean", pre=["clipping"], hierarchical=2), "must be a mapping"),
        (lambda: build_aggregator("centered-clipping", tau=0), "tau must be a finite number > 0"),
    ]
    for make, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            make()
        assert "\n" not in str(info.value)


def test_pre_aggregations_can_be_given_as_names_pairs_or_hydra_mappings():
    a = build_aggregator("multi-krum", pre=["nnm", ("bucketing", {"bucket_size": 2})])
    b = build_aggregator(
        "multi-krum", pre=[{"name": "nnm"}, {"name": "bucketing", "bucket_size": 2}]
    )
    assert a.describe() == b.describe() == "nnm -> bucketing(s=2) -> multi-krum(m=n-f)"


def test_describe_is_one_line_for_logs():
    assert build_aggregator("multi-krum", m=None).describe() == "multi-krum(m=n-f)"
    agg = build_aggregator("multi-krum", pre=[("bucketing", {"bucket_size": 2})])
    assert agg.describe() == "bucketing(s=2) -> multi-krum(m=n-f)"
    agg = build_aggregator("multi-krum", m="n-f-2", hierarchical={"num_buckets": 2})
    assert agg.describe() == "hierarchical(b=2: multi-krum(m=n-f-2) per bucket, then mean)"
    agg = build_aggregator("centered-clipping", pre=[("clipping", {"c": 5.0}), "arc"])
    assert agg.describe() == "clipping(c=5) -> arc -> centered-clipping(tau=100, L=1)"


def test_needs_generator_only_when_something_draws_random_numbers():
    assert not build_aggregator("multi-krum").needs_generator
    assert not build_aggregator("coord-median", pre=["nnm", "arc", "clipping"]).needs_generator
    assert build_aggregator("coord-median", pre=[("bucketing", {"num_buckets": 3})]).needs_generator
    contiguous = [("bucketing", {"num_buckets": 3, "shuffle": False})]
    assert not build_aggregator("coord-median", pre=contiguous).needs_generator
    assert build_aggregator("mean", hierarchical={"num_buckets": 2}).needs_generator
    assert build_aggregator("caf", power_iterations=1).needs_generator
    assert not build_aggregator("caf").needs_generator


def test_a_random_stage_refuses_to_run_without_a_generator():
    agg = build_aggregator("coord-median", pre=[("bucketing", {"num_buckets": 3})])
    with pytest.raises(ValueError, match=r"bucketing\(b=3\) -> coord-median draws random"):
        agg(rand(9, 4), f=1)
    agg(rand(9, 4), f=1, generator=step_generator(0, 0))


# ----------------------------------------------------------------------- check and max_f


PIPELINES = [
    ("coord-median", {}),
    ("multi-krum", {}),
    ("bulyan", {}),
    ("smea", {}),
    ("multi-krum", {"pre": [("bucketing", {"bucket_size": 2})]}),
    ("coord-median", {"pre": [("bucketing", {"num_buckets": 5})]}),
    ("trimmed-mean", {"pre": ["nnm"]}),
    ("mean", {"pre": ["arc"]}),
    ("multi-krum", {"hierarchical": {"num_buckets": 2}}),
]


@pytest.mark.parametrize(("name", "kw"), PIPELINES)
def test_check_accepts_exactly_up_to_max_f(name, kw):
    agg = build_aggregator(name, **kw)
    for n in range(5, 16):
        top = agg.max_f(n)
        for f in range(0, n + 2):
            if f <= top:
                agg.check(n, f)
            else:
                with pytest.raises(ValueError, match="needs"):
                    agg.check(n, f)


def test_max_f_counts_the_inputs_the_rule_sees_after_pre_aggregation():
    # 15 inputs in buckets of 2: multi-krum sees 8 and needs 8 > 2f + 2 -> f <= 2
    assert build_aggregator("multi-krum").max_f(15) == 6
    assert build_aggregator("multi-krum", pre=[("bucketing", {"bucket_size": 2})]).max_f(15) == 2
    # the hierarchical form needs the guarantee in its smallest bucket (15 // 2 = 7)
    assert build_aggregator("multi-krum", hierarchical={"num_buckets": 2}).max_f(15) == 2
    # NNM itself needs n > 2f
    assert build_aggregator("mean", pre=["nnm"]).max_f(15) == 7
    # SMEA also refuses to enumerate more than 2e6 subsets: C(25, 9) = 2.04e6
    assert build_aggregator("smea").max_f(25) == 8 and math.comb(25, 9) > 2e6 > math.comb(25, 8)


def test_pipeline_errors_say_what_the_rule_sees():
    agg = build_aggregator("multi-krum", pre=[("bucketing", {"bucket_size": 2})])
    with pytest.raises(ValueError, match=r"the rule sees 8 .*multi-krum needs n > 2f \+ 2"):
        agg.check(15, 3)


# ------------------------------------------------------------------- outside the guarantee


def test_outside_the_guarantee_multi_krum_runs_its_formula_as_is_where_defined():
    stack = rand(7, 5, seed=1)
    agg = build_aggregator("multi-krum")
    with pytest.raises(ValueError, match="multi-krum needs"):
        agg(stack, f=3)
    res = agg(stack, f=3, outside_guarantee=True)
    assert res.outside_guarantee and res.f_used == 3
    # k = n - f - 2 = 2 neighbours, m = n - f = 4: the same as asking for those explicitly
    expected = aggregate("multi-krum", stack, f=2, m=4, num_neighbours=2).value
    assert torch.equal(res.value, expected)
    res = agg(stack, f=6, outside_guarantee=True)  # k would be -1: clamped to f = n - 3
    assert (
        res.f_used == 4
        and res.selected == aggregate("multi-krum", stack, f=2, m=3, num_neighbours=1).selected
    )


@pytest.mark.parametrize(
    ("name", "n", "f", "f_used"),
    [
        ("trimmed-mean", 5, 3, 2),  # clamped to (n - 1) // 2
        ("bulyan", 7, 2, 1),  # clamped to (n - 3) // 4
        ("caf", 6, 4, 2),  # clamped to (n - 1) // 2
        ("meamed", 6, 4, 4),  # as is up to n - 1
        ("mda", 6, 5, 5),
        ("monna", 6, 5, 5),
        ("coord-median", 6, 9, 9),  # f is not used by the formula
        ("geometric-median", 6, 9, 9),
    ],
)
def test_outside_the_guarantee_each_rule_reports_the_f_it_used(name, n, f, f_used):
    res = build_aggregator(name)(rand(n, 4, seed=2), f=f, outside_guarantee=True)
    assert res.outside_guarantee and res.f_used == f_used
    assert torch.isfinite(res.value).all()


def test_inside_the_guarantee_outside_guarantee_changes_nothing():
    stack = rand(11, 6, seed=3)
    for name in RULES:
        a = build_aggregator(name)(stack, f=1)
        b = build_aggregator(name)(stack, f=1, outside_guarantee=True)
        assert torch.equal(a.value, b.value) and not b.outside_guarantee, name


# ------------------------------------------------------------------------------- state


def test_centered_clipping_keeps_its_centre_and_it_round_trips_a_weights_only_checkpoint():
    steps = [rand(9, 50, seed=s) for s in range(3)]
    agg = build_aggregator("centered-clipping", tau=0.5)
    assert agg.state_dict() == {}
    first = agg(steps[0], f=2).value
    start = aggregate("centered-clipping", steps[0], f=2, tau=0.5).value  # from the median
    assert torch.equal(first, start)
    assert torch.equal(agg.state_dict()["rule.center"], first)
    buffer = io.BytesIO()
    torch.save(agg.state_dict(), buffer)
    buffer.seek(0)
    restored = build_aggregator("centered-clipping", tau=0.5)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    second = agg(steps[1], f=2).value
    assert torch.equal(
        second, aggregate("centered-clipping", steps[1], f=2, tau=0.5, center=first).value
    )
    assert torch.equal(restored(steps[1], f=2).value, second)
    with pytest.raises(ValueError, match="unknown state keys"):
        restored.load_state_dict({"center": first})
    with pytest.raises(ValueError, match="keeps no state"):
        build_aggregator("multi-krum").load_state_dict({"rule.center": first})


def test_a_step_with_no_finite_input_leaves_the_centre_alone():
    agg = build_aggregator("centered-clipping")
    first = agg(rand(5, 3), f=1).value
    res = agg(torch.full((5, 3), math.nan), f=1)
    assert res.fallback == "zeros" and torch.equal(agg.state_dict()["rule.center"], first)


# ---------------------------------------------------------------------------- bucketing


def detox_bad_buckets(buckets, bad_files):
    return sum(1 for b in buckets if set(b) & bad_files)


def test_detox_worst_case_hits_one_contiguous_bucket_but_2_745_shuffled_on_average():
    # DETOX K=45, r=3: 15 vote winners; q=6 fills r'=2 members of groups 0, 1, 2, so
    # files 0, 1, 2 are distorted. 7 buckets (sizes 3, 2, 2, 2, 2, 2, 2).
    files, bad = list(range(15)), {0, 1, 2}
    contiguous = split_rows(files, None, num_buckets=7, shuffle=False)
    assert detox_bad_buckets(contiguous, bad) == 1
    # Exactly: E = sum_b P(bucket b holds a bad file) = 1 - C(15 - |b|, 3) / C(15, 3)
    sizes = [len(b) for b in contiguous]
    exact = sum(1 - Fraction(math.comb(15 - s, 3), math.comb(15, 3)) for s in sizes)
    assert exact == Fraction(1249, 455)  # 2.745...
    # ... which the enumeration of every placement of the 3 bad files confirms
    counts = [detox_bad_buckets(contiguous, set(pos)) for pos in itertools.combinations(files, 3)]
    assert Fraction(sum(counts), len(counts)) == exact
    # and our per-step shuffle reaches it: 4000 steps, standard error ~0.008
    got = [
        detox_bad_buckets(split_rows(files, step_generator(7, s), num_buckets=7), bad)
        for s in range(4000)
    ]
    assert abs(np.mean(got) - float(exact)) < 0.04


def test_bucket_membership_changes_from_step_to_step_and_repeats_for_the_same_seed():
    rows = list(range(15))
    one = [split_rows(rows, step_generator(1, s), num_buckets=7) for s in range(5)]
    again = [split_rows(rows, step_generator(1, s), num_buckets=7) for s in range(5)]
    assert one == again
    assert len({tuple(b) for b in one}) == 5
    for buckets in one:
        assert sorted(i for b in buckets for i in b) == rows
        assert sorted(len(b) for b in buckets) == [2, 2, 2, 2, 2, 2, 3]


def test_median_of_means_is_the_median_of_the_shuffled_bucket_means():
    stack = rand(15, 8, seed=4)
    agg = build_aggregator("coord-median", pre=[("bucketing", {"num_buckets": 7})])
    got = agg(stack, f=3, generator=step_generator(2, 9)).value
    buckets = split_rows(range(15), step_generator(2, 9), num_buckets=7)
    means = torch.stack([stack[list(b)].double().mean(dim=0).float() for b in buckets])
    assert torch.equal(got, means.median(dim=0).values)  # 7 buckets: odd, no averaging


def test_bucket_size_splits_like_byzfl_with_a_last_smaller_bucket():
    buckets = split_rows(range(7), None, bucket_size=3, shuffle=False)
    assert buckets == [(0, 1, 2), (3, 4, 5), (6,)]
    assert split_rows(range(7), None, num_buckets=3, shuffle=False) == [(0, 1, 2), (3, 4), (5, 6)]


def test_aggregate_with_bucketing_and_a_generator_gives_the_bits_of_the_built_aggregator():
    stack = rand(12, 40, seed=5)
    pre = [("bucketing", {"num_buckets": 4})]
    once = aggregate("coord-median", stack, f=1, pre=pre, generator=step_generator(0, 3))
    agg = build_aggregator("coord-median", pre=pre)
    assert torch.equal(once.value, agg(stack, f=1, generator=step_generator(0, 3)).value)


# ------------------------------------------------------------------------- hierarchical


def test_hierarchical_runs_the_rule_in_each_bucket_then_averages():
    # The original DETOX multi-krum: 15 vote winners in 2 shuffled buckets (8 and 7),
    # Krum with the same f in each, averaging n_b - f - 2 inputs, then the mean.
    stack = rand(15, 30, seed=6)
    stack[:2] += 50.0
    agg = build_aggregator("multi-krum", m="n-f-2", hierarchical={"num_buckets": 2})
    res = agg(stack, f=1, generator=step_generator(3, 0))
    buckets = split_rows(range(15), step_generator(3, 0), num_buckets=2)
    parts = [
        aggregate("multi-krum", stack[list(b)], f=1, m=len(b) - 3).value.double() for b in buckets
    ]
    assert torch.allclose(res.value.double(), sum(parts) / 2, rtol=0, atol=1e-6)
    assert res.selected is not None and not {0, 1} & set(res.selected)
    assert len(res.selected) == (8 - 3) + (7 - 3)


def test_hierarchical_detox_bucket_of_7_with_f_3_runs_only_outside_the_guarantee():
    agg = build_aggregator("multi-krum", m="n-f-2", hierarchical={"num_buckets": 2})
    with pytest.raises(ValueError, match="smallest bucket"):
        agg.check(15, 3)
    res = agg(rand(15, 4), f=3, generator=step_generator(0, 0), outside_guarantee=True)
    assert res.f_used == 3 and res.outside_guarantee


# ------------------------------------------------------------ pre-aggregations, by hand


def apply(name, stack, f, **params):
    cls = PRE_AGGREGATIONS[name]
    stage = cls(cls.Config(**params))
    out, _, _ = stage.apply(stack.numpy(), range(len(stack)), f, generator=None, dist=None)
    return torch.from_numpy(np.asarray(out))


def test_nnm_replaces_each_input_by_the_mean_of_its_n_minus_f_nearest():
    out = apply("nnm", col(0, 1, 10), 1)
    assert out.flatten().tolist() == [0.5, 0.5, 5.5]


def test_static_clipping_scales_rows_to_norm_c():
    out = apply("clipping", torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 0, c=1.0)
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))


def test_arc_clips_the_largest_to_the_next_norm():
    # n=4, f=1: floor(2 * 1 * 3 / 4) = 1 row clipped, to the norm of the 3rd largest
    out = apply("arc", col(1, -2, 3, -10), 1)
    assert out.flatten().tolist() == [1.0, -2.0, 3.0, -3.0]
    assert apply("arc", col(1, 2, 3), 0).flatten().tolist() == [1.0, 2.0, 3.0]


def test_selected_rows_are_stack_rows_through_row_preserving_pre_aggregations():
    stack = col(0, 1, 2, 3, 100)
    clip = [("clipping", {"c": 1000.0})]
    assert build_aggregator("multi-krum", pre=clip)(stack, f=1).selected == [0, 1, 2, 3]
    contiguous = [("bucketing", {"bucket_size": 1})]
    assert build_aggregator("multi-krum", pre=contiguous)(stack, f=1).selected == [0, 1, 2, 3]
    pre = [("bucketing", {"num_buckets": 5, "shuffle": False})]
    assert build_aggregator("krum", pre=pre)(stack, f=1).selected == [2]
    mixing = [("bucketing", {"bucket_size": 2, "shuffle": False})]
    assert build_aggregator("coord-median", pre=mixing)(stack, f=0).selected is None


def test_nonfinite_rows_are_dropped_before_pre_aggregation():
    stack = rand(10, 6, seed=7)
    bad = stack.clone()
    bad[4] = math.nan
    agg = build_aggregator("trimmed-mean", pre=["nnm"])
    res = agg(bad, f=2)
    assert res.nonfinite_rows == [4]
    clean = torch.cat([stack[:4], stack[5:]])
    assert torch.equal(res.value, agg(clean, f=1).value)


# ---------------------------------------------------------------- rules, by hand


def test_new_rules_hand_cases():
    assert build_aggregator("krum")(col(0, 1, 2, 3, 100), f=1).value.tolist() == [2.0]
    assert build_aggregator("mda")(col(0, 1, 3), f=1).value.tolist() == [0.5]
    assert build_aggregator("monna")(col(0, 1, 5), f=1).value.tolist() == [0.5]
    assert build_aggregator("monna", idx=2)(col(0, 4, 5), f=1).value.tolist() == [4.5]
    assert build_aggregator("meamed")(col(0, 1, 2, 10), f=1).value.tolist() == [1.0]
    assert build_aggregator("smea")(col(0, 1, 2, 30), f=1).value.tolist() == [1.0]
    out = build_aggregator("caf")(torch.tensor([[0.0, 0], [1, 0], [0, 1], [50, 50]]), f=1)
    assert torch.allclose(out.value, torch.tensor([1 / 3, 1 / 3]), atol=0.05)


def _min_diameter_oracle(x, f):
    n = len(x)
    dist = ((x[:, None, :].double() - x[None, :, :].double()) ** 2).sum(-1)
    best, best_d = None, math.inf
    for subset in itertools.combinations(range(n), n - f):
        diam = max((float(dist[i, j]) for i, j in itertools.combinations(subset, 2)), default=0)
        if diam < best_d:
            best, best_d = subset, diam
    return list(best)


@pytest.mark.parametrize("seed", range(12))
def test_mda_vertex_cover_search_finds_the_enumerated_minimum_diameter_subset(seed):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(3, 12, (1,), generator=gen))
    f = int(torch.randint(1, (n - 1) // 2 + 1, (1,), generator=gen))
    x = torch.randn(n, 3, generator=gen)
    x[:f] *= 4
    res = build_aggregator("mda")(x, f=f)
    assert res.selected == _min_diameter_oracle(x, f)


def test_mda_ties_go_to_the_first_subset_in_combinations_order():
    # equal gaps: (0, 1, 2), (1, 2, 3) and (2, 3, 4) all have diameter 2
    assert build_aggregator("mda")(col(0, 1, 2, 3, 4), f=2).selected == [0, 1, 2]


@pytest.mark.parametrize("seed", range(6))
def test_caf_and_smea_exact_eigenvalues_match_a_dense_covariance_oracle(seed):
    x = rand(7, 5, seed=seed).double()
    x[0] += 6.0
    f = 2
    best, best_lam = None, math.inf
    for subset in itertools.combinations(range(7), 7 - f):
        sub = x[list(subset)]
        cov = (sub - sub.mean(0)).T @ (sub - sub.mean(0))
        lam = float(torch.linalg.eigvalsh(cov)[-1])
        if lam < best_lam:
            best, best_lam = list(subset), lam
    assert build_aggregator("smea")(x, f=f).selected == best
    # CAF: the same filter run densely
    c = torch.ones(7, dtype=torch.float64)
    best_mu, best_lam = None, math.inf
    while c.sum() > 7 - 2 * f:
        mu = (c[:, None] * x).sum(0) / c.sum()
        diffs = x - mu
        cov = (c[:, None] * diffs).T @ diffs / c.sum()
        lams, vecs = torch.linalg.eigh(cov)
        if lams[-1] < best_lam:
            best_lam, best_mu = float(lams[-1]), mu
        tau = (diffs @ vecs[:, -1]) ** 2
        c = c * (1 - tau / tau.max())
    got = build_aggregator("caf")(x, f=f).value
    assert torch.allclose(got, best_mu, rtol=1e-9, atol=1e-9)


def test_preaggregate_returns_the_stack_a_rule_would_read():
    rows = torch.tensor([[0.0], [1.0], [10.0]])
    assert preaggregate("nnm", rows, f=1).tolist() == [[0.5], [0.5], [5.5]]
    g = torch.Generator().manual_seed(3)
    x = torch.arange(12.0).view(6, 2)
    means = preaggregate("bucketing", x, f=1, num_buckets=3, generator=g)
    assert means.shape == (3, 2)
    assert torch.allclose(means.sum(dim=0) * 2, x.sum(dim=0))  # each row in one bucket
    with_nan = torch.cat([x, torch.full((1, 2), float("nan"))])
    same = preaggregate(
        "bucketing", with_nan, f=2, num_buckets=3, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(same, means)  # the NaN row is dropped first
    clipped = preaggregate("clipping", torch.tensor([[3.0, 4.0], [0.3, 0.4]]), f=0, c=1.0)
    assert torch.allclose(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))
    with pytest.raises(ValueError, match="pass generator="):
        preaggregate("bucketing", x, f=1, num_buckets=3)
    with pytest.raises(ValueError, match=r"^nnm needs n > 2f"):
        preaggregate("nnm", rows, f=2)
    with pytest.raises(ValueError, match="unknown pre-aggregation 'mixing'"):
        preaggregate("mixing", rows, f=0)


# ------------------------------------------------------------------------- the docstrings

AGGREGATOR_MODULES = sorted(
    m.name for m in pkgutil.iter_modules(byzshield.aggregators.__path__) if m.name != "_checks"
)


@pytest.mark.parametrize("name", AGGREGATOR_MODULES)
def test_the_examples_in_the_docstrings_hold(name):
    """Each rule's and pre-aggregation's docstring example is what the code returns."""
    module = importlib.import_module(f"byzshield.aggregators.{name}")
    names = {"torch": torch, "np": np, "aggregate": aggregate, "preaggregate": preaggregate}
    result = doctest.testmod(module, extraglobs={**names, "build_aggregator": build_aggregator})
    assert result.failed == 0
