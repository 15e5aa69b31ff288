"""Attacks: shapes and dtypes preserved, deterministic given a generator, paper formulas."""

import doctest
import importlib
import math
import pkgutil
from statistics import NormalDist

import pytest
import torch

import byzshield.attacks
from byzshield.attacks import (
    ATTACKS,
    ALittleIsEnough,
    InnerProductManipulation,
    LabelFlip,
    alie_z,
    make_attack,
)
from byzshield.compute.gradients import flip_labels

NAMES = [
    "none",
    "rev_grad",
    "constant",
    "alie",
    "ipm",
    "sign_flip",
    "gaussian",
    "label_flip",
    "infinity",
    "mimic",
    "min_max",
    "min_sum",
    "fang",
    "backdoor",
]
OPTIMISED = ["optimal_alie", "optimal_ipm"]  # need the vote and the rule (test_step.py)
PARAMS = {"alie": {"n": 15, "q": 3}}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def grads(m, d, seed=0):
    return torch.randn(m, d, generator=gen(seed))


def run(name, own, honest, seed=0):
    attack = make_attack(name, **PARAMS.get(name, {}))
    return attack(own, honest=honest if attack.needs_honest else None, generator=gen(seed))


def test_registry_holds_exactly_the_config_names():
    assert sorted(ATTACKS) == sorted(NAMES + OPTIMISED)
    for name in NAMES:
        attack = make_attack(name, **PARAMS.get(name, {}))
        assert attack.name == name
        assert attack.needs_honest == (
            name
            in ("alie", "ipm", "mimic", "optimal_alie", "optimal_ipm", "min_max", "min_sum", "fang")
        )
        assert attack.flips_labels == (name == "label_flip")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7,), (3, 4)])
def test_attack_preserves_shape_and_dtype(name, dtype, shape):
    own = torch.randn(shape, generator=gen(1)).to(dtype)
    honest = torch.randn((5, *shape), generator=gen(2)).to(dtype)
    out = run(name, own, honest)
    assert out.shape == own.shape and out.dtype == own.dtype
    assert torch.isfinite(out.float()).all() == (name != "infinity")  # inf sends +inf on purpose


@pytest.mark.parametrize("name", NAMES)
def test_attack_is_deterministic_given_the_generator(name):
    own, honest = grads(1, 50, seed=3)[0], grads(6, 50, seed=4)
    assert torch.equal(run(name, own, honest, seed=9), run(name, own, honest, seed=9))


def test_gaussian_depends_only_on_its_generator_not_global_state():
    attack = make_attack("gaussian", mean=1.0, std=2.0)
    own = torch.zeros(1000)
    torch.manual_seed(0)
    a = attack(own, generator=gen(5))
    torch.manual_seed(1)
    b = attack(own, generator=gen(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, attack(own, generator=gen(6)))
    assert abs(a.mean().item() - 1.0) < 0.2 and abs(a.std().item() - 2.0) < 0.2


def test_gaussian_refuses_to_run_without_a_generator():
    with pytest.raises(ValueError, match="explicit torch.Generator"):
        make_attack("gaussian")(torch.zeros(3))


def test_simple_attacks_follow_their_formulas():
    own = torch.tensor([1.0, -2.0, 0.5])
    assert make_attack("none")(own) is own
    assert make_attack("rev_grad")(own).tolist() == [-100.0, 200.0, -50.0]
    assert make_attack("rev_grad", scale=3)(own).tolist() == [-3.0, 6.0, -1.5]
    assert make_attack("constant")(own).tolist() == [-100.0] * 3
    assert make_attack("constant", value=7.0)(own).tolist() == [7.0] * 3
    assert make_attack("sign_flip")(own).tolist() == [-1.0, 2.0, -0.5]
    assert make_attack("label_flip")(own) is own


def test_alie_sends_mean_plus_z_std_of_honest():
    honest = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 13.0]])
    out = ALittleIsEnough(z=2.0)(torch.zeros(2), honest=honest)
    # mean (3, 11), sample std (2, sqrt(3))
    assert torch.allclose(out, torch.tensor([3.0 + 4.0, 11.0 + 2.0 * math.sqrt(3.0)]))
    out = ALittleIsEnough(z=2.0, ddof=0)(torch.zeros(2), honest=honest)
    assert torch.allclose(
        out, torch.tensor([3.0 + 2.0 * math.sqrt(8 / 3), 11.0 + 2.0 * math.sqrt(2.0)])
    )


