"""Every ByzFL aggregator and pre-aggregator against ours on the same inputs.

Tolerance: 1e-5 relative to the largest output entry (ByzFL computes in float32 torch,
we accumulate in float64). Where the definitions differ the test sets the parameter that
makes them agree and says so: Krum's neighbour count (ours n - f - 2, ByzFL n - f - 1),
the starting points of the geometric median and centered clipping (ours the coordinate
median, ByzFL zeros), and CAF/SMEA's top eigenvalue (ours exact; ByzFL takes one power
step from a random unit v0 of torch's global generator and reports |Sigma v0|, which is
off by the random factor |u . v0| even when the spread is rank one, so it can pick another
subset or weight: for CAF ``power_iterations=1`` with a generator seeded alike reproduces
it; SMEA's draws its starts with the same law from the Gram matrix, checked in law).
"""

import pytest
import torch

from byzshield.aggregators import PRE_AGGREGATIONS, build_aggregator, preaggregate

byzfl_agg = pytest.importorskip("byzfl.aggregators.aggregators", reason="byzfl is not installed")
byzfl_pre = pytest.importorskip("byzfl.aggregators.preaggregators")

SIZES = [(9, 2), (10, 3), (25, 5)]


def stack_for(n, f, d=300, seed=None):
    gen = torch.Generator().manual_seed(n * 100 + f if seed is None else seed)
    stack = torch.randn(n, d, generator=gen) + torch.randn(1, d, generator=gen)
    stack[:f] = stack[:f] * -4 + 3.0  # f Byzantine-looking rows
    return stack


def close(ours, theirs, rtol=1e-5):
    ours, theirs = torch.as_tensor(ours).double(), torch.as_tensor(theirs).double()
    assert ours.shape == theirs.shape
    scale = float(theirs.abs().max())
    err = float((ours - theirs).abs().max())
    assert err <= rtol * max(scale, 1e-30), f"max |diff| {err:.3g} vs scale {scale:.3g}"


