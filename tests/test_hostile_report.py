"""The report tool against hostile and careless input: impossible values in metrics.jsonl,
--where values as one types them, an unwritable --out, a report folder without its
tables. Bad input is one line on stderr and exit status 2, with nothing half written;
a bad value inside a run is left out of every statistic and said so."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from test_report import complete, make_run

from byzshield.report import main, read_run, write_report

DETOX = {"name": "draco_lite_attack", "K": 15, "r": 3}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------------------
# Impossible evaluation values


def _eval_line(**values) -> str:
    return json.dumps({"step": 30, "event": "eval", **values}) + "\n"  # NaN -> NaN (as Python)


@pytest.mark.parametrize(
    "values, why, left",
    [
        ({"top1": 7.5, "top5": float("nan")}, "top1=7.5 is outside [0, 1]", 2),
        ({"top1": float("nan"), "top5": 0.9}, "top1=nan is not finite", 1),
        ({"top1": float("inf")}, "top1=inf is not finite", 1),
        ({"top1": -0.25}, "top1=-0.25 is outside [0, 1]", 1),
        ({"top1": "0.9"}, 'top1="0.9" is not a number', 1),
        ({"top1": True}, "top1=true is not a number", 1),
        ({"top1": 0.4, "test_loss": -1.0}, "test_loss=-1 is outside [0, inf)", 1),
        ({"top1": 0.4, "top5": 1.5}, "top5=1.5 is outside [0, 1]", 1),
    ],
)
def test_an_impossible_evaluation_value_is_left_out_and_said(tmp_path, capsys, values, why, left):
    """The second seed's final evaluation holds an impossible value: the row's statistic
    is over the values that can be right, and stdout, stderr, report.md and runs.csv say
    how many were left out."""
    complete(tmp_path / "s" / "0", 0.8, seed=0)
    make_run(
        tmp_path / "s" / "1",
        steps=30,
        top1={10: 0.5},
        seed=1,
        extra_lines=(_eval_line(**values),),
    )
    assert main([str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--no-eps"]) == 0
    captured = capsys.readouterr()
    assert why in captured.err
    values_word = "value" if left == 1 else "values"
    assert f"left out {left} impossible evaluation {values_word} in 1 run" in captured.out
    (row,) = _rows(tmp_path / "o" / "report.csv")
    top1 = values["top1"] if values["top1"] == 0.4 else None  # the only possible top-1 here
    assert float(row["final_top1_mean"]) == pytest.approx(0.8 if top1 is None else 0.6)
    assert row["final_top1_n"] == ("1" if top1 is None else "2") and row["complete"] == "2"
    assert 0 <= float(row["final_top5_mean"]) <= 1  # 1.0 from seed 0; nothing impossible
    assert row["left_out"] == str(left)
    md = (tmp_path / "o" / "report.md").read_text()
    assert why in md and "no statistic, table or figure uses them" in md
    assert [r["left_out"] for r in _rows(tmp_path / "o" / "runs.csv")] == ["0", str(left)]


def test_best_and_tail_accuracy_skip_impossible_values(tmp_path):
    folder = make_run(
        tmp_path / "a",
        steps=30,
        top1={10: 0.5, 20: 0.6},
        extra_lines=(_eval_line(top1=7.5, top5=1.0),),
    )
    run = read_run(folder)
    assert run.best_top1 == 0.6 and run.left_out == 1
    assert run.final == {"step": 30, "top1": None, "top5": 1.0, "test_loss": None}


# --------------------------------------------------------------------------------------
# --where as one types it


@pytest.fixture
def sweep(tmp_path):
    for seed in (0, 1):
        for q in (0, 2):
            complete(tmp_path / "s" / f"m{q}_{seed}", 0.9 - q / 10, seed=seed, **{"adversary.q": q})
            complete(
                tmp_path / "s" / f"d{q}_{seed}",
                0.9 - q / 5,
                seed=seed,
                approach=DETOX,
                **{"adversary.q": q},
            )
    return tmp_path / "s"


MOLS, DETOX_NAME = "MOLS K=15", "DETOX (worst) K=15 r=3"


@pytest.mark.parametrize(
    "where, rows",
    [
        (["approach=mols"], [MOLS]),  # the name one types to train
        (["approach.name=draco_lite_attack"], [DETOX_NAME]),
        (["approach=mols(l=5, r=3)"], [MOLS]),  # a label with a comma
        (["approach=mols(l=5, r=3),draco_lite_attack(K=15, r=3)"], [DETOX_NAME, MOLS]),
        (["approach=MOLS K=15"], [MOLS]),  # the display name
        (["approach.l=5"], [MOLS]),  # a parameter of the label
        (["adversary.q=2", "approach=mols"], [MOLS]),  # the key's config name
        (["approach=mols", "approach=draco_lite_attack"], [DETOX_NAME, MOLS]),  # adds values
        (["lr=0.050"], [DETOX_NAME, MOLS]),  # a setting every run shares, as a number
        (["dataset=digits"], [DETOX_NAME, MOLS]),  # dataset.name by its column's name
        (["network.name=lenet", "mode.name=coord-median"], [DETOX_NAME, MOLS]),
    ],
)
def test_where_takes_what_one_types(sweep, tmp_path, capsys, where, rows):
    """pivot.md has one column per approach --where keeps."""
    args = [str(sweep), "--out", str(tmp_path / "o"), "--no-plots", "--no-eps"]
    for w in where:
        args += ["--where", w]
    assert main([*args, "--pivot", "approach"]) == 0, capsys.readouterr().err
    header = (tmp_path / "o" / "pivot.md").read_text().splitlines()[2]
    assert header.endswith(" | " + " | ".join(rows) + " |"), header


@pytest.mark.parametrize(
    "where, message",
    [
        (
            ["approach=foo"],
            "--where approach=foo matches no group; approach is one of: "
            "draco_lite_attack(K=15, r=3) (or DETOX (worst) K=15 r=3, draco_lite_attack); "
            "mols(l=5, r=3) (or MOLS K=15, mols)",
        ),
        (["adversary.q=3"], "--where q=3 matches no group; q is one of: 0; 2"),
        (["colour=red"], "--where colour: no such key in these runs; keys: adversary.q, "),
        (["approach.m=5"], "--where approach.m: no such key in these runs"),
        (
            ["approach=mols", "q=9,0", "attack=ipm"],
            "--where attack=ipm matches no group; attack is one of: rev_grad",
        ),
        (["q"], "--where takes KEY=VALUE[,VALUE]"),
        (["q="], "--where takes KEY=VALUE[,VALUE]"),
        (["=3"], "--where takes KEY=VALUE[,VALUE]"),
    ],
)
def test_a_where_that_matches_nothing_is_one_line_naming_what_exists(
    sweep, tmp_path, capsys, where, message
):
    args = [str(sweep), "--out", str(tmp_path / "o"), "--no-plots", "--pivot", "q"]
    for w in where:
        args += ["--where", w]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert "eps:" not in err  # refused before the worst-case search
    assert not (tmp_path / "o").exists()  # and before writing anything


def test_where_keys_that_each_match_but_not_together_are_refused(tmp_path, capsys):
    complete(tmp_path / "s" / "a", 0.9, **{"adversary.q": 0})
    complete(tmp_path / "s" / "b", 0.7, approach=DETOX, **{"adversary.q": 2})
    args = [str(tmp_path / "s"), "--no-plots", "--no-eps", "--pivot", "q"]
    assert main([*args, "--where", "approach=mols", "--where", "q=2"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "error: --where approach=mols q=2: no group has all of these (each matches some)\n"
    )


# --------------------------------------------------------------------------------------
# --out that cannot be written: said first, in one line


@pytest.mark.parametrize(
    "out, message",
    [
        ("file", "is not a folder"),
        ("file/sub/report", "is not a folder"),
        ("/proc/byzshield-report", "is not writable"),
    ],
    ids=["a file", "under a file", "a read-only place"],
)
def test_an_unwritable_out_is_refused_before_the_work(sweep, tmp_path, capsys, out, message):
    (tmp_path / "file").write_text("x")
    out = tmp_path / out
    assert main([str(sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the report to {out}: ") and message in err
    assert err.count("\n") == 1 and "eps:" not in err  # before the worst-case search


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_out_in_a_read_only_folder_is_refused(sweep, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main([str(sweep), "--out", str(locked / "report")]) == 2
    finally:
        locked.chmod(0o700)
    assert "is not writable" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Counts in words


def test_one_of_a_thing_is_singular(tmp_path, capsys):
    complete(tmp_path / "s" / "a", 0.8)
    complete(tmp_path / "s" / "b", 0.7, approach=DETOX)
    spec = "MOLS K=15 vs DETOX (worst) K=15 r=3"  # display names, as report.md shows them
    assert main([str(tmp_path / "s"), "--no-plots", "--no-eps", "--paired", spec]) == 0
    assert "2 runs in 2 groups" in capsys.readouterr().out
    paired = (tmp_path / "s" / "report" / "paired.md").read_text()
    assert "; 1 cell, 0 with A - B" in paired and "1 cells" not in paired
    assert "loses more in 0 of 0 cells" in paired


# --------------------------------------------------------------------------------------
# --redraw of a folder that is not a report


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no report.csv in "),
        (["--figures", "step"], "--redraw draws q, eps, drop and paired"),
        (["--pivot", "q"], "--redraw draws figures only"),
    ],
)
def test_redraw_refuses_in_one_line(tmp_path, capsys, args, message):
    folder = tmp_path / "r"
    folder.mkdir()
    if args:
        (folder / "report.csv").write_text("approach,mode,attack,q,runs\n")
    assert main([str(folder), "--redraw", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_redraw_of_a_comparison_the_report_does_not_have_names_those_it_has(
    sweep, tmp_path, capsys
):
    out = tmp_path / "o"
    spec = "mols(l=5, r=3) vs draco_lite_attack(K=15, r=3)"
    assert main([str(sweep), "--out", str(out), "--no-eps", "--paired", spec]) == 0
    capsys.readouterr()
    assert main([str(out), "--redraw", "--paired", "baseline(K=15) vs mols(l=5, r=3)"]) == 2
    err = capsys.readouterr().err
    assert "'baseline(K=15) vs mols(l=5, r=3)' is not in " in err and spec in err


def test_report_writes_nothing_when_a_paired_side_is_missing(sweep, tmp_path, capsys):
    out = tmp_path / "o"
    code = main([str(sweep), "--out", str(out), "--paired", "baseline(K=15) vs mols(l=5, r=3)"])
    assert code == 2 and "eps:" not in capsys.readouterr().err
    assert not out.exists()


def test_write_report_checks_before_reading(tmp_path):
    """The API refuses the same way: a bad figure kind or spread before any work."""
    from byzshield.report import ReportError

    complete(tmp_path / "a", 0.9)
    with pytest.raises(ReportError, match="--spread takes ci or std"):
        write_report([tmp_path / "a"], tmp_path / "o", spread="sd")
    with pytest.raises(ReportError, match="--figures takes"):
        write_report([tmp_path / "a"], tmp_path / "o", figures=["bars"])
    assert not (tmp_path / "o").exists()
