"""The parameter server against faulty workers, in one process: the torchrun engine's
ranks as threads (tests/threaded.py) with one worker replaced by a faulty one. These are
the server-logic halves of the real-process fault tests in test_train_distributed.py
(which keep the process-level halves: torchrun's monitor, signals, exit codes)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
from threaded import run_threaded

from byzshield.comm import RankFailure
from byzshield.protocol import END
from byzshield.train import run_rank

TINY = ("approach=baseline", "approach.K=3", "batch_size=30", "mode=mean", "attack=none")


def _lying(message: str, extra: int):
    """Worker 1: the real worker, except that its payloads (or headers) carry ``extra``
    values too many or too few while the header still announces the right length."""

    def worker(comm, run):
        send, sent = comm.send_to_server, [0]

        def send_to_server(tensor: torch.Tensor) -> None:
            sent[0] += 1
            if (sent[0] % 2 == 0) == (message == "payload"):  # header, payload, ...
                body = tensor[:-1]
                body = body[:extra] if extra < 0 else torch.cat([body, torch.zeros(extra)])
                tensor = torch.cat([body, torch.tensor([END])])
            send(tensor)

        comm.send_to_server = send_to_server
        run_rank(comm, run, "torchrun", Path(), server_parts=False, log=False)

    return worker


@pytest.mark.parametrize(
    ("message", "extra", "name"),
    [("payload", -10, "payload"), ("payload", 10, "payload"), ("header", 10, "reply header")],
)
def test_a_reply_of_the_wrong_length_stops_the_server_naming_the_worker(
    tmp_path, message, extra, name
):
    ovs = [*TINY, "max_steps=5", "eval_freq=0", "timeout=5"]
    result, _ = run_threaded(ovs, tmp_path / "run", timeout=5, workers={1: _lying(message, extra)})
    what = "shorter" if extra < 0 else "longer"
    assert isinstance(result, Exception), result
    assert re.fullmatch(
        rf"rank 2 \(worker 1\) sent a {name} {what} than the (\d+) values "
        r"expected( \(no end marker after value \1\))?",
        str(result),
    ), result


def test_a_silent_worker_is_named_with_the_timeout(tmp_path):
    def silent(comm, run):
        comm.broadcast_text("")  # takes part in the start (status, folder), then is silent
        comm.broadcast_text("")
        time.sleep(3)

    ovs = [*TINY, "max_steps=5", "eval_freq=0", "timeout=2"]
    t0 = time.monotonic()
    result, _ = run_threaded(ovs, tmp_path / "run", timeout=2, workers={0: silent})
    assert isinstance(result, RankFailure) and result.timed_out, result
    assert str(result) == "rank 1 (worker 0) did not answer within 2 s (timeout)"
    assert time.monotonic() - t0 < 30


def test_a_worker_that_fails_is_named_as_failed_not_as_late(tmp_path):
    def dies(comm, run):
        comm.send_to_server = lambda tensor: (_ for _ in ()).throw(SystemExit(1))
        run_rank(comm, run, "torchrun", Path(), server_parts=False, log=False)

    ovs = [*TINY, "max_steps=5", "eval_freq=0", "timeout=5"]
    result, _ = run_threaded(ovs, tmp_path / "run", timeout=5, workers={2: dies})
    assert isinstance(result, RankFailure) and result.rank == 3, result
    assert str(result).startswith("rank 3 (worker 2) failed or closed its connection: "), result
    assert not result.timed_out
