"""WorkerPool: jobs in parallel, drain, failures counted, close joins; the semaphore eventfd."""

from __future__ import annotations

import threading
import time

import pytest

from pyhv.devices.virtio.iothread import EventFd, IoThreadError, WorkerPool

WAIT_S = 10  # only a broken pool ever waits this long


@pytest.fixture
def pool():
    workers = WorkerPool("test-pool", 2)
    yield workers
    workers.close()


def test_semaphore_eventfd_hands_out_one_signal_per_take():
    event = EventFd(semaphore=True)
    try:
        event.signal()
        event.signal()
        taken = []
        for _ in range(2):
            event.take()
            taken.append(True)
        assert taken == [True, True]
        waiter = threading.Thread(target=event.take, daemon=True)
        waiter.start()
        waiter.join(0.05)
        assert waiter.is_alive()  # no third signal yet: the reader waits
        event.signal()
        waiter.join(WAIT_S)
        assert not waiter.is_alive()
    finally:
        event.close()


def test_jobs_run_in_parallel(pool):
    # Each job waits for the other to start: one thread alone could never finish them.
    started = [threading.Event(), threading.Event()]
    finished = []

    def job(mine: int) -> None:
        started[mine].set()
        assert started[1 - mine].wait(WAIT_S)
        finished.append(mine)

    pool.submit(lambda: job(0))
    pool.submit(lambda: job(1))
    pool.drain()
    assert sorted(finished) == [0, 1]
    assert pool.in_flight == 0


def test_no_thread_before_the_first_job():
    workers = WorkerPool("lazy-pool", 3)
    assert workers.threads == []
    workers.submit(lambda: None)
    assert len(workers.threads) == 3
    workers.close()


def test_drain_waits_for_every_job_submitted_before_it(pool):
    gate = threading.Event()
    done = []
    pool.submit(lambda: (gate.wait(WAIT_S), done.append("slow")))
    pool.submit(lambda: done.append("fast"))
    drained = threading.Event()
    drainer = threading.Thread(target=lambda: (pool.drain(), drained.set()), daemon=True)
    drainer.start()
    assert not drained.wait(0.05)
    assert pool.in_flight == 1
    gate.set()
    assert drained.wait(WAIT_S)
    assert sorted(done) == ["fast", "slow"]


def test_a_failing_job_is_counted_and_the_pool_carries_on(pool):
    def broken() -> None:
        raise RuntimeError("bug in a job")

    ran = []
    pool.submit(broken)
    pool.submit(lambda: ran.append(1))
    pool.drain()
    assert pool.failures == 1 and ran == [1]


def test_close_finishes_the_jobs_and_joins_the_threads():
    workers = WorkerPool("closing-pool", 2)
    done = []
    for i in range(6):
        workers.submit(lambda i=i: (time.sleep(0.005), done.append(i)))
    threads = workers.threads
    workers.close()
    assert sorted(done) == list(range(6))
    assert not any(thread.is_alive() for thread in threads)
    workers.close()  # idempotent
    with pytest.raises(IoThreadError, match="closing-pool: the worker pool is closed"):
        workers.submit(lambda: None)


def test_a_pool_needs_a_thread():
    with pytest.raises(IoThreadError, match="bad-pool: .* at least one thread, not 0"):
        WorkerPool("bad-pool", 0)
