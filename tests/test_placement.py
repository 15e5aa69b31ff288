"""Placement designs: sizes, replication, orthogonality, the paper's worked examples."""

import itertools
import json

import pytest

from byzshield.config import APPROACHES, build_placement
from byzshield.design.fields import galois_field
from byzshield.design.placements import (
    Placement,
    baseline,
    detox,
    from_file,
    mols,
    rama_one,
    rama_two,
)

DESIGNS = [
    baseline(7),
    detox(15, 3),
    detox(12, 4),
    mols(3, 2),
    mols(5, 3),
    mols(7, 5),
    mols(4, 3),
    mols(8, 3),
    mols(9, 4),
    rama_one(3, 5),
    rama_one(4, 7),
    rama_two(5, 5),
    rama_two(6, 3),
]


@pytest.mark.parametrize("p", DESIGNS, ids=lambda p: p.describe().split(":")[0])
def test_every_file_has_r_holders_and_every_worker_l_files(p):
    assert p.num_files * p.replication == p.num_workers * p.load
    assert all(len(ws) == p.replication for ws in p.file_workers)
    assert all(len(fs) == p.load for fs in p.worker_files)
    for w, fs in enumerate(p.worker_files):
        for j in fs:
            assert w in p.file_workers[j]


@pytest.mark.parametrize("p", DESIGNS, ids=lambda p: p.describe().split(":")[0])
def test_parallel_classes_partition_files_and_symmetries_are_automorphisms(p):
    # Placement validates both on construction; rebuilding with them must not raise.
    assert len(p.classes) == p.replication
    Placement(p.approach, p.worker_files, p.num_files, classes=p.classes, symmetries=p.symmetries)


