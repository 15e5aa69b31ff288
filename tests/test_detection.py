"""Certified detection: the certificate against brute force, never an honest worker
accused, the graph a run keeps (and a resume restores), exclusion, relabelling and the
evading adversary, in every engine."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from conftest import read_metrics
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from byzshield.config import ConfigError, build_run
from byzshield.config.overrides import compose_config
from byzshield.design.placements import detox, mols, rama_two
from byzshield.detection import (
    DisagreementGraph,
    certain_byzantine,
    evading_liars,
    inverse,
    lie_pairs,
    lied_files,
    relabel_roles,
)
from byzshield.engines.simulate import simulate
from byzshield.server.metrics import TIME_KEYS

TIMES = {*TIME_KEYS, "step_s", "other_s", "vote_tail_s"}


def brute_force(pairs, K: int, q: int) -> set[int] | None:
    """The intersection of every vertex cover of size <= q, by enumerating the sets;
    None when there is none."""
    covers = [
        set(c)
        for size in range(q + 1)
        for c in itertools.combinations(range(K), size)
        if all(a in c or b in c for a, b in pairs)
    ]
    if not covers:
        return None
    return set.intersection(*covers)


@st.composite
def graphs(draw, max_k: int = 9):
    K = draw(st.integers(1, max_k))
    q = draw(st.integers(0, K))
    every = [(a, b) for a in range(K) for b in range(a + 1, K)]
    pairs = draw(st.lists(st.sampled_from(every), max_size=12)) if every else []
    return pairs, K, q


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_certain_byzantine_is_the_intersection_of_the_small_covers(case):
    pairs, K, q = case
    expected = brute_force(pairs, K, q)
    if expected is None:
        with pytest.raises(ValueError, match=rf"no set of at most q={q} workers .* smallest has"):
            certain_byzantine(pairs, K, q)
    else:
        assert certain_byzantine(pairs, K, q) == expected


PLACEMENTS = [mols(3, 2), mols(4, 3), mols(5, 3), detox(9, 3), rama_two(3, 3), detox(6, 2)]


@st.composite
def lying_steps(draw):
    """A placement, a Byzantine set of at most q workers, and a few steps of random lies:
    each Byzantine copy of a file is honest or one of two lies; the pairs are the
    vote's classes (copies with different values)."""
    p = draw(st.sampled_from(PLACEMENTS))
    K = p.num_workers
    q = draw(st.integers(0, K // 2))
    bad = draw(st.sets(st.integers(0, K - 1), max_size=q))
    pairs = []
    for _ in range(draw(st.integers(1, 3))):
        roles = draw(st.permutations(range(K)))  # a relabelled step: role k is worker who[k]
        who = inverse(tuple(roles))
        for ws in p.file_workers:
            values = [draw(st.sampled_from([0, 1, 2])) if who[k] in bad else 0 for k in ws]
            pairs += [
                (who[ws[a]], who[ws[b]])
                for a, b in itertools.combinations(range(len(ws)), 2)
                if values[a] != values[b]
            ]
    return pairs, K, q, bad


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lying_steps())
def test_no_honest_worker_is_ever_certain_and_small_cases_match_brute_force(case):
    pairs, K, q, bad = case
    certain = certain_byzantine(pairs, K, q)  # the Byzantine set is a cover: no raise
    assert certain <= bad
    if K <= 10:
        assert certain == brute_force(pairs, K, q)
    assert all(len({b for a, b in pairs if a == w} | {a for a, b in pairs if b == w}) <= q
               for w in set(range(K)) - certain)  # fmt: skip


def test_bad_pairs_and_q_are_refused_in_one_line():
    for pairs, K, q, match in [
        ([(0, 0)], 3, 1, "cannot disagree with itself"),
        ([(0, 5)], 3, 1, "in 0..2"),
        ([(0,)], 3, 1, "a pair"),
        ([(0, 1)], 3, 4, "q must be"),
        ([], 0, 0, "K must be"),
    ]:
        with pytest.raises(ValueError, match=match) as info:
            certain_byzantine(pairs, K, q)
        assert "\n" not in str(info.value)


def test_the_graph_keeps_first_steps_catches_once_and_round_trips():
    g = DisagreementGraph(K=7, q=2)
    assert g.add(0, [(0, 1), (2, 3)]) == []
    assert g.add(1, [(1, 0), (0, 4), (0, 5)]) == [0]  # 0 met 1, 4, 5: more than q
    assert g.add(2, [(0, 6)]) == [] and g.caught == {0: 1}
    assert g.edges[(0, 1)] == 0 and g.edges[(0, 6)] == 2
    assert g.certain_with([(3, 4), (3, 5)]) == {0, 3}
    assert g.certain_with([(1, 2), (4, 5), (5, 6)]) is None  # would need more than q
    again = DisagreementGraph(K=7, q=2)
    again.load_state_dict(g.state_dict())
    assert again.edges == g.edges and again.caught == g.caught and again.refuted is None
    assert g.add(3, [(1, 2), (4, 5), (5, 6)]) == [] and g.refuted == 3
    assert "more than q workers lied" in g.why and g.add(4, [(3, 6)]) == []


def test_relabelling_is_a_seeded_permutation_of_its_own():
    first = relabel_roles(15, seed=0, step=0)
    assert sorted(first) == list(range(15))
    assert first == relabel_roles(15, seed=0, step=0) != relabel_roles(15, seed=0, step=1)
    assert inverse(inverse(first)) == first


def test_the_liars_of_won_files_frame_the_honest_minority_on_a_fixed_mols():
    """The issue's example: on MOLS l=5 r=3 the worst-case q=3 liars, lying only where
    they win, leave a graph whose small covers include the honest minority holders, so
    nobody is certain; relabelling for a few steps certifies them."""
    p = mols(5, 3)
    bad = [0, 5, 11]  # the certified worst case for q = 3 (3 files)
    assert len(lied_files(p, bad, "won")) == 3
    g = DisagreementGraph(15, 3)
    for step in range(5):
        g.add(step, lie_pairs(p, bad, "won"))
    assert g.suspects == []
    for step in range(5, 40):
        roles = relabel_roles(15, seed=1, step=step)
        who = inverse(roles)
        g.add(step, [(who[a], who[b]) for a, b in lie_pairs(p, [roles[w] for w in bad], "won")])
    assert g.suspects == bad


def test_an_evading_adversary_never_gets_caught():
    p = mols(5, 3)
    bad = (0, 5, 11)
    g = DisagreementGraph(15, 3)
    lied = 0
    for step in range(40):
        roles = relabel_roles(15, seed=2, step=step)
        liars = evading_liars(g, p, bad, lie_on="won", roles=roles)
        who = inverse(roles)
        lied += len(lied_files(p, [roles[w] for w in liars], "won"))
        g.add(step, [(who[a], who[b]) for a, b in lie_pairs(p, [roles[w] for w in liars], "won")])
        assert g.suspects == []
    assert lied > 0  # it still lies where it stays uncertified


# ------------------------------------------------------------------------------------
# Runs

RAMA = ("approach=rama_two", "approach.m=3", "approach.s=3", "batch_size=90")  # K=9, r=3
SHORT = ("max_steps=4", "eval_freq=2", "seed=3")


def _steps(folder: Path) -> list[dict]:
    return [{k: v for k, v in s.items() if k not in TIMES} for s in read_metrics(folder)[0]]


def _last(folder: Path) -> dict:
    return torch.load(sorted((folder / "checkpoints").glob("step_*.pt"))[-1], weights_only=True)


def test_a_worker_side_liar_is_caught_at_the_first_step_it_meets_more_than_q(tmp_path):
    """rev_grad lies on every file: a Byzantine worker is certain at step 0 exactly when
    its files' other holders (not Byzantine) number more than q; detect=flag changes no
    bit of the run."""
    ovs = (*RAMA, "max_steps=2", "eval_freq=0", "seed=3", "attack=rev_grad", "adversary.q=2")
    ovs += ("adversary.selection=[0,4]",)
    simulate(ovs, tmp_path / "off")
    simulate((*ovs, "detect=flag"), tmp_path / "flag")
    p = rama_two(3, 3)
    bad = {0, 4}
    expected = sorted(
        b for b in bad if len({h for j in p.worker_files[b] for h in p.file_workers[j]} - bad) > 2
    )
    steps = _steps(tmp_path / "flag")
    assert expected and steps[0]["suspects"] == expected and steps[0]["excluded"] == []
    plain = _steps(tmp_path / "off")
    assert [
        {k: v for k, v in s.items() if k not in ("suspects", "excluded")} for s in steps
    ] == plain
    a, b = _last(tmp_path / "off"), _last(tmp_path / "flag")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["detection"]["caught"] == [[w, 0] for w in expected]


def test_exclusion_drops_the_caught_and_lowers_f(tmp_path, capsys):
    ovs = (*RAMA, *SHORT, "attack=rev_grad", "adversary.q=2", "detect=exclude")
    simulate(ovs, tmp_path, quiet=False)
    out = capsys.readouterr().out
    run = build_run(compose_config([*ovs, f"train_dir={tmp_path}"]))
    steps = _steps(tmp_path)
    caught = steps[0]["suspects"]
    assert caught and "certainly Byzantine" in out and "leave the vote from step 1" in out
    assert all(s["excluded"] == caught for s in steps[1:])
    assert all(s["distorted"] == 0 and not s["lost_votes"] for s in steps[1:])
    assert run.f_after[0] == run.rule_f and run.f_after[len(caught)] <= run.rule_f
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["detection"]["detect"] == "exclude"
    from byzshield.report.load import read_run
    from byzshield.report.tables import caught_text

    assert read_run(tmp_path).caught == dict.fromkeys(caught, 0)  # the report's column
    assert caught_text({11: 3, 0: 0, 5: 0}) == "0@0 5@0 11@3"


@pytest.mark.parametrize(
    "extra",
    [  # one in the default suite; the others with the slow tests
        ("attack=alie", "adversary.lie_on=won", "placement.relabel=step", "detect=exclude"),
        pytest.param(
            ("attack=label_flip", "adversary.lie_on=won", "placement.relabel=step", "detect=flag"),
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ("attack=rev_grad", "adversary.evade=true", "adversary.lie_on=won")
            + ("placement.relabel=step", "detect=exclude"),
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ("attack=constant", "detect=exclude", "vote=digest", "placement.relabel=step"),
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ("attack=alie", "adversary.lie_on=won", "placement.relabel=step", "detect=exclude")
            + ("ps_shards=2", "mode=multi-krum"),
            marks=pytest.mark.slow,
        ),
    ],
)
def test_torchrun_and_simulate_agree_on_suspects_at_every_step(tmp_path, extra):
    from test_engines import assert_same_run
    from threaded import run_threaded

    ovs = [*RAMA, *SHORT, "adversary.q=2", "adversary.selection=[0,4]", *extra]
    result, errors = run_threaded(ovs, tmp_path / "torchrun")
    assert not errors and isinstance(result, dict), (result, errors)
    simulate(ovs, tmp_path / "simulate")
    assert_same_run(tmp_path / "torchrun", tmp_path / "simulate")
    steps = _steps(tmp_path / "simulate")
    assert all("suspects" in s for s in steps)
    if "adversary.evade=true" in extra:
        assert all(s["suspects"] == [] for s in steps) and any(s["liars"] for s in steps)


def test_a_resumed_run_rebuilds_the_same_graph_and_bits(tmp_path):
    ovs = (*RAMA, "seed=3", "eval_freq=2", "attack=alie", "adversary.q=2")
    ovs += ("adversary.lie_on=won", "placement.relabel=step", "detect=exclude")
    simulate((*ovs, "max_steps=4"), tmp_path / "whole")
    simulate((*ovs, "max_steps=2"), tmp_path / "split")
    simulate((*ovs, "max_steps=4"), tmp_path / "split")  # resumes after step 2
    whole, split = _last(tmp_path / "whole"), _last(tmp_path / "split")
    assert whole["detection"] == split["detection"] and whole["detection"]["edges"]
    assert all(torch.equal(whole["model"][k], split["model"][k]) for k in whole["model"])
    assert _steps(tmp_path / "whole") == _steps(tmp_path / "split")


def test_sharded_digest_and_lockstep_runs_see_the_same_evidence(tmp_path):
    from byzshield.engines.lockstep import lockstep

    base = ("dataset=mnist1d", "network=cnn1d", "batch_size=150", "lr=0.1", "threads=1")
    ovs = (*base, *SHORT, "attack=alie", "adversary.lie_on=won", "placement.relabel=step")
    ovs += ("detect=exclude", "outside_guarantee=true")
    simulate(ovs, tmp_path / "one")
    simulate((*ovs, "ps_shards=2"), tmp_path / "two")
    simulate((*ovs, "vote=digest"), tmp_path / "digest")
    lockstep([(list(ovs), tmp_path / "lockstep")], threads=1)
    keys = ("byzantine", "suspects", "excluded", "distorted_files", "lost_votes")
    one = [{k: s[k] for k in keys} for s in _steps(tmp_path / "one")]
    for other in ("two", "digest", "lockstep"):
        assert [{k: s[k] for k in keys} for s in _steps(tmp_path / other)] == one, other
    a, b = _last(tmp_path / "one"), _last(tmp_path / "two")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_detection_options_are_checked_in_one_line():
    for override, match in [
        ("detect=maybe", "detect must be one of off, flag, exclude"),
        ("placement.relabel=often", "placement.relabel must be one of none, step"),
        ("adversary.lie_on=some", "adversary.lie_on must be one of all, won"),
        ("detect=flag adversary.selection=random", "needs Byzantine workers fixed for the run"),
    ]:
        with pytest.raises(ConfigError, match=match) as info:
            build_run(compose_config(override.split()))
        assert "\n" not in str(info.value)
