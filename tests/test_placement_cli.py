"""`python -m byzshield.placement`: the table, JSON for scripts, and one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from byzshield.placement_cli import placement_main


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
        (["time_budget=-1"], "time_budget must be a positive number"),
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
