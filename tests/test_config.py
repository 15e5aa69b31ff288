"""Config composition for every combination of the groups, typed options, one-line errors."""

import dataclasses
import inspect
import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from byzshield import attacks
from byzshield import config as C
from byzshield.config import ConfigError, build_run, load_config, register_schema

CONF = Path(__file__).resolve().parents[1] / "conf"
register_schema()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def hydra_context():
    with initialize_config_module(config_module="byzshield.conf", version_base="1.3"):
        yield


def make(overrides):
    return load_config(compose(config_name="config", overrides=list(overrides)))


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
    assert set(options("network")) >= {"lenet", "resnet18", "resnet34", "resnet50", "densenet"}
    assert set(options("dataset")) >= {"digits", "mnist", "cifar10", "cifar100", "svhn"}


def test_every_option_composes_to_its_own_typed_dataclass():
    for group in ("approach", "mode", "attack"):
        for name in options(group):
            if name == "custom":
                continue
            node = getattr(make([f"{group}={name}"]), group)
            expected = PRESETS.get((group, name), name)  # a preset: another option's schema
            assert dataclasses.is_dataclass(node) and type(node).option == expected, (group, name)


PRESETS = {
    ("mode", "nnm-median"): "coord-median",  # coord-median with pre: [nnm]
    ("attack", "alie_original"): "alie",  # alie with ddof 0, the original code's
}


def test_the_nnm_median_preset_is_coord_median_after_nnm():
    node = make(["mode=nnm-median"]).mode
    assert node.name == "coord-median" and node.pre_aggregations() == ["nnm"]


def test_attack_option_defaults_are_the_attack_classes_own_defaults():
    """Each default is written once: the options are generated from byzshield.attacks."""
    assert set(C.ATTACK_OPTIONS) == set(attacks.ATTACKS)
    for name, cls in C.ATTACK_OPTIONS.items():
        if name == "alie":  # z may be "paper"; its default is the original code's
            continue
        option = cls()
        for fld in dataclasses.fields(attacks.ATTACKS[name]):
            if fld.init:
                assert getattr(option, fld.name) == fld.default, (cls, fld.name)
        assert option.build(num_files=5, rule_f=1) == attacks.make_attack(name)


def test_every_generated_option_class_is_defined_under_its_own_name():
    """A reader or an editor finds ``CoordMedianMode`` or ``RevGradAttack`` by name in its
    module, the one the option class says it lives in."""
    import importlib

    for cls in [*C.MODES.values(), *C.ATTACK_OPTIONS.values()]:
        module = importlib.import_module(cls.__module__)
        assert getattr(module, cls.__name__) is cls, cls
        assert getattr(C, cls.__name__) is cls, cls


def test_mode_options_are_generated_from_each_rules_nested_config():
    """A rule's parameters and defaults are declared once, in its Config: the mode option
    has each config key with that default, and builds the rule with them."""
    from byzshield.aggregators import RULES

    assert set(C.MODES) == set(RULES)
    for name, cls in C.MODES.items():
        keys = [
            f for f in dataclasses.fields(RULES[name].Config) if f.metadata.get("config_key", True)
        ]
        option = cls()
        assert cls.rule_keys == tuple(f.name for f in keys)
        for fld in keys:
            assert getattr(option, fld.name) == fld.default, (name, fld.name)
        assert option.build().rule.config == RULES[name].Config(**option.params())
    assert "center" not in C.CenteredClippingMode.rule_keys  # a tensor: Python API only
    with pytest.raises(C.ConfigError, match="^geometric-median: nu must be"):  # named once
        C.GeometricMedianMode(nu=-1.0)


def test_top_level_defaults_are_written_once_in_the_schema():
    text = (CONF / "config.yaml").read_text()
    for fld in dataclasses.fields(C.TrainConfig):
        assert f"\n{fld.name}:" not in text, fld.name  # the YAML only picks options


def _check_combinations(triples) -> tuple[int, int]:
    ok = refused = 0
    for approach, mode, attack in triples:
        cfg = make([f"approach={approach}", f"mode={mode}", f"attack={attack}"])
        try:
            run = build_run(cfg)
        except ConfigError as exc:
            assert "\n" not in str(exc)
            refused += 1
            continue
        ok += 1
        assert cfg.approach.name == approach and run.q == (0 if attack == "none" else 3)
    return ok, refused


def _groups():
    return ([a for a in options("approach") if a != "custom"], options("mode"), options("attack"))


