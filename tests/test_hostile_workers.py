"""The parameter server against hostile workers, in one process (the torchrun engine's
ranks as threads, tests/threaded.py): one table of what a worker can do wrong on the wire
and what the server makes of it.

A worker whose message is malformed, duplicated, or late past ``timeout``, or whose
connection closes, is dropped for the rest of the run: named once on the console (rank,
worker, why), listed in ``dropped_workers`` of metrics.jsonl from that step on, never
sent to or received from again. Training goes on: with DETOX r = 3 its file votes among
its two other holders, so the run ends with the very parameters of a run without the
fault (a late message, garbage on purpose, lands in a buffer the server never reads).

What no server code can catch, gloo aborting the server on a message longer than twice
its slot, is measured with real processes in test_comm.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
from conftest import read_metrics
from threaded import run_threaded

from byzshield.engines.simulate import simulate
from byzshield.engines.torchrun import run_rank
from byzshield.server.wire import END

TIMEOUT = 3  # seconds; a dropped worker's own wait for the server ends after 2 x TIMEOUT
RUN = (
    "approach=draco_lite",  # K = 6 workers in groups of r = 3: f = 2 files
    "approach.K=6",
    "approach.r=3",
    "batch_size=60",
    "mode=mean",
    "attack=none",
    "max_steps=4",
    "eval_freq=0",
    "seed=3",
    f"timeout={TIMEOUT}",
)
FAULTY, AT = 1, 1  # worker 1 (rank 2) misbehaves from step 1 on
WHO = r"rank 2 \(worker 1\)"
SHORT = rf"{WHO} sent a payload without the end marker after value (\d+): shorter than the \1 values expected, or a wrong marker"  # noqa: E501
LONG = rf"{WHO} sent a payload longer than the \d+ values expected"
LATE = rf"{WHO} did not answer within {TIMEOUT} s \(timeout\)"


def _body(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[:-1]


def _ended(body: torch.Tensor) -> torch.Tensor:
    return torch.cat([body, torch.tensor([END])])


def _announcing(length: float):
    def lie(header: torch.Tensor) -> torch.Tensor:
        header = header.clone()
        header[0] = length
        return header

    return lie


def _late(tensor: torch.Tensor) -> list[torch.Tensor]:
    time.sleep(TIMEOUT + 2)  # past the server's deadline; then garbage, which must go unread
    return [torch.full_like(tensor[:-1], 1e30), torch.full_like(tensor[:-1], 1e30)]


def _crash(tensor: torch.Tensor) -> list[torch.Tensor]:
    raise SystemExit(1)  # the thread ends and its connections close, as a process's would


# behaviour -> (which message of step AT it changes, what it sends instead, the reason it
# is dropped for, and at which step)
HOSTILE = {
    "short payload": ("payload", lambda t: [_ended(_body(t)[:-10])], SHORT, AT),
    "long payload": (
        "payload",
        lambda t: [_ended(torch.cat([_body(t), torch.ones(10)]))],
        LONG,
        AT,
    ),
    "payload as float64": ("payload", lambda t: [t.double()], LONG, AT),
    "payload without its end marker": (
        "payload",
        lambda t: [torch.cat([_body(t), t[:1]])],
        SHORT,
        AT,
    ),
    "header announcing another length": (
        "header",
        lambda t: [_announcing(12345.0)(t)],
        rf"{WHO} announced a reply of \d+ values; expected load \* d = 1 \* (\d+) = \1",
        AT,
    ),
    "header with a NaN length": (
        "header",
        lambda t: [_announcing(float("nan"))(t)],
        rf"{WHO} announced a reply of \d+ values; expected load \* d = 1 \* (\d+) = \1",
        AT,
    ),
    "long header": (
        "header",
        lambda t: [_ended(torch.cat([_body(t), torch.ones(10)]))],
        rf"{WHO} sent a reply header longer than the 3 values expected",
        AT,
    ),
    "duplicated header": ("header", lambda t: [t, t], SHORT, AT),
    # its second payload waits for a receive that never comes: it never takes step 2's
    # control message (a receive posted for it instead would take the payload for a header)
    "duplicated payload": ("payload", lambda t: [t, t], LATE, AT + 1),
    "late past the timeout": ("header", _late, LATE, AT),
    "crash": ("header", _crash, rf"{WHO} failed or closed its connection: .+", AT),
}


def _hostile(message: str, change):
    """Worker FAULTY: the real worker, except that at step AT its ``message`` (header or
    payload) is replaced by what ``change`` returns (a list of messages to send)."""

    def worker(comm, run):
        send, sent = comm.send_to_server, [0]

        def send_to_server(tensor: torch.Tensor, server: int = 0) -> None:
            step, kind = divmod(sent[0], 2)  # a header, then a payload, every step
            sent[0] += 1
            if step == AT and ("header", "payload")[kind] == message:
                for out in change(tensor):
                    send(out, server)
                return
            send(tensor, server)

        comm.send_to_server = send_to_server
        run_rank(comm, run, Path(), server_parts=False)

    return worker


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict:
    """The final parameters of the same run without a fault (simulate engine)."""
    folder = tmp_path_factory.mktemp("clean")
    simulate(list(RUN), folder)
    last = sorted((folder / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(last, weights_only=True)["model"]


@pytest.mark.parametrize("behaviour", HOSTILE)
def test_a_hostile_worker_is_dropped_and_training_goes_on_to_the_same_bits(
    tmp_path, capsys, clean, behaviour
):
    message, change, why, at = HOSTILE[behaviour]
    folder = tmp_path / "run"
    result, errors = run_threaded(
        RUN, folder, timeout=TIMEOUT, workers={FAULTY: _hostile(message, change)}
    )
    assert isinstance(result, dict), result  # the run finished: test accuracy
    if behaviour == "crash":
        assert set(errors) == {FAULTY + 1} and isinstance(errors[FAULTY + 1], SystemExit)
    else:
        assert not errors, errors  # the dropped worker returned quietly (it learned why)
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if "is dropped" in line]
    assert len(said) == 1, out
    assert re.fullmatch(
        rf"step {at}: {why}; worker {FAULTY} is dropped for the rest of the run: its files "
        r"vote among their other holders \(2 of 2 files can still have a strict majority\)",
        said[0],
    ), said[0]
    steps, _ = read_metrics(folder)
    assert [s["dropped_workers"] for s in steps] == [[]] * at + [[FAULTY]] * (len(steps) - at)
    assert all(s["all_strict"] for s in steps)  # 2 of 3 copies: still a strict majority
    last = sorted((folder / "checkpoints").glob("step_*.pt"))[-1]
    params = torch.load(last, weights_only=True)["model"]
    assert all(torch.equal(params[k], clean[k]) for k in clean)
