"""Property-based: every combination of config values either builds a run or fails, before
any process group starts, with one line that names the offending key or value."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from byzshield.config import ConfigError, build_run
from byzshield.config.overrides import UsageError, compose_config

APPROACHES = {
    "mols": {"l": st.sampled_from([2, 3, 4, 5, 6, 7, 9, 10]), "r": st.integers(-1, 8)},
    "rama_one": {"m": st.integers(0, 4), "s": st.sampled_from([2, 3, 4, 5, 7])},
    "rama_two": {"m": st.sampled_from([2, 3, 4, 6, 9]), "s": st.sampled_from([2, 3, 4, 5])},
    "draco_lite": {"K": st.integers(0, 20), "r": st.integers(0, 6)},
    "draco_lite_attack": {"K": st.integers(1, 20), "r": st.integers(1, 6)},
    "baseline": {"K": st.integers(-1, 20)},
}
MODES = {
    "coord-median": {"num_buckets": st.sampled_from(["null", 0, 1, 3, 7, 40])},
    "multi-krum": {"m": st.sampled_from(["null", 0, 1, 5, "n-f-2", "'n-f-9'", 1000])},
    "bulyan": {},
    "mean": {},
    "trimmed-mean": {},
    "centered-clipping": {"tau": st.sampled_from([-1.0, 0.0, 1.0, 100.0])},
    "krum": {},
    "monna": {"idx": st.integers(-1, 30)},
}
ATTACKS = {
    "rev_grad": {"scale": st.sampled_from([1.0, 100.0, "nan", "inf"])},
    "alie": {"z": st.sampled_from([1.0, 0.0, -1.0, "paper", "nan"]), "ddof": st.integers(-1, 2)},
    "ipm": {"over": st.sampled_from(["copies", "files", "workers"])},
    "gaussian": {"std": st.sampled_from([-1.0, 0.0, 5.0])},
    "label_flip": {},
    "none": {},
    "mimic": {"target": st.sampled_from(["null", -1, 0, 3, 500])},
    "min_max": {"direction": st.sampled_from(["unit_vec", "sign", "std", "up"])},
    "fang": {"b": st.sampled_from([2.0, 1.0, 0.5, "inf"])},
    "backdoor": {
        "target": st.sampled_from([0, 9, 10, -1]),
        "fraction": st.sampled_from([0.5, 1.0, 0.0, 1.5]),
    },
}
SELECTIONS = ["auto", "worst_case", "random", "random_fixed", "detox_worst", "best", "[0,1,2]"]


def mostly(valid, *invalid):
    """A value that is usually valid, so that later checks are reached too."""
    return st.sampled_from([*valid * 4, *invalid])


@st.composite
def overrides(draw):
    out = []
    for group, table in (("approach", APPROACHES), ("mode", MODES), ("attack", ATTACKS)):
        name = draw(st.sampled_from(sorted(table)))
        out.append(f"{group}={name}")
        for key, values in table[name].items():
            if draw(st.booleans()):
                out.append(f"{group}.{key}={draw(values)}")
    out.append(f"adversary.q={draw(st.integers(-1, 8))}")
    out.append(f"adversary.selection={draw(mostly(SELECTIONS[:4], *SELECTIONS[4:]))}")
    out.append(f"batch_size={draw(st.sampled_from([0, 25, 36, 90, 300, 301]))}")
    out.append(f"lr={draw(mostly([0.05], -0.1, 0.0))}")
    out.append(f"engine={draw(mostly(['auto', 'simulate', 'torchrun'], 'mpi'))}")
    if draw(st.booleans()):
        out.append(f"aggregator_f={draw(st.integers(-1, 9))}")
    if draw(st.booleans()):
        out.append(f"network={draw(st.sampled_from(['lenet', 'cnn1d', 'resnet18']))}")
    return out


def _builds_or_fails_with_one_line(ovs):
    try:
        run = build_run(compose_config(ovs))
    except (ConfigError, UsageError) as exc:
        message = str(exc)
        assert message and "\n" not in message, (ovs, message)
        assert "Traceback" not in message
        return
    assert run.placement.num_workers >= 1 and run.max_steps >= 1
    assert run.rule_f >= 0 and len(run.selection.workers(0)) == run.q


_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


@settings(max_examples=40, derandomize=True, **_SETTINGS)
@given(overrides())
def test_any_config_builds_or_fails_with_one_line(ovs):
    _builds_or_fails_with_one_line(ovs)


@pytest.mark.slow
@settings(max_examples=400, **_SETTINGS)
@given(overrides())
def test_many_random_configs_build_or_fail_with_one_line(ovs):
    """The same property over 400 configs drawn afresh on every run (the default suite's
    40 are fixed)."""
    _builds_or_fails_with_one_line(ovs)