@pytest.mark.slow  # exhaustive; test_config_properties.py draws random configs by default
def test_every_pair_of_approach_mode_attack_options_composes_and_builds_or_says_why():
    """A covering array: every (approach, mode), (approach, attack) and (mode, attack) pair
    appears (triples (a, m, (a + m) mod n)); each builds or fails with one ConfigError line."""
    approaches, modes, attacks_ = _groups()
    n = max(len(approaches), len(modes), len(attacks_))
    triples = {
        (approaches[i % len(approaches)], modes[j % len(modes)], attacks_[(i + j) % len(attacks_)])
        for i in range(n)
        for j in range(n)
    }
    ok, refused = _check_combinations(sorted(triples))
    assert ok > 30 and refused > 0


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 1,785 compositions: past the default 300 s on a loaded machine
def test_every_approach_mode_attack_combination_composes_and_builds_or_says_why():
    ok, refused = _check_combinations(itertools.product(*_groups()))
    assert ok > 300 and refused > 0


@pytest.mark.parametrize(
    ("network", "dataset"),
    [("lenet", "digits"), ("resnet18", "digits"), ("vgg11", "digits"), ("cnn1d", "mnist1d")],
)
def test_network_dataset_combinations_build(network, dataset):
    run = build_run(make([f"network={network}", f"dataset={dataset}"]), server=False)
    assert run.config.network.name == network and run.train_data.num_classes == 10


def test_aggregator_f_defaults_to_c_max_of_the_placement():
    assert build_run(make(["adversary.q=5"])).rule_f == 8  # mols l=5 r=3: c_max(5) = 8
    assert build_run(make(["approach=draco_lite", "adversary.q=5"])).rule_f == 2  # q // r'
    assert build_run(make(["approach=baseline", "adversary.q=5", "mode=mean"])).rule_f == 5
    assert build_run(make(["adversary.q=5", "aggregator_f=1"])).rule_f == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lr=-1"], "lr must be a finite number > 0"),
        (["momentum=1.5"], "momentum must be in [0, 1)"),
        (["batch_size=260"], "must be a multiple of the number of files f=25"),
        (["mode=bulyan", "adversary.q=5"], "mode bulyan with 25 files and f=8"),
        (["adversary.q=16"], "adversary.q must be an integer in 0..K=15"),
        (["adversary.q=-1"], "adversary.q must be an integer >= 0"),
        (["adversary.selection=best"], "adversary.selection must be one of"),
        (["adversary.selection=[1,2]"], "needs q=3 distinct worker ids"),
        (["approach.l=6"], "l must be a prime power"),
        (["approach=custom"], "approach.path has no value"),
        (["network=resnet18", "batch_size=25"], "needs >= 2 samples per file"),
        (["approach=baseline", "batch_size=20"], "multiple of the number of files f=15"),
        (["dataset=mnist1d"], "network=lenet with dataset=mnist1d"),
        (["attack=gaussian", "attack.std=-1"], "attack gaussian: gaussian: std must be >= 0"),
        (["engine=mpi"], "engine must be one of auto, torchrun, simulate"),
        (["approach.name=rama_two"], "approach.name is 'rama_two' but the chosen option is"),
        (["dataset.partition=noniid"], "unknown dataset.partition 'noniid'; choose one of iid, "),
        (["dataset.alpha=0"], "dataset.alpha must be a finite number > 0, got 0.0"),
        (["dataset.alpha=-inf"], "dataset.alpha must be a finite number > 0, got -inf"),
        (["dataset.alpha=nan"], "dataset.alpha must be a finite number > 0, got nan"),
        (["dataset.classes_per_file=11"], "classes_per_file must be an integer in 1..10, got 11"),
        (["dataset.classes_per_file=0"], "classes_per_file must be an integer in 1..10, got 0"),
        (
            ["dataset.partition=classes", "dataset.classes_per_file=9", "batch_size=200"],
            "dataset.partition=classes with batch_size=200 and f=25 files: classes_per_file=9 "
            "needs files of at least 9 samples (one of each class), but the files hold 8",
        ),
    ],
)
def test_bad_values_raise_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        build_run(make(overrides))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_wrong_world_size_names_the_right_nproc_per_node():
    with pytest.raises(ConfigError, match="run torchrun --nproc-per-node 16"):
        build_run(make([]), world_size=4)


def test_unknown_keys_and_bad_types_are_refused_when_hydra_composes():
    from hydra.errors import ConfigCompositionException

    for bad in (["bogus=1"], ["lr=abc"], ["mode.foo=1"], ["approach.K=3"], ["attack.z=1"]):
        with pytest.raises(ConfigCompositionException):
            compose(config_name="config", overrides=bad)


def test_maj_vote_always_takes_the_mean_and_says_so():
    run = build_run(make(["approach=maj_vote", "mode=bulyan", "adversary.q=1"]))
    assert run.mode_option.name == "mean" and run.notes


def test_none_attack_has_no_byzantine_workers_whatever_q_says():
    run = build_run(make(["attack=none", "adversary.q=3"]))
    assert run.q == 0 and run.selection.workers(0) == ()


def test_workers_never_run_the_worst_case_search():
    run = build_run(make(["adversary.q=3"]), server=False)
    assert run.selection is None and run.rule is None


