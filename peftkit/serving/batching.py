"""Dynamic batching across tasks: rows of any task wait in ONE bounded queue and leave it together.

A request becomes one row per input; the worker takes the oldest waiting rows, whatever their
tasks, and runs them as one mixed-task forward (``run_batch``) on a single worker thread.
Control operations (loading or removing an adapter) travel through the same queue.

Invariants (tests/serving/test_batching.py checks each):

1. **Bounded.** At most ``max_queue_rows`` rows wait. A request whose rows do not all fit is
   refused at once with QueueFullError (the server's 503 + Retry-After); it is never partly queued.
2. **Bounded batches, bounded wait.** A batch holds at most ``max_batch_rows`` rows. The worker
   starts one as soon as that many rows wait, or the oldest waiting row has waited
   ``max_wait_seconds``, or a control operation is next in line; while a forward runs, new rows
   simply queue, so under load batches fill without waiting at all.
3. **First in, first out, controls included.** Rows run in arrival order. A control operation is
   a barrier: the rows queued before it run before it (on the adapter set they were validated
   against), the rows queued after it run after it. So a swap never overlaps a forward.
4. **One thread touches the model.** Forwards and controls run one at a time on one worker
   thread; the event loop only queues, waits and answers, so it stays responsive meanwhile.
5. **Failures stay with their row.** If a mixed batch raises, each of its rows is run again
   alone, so the error reaches only the request whose row caused it; the worker lives on.
6. **Abandoned rows do not run.** A row whose request gave up (timeout, client gone: its
   future was cancelled) leaves the queue at once and stops counting towards the bound.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from peftkit.errors import PeftkitError, RequestError


class QueueFullError(RequestError):
    """The queue has no room for the request's rows (answer 503 with Retry-After)."""

    def __init__(self, message: str, retry_after_seconds: int = 1):
        super().__init__(message, status=503, code="overloaded", headers={"Retry-After": str(retry_after_seconds)})


@dataclasses.dataclass(eq=False)  # identity equality: deque.remove must find this very item
class _Item:
    payload: Any  # a row for run_batch, or the callable of a control operation
    future: asyncio.Future
    is_control: bool = False
    enqueued: float = 0.0


