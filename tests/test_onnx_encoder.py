"""The ONNX encoder: dlib's face ResNet read from dlib's own file, equal to dlib on every face we have."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from consentmatch import EngineError, vision
from consentmatch.images import load_photo
from consentmatch.settings import Settings
from consentmatch.vision import default_encoder
from consentmatch.vision import onnx as onnx_encoder
from consentmatch.vision.dlib import RESNET_FILE, DlibEncoder, model_dir
from consentmatch.vision.dlib_format import Conv, Dense, read_network
from consentmatch.vision.onnx import OnnxEncoder, converted_model

from .conftest import DATA, EXAMPLES

PHOTOS = sorted(
    path
    for pattern in ("people/*/*", "probes/*")
    for path in EXAMPLES.glob(pattern)
    if path.suffix.lower() in {".jpg", ".jpeg", ".png"}
) + sorted(path for path in (DATA / "edge").glob("*") if path.suffix.lower() in {".jpg", ".jpeg", ".png"})


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the converted model, converted once for this module."""
    folder = tmp_path_factory.mktemp("cache")
    converted_model(folder)
    return folder


@pytest.fixture(scope="module")
def fast(cache: Path) -> OnnxEncoder:
    return OnnxEncoder(cache=cache)


@pytest.fixture
def fresh_default(monkeypatch: pytest.MonkeyPatch, cache: Path) -> Iterator[None]:
    """default_encoder() chooses again (the process-wide one is restored after the test)."""
    monkeypatch.setattr(vision, "_shared", {})
    monkeypatch.setenv("CONSENTMATCH_CACHE_DIR", str(cache))
    monkeypatch.delenv("CONSENTMATCH_ENCODER", raising=False)
    yield


@pytest.fixture
def broken_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The converter reads a truncated copy of dlib's ResNet (dlib itself still reads the real one)."""
    (tmp_path / RESNET_FILE).write_bytes((model_dir() / RESNET_FILE).read_bytes()[:100_000])
    monkeypatch.setattr(onnx_encoder, "model_dir", lambda: tmp_path)
    monkeypatch.setenv("CONSENTMATCH_CACHE_DIR", str(tmp_path / "cache"))


def test_onnx_encodings_equal_dlibs_on_every_face(fast: OnnxEncoder) -> None:
    # The faces are found once; both backends then encode them from the same landmarks.
    reference = DlibEncoder()
    faces, worst, worst_photo = 0, 0.0, ""
    for path in PHOTOS:
        photo = load_photo(path)
        rects, shapes = fast._locate(photo, 40)
        if not rects:
            continue
        got, expected = fast._describe(photo, shapes), reference._describe(photo, shapes)
        assert got.dtype == np.float32 and got.shape == expected.shape == (len(rects), 128)
        difference = float(np.abs(got - expected).max())
        if difference > worst:
            worst, worst_photo = difference, path.name
        faces += len(rects)
    assert faces >= len(PHOTOS)  # every photo here shows a face, some several
    assert worst < 1e-4, f"max abs difference {worst} on {worst_photo}"


def test_encode_gives_boxes_landmarks_and_onnx_encodings(fast: OnnxEncoder) -> None:
    photo = load_photo(EXAMPLES / "probes" / "kit_with_rose.jpg")
    got, expected = fast.encode(photo, 40), DlibEncoder().encode(photo, 40)
    assert len(got) == 2
    assert [(f.box, f.landmarks) for f in got] == [(f.box, f.landmarks) for f in expected]
    assert max(float(np.abs(a.encoding - b.encoding).max()) for a, b in zip(got, expected)) < 1e-4


def test_the_dlib_file_is_read_as_the_network_dlib_defines() -> None:
    network = read_network(model_dir() / RESNET_FILE)
    convs = [layer for layer in network.layers if isinstance(layer, Conv)]
    assert network.size == 150
    assert network.mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)  # dlib/dnn/input.h
    assert len(convs) == 29 and convs[0].weights.shape == (32, 3, 7, 7) and convs[0].stride == 2
    assert sum(layer.weights.size + (layer.bias.size if layer.bias is not None else 0) for layer in convs) > 5_000_000
    assert isinstance(network.layers[-1], Dense) and network.layers[-1].weights.shape == (256, 128)


