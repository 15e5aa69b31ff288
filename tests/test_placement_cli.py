"""`python -m byzshield.placement`: the table, JSON for scripts, and one-line errors."""

import csv
import json
import os
import subprocess
import sys

import pytest

from byzshield.placement import placement_main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "byzshield.placement", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd="/",
    )


def test_default_table_prints_every_q_for_the_mols_design():
    out = run_cli()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("mols(l=5, r=3): K=15 workers, f=25 files")
    assert "eps_detox" in lines[1] and "certified" in lines[1]
    rows = [ln.split() for ln in lines[2:]]
    assert [int(r[0]) for r in rows] == list(range(8))  # q_max defaults to K // 2
    assert [int(r[1]) for r in rows] == [0, 0, 1, 3, 5, 8, 12, 14]


def test_json_output_has_one_object_with_rows(capsys):
    assert (
        placement_main(["approach=rama_two", "format=json", "q_max=6", "show_assignment=true"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert (data["K"], data["f"], data["r"], data["load"]) == (25, 25, 5, 5)
    assert [row["q"] for row in data["rows"]] == list(range(7))
    row = data["rows"][6]
    assert set(row) >= {"q", "c_max", "eps", "certified", "byzantine", "bound", "seconds"}
    assert row["c_max"] == 4 and row["certified"] and len(row["byzantine"]) == 6
    assert row["eps"] == pytest.approx(4 / 25)
    assert len(data["worker_files"]) == 25


def test_approach_parameters_are_keys_of_the_approach_group(capsys):
    assert (
        placement_main(["approach=mols", "approach.l=7", "approach.r=5", "q_max=4", "format=json"])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert (data["K"], data["f"]) == (35, 49)
    assert (
        placement_main(["approach=draco_lite", "approach.K=9", "approach.r=3", "format=json"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert [r["c_max"] for r in data["rows"]] == [0, 0, 1, 1, 2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["approach=foo"], "available: baseline"),
        (["approach.K=3"], "unknown config key 'approach.K'; approach takes: name, l, r"),
        (["bogus=1"], "unknown config key 'bogus'"),
        (["approach.l=6"], "l must be a prime power"),
        (["q_max=99"], "q_max must be an integer in 0..K=15"),
        (["format=xml"], "format must be table or json"),
        (["time_budget=-1"], "time_budget must be a finite number of seconds > 0"),
        (["time_budget=nan"], "time_budget must be a finite number of seconds > 0, got nan"),
        (["time_budget=inf"], "time_budget must be a finite number of seconds > 0, got inf"),
        (["show_assignment=maybe"], "show_assignment must be true or false, got 'maybe'"),
        (["approach=custom"], "set approach.path"),
        (["approach=custom", "approach.path=/nonexistent.json"], "does not exist"),
    ],
)
def test_bad_input_gives_one_line_error_and_exit_2(capsys, args, message):
    assert placement_main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_help_lists_the_keys(capsys):
    assert placement_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "approach.l" in out and "q_max" in out and "format=table|json" in out


def test_distortion_experiment_tabulates_every_design_against_detox_and_baseline(tmp_path, capsys):
    """+experiment=distortion: the paper's MOLS K=15 column, Ramanujan case 2 K=25, with
    DETOX and the baseline at each K, written as Markdown, CSV and a PNG."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "dist"
    overrides = ["+experiment=distortion", f"out={out}", "q_max=5"]
    assert placement_main(overrides) == 0
    printed = capsys.readouterr().out
    header = next(ln for ln in printed.splitlines() if ln.startswith("| q |"))
    assert "mols(l=5, r=3) K=15 f=25" in header and "rama_two(m=5, s=5) K=25 f=25" in header
    assert "DETOX K=15 r=3" in header and "baseline K=25" in header
    with open(out / "distortion.csv") as fh:
        rows = list(csv.DictReader(fh))
    mols = [r for r in rows if r["design"] == "mols(l=5, r=3)"]
    assert [int(r["c_max"]) for r in mols] == [0, 0, 1, 3, 5, 8]  # the paper's table
    assert [float(r["eps_detox"]) for r in mols] == [0, 0, 0.2, 0.2, 0.4, 0.4]
    rama = [r for r in rows if r["design"] == "rama_two(m=5, s=5)"]
    assert [int(r["c_max"]) for r in rama] == [0, 0, 0, 1, 1, 2]
    assert all(r["certified"] == "True" for r in rows)
    assert (out / "distortion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 3 | 0.120 | 0.200 | 0.200 |" in (out / "distortion.md").read_text()


@pytest.mark.parametrize(
    ("designs", "message"),
    [
        ("designs=[{approach: nope}]", "designs[0] needs approach: one of"),
        ("designs=[{approach: mols, l: 6, r: 3}]", "designs[0] (mols):"),
        ("designs=[{l: 5}]", "designs[0] needs approach"),
    ],
)
def test_a_bad_design_is_one_line_naming_it(capsys, designs, message):
    assert placement_main([designs]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
