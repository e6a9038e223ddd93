"""Runners: where an import's photo work (decode, region, detect, quality, encode) runs.

`LocalRunner` (the default) runs it on this process's threads (`pool.pooled`); `RayRunner` on
the actors of a Ray cluster, each keeping its models loaded. Either way the caller admits an
item before submitting its photo job and finishes the items in input order, so the store work
(duplicate check, writes, audit) stays with the caller, in order: a runner never opens the gallery.

A photo job and its result are plain data (paths, policy values; SHA-256s, boxes, encodings):
the gallery key, consents, names and e-mails never reach a worker.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, Union

from . import vision
from .errors import ConsentMatchError, EngineError, InvalidArgumentError
from .pool import in_order, pooled
from .settings import Settings
from .vision.types import Encoder

__all__ = ["RAY_INSTALL_HINT", "LocalRunner", "RayRunner", "Runner", "Submit", "Work"]

T = TypeVar("T")
S = TypeVar("S")
J = TypeVar("J")
R = TypeVar("R")

#: Runs one photo job with an encoder: a module-level function (a Ray worker imports it by name).
Work = Callable[[Encoder, J], R]
#: Submits a photo job; returns what gives its result (or raises its error) when called.
Submit = Callable[[J], Callable[[], R]]

RAY_INSTALL_HINT = "Ray is not installed: pip install 'consentmatch[ray]' (or import without --ray)."


class Runner(Protocol):
    """Runs the photo jobs of a batch of items, a bounded number of items ahead of the caller."""

    def started(
        self, items: Sequence[T], start: Callable[[Submit[J, R], T], S], work: Work[J, R], encoder: Encoder,
        settings: Settings,
    ) -> AbstractContextManager[Iterator[tuple[T, S]]]:
        """(item, start(submit, item)) for each item, in input order.

        `start` runs in the caller's thread, in input order, ahead of its item being yielded: it
        admits the item and submits its job with `submit`, returning what finishes the item.
        `work(encoder, job)` is the photo work; `encoder` and `settings` are the gallery's.
        """
        ...


#: How a worker gets its encoder: our backend and detector by name, or a custom encoder itself.
_EncoderSpec = Union[tuple[str, str], Encoder]


class LocalRunner:
    """This process's threads, one per CPU (`pool.pooled`): the default runner."""

    @contextmanager
    def started(
        self, items: Sequence[T], start: Callable[[Submit[J, R], T], S], work: Work[J, R], encoder: Encoder,
        settings: Settings,
    ) -> Iterator[Iterator[tuple[T, S]]]:
        def submitting(pool: Executor, item: T) -> S:
            return start(lambda job: pool.submit(work, encoder, job).result, item)

        with pooled(items, submitting, encoder) as started:
            yield started


class RayRunner:
    """The actors of a Ray cluster, models loaded once per actor (`import --ray ADDRESS`).

    Each actor takes one CPU and runs `batch_size` photo jobs per call; Ray restarts an actor
    whose process dies and retries its calls (`max_retries` times), so a lost worker costs
    time, not rows. Photos are read by the workers, by the manifest's paths, in the caller's
    working directory: every node must see the same files (a shared filesystem). Each worker
    needs consentmatch installed and builds the gallery's encoder (backend and detector) itself;
    a custom `Gallery(encoder=...)` is sent to the workers, so it must be serializable by Ray.

    Args:
        address: the cluster (`ray start --head` prints it; "auto" finds one running on this
            machine; "local" starts Ray on this machine for the import). None: RAY_ADDRESS, else
            "local". A Ray already initialized in this process is used as it is.
        concurrency: actors to start; default: the cluster's CPUs.
        batch_size: photo jobs per actor call (fewer round trips; more work redone on a retry).
        max_retries: how often a call is retried on a new actor after its actor died.

    Raises:
        EngineError: Ray is not installed (the message says how to install it).
        InvalidArgumentError: `concurrency` or `batch_size` below 1.
    """

    def __init__(
        self, address: str | None = None, *, concurrency: int | None = None, batch_size: int = 4,
        max_retries: int = 3,
    ) -> None:
        _ray()  # fail here, before any gallery is opened, when Ray is missing
        if concurrency is not None and concurrency < 1:
            raise InvalidArgumentError(f"concurrency={concurrency} starts no worker: use 1 or more, or None for one per CPU.")
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size={batch_size} sends no photo: use 1 or more.")
        self.address = address
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.max_retries = max_retries

    @contextmanager
    def started(
        self, items: Sequence[T], start: Callable[[Submit[J, R], T], S], work: Work[J, R], encoder: Encoder,
        settings: Settings,
    ) -> Iterator[Iterator[tuple[T, S]]]:
        ray = _ray()
        owned = not ray.is_initialized()
        if owned:
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                detail = " ".join(str(exc).split())[:200]
                raise EngineError(
                    f"Cannot reach the Ray cluster at {self.address or 'RAY_ADDRESS'!r} ({detail}): check the address "
                    "that `ray start --head` printed and, where it asks for a token, set RAY_AUTH_MODE=token and its "
                    "token (SECURITY.md), or use --ray local to run Ray on this machine."
                ) from None
        actors: list[Any] = []
        try:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            wanted = -(-len(items) // self.batch_size)
            count = min(self.concurrency or max(1, cpus), wanted)  # an empty manifest starts no actor
            # Our own encoders are rebuilt on the workers from their choice; a custom one travels as it is.
            spec: _EncoderSpec = (
                (settings.encoder, settings.detector) if encoder is vision.default_encoder(settings) else encoder
            )
            actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=self.max_retries)(_PhotoWorker)
            actors = [actor.remote(work, spec, os.getcwd()) for _ in range(count)]
            batches: _Batches[J, R] = _Batches(ray, actors, self.batch_size, self.max_retries)
            yield in_order(items, lambda item: start(batches.submit, item), 2 * count * self.batch_size)
        finally:
            for actor in actors:
                with suppress(Exception):
                    ray.kill(actor)
            if owned:
                ray.shutdown()