def with_global_seed(seed, fn):
    """Run ByzFL code that draws from torch's global generator, without leaking state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return fn()


def ours(name, stack, f, generator=None, **params):
    return build_aggregator(name, **params)(stack, f=f, generator=generator).value


# ----------------------------------------------------------------------------- rules


@pytest.mark.parametrize(("n", "f"), SIZES)
def test_average_median_trmean_meamed_agree(n, f):
    x = stack_for(n, f)
    close(ours("mean", x, f), byzfl_agg.Average()(x.clone()))
    close(ours("coord-median", x, f), byzfl_agg.Median()(x.clone()))
    close(ours("trimmed-mean", x, f), byzfl_agg.TrMean(f=f)(x.clone()))
    close(ours("meamed", x, f), byzfl_agg.Meamed(f=f)(x.clone()))


@pytest.mark.parametrize(("n", "f"), SIZES)
def test_krum_and_multi_krum_agree_with_byzfls_neighbour_count(n, f):
    x = stack_for(n, f)
    k = n - f - 1  # ByzFL: mean over sort(dist)[1 : n - f]
    close(ours("krum", x, f, num_neighbours=k), byzfl_agg.Krum(f=f)(x.clone()))
    close(ours("multi-krum", x, f, num_neighbours=k), byzfl_agg.MultiKrum(f=f)(x.clone()))


@pytest.mark.parametrize(("n", "f"), SIZES)
def test_mda_and_monna_agree(n, f):
    x = stack_for(n, f, d=50)
    if n <= 10:  # ByzFL enumerates C(n, f) subsets in Python: 53130 at n = 25
        close(ours("mda", x, f), byzfl_agg.MDA(f=f)(x.clone()))
    for idx in (0, n - 1):
        close(ours("monna", x, f, idx=idx), byzfl_agg.MoNNA(f=f, idx=idx)(x.clone()))


def test_mda_agrees_at_n_25():
    x = stack_for(25, 3, d=20)
    close(ours("mda", x, 3), byzfl_agg.MDA(f=3)(x.clone()))


@pytest.mark.parametrize(("n", "f"), SIZES)
def test_geometric_median_agrees_from_byzfls_start(n, f):
    x = stack_for(n, f)
    got = ours("geometric-median", x, f, nu=0.1, num_iterations=3, tol=0.0, init=torch.zeros(300))
    close(got, byzfl_agg.GeometricMedian(nu=0.1, T=3)(x.clone()))


def test_centered_clipping_agrees_over_steps_from_byzfls_start():
    theirs = byzfl_agg.CenteredClipping(L=3, tau=2.0)  # starts from zeros, keeps its m
    mine = build_aggregator("centered-clipping", tau=2.0, num_iterations=3, center=torch.zeros(300))
    for step in range(3):
        x = stack_for(9, 2, seed=step)
        close(mine(x, f=2).value, theirs(x.clone()))


@pytest.mark.parametrize(("n", "f"), SIZES)
def test_caf_agrees_given_the_same_random_start(n, f):
    x = stack_for(n, f)
    got = ours("caf", x, f, torch.Generator().manual_seed(11), power_iterations=1)
    close(got, with_global_seed(11, lambda: byzfl_agg.CAF(f=f)(x.clone())))


def test_smea_power_starts_have_byzfls_law():
    """SMEA's power path draws the projections of the centred inputs on a uniform random
    unit vector of R^d from their n x n Gram matrix; ByzFL draws the vector (randn(d) /
    its norm) and projects. Same law: every projection and the projections' norm pass a
    two-sample Kolmogorov-Smirnov test against ByzFL's way (d = 40: far from Gaussian)."""
    from scipy.stats import ks_2samp

    from byzshield.aggregators.spectral import span_projections

    x = stack_for(6, 2, d=40).double()
    centred = x - x.median(dim=0).values
    gram = (centred @ centred.T).numpy()
    draws = 4000
    ours = span_projections(gram, 40, draws, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(8)
    v = torch.randn(draws, 40, generator=gen, dtype=torch.float64)
    theirs = (v / v.norm(dim=1, keepdim=True) @ centred.T).numpy()
    assert ours.shape == theirs.shape == (draws, 6)
    for i in range(6):
        assert ks_2samp(ours[:, i], theirs[:, i]).pvalue > 1e-3, i
    norms = ks_2samp((ours**2).sum(axis=1), (theirs**2).sum(axis=1))
    assert norms.pvalue > 1e-3


@pytest.mark.parametrize(("n", "f"), [(7, 2), (9, 2), (10, 3)])
def test_smea_power_iterations_converge_to_the_exact_subset(n, f):
    x = stack_for(n, f, d=40)
    exact = build_aggregator("smea")(x, f=f)
    power = build_aggregator("smea", power_iterations=200)
    got = power(x, f=f, generator=torch.Generator().manual_seed(5))
    assert sorted(got.selected) == sorted(exact.selected)
    close(got.value, exact.value)


# ------------------------------------------------------------------ pre-aggregations


def pre(name, x, f, generator=None, **params):
    return preaggregate(name, x, f=f, generator=generator, **params)


@pytest.mark.parametrize(("n", "f"), SIZES)
def test_nnm_agrees(n, f):
    x = stack_for(n, f)
    close(pre("nnm", x, f), byzfl_pre.NNM(f=f)(x.clone()))


@pytest.mark.slow  # d = 10^6: ByzFL's NNM gathers a 2 GB (n, n - f, d) copy
def test_nnm_differs_from_byzfl_only_where_its_float32_distances_cannot_order_neighbours():
    """Not a bug: near ties. At d = 10^6 (benchmarks/aggregators.py's stack) an outlier's
    20 nearest inputs are 5 outliers and 15 of the 20 honest inputs, whose distances to it
    lie within 1e-4 of each other, a few 1e-6 apart; ByzFL's float32 ``torch.cdist`` sums
    10^6 squares in float32, about 2e-4 off, so its k-th nearest is not the nearest by the
    exact distances, and mixing one other honest row moves that output by 2.8e-2 of the
    largest entry. Ours are the exact nearest: the mean of the k nearest by float64
    distances (an independent reference here), and every row where ByzFL's differs has a
    neighbour swap at a gap below ByzFL's own distance error for that row."""
    n, f, d = 25, 5, 1_000_000
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen)
    x += torch.randn(1, d, generator=gen) * 2.0
    x[:f] *= -10.0
    k = n - f
    ours = pre("nnm", x, f)
    xd = x.double()
    sq = (xd * xd).sum(dim=1)
    exact = (sq[:, None] + sq[None, :] - 2 * xd @ xd.T).clamp_min(0).sqrt()
    order = torch.sort(exact, dim=1, stable=True).indices[:, :k]  # ties: the lower row
    cols = slice(0, 20_000)  # the neighbour sets decide every column: check a slice
    reference = torch.stack([xd[order[i], cols].mean(dim=0) for i in range(n)])
    close(ours[:, cols], reference, rtol=1e-6)
    theirs = byzfl_pre.NNM(f=f)(x.clone())[:, cols]
    theirs_dist = torch.cdist(x, x).double()  # what ByzFL's NNM ranks by
    for i in range(n):
        if torch.allclose(theirs[i].double(), reference[i], rtol=0, atol=1e-5 * 20):
            continue
        picked = set(torch.topk(theirs_dist[i], k, largest=False).indices.tolist())
        mine = set(order[i].tolist())
        swapped = sorted(picked ^ mine)
        gap = exact[i, swapped].max() - exact[i, swapped].min()
        error = (theirs_dist[i] - exact[i]).abs().max()
        assert gap < 2 * error, (i, swapped, float(gap), float(error))


