"""Min-Max, Min-Sum and Fang against independent implementations written here: gamma from
each quadratic constraint (and a bisection on the constraint itself), the copy feasible
and gamma (1 + 1e-3) not, the edge cases; every Fang coordinate in the paper's bounds.
(A sharded server forges their bits: tests/test_shards.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from byzshield.attacks import Fang, MinMax, MinSum, attack_generator, make_attack
from byzshield.attacks.strongest import deviation


def stack(n=7, d=5, seed=0) -> torch.Tensor:
    """A fixed small honest stack: n gradients around a common direction."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) + torch.linspace(-1.0, 2.0, d)).to(torch.float32)


def direction(h: np.ndarray, kind: str) -> np.ndarray:
    """Shejwalkar & Houmansadr's deviation p, written from their definitions."""
    mu = h.mean(axis=0)
    if kind == "unit_vec":
        return -mu / np.linalg.norm(mu)
    if kind == "sign":
        return -np.sign(mu)
    return -h.std(axis=0, ddof=1)


def max_distance(h, v):  # Min-Max's left side: the largest squared distance to an honest one
    return max(float(np.sum((v - g) ** 2)) for g in h)


def sum_distance(h, v):  # Min-Sum's left side
    return sum(float(np.sum((v - g) ** 2)) for g in h)


def bounds(h):
    """(Min-Max's bound, Min-Sum's bound) over the honest gradients themselves."""
    pair = [[float(np.sum((a - b) ** 2)) for b in h] for a in h]
    return max(max(row) for row in pair), max(sum(row) for row in pair)


def quadratic_gamma(h: np.ndarray, p: np.ndarray, kind: str) -> float:
    """gamma from the quadratic constraints, solved with the textbook root formula."""
    mu = h.mean(axis=0)
    a = float(p @ p)
    t_max, t_sum = bounds(h)
    if kind == "min_max":
        roots = []
        for g in h:
            b = 2 * float(p @ (mu - g))
            c = float((mu - g) @ (mu - g)) - t_max
            roots.append((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))
        return min(roots)
    n = len(h)
    b = 2 * float(p @ (n * mu - h.sum(axis=0)))
    c = sum(float((mu - g) @ (mu - g)) for g in h) - t_sum
    return (-b + math.sqrt(b * b - 4 * n * a * c)) / (2 * n * a)


def bisect_gamma(h, p, kind, rel=1e-12):
    """The largest feasible gamma by doubling then bisecting on the constraint itself."""
    mu = h.mean(axis=0)
    side, bound = (
        (max_distance, bounds(h)[0]) if kind == "min_max" else (sum_distance, bounds(h)[1])
    )

    def ok(gamma):
        return side(h, mu + gamma * p) <= bound

    hi = 1.0
    while ok(hi):
        hi *= 2
    lo = 0.0
    while hi - lo > rel * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


ATTACKS = {"min_max": MinMax, "min_sum": MinSum}


@pytest.mark.parametrize("kind", ["min_max", "min_sum"])
@pytest.mark.parametrize("dev", ["unit_vec", "sign", "std"])
@pytest.mark.parametrize("shape", [(7, 5), (3, 40), (15, 2)])
def test_gamma_is_the_largest_feasible_value_of_the_quadratic_constraints(kind, dev, shape):
    honest = stack(*shape, seed=sum(shape))
    h = honest.double().numpy()
    p = direction(h, dev)
    attack = ATTACKS[kind](direction=dev)
    copy = attack.forge(honest, [0])
    gamma = attack.last_factor
    assert gamma == pytest.approx(quadratic_gamma(h, p, kind), rel=1e-9)
    assert gamma == pytest.approx(bisect_gamma(h, p, kind), rel=1e-9)
    mu = h.mean(axis=0)
    side, bound = (
        (max_distance, bounds(h)[0]) if kind == "min_max" else (sum_distance, bounds(h)[1])
    )
    assert side(h, mu + gamma * p) <= bound * (1 + 1e-12)  # feasible
    assert side(h, mu + gamma * (1 + 1e-3) * p) > bound  # and the largest
    assert copy.shape == (1, shape[1]) and copy.dtype == torch.float32
    assert torch.equal(copy[0], torch.from_numpy(mu + gamma * p).float())


