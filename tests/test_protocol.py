"""The wire format in one process: what a worker packs, what the server reads back, and
the slots that name a worker whose message has the wrong length. What gloo itself does
with such messages is measured with real processes in test_comm.py."""

from __future__ import annotations

import pytest
import torch

from byzshield.server.wire import (
    END,
    SLACK,
    Control,
    ReplyLayout,
    Slot,
    gradients_nbytes,
    message_nbytes,
    pack_gradients,
)

WHO = "rank 3 (worker 2)"


def _deliver(slot: Slot, message: torch.Tensor) -> None:
    """What gloo does with a message no longer than the buffer: write it from the start."""
    slot.buffer[: message.numel()] = message


def _message(values: int) -> torch.Tensor:
    return torch.cat([torch.arange(values, dtype=torch.float32), torch.tensor([END])])


def test_control_message_round_trips():
    message = Control.for_step(12, 4, byzantine=[1, 3]).pack()
    assert message.dtype == torch.int64
    assert message.tolist() == [12, 0, 0, 1, 0, 1, 0, 1, 2, 3, 0, 0, 0, 0]
    assert Control.unpack(message) == Control(12, False, (False, True, False, True))
    assert Control.unpack(Control.stop_message(5, 2).pack()).stop
    moved = Control.for_step(3, 3, byzantine=[0], roles=[2, 0, 1], excluded=[1])
    back = Control.unpack(moved.pack())
    assert back == moved and back.roles == (2, 0, 1) and back.excluded == (False, True, False)
    assert back.byzantine_roles() == (2,) and back.excluded_roles() == (0,)


def test_header_announces_the_payload_length_and_ends_with_the_marker():
    layout = ReplyLayout(load=2, d=5)
    header = layout.pack_header(compute_s=0.25, losses=[1.5, 2.5])
    assert header[1:].tolist() == [0.25, 1.5, 2.5, END]
    assert header[0:1].view(torch.int32).tolist() == [10]  # the length's int32 bits
    read = layout.unpack_header(torch.cat([header, torch.full((7,), 9.0)]))  # slack after it
    assert (read.length, read.compute_s, read.losses) == (10.0, 0.25, (1.5, 2.5))
    layout.check_header(read, WHO)
    assert layout.nbytes() == 4 * (len(header) + layout.payload_message().numel())


@pytest.mark.parametrize("length", [9.0, 11.0, float("nan"), float("inf")])
def test_header_announcing_another_length_is_refused_naming_the_rank(length):
    layout = ReplyLayout(load=2, d=5)
    header = layout.unpack_header(torch.tensor([length, 0.1, 1.0, 2.0, END]))
    with pytest.raises(ValueError, match=r"^rank 3 \(worker 2\) announced a reply of .* = 10$"):
        layout.check_header(header, WHO)


def test_payload_message_holds_the_gradients_then_the_marker():
    layout = ReplyLayout(load=3, d=4)
    message = layout.payload_message()
    gradients = layout.payload(message)
    gradients.copy_(torch.arange(12.0).view(3, 4))
    assert gradients.shape == (3, 4) and gradients.data_ptr() == message.data_ptr()
    assert message.tolist() == [*map(float, range(12)), END]


def test_a_pushed_or_pulled_message_is_the_chosen_gradients_then_the_marker():
    gradients = torch.arange(12.0).view(3, 4)  # a worker's three files, d = 4
    message = pack_gradients(gradients, [0, 2])
    assert message.tolist() == [*gradients[0].tolist(), *gradients[2].tolist(), END]
    assert gradients_nbytes(2, 4) == 4 * message.numel() == message_nbytes(8) == 36
    out = torch.zeros(5)
    assert pack_gradients(gradients, [1], out) is out and out.tolist() == [4, 5, 6, 7, END]


def test_slot_accepts_a_message_of_the_right_length_again_and_again():
    slot = Slot(torch.empty(Slot.capacity(10)), 10)
    for _ in range(3):
        slot.arm()
        _deliver(slot, _message(10))
        slot.check(WHO, "payload")
        assert slot.buffer[:10].tolist() == list(map(float, range(10)))


@pytest.mark.parametrize("values", [0, 1, 5, 9])
def test_slot_names_the_rank_of_a_short_message(values):
    slot = Slot(torch.empty(Slot.capacity(10)), 10)
    _deliver(slot, _message(10))  # a previous, good message: stale memory after a short one
    slot.arm()
    _deliver(slot, _message(values))
    with pytest.raises(ValueError, match=r"^rank 3 \(worker 2\) sent a payload without the end "):
        slot.check(WHO, "payload")


@pytest.mark.parametrize("values", [11, 20, 10 + SLACK, 2 * 11 + SLACK - 1])
def test_slot_names_the_rank_of_a_long_message_within_the_slack(values):
    slot = Slot(torch.empty(Slot.capacity(10)), 10)
    slot.arm()
    _deliver(slot, _message(values))
    with pytest.raises(ValueError, match=r"^rank 3 \(worker 2\) sent a payload longer than"):
        slot.check(WHO, "payload")


def test_slot_refuses_the_right_length_without_the_end_marker():
    slot = Slot(torch.empty(Slot.capacity(10)), 10)
    slot.arm()
    _deliver(slot, torch.zeros(11))
    with pytest.raises(ValueError, match="without the end marker after value 10: .* wrong marker"):
        slot.check(WHO, "payload")


def test_slot_cannot_be_fooled_by_a_message_that_repeats_the_marker():
    slot = Slot(torch.empty(Slot.capacity(10)), 10)
    slot.arm()
    _deliver(slot, torch.full((12,), END))  # END where it belongs, and one value too many
    with pytest.raises(ValueError, match="longer than"):
        slot.check(WHO, "payload")


def test_slot_needs_room_for_the_message_twice_the_marker_and_the_slack():
    with pytest.raises(ValueError, match=f"needs {2 * (10 + 1) + SLACK}"):
        Slot(torch.empty(10 + 1 + SLACK), 10)
    with pytest.raises(ValueError, match="contiguous 1-D float32"):
        Slot(torch.empty(Slot.capacity(10), dtype=torch.float64), 10)


def test_slot_names_the_rank_of_the_same_values_sent_as_float64():
    """Twice the bytes of the message it expects: gloo would abort the server on a buffer
    of the message's own length; the slot holds it and names the sender."""
    slot = Slot(torch.empty(Slot.capacity(5000)), 5000)  # beyond the slack alone
    slot.arm()
    _deliver(slot, _message(5000).double().view(torch.float32))
    with pytest.raises(ValueError, match="longer than the 5000 values expected"):
        slot.check(WHO, "payload")


def test_a_payload_length_beyond_float32s_integers_is_announced_exactly():
    """ResNet-18 on a MOLS worker: 5 * 11,173,962 values, more than 2^24, which a float32
    cannot hold exactly (the run used to stop: 'announced 5.58698e+07 values')."""
    layout = ReplyLayout(load=5, d=11_173_962)
    header = layout.pack_header(compute_s=0.5, losses=[1.0] * 5)
    read = layout.unpack_header(header)
    assert read.length == 55_869_810 == layout.payload_size
    layout.check_header(read, "rank 1 (worker 0)")