@pytest.mark.parametrize(("l", "r"), [(3, 2), (4, 3), (5, 4), (7, 5), (8, 7), (9, 8)])
def test_mols_workers_of_different_squares_share_exactly_one_file_same_square_none(l, r):
    p = mols(l, r)
    for a, b in itertools.combinations(range(p.num_workers), 2):
        shared = len(set(p.worker_files[a]) & set(p.worker_files[b]))
        assert shared == (0 if a // l == b // l else 1), (a, b)


def test_mols_matches_the_worked_example_l3_r2():
    assert mols(3, 2).worker_files == (
        (0, 5, 7),
        (1, 3, 8),
        (2, 4, 6),
        (0, 4, 8),
        (1, 5, 6),
        (2, 3, 7),
    )


def test_rama_two_matches_the_worked_example_m3_s3():
    assert rama_two(3, 3).worker_files == (
        (0, 3, 6),
        (1, 4, 7),
        (2, 5, 8),
        (0, 5, 7),
        (1, 3, 8),
        (2, 4, 6),
        (0, 4, 8),
        (1, 5, 6),
        (2, 3, 7),
    )


@pytest.mark.parametrize(("m", "s"), [(2, 3), (3, 5), (4, 5), (5, 7)])
def test_rama_one_equals_mols_up_to_file_relabelling(m, s):
    a, b = rama_one(m, s), mols(s, m)
    assert len(set(a.file_workers)) == a.num_files  # holder sets identify files
    assert _isomorphic(a, b)


def _isomorphic(a: Placement, b: Placement) -> bool:
    """Brute-force isomorphism for resolvable designs with class-respecting maps."""
    if (a.num_workers, a.num_files, a.load) != (b.num_workers, b.num_files, b.load):
        return False
    # Fix class order (both builders number classes 0..r-1); search symbol maps of the
    # first two classes, which determine a file bijection, then check all workers.
    ca, cb = a.classes, b.classes
    target = {frozenset(ws) for ws in b.file_workers}
    n = len(ca[0])
    for perm0 in itertools.permutations(range(n)):
        for perm1 in itertools.permutations(range(n)):
            mapping = {ca[0][i]: cb[0][perm0[i]] for i in range(n)}
            mapping.update({ca[1][i]: cb[1][perm1[i]] for i in range(n)})
            # extend to other classes: worker w maps to the b-worker of its class sharing
            # the images of its files' first-two-class holders
            ok = True
            for c in range(2, len(ca)):
                for w in ca[c]:
                    imgs = set()
                    for j in a.worker_files[w]:
                        h = [mapping[x] for x in a.file_workers[j] if x in mapping]
                        cands = [ws for ws in b.file_workers if set(h) <= set(ws)]
                        imgs.update(x for ws in cands for x in ws if x in cb[c])
                    if len(imgs) != 1:
                        ok = False
                        break
                    mapping[w] = imgs.pop()
                if not ok:
                    break
            if ok and {frozenset(mapping[x] for x in ws) for ws in a.file_workers} == target:
                return True
        if n > 5:  # the first class's map can be fixed by symmetry for larger orders
            break
    return False


def test_galois_field_tables_satisfy_the_field_axioms_for_prime_powers():
    for q in (2, 3, 4, 5, 8, 9, 16, 25, 27):
        add, mul = galois_field(q)
        for a in range(q):
            assert add[a][0] == a and mul[a][1] == a
            if a:
                assert sorted(mul[a]) == list(range(q))  # no zero divisors
        for a, b, c in itertools.product(range(q), repeat=3):
            if (a + b + c) % 3 == 0:  # a sample keeps the test fast
                assert mul[a][add[b][c]] == add[mul[a][b]][mul[a][c]]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mols(6, 2), "prime power"),
        (lambda: mols(5, 5), "at most l-1=4"),
        (lambda: mols(5, 0), "r must be an integer >= 1"),
        (lambda: mols(5.0, 2), "l must be an integer"),
        (lambda: rama_one(5, 5), "m < s"),
        (lambda: rama_one(2, 4), "s must be a prime"),
        (lambda: rama_two(7, 5), "s dividing m"),
        (lambda: rama_two(3, 5), "m >= s"),
        (lambda: detox(10, 3), "r=3 must divide K=10"),
        (lambda: baseline(0), "K must be an integer >= 1"),
        (lambda: build_placement("nope"), "unknown approach 'nope'"),
        (lambda: build_placement("mols", l=5, r=3, K=4), "unknown key"),
        (lambda: build_placement("mols", l=5), "missing"),
    ],
)
def test_bad_parameters_raise_value_error_naming_the_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_custom_placement_round_trips_through_json(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(mols(5, 3).to_json())
    p = from_file(path)
    assert p.worker_files == mols(5, 3).worker_files
    path.write_text(json.dumps([[0, 1], [1, 2], [2, 0]]))
    q = build_placement("custom", path=str(path))
    assert (q.num_workers, q.num_files, q.load, q.replication) == (3, 3, 2, 2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "cannot read"),
        ('{"x": 1}', "expected a JSON list"),
        ("[[0, 1], [1]]", "same positive number of files"),
        ("[[0, 1], [0, 1], [2, 3]]", "same positive number of workers"),
        ("[[0, 0]]", "lists a file twice"),
        ('[[0, "a"]]', "expected a JSON list"),
        ('{"worker_files": [[0], [1]], "num_files": 3}', "every file needs a holder"),
        ("[[0], [-1]]", "file ids must be"),
    ],
)
def test_custom_placement_rejects_inconsistent_files(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        from_file(path)


def test_custom_placement_missing_file_names_the_path(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        from_file(tmp_path / "absent.json")


def test_every_registered_approach_builds_with_its_conf_defaults():
    from byzshield.config.overrides import compose_config

    for name in APPROACHES:
        if name in ("detox", "custom"):
            continue
        option = compose_config([f"approach={name}"]).approach
        assert option.name == name and type(option) is APPROACHES[name]
        params = {k: v for k, v in vars(option).items() if k != "name" and not k.startswith("_")}
        assert tuple(params) == APPROACHES[name].param_keys()
        assert build_placement(name, **params).describe() == option.build().describe()


def test_the_registry_is_conf_approach_plus_detox():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf" / "approach"
    assert {p.stem for p in conf.glob("*.yaml")} == set(APPROACHES) - {"detox"}
    detox_named = build_placement("detox", K=15, r=3)
    assert detox_named.approach == "detox"
    assert detox_named.worker_files == detox(15, 3).worker_files