@pytest.mark.parametrize("ddof", [0, 1])
def test_alie_two_pass_statistics_match_numpy_and_leave_the_input_alone(ddof):
    import numpy as np

    from byzshield.attacks.omniscient import mean_std

    gen = torch.Generator().manual_seed(ddof)
    # a large mean next to a small spread: where a one-pass sum of squares would cancel
    honest = torch.randn(12, 3000, generator=gen) * 1e-3 + 100.0
    before = honest.clone()
    mu, sigma = mean_std(honest, ddof)
    x = honest.numpy().astype(np.float64)
    assert mu.dtype == sigma.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(sigma.numpy(), x.std(axis=0, ddof=ddof), rtol=1e-9)
    assert torch.equal(honest, before)
    doubled = honest.double()  # a float64 stack is not changed in place either
    mean_std(doubled, ddof)
    assert torch.equal(doubled, before.double())
    # the forged float32 vector: numpy's float64 statistics, rounded once
    forged = ALittleIsEnough(z=1.5, ddof=ddof)(honest[0], honest=honest)
    expected = (x.mean(axis=0) + 1.5 * x.std(axis=0, ddof=ddof)).astype(np.float32)
    assert np.array_equal(forged.numpy(), expected)


def test_alie_default_z_follows_baruch_et_al():
    # n = 25, q = 5: s = floor(13.5) - 5 = 8, z = Phi^-1((25 - 5 - 8) / 20) = Phi^-1(0.6)
    assert alie_z(25, 5) == pytest.approx(NormalDist().inv_cdf(0.6))
    assert alie_z(25, 5) == pytest.approx(0.253347, abs=1e-6)
    # n = 15, q = 3: s = 8 - 3 = 5, ratio 7 / 12
    assert alie_z(15, 3) == pytest.approx(NormalDist().inv_cdf(7 / 12))
    assert make_attack("alie", n=25, q=5).z_used == alie_z(25, 5)
    assert make_attack("alie", n=25, q=5, z=1.0).z_used == 1.0  # the original's z


def test_alie_z_refuses_undefined_settings():
    with pytest.raises(ValueError, match="undefined for n=4, q=3"):
        alie_z(4, 3)
    with pytest.raises(ValueError, match="0 <= q < n"):
        alie_z(5, 5)
    with pytest.raises(ValueError, match="integers"):
        alie_z(5.0, 1)
    with pytest.raises(ValueError, match="needs n and q"):
        make_attack("alie")
    with pytest.raises(ValueError, match="ddof"):
        make_attack("alie", z=1.0, ddof=2)


def test_ipm_sends_minus_eps_times_honest_mean():
    honest = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert InnerProductManipulation()(torch.zeros(2), honest=honest).tolist() == [-200.0, -400.0]
    assert make_attack("ipm", eps=0.5)(torch.zeros(2), honest=honest).tolist() == [-1.0, -2.0]


@pytest.mark.parametrize("name", ["alie", "ipm"])
def test_omniscient_attacks_refuse_missing_or_mismatched_honest_stack(name):
    attack = make_attack(name, **PARAMS.get(name, {}))
    with pytest.raises(ValueError, match="needs the honest gradients"):
        attack(torch.zeros(3), generator=gen())
    with pytest.raises(ValueError, match=r"honest must have shape \(m, 3\)"):
        attack(torch.zeros(3), honest=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="honest rows"):
        attack(torch.zeros(3), honest=torch.zeros(0, 3))


def test_flip_labels_maps_y_to_c_minus_one_minus_y():
    labels = torch.tensor([0, 1, 2, 9, 5])
    assert flip_labels(labels, 10).tolist() == [9, 8, 7, 0, 4]
    assert torch.equal(flip_labels(flip_labels(labels, 10), 10), labels)
    assert flip_labels(labels, 10).dtype == labels.dtype
    assert LabelFlip.flips_labels


def test_flip_labels_refuses_out_of_range_or_float_labels():
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        flip_labels(torch.tensor([0, 10]), 10)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        flip_labels(torch.tensor([-1]), 3)
    with pytest.raises(ValueError, match="integer"):
        flip_labels(torch.tensor([0.0]), 3)
    with pytest.raises(ValueError, match="num_classes"):
        flip_labels(torch.tensor([0]), 0)


def test_make_attack_refuses_unknown_names_parameters_and_values():
    with pytest.raises(ValueError, match="unknown attack 'lie'; choose one of"):
        make_attack("lie")
    with pytest.raises(ValueError, match="rev_grad has no parameter eps; allowed: scale"):
        make_attack("rev_grad", eps=1.0)
    with pytest.raises(ValueError, match="sign_flip has no parameter scale; allowed: none"):
        make_attack("sign_flip", scale=1.0)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        make_attack("rev_grad", scale=math.nan)
    with pytest.raises(ValueError, match="std must be >= 0"):
        make_attack("gaussian", std=-1.0)
    with pytest.raises(ValueError, match="own must be a torch.Tensor"):
        make_attack("rev_grad")([1.0])


def test_attacks_are_immutable_values():
    attack = make_attack("rev_grad", scale=5.0)
    with pytest.raises(AttributeError):
        attack.scale = 1.0
    assert attack == make_attack("rev_grad", scale=5.0)


# ---------------------------------------------------------------- agreement with ByzFL


