"""The batching queue's invariants (peftkit/serving/batching.py's docstring), one test each."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from peftkit.errors import PeftkitError
from peftkit.serving.batching import BatchingQueue, QueueFullError


class Recorder:
    """A run_batch that records every batch it gets (and the thread it ran on) and answers row * 10."""

    def __init__(self, seconds: float = 0.0, fail_on=None):
        self.batches: list[list] = []
        self.threads: set[int] = set()
        self.seconds = seconds
        self.fail_on = fail_on

    def __call__(self, rows):
        self.batches.append(list(rows))
        self.threads.add(threading.get_ident())
        time.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in rows:
            raise ValueError(f"row {self.fail_on} is bad")
        return [row * 10 for row in rows]


def run(coroutine_function):
    return asyncio.run(coroutine_function())


def test_a_request_that_does_not_fit_is_refused_whole():
    recorder = Recorder()

    async def scenario():
        queue = BatchingQueue(recorder, max_batch_rows=8, max_wait_seconds=0.5, max_queue_rows=4)
        await queue.start()
        first = queue.submit([1, 2, 3])
        with pytest.raises(QueueFullError) as refused:
            queue.submit([4, 5])
        assert queue.depth == 3  # nothing of the refused request entered
        results = await asyncio.gather(*first)
        await queue.stop()
        return refused.value, results

    refused, results = run(scenario)
    assert refused.status == 503 and refused.headers == {"Retry-After": "1"}
    assert results == [10, 20, 30]
    assert recorder.batches == [[1, 2, 3]]


def test_batches_are_bounded_and_fill_while_a_forward_runs():
    recorder = Recorder(seconds=0.05)

    async def scenario():
        queue = BatchingQueue(recorder, max_batch_rows=4, max_wait_seconds=0.0, max_queue_rows=100)
        await queue.start()
        futures = queue.submit([0])
        await asyncio.sleep(0.01)  # row 0 runs alone (no wait); the others arrive during its forward
        futures += queue.submit(list(range(1, 10)))
        results = await asyncio.gather(*futures)
        await queue.stop()
        return results

    assert run(scenario) == [row * 10 for row in range(10)]
    assert recorder.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]  # first in, first out, at most 4


def test_a_lone_row_waits_at_most_max_wait():
    recorder = Recorder()

    async def scenario():
        queue = BatchingQueue(recorder, max_batch_rows=8, max_wait_seconds=0.2, max_queue_rows=100)
        await queue.start()
        started = time.perf_counter()
        (future,) = queue.submit([7])
        result = await future
        elapsed = time.perf_counter() - started
        await queue.stop()
        return result, elapsed

    result, elapsed = run(scenario)
    assert result == 70
    assert 0.18 <= elapsed < 2.0


def test_a_control_operation_is_a_barrier_in_arrival_order():
    recorder = Recorder()
    order = []

    async def scenario():
        queue = BatchingQueue(recorder, max_batch_rows=8, max_wait_seconds=1.0, max_queue_rows=100)
        await queue.start()
        before = queue.submit([1, 2])
        control = asyncio.ensure_future(queue.run_exclusive(lambda: order.append(("control", len(recorder.batches))) or "done"))
        await asyncio.sleep(0)
        after = queue.submit([3])
        results = await asyncio.gather(*before, control, *after)
        await queue.stop()
        return results

    started = time.perf_counter()
    assert run(scenario) == [10, 20, "done", 30]
    # The rows before the control ran as their own batch before it (without waiting out the
    # 1 s batching window); the row after it ran after it.
    assert recorder.batches[0] == [1, 2] and order == [("control", 1)] and recorder.batches[1] == [3]
    assert time.perf_counter() - started < 2.5


def test_one_bad_row_fails_alone_and_the_worker_lives_on():
    recorder = Recorder(fail_on=3)

    async def scenario():
        queue = BatchingQueue(recorder, max_batch_rows=8, max_wait_seconds=0.05, max_queue_rows=100)
        await queue.start()
        futures = queue.submit([1, 2, 3, 4])
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        later = await queue.submit([5])[0]
        await queue.stop()
        return outcomes, later

    outcomes, later = run(scenario)
    assert outcomes[:2] == [10, 20] and outcomes[3] == 40
    assert isinstance(outcomes[2], ValueError) and "row 3" in str(outcomes[2])
    assert later == 50
    assert recorder.batches[0] == [1, 2, 3, 4] and [1] in recorder.batches and [3] in recorder.batches
    assert len(recorder.threads) == 1  # every forward on the one worker thread


def test_abandoned_rows_leave_the_queue_and_never_run():
    recorder = Recorder()

    async def scenario():
        queue = BatchingQueue(recorder, max_batch_rows=8, max_wait_seconds=0.3, max_queue_rows=3)
        await queue.start()
        abandoned = queue.submit([1, 2, 3])
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*abandoned), 0.05)
        depth_after_timeout = queue.depth
        kept = queue.submit([4, 5, 6])  # fits again: the abandoned rows no longer count
        results = await asyncio.gather(*kept)
        await queue.stop()
        return depth_after_timeout, results

    depth, results = run(scenario)
    assert depth == 0
    assert results == [40, 50, 60]
    assert recorder.batches == [[4, 5, 6]]


def test_bad_settings_are_refused():
    with pytest.raises(PeftkitError, match="--max-batch-size"):
        BatchingQueue(Recorder(), max_batch_rows=0)
    with pytest.raises(PeftkitError, match="--max-wait-ms"):
        BatchingQueue(Recorder(), max_wait_seconds=-1)