def test_min_sum_gamma_is_the_farthest_honest_distance_from_the_mean_over_the_norm_of_p():
    """The linear term vanishes (the centred gradients sum to 0): an independent closed form."""
    honest = stack(9, 6, seed=3)
    h = honest.double().numpy()
    for dev in ("unit_vec", "sign", "std"):
        p = direction(h, dev)
        attack = MinSum(direction=dev)
        attack.forge(honest, [0])
        far = max(np.linalg.norm(g - h.mean(axis=0)) for g in h)
        assert attack.last_factor == pytest.approx(far / np.linalg.norm(p), rel=1e-9)


def test_directions_follow_the_reference_code():
    honest = stack(6, 4, seed=5)
    h = honest.double()
    for dev in ("unit_vec", "sign", "std"):
        p = deviation(h, dev)
        assert np.allclose(p.numpy(), direction(h.numpy(), dev), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="direction must be one of unit_vec, sign, std"):
        make_attack("min_max", direction="up")


@pytest.mark.parametrize("kind", ["min_max", "min_sum"])
@pytest.mark.parametrize("dev", ["unit_vec", "sign", "std"])
def test_edge_cases_give_gamma_zero_and_the_mean_never_nan(kind, dev):
    one = torch.tensor([[1.0, -2.0, 3.0]])
    equal = one.repeat(4, 1)
    zero_mean = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])  # mu = 0: unit_vec and sign give p = 0
    for honest in (one, equal, zero_mean):
        attack = ATTACKS[kind](direction=dev)
        copy = attack.forge(honest, [0])
        assert torch.isfinite(copy).all()
        if honest is zero_mean and dev == "std":  # p = -sigma != 0: a real gamma
            assert attack.last_factor > 0
            continue
        assert attack.last_factor == 0.0
        assert torch.equal(copy[0], honest.double().mean(dim=0).float())


def test_fang_draws_every_coordinate_within_the_papers_bounds():
    honest = stack(8, 300, seed=7)
    honest[:, :5] = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0])  # equal rows: lo = hi cases
    h = honest.double().numpy()
    files = [0, 3, 4]
    forged = Fang(b=3.0).forge(honest, files, seed=11, step=2)
    assert forged.shape == (3, 300) and forged.dtype == torch.float32
    b = 3.0
    for j in range(h.shape[1]):
        column = h[:, j]
        lo_max, lo_min = column.max(), column.min()
        if column.mean() >= 0:  # gradient up, the parameter goes down: push it up
            interval = (lo_min / b, lo_min) if lo_min > 0 else (b * lo_min, lo_min)
        else:
            interval = (lo_max, b * lo_max) if lo_max > 0 else (lo_max, lo_max / b)
        low = np.float32(interval[0])
        high = np.float32(interval[1])
        for k in range(len(files)):
            value = forged[k, j].item()
            assert low <= value <= high, (j, k, value, interval)
    # each file's copy is its own draw: the same for every copy of it, new for another file
    again = Fang(b=3.0).forge(honest, [4], seed=11, step=2)
    assert torch.equal(again[0], forged[2]) and not torch.equal(forged[0], forged[1])
    one = Fang(b=3.0)(honest[0], honest=honest, generator=attack_generator(11, 2, 3))
    assert torch.equal(one, forged[1])


def test_fang_opposes_the_honest_mean_and_refuses_b_at_most_one():
    honest = stack(10, 200, seed=2)
    forged = Fang().forge(honest, [0], seed=0, step=0)[0].double()
    mean = honest.double().mean(dim=0)
    assert float(forged @ mean) < 0  # the crafted gradient points against the honest one
    for b in (1.0, 0.5, -2.0, math.inf):
        with pytest.raises(ValueError, match="fang: b must be"):
            make_attack("fang", b=b)
    with pytest.raises(ValueError, match="explicit torch.Generator"):
        Fang()(honest[0], honest=honest)


def test_byzfl_has_no_min_max_min_sum_or_fang_to_compare_with():
    """ByzFL (the reference the other attacks are checked against) ships ALIE, IPM, their
    optimised forms, sign flipping, mimic, Gaussian, Inf and label flipping only; when a
    release adds one of these, compare with it here."""
    byzfl = pytest.importorskip("byzfl")
    names = {n.lower() for n in dir(byzfl)}
    assert "alittleisenough" in names  # its attacks are listed here
    assert not any(k in n for n in names for k in ("minmax", "min_max", "minsum", "fang"))
