"""The thread pool that reads photos ahead of an in-order consumer."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from consentmatch import vision
from consentmatch.pool import in_order, photo_pool, workers
from consentmatch.settings import Settings


def test_in_order_starts_a_bounded_number_ahead() -> None:
    log: list[str] = []

    def start(item: int) -> int:
        log.append(f"start {item}")
        return item * 10

    for item, started in in_order(range(5), start, ahead=2):
        log.append(f"take {item}:{started}")
    assert log == ["start 0", "start 1", "start 2", "take 0:0", "start 3", "take 1:10", "start 4", "take 2:20",
                   "take 3:30", "take 4:40"]


def test_one_thread_per_cpu_never_more_than_the_photos() -> None:
    assert workers(1) == 1 and workers(0) == 1
    assert 1 <= workers(1000) <= 1000
    with photo_pool(3) as (pool, ahead):
        assert ahead == 2 * workers(3)
        names = {pool.submit(lambda: threading.current_thread().name).result() for _ in range(6)}
    assert all(name.startswith("consentmatch") for name in names)


def test_prepare_is_the_first_task_when_threads_can_overlap_it_and_its_error_is_left_to_the_photos() -> None:
    log: list[str] = []

    def prepare() -> None:
        log.append("prepare")
        raise RuntimeError("no models")  # dropped by the pool: a photo that needs them raises it

    with photo_pool(4, prepare) as (pool, _):
        assert pool.submit(lambda: "read").result() == "read"
    assert log == (["prepare"] if workers(4) > 1 else [])
    with photo_pool(1, prepare) as (pool, _):  # one thread: the photo would only wait for it
        pool.submit(lambda: None).result()
    assert log == (["prepare"] if workers(4) > 1 else [])


def test_preload_loads_the_models_on_a_thread_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the CLI's photo verbs start before opening the gallery: the very encoder the gallery
    will use gets its detector, landmarks and session; a setting that names no encoder fails
    quietly there (the gallery raises it, in words) instead of printing a thread's traceback."""
    failures: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", failures.append)
    settings = Settings.from_env().replace(cache_dir=tmp_path, encoder="", detector="")
    thread = vision.preload(settings)
    assert thread is not threading.current_thread() and not thread.daemon
    thread.join(120)
    encoder: Any = vision.default_encoder(settings)
    assert encoder._predictor is not None and encoder._session is not None
    assert getattr(encoder.detector, "_session", True) is not None  # yunet's; hog keeps none
    vision.preload(settings.replace(encoder="no-such-backend")).join(10)
    assert failures == []
