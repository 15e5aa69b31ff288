"""Config composition for every combination of the groups, and one-line errors."""

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from byzshield.config import ConfigError, register_schema, validate

CONF = Path(__file__).resolve().parents[1] / "conf"
register_schema()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def hydra_context():
    with initialize_config_module(config_module="byzshield.conf", version_base="1.3"):
        yield


def make(overrides):
    return compose(config_name="config", overrides=list(overrides))


def test_every_group_has_the_options_users_of_the_original_know():
    assert set(options("approach")) >= {
        "baseline",
        "mols",
        "rama_one",
        "rama_two",
        "draco_lite",
        "draco_lite_attack",
        "maj_vote",
    }
    assert set(options("mode")) >= {"coord-median", "bulyan", "multi-krum"}
    assert set(options("attack")) >= {"none", "rev_grad", "constant", "alie"}
    assert set(options("network")) == {
        "lenet",
        "resnet18",
        "resnet34",
        "resnet50",
        "densenet",
        "vgg11",
        "vgg13",
    }
    assert set(options("dataset")) == {"digits", "mnist", "cifar10", "cifar100", "svhn"}


def _check_combinations(triples) -> tuple[int, int]:
    ok = refused = 0
    for approach, mode, attack in triples:
        cfg = make([f"approach={approach}", f"mode={mode}", f"attack={attack}"])
        try:
            spec = validate(cfg)
        except ConfigError as exc:
            assert "\n" not in str(exc)
            refused += 1
            continue
        ok += 1
        assert spec.approach == approach and spec.q == (0 if attack == "none" else 3)
    return ok, refused


def _groups():
    return ([a for a in options("approach") if a != "custom"], options("mode"), options("attack"))


def test_every_pair_of_approach_mode_attack_options_composes_and_validates_or_says_why():
    """A covering array: every (approach, mode), (approach, attack) and (mode, attack) pair
    appears (triples (a, m, (a + m) mod n)); each runs or fails with one ConfigError line."""
    approaches, modes, attacks = _groups()
    n = max(len(approaches), len(modes), len(attacks))
    triples = {
        (approaches[i % len(approaches)], modes[j % len(modes)], attacks[(i + j) % len(attacks)])
        for i in range(n)
        for j in range(n)
    }
    ok, refused = _check_combinations(sorted(triples))
    assert ok > 30 and refused > 0


@pytest.mark.slow
def test_every_approach_mode_attack_combination_composes_and_validates_or_says_why():
    ok, refused = _check_combinations(itertools.product(*_groups()))
    assert ok > 300 and refused > 0


@pytest.mark.parametrize("network", options("network"))
@pytest.mark.parametrize("dataset", options("dataset"))
def test_every_network_dataset_combination_composes_and_validates(network, dataset):
    spec = validate(make([f"network={network}", f"dataset={dataset}"]))
    assert spec.network == network and spec.dataset == dataset
    assert spec.num_classes == (100 if dataset == "cifar100" else 10)


def test_aggregator_f_defaults_to_c_max_of_the_placement():
    assert validate(make(["attack.q=5"])).aggregator_f == 8  # mols l=5 r=3: c_max(5) = 8
    assert validate(make(["approach=draco_lite", "attack.q=5"])).aggregator_f == 2  # q // r'
    assert validate(make(["approach=baseline", "attack.q=5", "mode=mean"])).aggregator_f == 5
    assert validate(make(["attack.q=5", "aggregator_f=1"])).aggregator_f == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lr=-1"], "lr must be > 0"),
        (["momentum=1.5"], "momentum must be in [0, 1)"),
        (["batch_size=260"], "must be a multiple of the number of files f=25"),
        (["mode=bulyan", "attack.q=5"], "mode bulyan with 25 files and f=8"),
        (["attack.q=16"], "attack.q must be an integer in 0..K=15"),
        (["attack.selection=best"], "attack.selection must be one of"),
        (["attack.selection=[1,2]"], "needs q=3 distinct worker ids"),
        (["approach.l=6"], "l must be a prime power"),
        (["network=resnet18", "batch_size=25"], "needs >= 2 samples per file"),
        (["approach=baseline", "batch_size=20"], "multiple of the number of files f=15"),
        (["attack=alie", "attack.z=abc"], "attack alie"),
    ],
)
def test_bad_values_raise_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        validate(make(overrides))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_wrong_world_size_names_the_right_nproc_per_node():
    with pytest.raises(ConfigError, match="run torchrun --nproc-per-node 16"):
        validate(make([]), world_size=4)


def test_unknown_keys_and_bad_types_are_refused_by_the_schema():
    from hydra.errors import ConfigCompositionException

    for bad in (["bogus=1"], ["lr=abc"], ["mode.foo=1"]):
        with pytest.raises(ConfigCompositionException):
            make(bad)


def test_maj_vote_always_takes_the_mean_and_says_so():
    spec = validate(make(["approach=maj_vote"]))
    assert spec.aggregator == "mean" and spec.notes