class _PhotoWorker:
    """A Ray actor: one worker process that runs photo jobs with its own loaded models."""

    def __init__(self, work: Work[Any, Any], spec: _EncoderSpec, cwd: str) -> None:
        self.work = work
        self.spec = spec
        self.encoder: Encoder | None = None
        if os.path.isdir(cwd):  # the manifest's relative paths, as the caller reads them
            os.chdir(cwd)
        with suppress(Exception):  # load while the driver admits rows; a failure is raised by the first job
            vision.load_models(self._encoder())

    def _encoder(self) -> Encoder:
        if self.encoder is None:
            if isinstance(self.spec, tuple):
                choice, detector = self.spec
                self.encoder = vision.default_encoder(Settings.from_env().replace(encoder=choice, detector=detector))
            else:
                self.encoder = self.spec
        return self.encoder

    def run(self, jobs: list[Any]) -> list[Any]:
        """Each job's result, or the error that refuses it (returned, so one bad photo fails no other)."""
        done: list[Any] = []
        for job in jobs:
            try:
                done.append(self.work(self._encoder(), job))
            except ConsentMatchError as exc:
                done.append(exc)
        return done


@dataclass
class _Batch(Generic[J]):
    jobs: list[J] = field(default_factory=list)
    ref: Any = None  # the ObjectRef of its results, once sent
    outcomes: list[Any] | None = None


class _Batches(Generic[J, R]):
    """Groups submitted jobs into batches, sent round-robin to the actors when full or first needed."""

    def __init__(self, ray: Any, actors: list[Any], size: int, retries: int) -> None:
        self.ray = ray
        self.actors = itertools.cycle(actors)
        self.size = size
        self.retries = retries
        self.filling: _Batch[J] = _Batch()

    def submit(self, job: J) -> Callable[[], R]:
        batch, index = self.filling, len(self.filling.jobs)
        batch.jobs.append(job)
        if len(batch.jobs) >= self.size:
            self._send()
        return lambda: self._result(batch, index)

    def _send(self) -> None:
        batch, self.filling = self.filling, _Batch()
        batch.ref = next(self.actors).run.remote(batch.jobs)

    def _result(self, batch: _Batch[J], index: int) -> R:
        if batch.ref is None:
            self._send()
        if batch.outcomes is None:
            batch.outcomes = self._get(batch)
        outcome = batch.outcomes[index]
        if isinstance(outcome, BaseException):
            raise outcome
        result: R = outcome
        return result

    def _get(self, batch: _Batch[J]) -> list[Any]:
        exceptions = self.ray.exceptions
        try:
            outcomes: list[Any] = self.ray.get(batch.ref)
            return outcomes
        except exceptions.RayTaskError as exc:  # a bug in the photo work: raised as a local import would
            raise exc.cause from None
        except exceptions.RayError as exc:
            error = EngineError(
                f"The Ray worker running this photo died {self.retries + 1} times ({type(exc).__name__}): check the "
                "cluster's nodes and memory (`ray status`), then run the same import again: stored rows are not "
                "stored twice."
            )
            return [error] * len(batch.jobs)


def _ray() -> Any:
    """The `ray` module, imported only when a Ray import is asked for."""
    try:
        import ray
    except ImportError:
        raise EngineError(RAY_INSTALL_HINT) from None
    return ray
