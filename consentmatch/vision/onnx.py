"""dlib's face ResNet rebuilt as an ONNX graph and run on ONNX Runtime: same encodings, several times faster.

The weights come from dlib's own `dlib_face_recognition_resnet_model_v1.dat` (read by
`dlib_format`); the graph is built with `onnx` at first use and kept in the cache folder, next
to a `.sha256` file so a damaged copy is rebuilt rather than trusted. Detection and landmarks
stay dlib's (`DlibEncoder`); only the descriptor step changes, on the same 150x150 chips.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import EngineError
from ..images import Photo
from . import dlib_format as fmt
from .cache import converted, file_digest
from .dlib import RESNET_FILE, DlibEncoder, load_detector, face_chips, model_dir
from .types import DIMENSIONS, Detector

__all__ = ["OnnxEncoder", "convert", "converted_model"]

#: Bumped whenever `convert` changes the graph it writes, so older cached graphs are not reused.
CONVERTER_VERSION = 1
INPUT = "chips"
OUTPUT = "encodings"


def convert(network: fmt.Network) -> bytes:
    """The ONNX model (serialized) computing `network` on uint8 RGB chips, (n, size, size, 3) -> (n, 128).

    Raises:
        EngineError: the `onnx` package is missing, or rejects the graph.
    """
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        raise EngineError("The onnx package is not installed: reinstall consentmatch, or set CONSENTMATCH_ENCODER=dlib.") from None

    graph = _Graph()
    # input_rgb_image_sized: (pixel - mean) / 256 in float, channels first
    x = graph.op("Transpose", INPUT, perm=[0, 3, 1, 2])
    x = graph.op("Cast", x, to=TensorProto.FLOAT)
    x = graph.op("Sub", x, graph.const(np.array(network.mean_rgb, dtype=np.float32).reshape(1, 3, 1, 1)))
    x = graph.op("Mul", x, graph.const(np.array(1 / 256, dtype=np.float32)))
    shape = (3, network.size, network.size)  # channels, rows, columns: static, as the input size is
    tagged: dict[int, tuple[str, tuple[int, int, int]]] = {}
    for layer in network.layers:
        if isinstance(layer, fmt.Conv):
            filters, _, window, _ = layer.weights.shape
            bias = [graph.const(layer.bias)] if layer.bias is not None else []
            x = graph.op(
                "Conv",
                x,
                graph.const(layer.weights),
                *bias,
                kernel_shape=[window] * 2,
                strides=[layer.stride] * 2,
                pads=[layer.padding] * 4,
            )
            shape = (filters, *_pooled(shape, window, layer.stride, layer.padding))
        elif isinstance(layer, fmt.Affine):
            x = graph.op("Mul", x, graph.const(layer.gamma.reshape(1, -1, 1, 1)))
            x = graph.op("Add", x, graph.const(layer.beta.reshape(1, -1, 1, 1)))
        elif isinstance(layer, fmt.Relu):
            x = graph.op("Relu", x)
        elif isinstance(layer, fmt.Pool) and layer.size == 0:
            x = graph.op("GlobalAveragePool" if layer.kind == "avg" else "GlobalMaxPool", x)
            shape = (shape[0], 1, 1)
        elif isinstance(layer, fmt.Pool):
            x = graph.op(
                "AveragePool" if layer.kind == "avg" else "MaxPool",
                x,
                kernel_shape=[layer.size] * 2,
                strides=[layer.stride] * 2,
                pads=[layer.padding] * 4,
            )
            shape = (shape[0], *_pooled(shape, layer.size, layer.stride, layer.padding))
        elif isinstance(layer, fmt.Tag):
            tagged[layer.id] = (x, shape)
        elif isinstance(layer, fmt.Skip):
            x, shape = tagged[layer.id]
        elif isinstance(layer, fmt.AddPrev):
            # dlib adds tensors of different shapes as if both were zero-padded to the larger one
            other, other_shape = tagged[layer.id]
            target = (max(shape[0], other_shape[0]), max(shape[1], other_shape[1]), max(shape[2], other_shape[2]))
            x = graph.op("Add", graph.pad(x, shape, target), graph.pad(other, other_shape, target))
            shape = target
        elif isinstance(layer, fmt.Dense):
            x = graph.op("MatMul", graph.op("Flatten", x, axis=1), graph.const(layer.weights))
    graph.nodes[-1].output[0] = OUTPUT
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "dlib_face_recognition_resnet_model_v1",
            [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["n", network.size, network.size, 3])],
            [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["n", DIMENSIONS])],
            graph.weights,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="consentmatch",
    )
    model.ir_version = 8  # what opset 17 needs, so older runtimes read it too
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise EngineError(f"The converted face ResNet is not valid ONNX ({' '.join(str(exc).split())}): set CONSENTMATCH_ENCODER=dlib.") from None
    return bytes(model.SerializeToString())


class _Graph:
    """The nodes and weights of an ONNX graph being built, named in order."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.weights: list[Any] = []

    def const(self, array: NDArray[Any]) -> str:
        from onnx import numpy_helper

        name = f"w{len(self.weights)}"
        self.weights.append(numpy_helper.from_array(array, name))
        return name

    def op(self, kind: str, *inputs: str, **attributes: Any) -> str:
        from onnx import helper

        name = f"{kind.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(kind, list(inputs), [name], name=name, **attributes))
        return name

    def pad(self, x: str, shape: tuple[int, int, int], target: tuple[int, int, int]) -> str:
        """`x` zero-padded at the end of channels, rows and columns up to `target`."""
        if shape == target:
            return x
        pads = np.array([0, 0, 0, 0, 0, *(t - s for s, t in zip(shape, target))], dtype=np.int64)
        return self.op("Pad", x, self.const(pads))


