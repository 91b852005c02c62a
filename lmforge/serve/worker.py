"""The engine's own thread: requests queue here and run in batches, never on the server's event loop.

Generation requests waiting together are batched (up to ``max_batch_size`` rows, all for the same adapter) and
generated with left padding by `PtEngine.generate_rows`. Continuous batching: a request that arrives while a batch
runs joins it once the batch has run ``admit_after`` steps (and has room): the batch is paused after that step and
continued with the newcomers, its unfinished rows re-prefilled with what they generated (see `PtEngine`); with
``admit_after=0``, or an engine that cannot pause, it waits for the batch to end. Other work (embeddings, prompt
logprobs) runs as single calls between batches, or pauses a batch the same way.
"""
from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger('lmforge.serve')
SHUTDOWN_MESSAGE = 'the server is shutting down'


@dataclass
class GenerateJob:
    rows: list  # engine Sequences
    adapter: str | None = None


@dataclass
class CallJob:
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    done: Callable[[Any, BaseException | None], None] | None = None  # called with (result, error) on the worker


class WorkerStopped(RuntimeError):
    """The worker is not running (the server is shutting down)."""


class EngineWorker:
    def __init__(self, engine, max_batch_size: int = 16, admit_after: int = 16):
        if admit_after < 0:
            raise ValueError(f'admit_after must be >= 0 (0: a batch runs to its end), got {admit_after}')
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.admit_after = admit_after if getattr(engine, 'supports_interrupt', False) else 0
        self._queue: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a batch (not the batch in progress)."""
        with self._cv:
            return sum(len(j.rows) for j in self._queue if isinstance(j, GenerateJob))

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def start(self) -> None:
        with self._cv:
            if self.alive:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name='lmforge-engine', daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop after the batch in progress; queued work fails with `WorkerStopped`."""
        with self._cv:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            self._cv.notify_all()
        for job in pending:
            _fail(job, WorkerStopped(SHUTDOWN_MESSAGE))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def submit(self, job: GenerateJob | CallJob) -> None:
        with self._cv:
            if self._stopping or self._thread is None:
                raise WorkerStopped('the engine is not running')
            self._queue.append(job)
            self._cv.notify()

    def _next_batch(self) -> list:
        """The next job, plus the generation jobs queued behind it that fit in its batch (same adapter)."""
        with self._cv:
            while not self._queue and not self._stopping:
                self._cv.wait()
            if self._stopping:
                return []
            first = self._queue.popleft()
            if not isinstance(first, GenerateJob):
                return [first]
            batch, size = [first], len(first.rows)
            for job in list(self._queue):
                if isinstance(job, GenerateJob) and job.adapter == first.adapter and \
                        size + len(job.rows) <= self.max_batch_size:
                    self._queue.remove(job)
                    batch.append(job)
                    size += len(job.rows)
            return batch

    def _admit(self, adapter: str | None, active: int) -> list:
        """Without waiting, for a paused batch of ``active`` rows: the calls queued, and the generation jobs for its
        adapter that fit, in queue order up to the first that does not (or is another adapter's: its turn comes
        when this batch ends, and nothing queued after it overtakes it)."""
        with self._cv:
            taken, size = [], active
            for job in self._queue:
                if isinstance(job, CallJob):
                    taken.append(job)
                elif job.adapter == adapter and size + len(job.rows) <= self.max_batch_size:
                    taken.append(job)
                    size += len(job.rows)
                else:
                    break
            for job in taken:
                self._queue.remove(job)
            return taken

    def _interrupter(self, adapter: str | None):
        """``interrupt(active_rows)`` for `generate_rows`: pause once the batch has run ``admit_after`` steps and the
        queue's first job is a call, or a generation for this adapter that fits beside the active rows."""
        steps = 0

        def interrupt(active: int) -> bool:
            nonlocal steps
            steps += 1
            if steps < self.admit_after or not self._queue or self._stopping:
                return False
            with self._cv:
                first = self._queue[0] if self._queue else None
                if isinstance(first, CallJob):
                    return True
                return first is not None and first.adapter == adapter and \
                    active + len(first.rows) <= self.max_batch_size
        return interrupt

    def _run(self) -> None:
        carried, adapter = [], None  # the unfinished rows of a paused batch, and their adapter
        while True:
            if carried:
                jobs = self._admit(adapter, len(carried))
            else:
                jobs = self._next_batch()
                if not jobs:
                    return
                adapter = jobs[0].adapter if isinstance(jobs[0], GenerateJob) else None
            for job in jobs:
                if isinstance(job, CallJob):
                    self._call(job)
            rows = carried + [r for job in jobs if isinstance(job, GenerateJob) for r in job.rows]
            for r in rows:
                if r.cancelled and not r.done:
                    r.finish('abort')
            rows = [r for r in rows if not r.done]
            batch, rest = rows[:self.max_batch_size], rows[self.max_batch_size:]  # one request's n can exceed it
            left = []
            if batch:
                kwargs = {'interrupt': self._interrupter(adapter)} if self.admit_after else {}
                try:
                    left = self.engine.generate_rows(batch, adapter=adapter, **kwargs) or []
                except Exception:  # the rows were told (Sequence.fail); keep serving
                    log.exception('generation failed')
            carried = [r for r in [*left, *rest] if not r.done]

    @staticmethod
    def _call(job: CallJob) -> None:
        try:
            result, error = job.fn(*job.args, **job.kwargs), None
        except Exception as e:  # handed to the waiting request
            result, error = None, e
        if job.done is not None:
            job.done(result, error)


def _fail(job, error: BaseException) -> None:
    if isinstance(job, CallJob):
        if job.done is not None:
            job.done(None, error)
    else:
        for r in job.rows:
            if not r.done:
                r.fail(str(error))
