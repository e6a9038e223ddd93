"""Photo work on a thread pool, a bounded number of items ahead of a consumer that takes them in order.

Decoding, detection and encoding release the GIL for most of their time (Pillow, dlib, ONNX
Runtime), so threads run several photos at once; whatever must stay in input order (store
writes, audit events, checks that depend on earlier items) stays with the consumer.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import TypeVar

from . import vision
from .vision.types import Encoder

__all__ = ["in_order", "photo_pool", "pooled", "workers"]

T = TypeVar("T")
S = TypeVar("S")


def workers(jobs: int) -> int:
    """Threads for `jobs` photos: one per CPU this process may run on, never more than the photos."""
    try:
        cpus = len(os.sched_getaffinity(0))  # what a container or taskset allows, not the host's count
    except (AttributeError, OSError):  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, jobs))


@contextmanager
def photo_pool(jobs: int, prepare: Callable[[], object] | None = None) -> Iterator[tuple[ThreadPoolExecutor, int]]:
    """A thread pool for `jobs` photos and how far ahead of the consumer to start them.

    Two photos per thread ahead keeps every thread busy while the consumer waits on the
    oldest, and bounds memory: results wait in order, not the whole batch. On exit, work not
    yet started is cancelled and running work is waited for.

    `prepare` (loading the models every photo needs) is the pool's first task when there are
    several threads: one does it while the others already decode and detect, instead of all of
    them waiting on it at their first face. One thread has nothing to overlap it with, and a
    photo without a face would wait for models it never uses, so it is skipped there. Its
    errors are dropped here; the photo that needs what failed raises them.
    """
    count = workers(jobs)
    pool = ThreadPoolExecutor(count, thread_name_prefix="consentmatch")
    try:
        if prepare is not None and count > 1:
            pool.submit(prepare)
        yield pool, 2 * count
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def in_order(items: Iterable[T], start: Callable[[T], S], ahead: int) -> Iterator[tuple[T, S]]:
    """(item, start(item)) for each item, in input order.

    `start` runs in the consumer's thread, in input order, up to `ahead` items before its
    item is yielded: it submits an item's work to a pool and returns what finishes it.
    """
    window: deque[tuple[T, S]] = deque()
    for item in items:
        window.append((item, start(item)))
        if len(window) > ahead:
            yield window.popleft()
    while window:
        yield window.popleft()


@contextmanager
def pooled(
    items: Sequence[T], start: Callable[[Executor, T], S], encoder: Encoder
) -> Iterator[Iterator[tuple[T, S]]]:
    """(item, start(pool, item)) for each item, in input order, over a photo pool for the items
    whose first task loads the encoder's models: the one loop of every batch of photos.

    `start` runs in the consumer's thread (`in_order`): it submits the item's photo work to the
    pool and returns what finishes it. On exit the pool is shut down (`photo_pool`).
    """
    with photo_pool(len(items), partial(vision.load_models, encoder)) as (pool, ahead):
        yield in_order(items, partial(start, pool), ahead)