def _pooled(shape: tuple[int, int, int], window: int, stride: int, padding: int) -> tuple[int, int]:
    """Rows and columns after a window slides over `shape` (dlib's and ONNX's floor rule)."""
    return (1 + (shape[1] + 2 * padding - window) // stride, 1 + (shape[2] + 2 * padding - window) // stride)


def converted_model(folder: Path | None) -> bytes:
    """dlib's face ResNet as ONNX: from `folder` when its checksum holds, else converted and cached there.

    A folder that cannot be written, or None, is skipped: the model is converted again in the next process.

    Raises:
        EngineError: the dlib model cannot be read or converted.
    """
    source = model_dir() / RESNET_FILE
    try:
        digest = file_digest(source, folder)  # 22 MB: hashed again only when the file changed
    except OSError as exc:
        raise EngineError(f"The face ResNet '{source}' cannot be read ({exc.strerror}): reinstall face_recognition_models.") from None
    return converted(folder, f"{source.stem}-{digest[:16]}-c{CONVERTER_VERSION}.onnx",
                     lambda: convert(fmt.read_network(source)))


class OnnxEncoder(DlibEncoder):
    """dlib's detection and landmarks, then dlib's face ResNet converted to ONNX and run on ONNX Runtime.

    Encodings equal dlib's within 1e-4 (float rounding; measured ~5e-7). The model is converted
    on first use, or read from the cache folder. Several threads may encode at once: ONNX
    Runtime's `run` is thread-safe, so only loading the session takes a lock.

    Args:
        cache: the folder for the converted model and the face detector (`Settings.cache_dir`);
            None keeps nothing on disk: the model is converted in memory, once per encoder.
        threads: ONNX Runtime's intra-op threads; by default one per physical core.
        fallback: when the model cannot be converted or loaded, encode with dlib instead of raising.
        detector: what finds the faces; dlib's HOG by default (`DlibEncoder`).
    """

    def __init__(
        self,
        *,
        cache: Path | None = None,
        threads: int | None = None,
        fallback: bool = False,
        detector: Detector | None = None,
    ) -> None:
        super().__init__(cache=cache, detector=detector)
        self._threads = threads
        self._fallback = fallback
        self._session: Any = None
        self._failed: EngineError | None = None
        self._session_lock = threading.Lock()

    @property
    def backend(self) -> str:
        """Which network encodes: "onnx", or "dlib" after a failed load fell back. Loads the model if needed."""
        return "onnx" if self._load_session() is not None else "dlib"

    def _load_session(self) -> Any:
        """The ONNX Runtime session, or None when falling back to dlib."""
        with self._session_lock:
            if self._session is None and self._failed is None:
                try:
                    self._session = _session(converted_model(self._cache), self._threads)
                except EngineError as exc:
                    self._failed = exc
            if self._failed is not None and not self._fallback:
                raise self._failed
            return self._session

    def load_models(self) -> None:
        """Load the detector, the landmark predictor and the ONNX session (or, falling back, dlib's network) now."""
        load_detector(self.detector)
        self._landmarks()
        if self._load_session() is None:
            super().load_models()

    def _describe(self, photo: Photo, shapes: Any) -> NDArray[np.float32]:
        if self._load_session() is None:
            return super()._describe(photo, shapes)
        return self.encode_chips(face_chips(photo, shapes))

    def encode_chips(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        session = self._load_session()
        if session is None:
            return super().encode_chips(chips)
        try:
            (encodings,) = session.run([OUTPUT], {INPUT: np.ascontiguousarray(chips, dtype=np.uint8)})
        except Exception as exc:  # onnxruntime's errors share no base class but Exception
            raise EngineError(f"ONNX Runtime failed to encode {len(chips)} face chips ({_one_line(exc)}): set CONSENTMATCH_ENCODER=dlib.") from None
        return np.asarray(encodings, dtype=np.float32).reshape(-1, DIMENSIONS)


def _session(model: bytes, threads: int | None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise EngineError("onnxruntime is not installed: reinstall consentmatch, or set CONSENTMATCH_ENCODER=dlib.") from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or 0  # 0: one per physical core
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings would reach the CLI's stderr
    # Idle threads sleep rather than spin: detection runs between batches, and on a loaded
    # 2-core machine spinning made batches 1.5-2x slower (benchmarks/README.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors share no base class but Exception
        raise EngineError(f"ONNX Runtime cannot load the converted face ResNet ({_one_line(exc)}): set CONSENTMATCH_ENCODER=dlib.") from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