@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_bucketing_agrees_given_the_same_permutation(s):
    x = stack_for(10, 2)
    theirs = with_global_seed(21, lambda: byzfl_pre.Bucketing(s=s)(x.clone()))
    mine = pre("bucketing", x, 2, torch.Generator().manual_seed(21), bucket_size=s)
    if s == 1:  # buckets of one: ByzFL permutes the rows, we keep their order
        mine, theirs = mine.sort(dim=0).values, theirs.sort(dim=0).values
    close(mine, theirs)


@pytest.mark.parametrize("c", [0.0, 2.0, 20.0, 1e6])
def test_static_clipping_agrees(c):
    x = stack_for(9, 2)
    close(pre("clipping", x, 2, c=c), byzfl_pre.Clipping(c=c)(x.clone()))


def _float32_norm_error(vectors: torch.Tensor) -> float:
    """Largest relative error of torch's float32 norms of these rows (ByzFL's)."""
    exact = vectors.double().norm(dim=1)
    return float(((torch.linalg.norm(vectors, dim=1).double() - exact) / exact).abs().max())


def test_clipping_differs_from_byzfl_by_byzfls_float32_norms_only():
    """The 1.2e-5 of benchmarks/aggregators.py at d = 10^6: both scale x_i by c / |x_i|;
    ours takes |x_i| in float64 and rounds the product once, ByzFL's
    ``torch.linalg.norm`` sums 10^6 float32 squares in float32 (here 1.4e-5 off the
    exact norm, 7e-7 at d = 10^5). The gap between the two outputs is that norm error."""
    x = torch.randn(4, 1_000_000, generator=torch.Generator().manual_seed(3)) + 0.5
    ours = pre("clipping", x, 0, c=2.0)
    exact = (x.double() * (2.0 / x.double().norm(dim=1, keepdim=True))).float()
    close(ours, exact, rtol=2**-24)  # the float64 product rounded once (the float64 norms
    # may differ in their last bit by summation order: at most one float32 ulp apart)
    theirs = byzfl_pre.Clipping(c=2.0)(x.clone())
    # tolerance: ByzFL's own norm error, measured on these rows, plus 2 float32 ulps
    close(ours, theirs, rtol=_float32_norm_error(x) + 2 * 2**-24)
    assert _float32_norm_error(x) > 1e-6  # the rows are long enough to show it


def test_centered_clipping_differs_from_byzfl_by_byzfls_float32_norms_only():
    """The same 1.2e-5 for centered clipping: ByzFL clips x_i - v by tau over its float32
    norm; ours over the float64 distance |x_i - v|. One iteration from zeros, every
    input clipped (tau below every norm): the outputs differ by ByzFL's norm error."""
    x = torch.randn(5, 1_000_000, generator=torch.Generator().manual_seed(4)) + 0.5
    mine = build_aggregator("centered-clipping", tau=2.0, num_iterations=1, center=None)
    mine.load_state_dict({"rule.center": torch.zeros(x.shape[1])})
    theirs = byzfl_agg.CenteredClipping(L=1, tau=2.0)(x.clone())
    close(mine(x, f=2).value, theirs, rtol=_float32_norm_error(x) + 4 * 2**-24)


@pytest.mark.parametrize(("n", "f"), [*SIZES, (9, 0), (7, 3)])
def test_arc_agrees(n, f):
    x = stack_for(n, f)
    close(pre("arc", x, f), byzfl_pre.ARC(f=f)(x.clone()))


def test_pre_aggregation_then_rule_agrees_with_the_byzfl_composition():
    x = stack_for(25, 5)
    theirs = byzfl_agg.MultiKrum(f=5)(byzfl_pre.NNM(f=5)(x.clone()))
    close(ours("multi-krum", x, 5, num_neighbours=19, pre=["nnm"]), theirs)
    theirs = byzfl_agg.TrMean(f=2)(byzfl_pre.ARC(f=2)(byzfl_pre.Clipping(c=30.0)(x.clone())))
    close(ours("trimmed-mean", x, 2, pre=[("clipping", {"c": 30.0}), "arc"]), theirs)


def test_every_byzfl_aggregator_and_pre_aggregator_has_a_counterpart():
    names = {
        "Average": "mean",
        "Median": "coord-median",
        "TrMean": "trimmed-mean",
        "GeometricMedian": "geometric-median",
        "Krum": "krum",
        "MultiKrum": "multi-krum",
        "CenteredClipping": "centered-clipping",
        "MDA": "mda",
        "MoNNA": "monna",
        "Meamed": "meamed",
        "CAF": "caf",
        "SMEA": "smea",
    }
    theirs = {
        k
        for k, v in vars(byzfl_agg).items()
        if isinstance(v, type) and v.__module__ == byzfl_agg.__name__
    }
    assert theirs == set(names)
    theirs_pre = {
        k
        for k, v in vars(byzfl_pre).items()
        if isinstance(v, type) and v.__module__ == byzfl_pre.__name__
    }
    assert {k.lower() for k in theirs_pre} == set(PRE_AGGREGATIONS)
    for name in names.values():
        build_aggregator(name)