@pytest.fixture(scope="module")
def byzfl_attacks():
    return pytest.importorskip(
        "byzfl.attacks.attacks",
        reason="byzfl (optional, `pip install byzfl` or the bench extra) is not installed",
    )


def test_agrees_with_byzfl_alie_ipm_and_sign_flipping(byzfl_attacks):
    honest = grads(8, 200, seed=21)
    own = honest[0]
    ours = make_attack("alie", z=1.5)(own, honest=honest)
    assert torch.allclose(ours, byzfl_attacks.ALittleIsEnough(tau=1.5)(honest), atol=1e-5)
    ours = make_attack("ipm", eps=2.0)(own, honest=honest)
    assert torch.allclose(ours, byzfl_attacks.InnerProductManipulation(tau=2.0)(honest), atol=1e-6)
    # ByzFL's SignFlipping is the omniscient -mean(honest): our ipm with eps = 1
    ours = make_attack("ipm", eps=1.0)(own, honest=honest)
    assert torch.allclose(ours, byzfl_attacks.SignFlipping()(honest), atol=1e-6)


def test_ipm_averages_over_honest_copies_like_the_original():
    from byzshield.attacks import forge

    honest = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weights = torch.tensor([3.0, 1.0])  # file 0 has three honest copies, file 1 one
    ipm = make_attack("ipm", eps=1.0)
    assert forge(ipm, honest, [1], seed=0, step=0, weights=weights).tolist() == [[-0.75, -0.25]]
    files = make_attack("ipm", eps=1.0, over="files")
    assert forge(files, honest, [1], seed=0, step=0, weights=weights).tolist() == [[-0.5, -0.5]]


def test_alie_with_ddof_0_over_files_equals_the_original_statistics_over_all_copies():
    honest = grads(4, 30, seed=5)
    copies = honest.repeat_interleave(3, dim=0)  # every file has r = 3 copies
    a = make_attack("alie", z=1.0, ddof=0)
    assert torch.allclose(a(honest[0], honest=honest), a(honest[0], honest=copies), atol=1e-6)


def test_line_search_matches_byzfl_on_the_same_objective():
    byzfl = pytest.importorskip("byzfl")
    from byzshield.attacks import line_search

    honest = grads(12, 40, seed=6)
    ours = byzfl.Optimal_ALittleIsEnough(agg=byzfl.TrMean(f=3), pre_agg_list=[], f=3)
    mean = honest.mean(dim=0)

    def damage(tau: float) -> float:
        return ours._evaluate(honest, mean, tau)

    tau, _ = line_search(damage, evals=20, start=0.0, delta=10.0, ratio=0.8)
    expected = ours(honest)
    got = byzfl.ALittleIsEnough(tau=float(tau))(honest)
    assert torch.allclose(got, expected)


def test_mimic_copies_a_file_without_byzantine_holders_and_inf_is_infinite():
    from byzshield.attacks import forge

    honest = grads(4, 6, seed=7)
    assert torch.equal(forge(make_attack("mimic"), honest, [0, 1], seed=0, step=0)[0], honest[2])
    assert torch.equal(
        forge(make_attack("mimic", target=3), honest, [0], seed=0, step=0)[0], honest[3]
    )
    assert torch.isinf(make_attack("infinity")(honest[0])).all()


@pytest.mark.parametrize("tau", [0.5, 1.5])
def test_alie_and_ipm_agree_with_byzfl(tau):
    byzfl = pytest.importorskip("byzfl")
    honest = grads(9, 64, seed=8)
    alie = make_attack("alie", z=tau, ddof=1)(honest[0], honest=honest)
    assert torch.allclose(alie, byzfl.ALittleIsEnough(tau=tau)(honest), rtol=1e-5, atol=1e-6)
    ipm = make_attack("ipm", eps=tau, over="files")(honest[0], honest=honest)
    ref = byzfl.InnerProductManipulation(tau=tau)(honest)
    assert torch.allclose(ipm, ref, rtol=1e-5, atol=1e-7)


def test_mimic_and_infinity_agree_with_byzfl():
    byzfl = pytest.importorskip("byzfl")
    honest = grads(5, 16, seed=9)
    ours = make_attack("mimic", target=2)(honest[0], honest=honest)
    assert torch.equal(ours, byzfl.Mimic(epsilon=2)(honest))
    assert torch.equal(make_attack("infinity")(honest[0]).double(), byzfl.Inf()(honest).double())


ATTACK_MODULES = ["byzshield.attacks"] + [
    f"byzshield.attacks.{m.name}"
    for m in pkgutil.iter_modules(byzshield.attacks.__path__)
    if not m.name.startswith("_")
]


@pytest.mark.parametrize("name", ATTACK_MODULES)
def test_the_examples_in_the_docstrings_hold(name):
    """Each attack's docstring example is what the code returns."""
    module = importlib.import_module(name)
    assert doctest.testmod(module, extraglobs={"torch": torch}).failed == 0