def test_a_truncated_dlib_file_is_an_engine_error(tmp_path: Path) -> None:
    path = tmp_path / RESNET_FILE
    path.write_bytes((model_dir() / RESNET_FILE).read_bytes()[:100_000])
    with pytest.raises(EngineError, match=r"^'dlib_face_recognition_resnet_model_v1.dat' is not dlib's face ResNet.*file ends early at byte"):
        read_network(path)


def test_env_forces_dlib(fresh_default: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENTMATCH_ENCODER", "dlib")
    assert type(default_encoder()) is DlibEncoder


def test_env_forces_onnx(fresh_default: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENTMATCH_ENCODER", "onnx")
    chosen = default_encoder()
    assert isinstance(chosen, OnnxEncoder) and chosen.backend == "onnx"


def test_default_is_onnx(fresh_default: None) -> None:
    chosen = default_encoder()
    assert isinstance(chosen, OnnxEncoder) and chosen.backend == "onnx"
    assert default_encoder() is chosen


def test_unknown_backend_is_refused(fresh_default: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENTMATCH_ENCODER", "cuda")
    with pytest.raises(EngineError, match="CONSENTMATCH_ENCODER='cuda' is not a backend: use onnx or dlib"):
        default_encoder()


def test_forced_onnx_that_cannot_convert_raises(fresh_default: None, broken_source: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENTMATCH_ENCODER", "onnx")
    photo = load_photo(EXAMPLES / "probes" / "obama_small.jpg")
    with pytest.raises(EngineError, match="set CONSENTMATCH_ENCODER=dlib") as raised:
        default_encoder().encode(photo, 40)
    assert "\n" not in str(raised.value)


def test_default_falls_back_to_dlib_when_the_conversion_fails(fresh_default: None, broken_source: None) -> None:
    photo = load_photo(EXAMPLES / "probes" / "obama_small.jpg")
    chosen = default_encoder()
    (face,) = chosen.encode(photo, 40)
    assert isinstance(chosen, OnnxEncoder) and chosen.backend == "dlib"
    # dlib's encoder behind the default detector (yunet where installed, issue 25): the same face, bit for bit
    (reference,) = default_encoder(Settings(encoder="dlib")).encode(photo, 40)
    assert isinstance(default_encoder(Settings(encoder="dlib")), DlibEncoder)
    assert np.array_equal(face.encoding, reference.encoding) and face.detector == reference.detector


def test_cache_folder_honours_the_environment(tmp_path: Path) -> None:
    assert Settings.from_env({"XDG_CACHE_HOME": str(tmp_path / "xdg")}).cache_dir == tmp_path / "xdg" / "consentmatch"
    mine = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "CONSENTMATCH_CACHE_DIR": str(tmp_path / "mine")}
    assert Settings.from_env(mine).cache_dir == tmp_path / "mine"


def test_the_default_encoder_keeps_its_models_in_the_settings_cache(fresh_default: None, tmp_path: Path) -> None:
    chosen = default_encoder(Settings(cache_dir=tmp_path / "mine"))
    assert isinstance(chosen, OnnxEncoder) and chosen.backend == "onnx"
    assert [p.suffix for p in (tmp_path / "mine").glob("*.onnx")] == [".onnx"]


def test_one_shared_encoder_per_choice_and_cache(fresh_default: None, cache: Path, tmp_path: Path) -> None:
    onnx, dlib = Settings(cache_dir=cache, encoder="onnx"), Settings(cache_dir=cache, encoder="dlib")
    assert default_encoder(onnx) is default_encoder(Settings(cache_dir=cache, encoder="onnx"))
    assert type(default_encoder(dlib)) is DlibEncoder
    assert default_encoder(Settings(cache_dir=tmp_path, encoder="dlib")) is not default_encoder(dlib)


def test_the_factory_reads_no_environment_when_given_settings(
    fresh_default: None, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSENTMATCH_ENCODER", "cuda")  # would be refused if the factory read it
    assert type(default_encoder(Settings(cache_dir=cache, encoder="dlib"))) is DlibEncoder


def test_encoders_without_a_cache_folder_write_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The folder comes from the caller, never from the environment the encoder runs in.
    monkeypatch.setenv("CONSENTMATCH_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    encoder = OnnxEncoder()
    (face,) = encoder.encode(load_photo(EXAMPLES / "probes" / "obama_small.jpg"), 40)
    assert encoder.backend == "onnx" and face.encoding.shape == (128,)
    assert list(tmp_path.iterdir()) == []


def _cached(folder: Path) -> tuple[Path, Path]:
    (model,) = folder.glob("*.onnx")
    return model, model.with_name(model.name + ".sha256")


def test_the_cache_holds_the_model_and_its_checksum(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, checksum = _cached(cache)
    assert checksum.read_text() == f"{hashlib.sha256(model.read_bytes()).hexdigest()}  {model.name}\n"

    def no_conversion(*args: object) -> bytes:
        raise AssertionError("converted again despite a valid cache")

    monkeypatch.setattr(onnx_encoder, "convert", no_conversion)
    assert converted_model(cache) == model.read_bytes()


@pytest.mark.parametrize("damage", ["corrupt model", "missing model", "missing checksum", "wrong checksum"])
def test_a_damaged_cache_is_rebuilt(cache: Path, tmp_path: Path, damage: str) -> None:
    good_model, good_checksum = _cached(cache)
    model, checksum = tmp_path / good_model.name, tmp_path / good_checksum.name
    model.write_bytes(good_model.read_bytes())
    checksum.write_bytes(good_checksum.read_bytes())
    if damage == "corrupt model":
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights: still loads, gives wrong encodings
        model.write_bytes(bytes(data))
    elif damage == "missing model":
        model.unlink()
    elif damage == "missing checksum":
        checksum.unlink()
    else:
        checksum.write_text("0" * 64 + f"  {model.name}\n")

    assert converted_model(tmp_path) == good_model.read_bytes()
    assert model.read_bytes() == good_model.read_bytes()
    assert checksum.read_bytes() == good_checksum.read_bytes()


def test_an_unwritable_cache_converts_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    encoder = OnnxEncoder(cache=blocker / "consentmatch")
    assert encoder.backend == "onnx"
    assert blocker.read_text() == "a file where the cache folder should be"


def test_batches_give_the_same_encodings_as_single_chips(fast: OnnxEncoder) -> None:
    rng = np.random.default_rng(7)
    chips = rng.integers(0, 256, size=(5, 150, 150, 3), dtype=np.uint8)
    batched = fast.encode_chips(chips)
    single = np.concatenate([fast.encode_chips(chips[i : i + 1]) for i in range(len(chips))])
    assert batched.shape == (5, 128)
    assert np.abs(batched - single).max() < 1e-5
    assert np.abs(batched - DlibEncoder().encode_chips(chips)).max() < 1e-4


def test_load_models_loads_the_session_and_the_landmarks_before_any_face(cache: Path) -> None:
    loaded = OnnxEncoder(cache=cache)
    vision.load_models(loaded)
    assert loaded._session is not None and loaded._predictor is not None
    vision.load_models(object())  # type: ignore[arg-type]  # an encoder that cannot preload: nothing to do


def test_a_preload_that_fails_still_fails_the_photo(fresh_default: None, broken_source: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENTMATCH_ENCODER", "onnx")
    chosen = default_encoder()
    with pytest.raises(EngineError):
        vision.load_models(chosen)
    with pytest.raises(EngineError, match="set CONSENTMATCH_ENCODER=dlib"):
        chosen.encode(load_photo(EXAMPLES / "probes" / "obama_small.jpg"), 40)