def test_worst_case_set_and_certification_are_in_the_run_info():
    run = build_run(make(["adversary.q=3"]))
    sel = run.info["selection"]
    assert sel["kind"] == "worst_case" and sel["certified"] and sel["c_max"] == 3
    assert len(sel["workers"]) == 3


def test_alie_z_used_is_stored_with_the_run():
    run = build_run(make(["attack=alie", "attack.z=1.5"]))
    assert run.info["attack"]["z_used"] == 1.5


def test_option_classes_document_themselves():
    for cls in C.OPTIONS:
        assert inspect.getdoc(cls), cls


def test_alie_defaults_to_a_real_attack_and_refuses_a_harmless_z():
    assert build_run(make(["attack=alie", "adversary.q=2"])).info["attack"]["z_used"] == 1.0
    with pytest.raises(ConfigError, match="the paper's z for n=25 files, q=1 = 0 <= 0"):
        build_run(make(["attack=alie", "adversary.q=2", "attack.z=paper"]))
    run = build_run(
        make(["attack=alie", "attack.z=paper", "adversary.q=2", "attack.allow_nonpositive_z=true"])
    )
    assert run.info["attack"]["z_used"] == 0.0
    assert build_run(make(["attack=alie", "attack.z=paper", "adversary.q=5"])).attack.z_used > 0


@pytest.mark.parametrize(
    ("approach", "kind", "workers"),
    [
        ("draco_lite_attack", "detox_worst", [0, 1, 3]),  # DETOX's worst for K=15, r=3, q=3
        ("draco_lite", "random", None),
        ("mols", "worst_case", [0, 5, 11]),
    ],
)
def test_selection_auto_is_the_original_default_of_each_approach(approach, kind, workers):
    sel = build_run(make([f"approach={approach}"])).selection
    assert sel.kind == kind and (workers is None or list(sel.workers(0)) == workers)


def test_detox_strategies_as_selections():
    def chosen(strategy):
        run = build_run(make(["approach=draco_lite", f"adversary.selection=detox_{strategy}"]))
        return list(run.selection.workers(7))

    assert chosen("worst") == [0, 1, 3]
    assert chosen("benign") == [0, 3, 6]
    assert chosen("whole_group") == [0, 1, 2]
    with pytest.raises(ConfigError, match="need a DETOX group placement"):
        build_run(make(["adversary.selection=detox_worst"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+foo=1"], "unknown key foo; the top level takes adversary, aggregator_f, approach"),
        (["+attack.foo=1"], "unknown key attack.foo; attack takes name, scale"),
        (["+mode.bar=2"], "unknown key mode.bar; mode takes"),
        (["attack=constant", "attack.value=1e39"], "attack.value must be a finite float32"),
        (["attack=gaussian", "attack.std=nan"], "attack.std must be a finite float32"),
    ],
)
def test_added_keys_and_float32_overflow_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make(overrides)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "train_dir is empty"),
        ("  ", "train_dir is empty"),
        ("runs/a,b", "train_dir must not contain a comma"),
        ("/etc/hostname", "is an existing file, not a folder"),
        ("/proc/nope/run", "cannot be written"),
    ],
)
def test_a_train_dir_that_cannot_be_a_run_folder_is_one_line(path, message):
    from byzshield.cli.launcher import check_train_dir

    with pytest.raises(ValueError, match=message):
        check_train_dir(path)


def test_every_key_has_help_and_a_row_in_the_configuration_key_table():
    import dataclasses
    from pathlib import Path

    from byzshield.config import KEY_HELP, TrainConfig

    groups = {"approach", "mode", "attack", "network", "dataset"}
    keys = {f.name for f in dataclasses.fields(TrainConfig)} - groups
    assert set(KEY_HELP) == keys
    page = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    table = page[page.index("| group / key |") :].split("\n\n")[0]
    missing = [k for k in keys if f"`{k}`" not in table]
    assert not missing, f"docs/configuration.md's key table lacks {missing}"


def test_help_lists_options_without_schemas_and_every_key(capsys):
    from byzshield.cli.launcher import train_help

    text = train_help()
    assert "_schema" not in text
    assert "  mode       bulyan, caf," in text and "(default coord-median)" in text
    assert "  stragglers        workers per step" in text and "[runs/<time>]" in text


def test_a_run_is_frozen_and_building_its_model_leaves_the_global_generator_alone():
    """build_run builds the run once (add_server_parts returns a new one); build_model
    seeds inside fork_rng, so two builds give the same parameters and torch's global
    random stream is where it was."""
    import torch

    config = make(["approach=mols", "adversary.q=2"])
    worker = build_run(config, server=False)
    server = C.add_server_parts(worker)
    assert worker.selection is None and worker.rule is None
    assert server.selection is not None and server.rule_f == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        server.rule_f = 0
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    a = [p.clone() for p in server.build_model().parameters()]
    assert torch.equal(torch.rand(3), expected)  # the model's initialisation drew nothing here
    b = list(worker.build_model().parameters())
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
