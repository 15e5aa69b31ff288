"""The parameter server against faulty workers, in one process: the torchrun engine's
ranks as threads (tests/threaded.py) with some workers replaced by faulty ones. The table
of single hostile workers is tests/test_hostile_workers.py; here, what follows from drops:
lost files, a run that cannot go on, a sharded server's servers agreeing on whom they
dropped, and a drop in the middle of the digest vote's pulls. The real-process halves
(torchrun's monitor, signals, exit codes) are in test_train_distributed.py."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import read_metrics
from test_hostile_workers import RUN, TIMEOUT
from threaded import run_threaded

from byzshield.engines.simulate import simulate
from byzshield.engines.torchrun import run_rank
from byzshield.server.wire import END
from byzshield.training.loop import TrainingError


def _params(folder: Path) -> dict:
    last = sorted((folder / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(last, weights_only=True)["model"]


def _same_params(a: Path, b: Path) -> bool:
    pa, pb = _params(a), _params(b)
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def _faulty(*, at: int = 1, cut: tuple[int, ...] = (0,), mute: tuple[int, ...] = ()):
    """A worker that, from step ``at`` on, cuts short every message with gradients it
    sends to the servers ``cut`` (payloads; pulled gradients with vote=digest) and sends
    nothing at all to the servers ``mute`` (a worker that answers one server only)."""

    def worker(comm, run):
        send, steps = comm.send_to_server, [-1]

        def send_to_server(tensor: torch.Tensor, server: int = 0) -> None:
            header = tensor.numel() < 1000  # the rest carry gradients
            if header and server == 0:
                steps[0] += 1
            if steps[0] >= at and server in mute:
                return  # never sent: the server waits for it until its deadline
            if steps[0] >= at and server in cut and not header:
                tensor = torch.cat([tensor[:-11], torch.tensor([END])])
            send(tensor, server)

        comm.send_to_server = send_to_server
        run_rank(comm, run, Path(), server_parts=False)

    return worker


def test_a_file_whose_holders_are_dropped_is_lost_and_training_goes_on(tmp_path, capsys):
    """Workers 0 and 1 hold file 0 with worker 2 (DETOX r = 3): once both are dropped the
    one copy left cannot be a strict majority, so file 0 is lost (not aggregated) and
    the run trains on file 1."""
    faulty = {0: _faulty(), 1: _faulty()}
    result, errors = run_threaded(RUN, tmp_path / "run", timeout=TIMEOUT, workers=faulty)
    assert isinstance(result, dict) and not errors, (result, errors)
    said = [ln for ln in capsys.readouterr().out.splitlines() if "is dropped" in ln]
    assert len(said) == 2 and said[-1].endswith(
        "its files vote among their other holders (1 of 2 files can still have a strict majority)"
    ), said
    steps, _ = read_metrics(tmp_path / "run")
    assert [s["dropped_workers"] for s in steps] == [[], [0, 1], [0, 1], [0, 1]]
    assert [s["non_strict_files"] for s in steps] == [0, 1, 1, 1]


def test_so_many_dropped_workers_that_no_vote_can_be_trusted_stops_the_run_in_one_line(
    tmp_path,
):
    faulty = {w: _faulty() for w in (0, 1, 3, 4)}  # two of each file's three holders
    result, _ = run_threaded(RUN, tmp_path / "run", timeout=TIMEOUT, workers=faulty)
    assert isinstance(result, TrainingError), result
    assert str(result) == (
        "step 1: workers [0, 1, 3, 4] are dropped and no file keeps more than 3/2 of its 3 "
        "holders, so no vote can be trusted; stopping. The last good checkpoint is none "
        "written yet"
    )


def test_a_worker_that_answers_one_server_only_is_dropped_by_every_server_by_name(tmp_path, capsys):
    """ps_shards=2: worker 1 sends server 0 its header and columns but server 1 nothing.
    Server 1 drops it at its deadline and tells server 0, which names the worker (not
    server 1) on the console; both vote without it, to the bits of a run without it."""
    ovs = (*RUN, "ps_shards=2")
    faulty = {1: _faulty(cut=(), mute=(1,))}
    result, errors = run_threaded(ovs, tmp_path / "run", timeout=TIMEOUT, workers=faulty)
    assert isinstance(result, dict) and not errors, (result, errors)
    said = [ln for ln in capsys.readouterr().out.splitlines() if "is dropped" in ln]
    assert said == [
        f"step 1: rank 3 (worker 1) did not answer within {TIMEOUT} s (timeout) (seen by "
        "parameter server rank 1); worker 1 is dropped for the rest of the run: its files "
        "vote among their other holders (2 of 2 files can still have a strict majority)"
    ]
    steps, _ = read_metrics(tmp_path / "run")
    assert [s["dropped_workers"] for s in steps] == [[], [1], [1], [1]]
    simulate(list(RUN), tmp_path / "clean")
    assert _same_params(tmp_path / "run", tmp_path / "clean")


def test_a_worker_dropped_during_the_digest_votes_pulls_leaves_the_file_to_the_others(
    tmp_path, capsys
):
    """vote=digest with digest_verify=majority: each file's second verified copy is
    pulled from its second holder; worker 1 answers the pull with a short message, is
    dropped in the middle of the vote, and the vote verifies file 0 on worker 2's copy."""
    ovs = (*RUN, "vote=digest", "digest_verify=majority")
    faulty = {1: _faulty()}
    result, errors = run_threaded(ovs, tmp_path / "run", timeout=TIMEOUT, workers=faulty)
    assert isinstance(result, dict) and not errors, (result, errors)
    said = [ln for ln in capsys.readouterr().out.splitlines() if "is dropped" in ln]
    assert len(said) == 1 and said[0].startswith(
        "step 1: rank 2 (worker 1) sent a pulled gradients without the end marker"
    ), said
    steps, _ = read_metrics(tmp_path / "run")
    assert all(s["all_strict"] and not s["digest_liars"] for s in steps)
    simulate(list(RUN), tmp_path / "clean")
    assert _same_params(tmp_path / "run", tmp_path / "clean")


def test_drops_that_leave_too_few_files_for_the_rule_say_so_and_mark_the_steps(tmp_path, capsys):
    """DETOX K=9 r=3 (3 files) with coord-median at f=1 needs n > 2 files: once file 0
    is lost, the 2 files left run the rule outside its guarantee, as stragglers would."""
    ovs = (*RUN, "approach.K=9", "batch_size=90", "mode=coord-median", "aggregator_f=1")
    faulty = {0: _faulty(), 1: _faulty()}
    result, errors = run_threaded(ovs, tmp_path / "run", timeout=TIMEOUT, workers=faulty)
    assert isinstance(result, dict) and not errors, (result, errors)
    said = [ln for ln in capsys.readouterr().out.splitlines() if "is dropped" in ln]
    assert said[-1].endswith(
        "(2 of 3 files can still have a strict majority); 2 files are too few for the rule "
        "with f=1: steps run outside its guarantee (outside_guarantee in metrics.jsonl)"
    ), said
    steps, _ = read_metrics(tmp_path / "run")
    assert [s["outside_guarantee"] for s in steps] == [False, True, True, True]
