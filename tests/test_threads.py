"""Thread pools a Ctrl-C cannot leave half-made (byzshield.compute.threads)."""

import signal
import threading

import pytest

from byzshield.compute.threads import sigint_held, started_pool


def test_every_thread_of_a_started_pool_runs_before_its_first_task():
    pool = started_pool(3, "probe")
    try:
        threads = set(pool._threads)  # the pool's own record: what shutdown() joins
        assert len(threads) == 3 and all(t.is_alive() for t in threads)
        names = set(pool.map(lambda _: threading.current_thread().name, range(12)))
        assert names <= {t.name for t in threads}  # no thread started after the fact
        assert len(pool._threads) == 3
    finally:
        pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in threads)


def test_a_ctrl_c_while_held_is_raised_when_the_block_ends():
    reached = []
    with pytest.raises(KeyboardInterrupt), sigint_held():
        signal.raise_signal(signal.SIGINT)
        reached.append("the rest of the block ran")
    assert reached == ["the rest of the block ran"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_block_without_ctrl_c_leaves_the_handler_as_it_was():
    with sigint_held():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_the_main_thread_the_block_just_runs():
    seen = []

    def body():
        with sigint_held():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler]
