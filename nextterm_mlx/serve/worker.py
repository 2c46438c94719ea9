"""The one thread that owns the model. Requests queue up for it, and those
that arrive together are decoded as one batch, with the answers one-at-a-time
decoding gives."""

from __future__ import annotations

import queue
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Hashable, Optional, Sequence

import mlx.core as mx

from ..predictor import Predictor

# A group's function: the answers for its items, one each, in order.
RunGroup = Callable[[Predictor, list[Any]], list[Any]]

# A queue empty this long means the server is idle, not between two rounds
# of a steady load, whose clients send again at once.
IDLE_SECONDS = 1.0


class Busy(Exception):
    """The queue is full; the client should come back a little later."""


@dataclass
class Job:
    """One item to answer. Jobs with the same key are answered by one call
    of `run` on all their items."""

    key: Hashable
    run: RunGroup
    item: Any
    future: Future = field(default_factory=Future)


class ModelWorker:
    """Loads the model on its own thread, then answers jobs there, a batch at
    a time: each round takes what has queued up (at most `max_batch` jobs)."""

    def __init__(self, load: Callable[[], Predictor], max_queue: int = 256, max_batch: int = 32):
        self.load = load
        self.max_batch = max_batch
        self.jobs: queue.Queue[Optional[Job]] = queue.Queue(max_queue)
        self.predictor: Optional[Predictor] = None
        self.thread = threading.Thread(target=self.serve, name="nextterm-model", daemon=True)
        self.loaded = threading.Event()
        self.load_error: Optional[BaseException] = None

    def start(self) -> Predictor:
        """Load the model and start answering; the loader's error, if any, is raised here."""
        # Before the model's thread, and MLX's, first allocate: in malloc's
        # main arena, an idle release reaches all of their free memory.
        if (heap := glibc_heap()) is not None:
            heap.share_one_arena()
        self.thread.start()
        self.loaded.wait()
        if self.load_error is not None:
            raise self.load_error
        return self.predictor

    def stop(self) -> None:
        """Finish the jobs already queued, then end the thread."""
        if self.thread.is_alive():
            self.jobs.put(None)
            self.thread.join()

    def submit(self, key: Hashable, run: RunGroup, item: Any) -> Future:
        job = Job(key, run, item)
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise Busy from None
        return job.future

    def call(self, function: Callable[[Predictor], Any]) -> Future:
        """Run `function(predictor)` on this thread, alone: for work that does
        not batch, such as an explanation."""
        return self.submit(object(), lambda predictor, items: [function(predictor)], None)

    def continue_sequence(self, terms: Sequence[int], n: int, strict: bool) -> Future:
        """Predictor.continue_sequence, batched with the requests for the same n and strict."""
        return self.submit(("continue", n, strict),
                           lambda predictor, items: predictor.continue_batch(items, n, strict=strict), terms)

    def candidates(self, terms: Sequence[int], beams: int, top: Optional[int], strict: bool) -> Future:
        """Predictor.candidates, batched with the requests for the same beams, top and strict."""
        return self.submit(("candidates", beams, top, strict),
                           lambda predictor, items: predictor.candidates_batch(items, beams, top, strict), terms)

    def serve(self) -> None:
        try:
            self.predictor = self.load()
        except BaseException as e:  # the starting thread reports it
            self.load_error = e
            return
        finally:
            self.loaded.set()
        while True:
            jobs = self.next_round()
            work = [job for job in jobs if job is not None]
            for group in groups(work):
                answer(self.predictor, group)
            # The round's KV caches are free again; MLX would keep their
            # buffers for reuse, and a long-running server would hold them.
            mx.clear_cache()
            if len(work) < len(jobs):  # stop() queued a None after the last job
                return

    def next_round(self) -> list[Optional[Job]]:
        """The jobs queued now, waiting for one if there is none (and
        releasing freed memory once the wait makes the server idle)."""
        try:
            jobs = [self.jobs.get(timeout=IDLE_SECONDS)]
        except queue.Empty:
            # Not after every round: under load each round reuses the pages
            # the ones before it freed, and faulting in fresh ones costs time.
            # But left alone, a server would hold its largest round's memory,
            # and the gaps malloc cannot return from the middle of its heap,
            # for as long as it runs, idle or not.
            if (heap := glibc_heap()) is not None:
                heap.release_freed_memory()
            jobs = [self.jobs.get()]
        while jobs[-1] is not None and len(jobs) < self.max_batch:
            try:
                jobs.append(self.jobs.get_nowait())
            except queue.Empty:
                break
        return jobs


def glibc_heap() -> Optional[ModuleType]:
    """cpu/heap.py on Linux; None elsewhere, where cpu/ is never imported."""
    if not sys.platform.startswith("linux"):
        return None
    from ..cpu import heap

    return heap


def groups(jobs: list[Job]) -> list[list[Job]]:
    """The jobs by key, in the order the keys first came, and only those
    whose clients still wait (a cancelled job is never started)."""
    by_key: dict[Hashable, list[Job]] = {}
    for job in jobs:
        if job.future.set_running_or_notify_cancel():
            by_key.setdefault(job.key, []).append(job)
    return list(by_key.values())


def answer(predictor: Predictor, group: list[Job]) -> None:
    """Answer a group in one batch. If the batch fails, each job is answered
    alone, so that one bad request fails only itself."""
    try:
        results = group[0].run(predictor, [job.item for job in group])
    except Exception as e:
        if len(group) == 1:
            group[0].future.set_exception(e)
            return
        for job in group:
            answer(predictor, [job])
        return
    for job, result in zip(group, results):
        job.future.set_result(result)