class BatchingQueue:
    """Queue rows, run them in mixed batches on one worker thread, answer each row's future.

    ``run_batch(rows) -> results`` is called on the worker thread with 1..max_batch_rows rows and
    returns one result per row, in order. ``on_batch(size, seconds)`` (optional) is told of every
    batch run, for metrics. Create and use it inside one running event loop: ``await start()``,
    then ``submit`` / ``run_exclusive``, then ``await stop()``."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[Any]], Sequence[Any]],
        *,
        max_batch_rows: int = 32,
        max_wait_seconds: float = 0.005,
        max_queue_rows: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        if max_batch_rows < 1 or max_queue_rows < 1 or max_wait_seconds < 0:
            raise PeftkitError(
                f"the batch size ({max_batch_rows}) and queue size ({max_queue_rows}) must be at least 1 and the "
                f"wait ({max_wait_seconds} s) at least 0: fix --max-batch-size, --max-queue-size or --max-wait-ms."
            )
        self.run_batch = run_batch
        self.max_batch_rows = max_batch_rows
        self.max_wait_seconds = max_wait_seconds
        self.max_queue_rows = max_queue_rows
        self.on_batch = on_batch
        self._items: collections.deque[_Item] = collections.deque()
        self._rows_waiting = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="peftkit-batch")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Rows waiting (not yet running)."""
        return self._rows_waiting

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        self._worker = asyncio.create_task(self._work(), name="peftkit-batching-worker")

    async def stop(self) -> None:
        """Stop the worker, fail what still waits, let a running forward finish."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                item.future.set_exception(RequestError("the server is shutting down; retry on another replica.", status=503, code="shutting_down"))
        self._rows_waiting = 0
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    # -- entering the queue ------------------------------------------------------------------------
    def submit(self, rows: Sequence[Any]) -> list[asyncio.Future]:
        """Queue ``rows`` (all or none); one future per row. Raises QueueFullError when they do not fit."""
        if self._worker is None:
            raise RuntimeError("BatchingQueue.submit before start()")
        if self._rows_waiting + len(rows) > self.max_queue_rows:
            raise QueueFullError(
                f"the server is busy: {self._rows_waiting} rows are queued and the queue holds "
                f"{self.max_queue_rows}, no room for {len(rows)} more. Retry after the Retry-After seconds, "
                "or add replicas behind the load balancer."
            )
        now = self._loop.time()
        futures = []
        for row in rows:
            item = _Item(row, self._loop.create_future(), enqueued=now)
            item.future.add_done_callback(lambda future, item=item: self._abandon(item))
            self._items.append(item)
            futures.append(item.future)
        self._rows_waiting += len(rows)
        self._arrived.set()
        return futures

    async def run_exclusive(self, operation: Callable[[], Any]) -> Any:
        """Run ``operation()`` on the worker thread once every row queued before it has run."""
        if self._worker is None:
            raise RuntimeError("BatchingQueue.run_exclusive before start()")
        item = _Item(operation, self._loop.create_future(), is_control=True, enqueued=self._loop.time())
        self._items.append(item)
        self._arrived.set()
        return await item.future

    def _abandon(self, item: _Item) -> None:
        if item.future.cancelled():
            try:
                self._items.remove(item)
            except ValueError:  # already taken by the worker
                return
            self._rows_waiting -= 1

    # -- the worker --------------------------------------------------------------------------------
    def _rows_before_control(self) -> tuple[int, bool]:
        count = 0
        for item in self._items:
            if item.is_control:
                return count, True
            count += 1
            if count >= self.max_batch_rows:
                break
        return count, False

    async def _wait_for_arrival(self, timeout: float | None) -> bool:
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _work(self) -> None:
        while True:
            if not self._items:
                await self._wait_for_arrival(None)
                continue
            head = self._items[0]
            if head.is_control:
                self._items.popleft()
                await self._run_control(head)
                continue
            deadline = head.enqueued + self.max_wait_seconds
            while True:  # invariant 2: fill the batch until full, a control is next, or the oldest row's time is up
                count, control_next = self._rows_before_control()
                remaining = deadline - self._loop.time()
                if count >= self.max_batch_rows or control_next or remaining <= 0:
                    break
                await self._wait_for_arrival(remaining)
            batch = []
            while self._items and not self._items[0].is_control and len(batch) < self.max_batch_rows:
                batch.append(self._items.popleft())
            self._rows_waiting -= len(batch)
            if batch:
                await self._run_rows(batch)

    async def _run_control(self, item: _Item) -> None:
        try:
            result = await self._loop.run_in_executor(self._executor, item.payload)
        except Exception as error:
            if not item.future.done():
                item.future.set_exception(error)
        else:
            if not item.future.done():
                item.future.set_result(result)

    async def _run_rows(self, batch: list[_Item]) -> None:
        started = self._loop.time()
        outcomes = await self._loop.run_in_executor(self._executor, self._run_isolated, [item.payload for item in batch])
        if self.on_batch is not None:
            self.on_batch(len(batch), self._loop.time() - started)
        for item, outcome in zip(batch, outcomes):
            if item.future.done():  # invariant 6: its request already gave up
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)

    def _run_isolated(self, rows: list[Any]) -> list[Any]:
        """Invariant 5, on the worker thread: the batch, else each row alone."""
        try:
            results = list(self.run_batch(rows))
            if len(results) != len(rows):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(rows)} rows")
            return results
        except Exception as error:
            if len(rows) == 1:
                return [error]
        outcomes = []
        for row in rows:
            try:
                outcomes.append(self.run_batch([row])[0])
            except Exception as error:
                outcomes.append(error)
        return outcomes
