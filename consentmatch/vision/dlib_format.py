"""Reads dlib's face ResNet (`dlib_face_recognition_resnet_model_v1.dat`) from dlib's own format.

Only the layer types of that network are understood; the rules come from dlib's C++ source
(dlib/serialize.h, dlib/float_details.h, dlib/cuda/tensor.h, dlib/dnn/{core,layers,input,loss}.h):

- Integers: a control byte (length in the low 4 bits, 0x80 = negative), then that many
  little-endian bytes of the magnitude. Strings: a length integer, then the bytes. Bools: the
  ASCII byte '0' or '1'.
- Floats: two integers, mantissa (int64) and exponent (int16); the value is mantissa * 2**exponent.
- Tensors: version 2, then samples, k, rows, columns, then the values as little-endian float32.
- A network is nested wrappers. Each writes its version, then the network below it, then its
  own details, so the versions run from the output down and the details from the input up.
  Tags and skips write nothing but their version, so the file cannot say which is which:
  `NETWORK` spells dlib's `anet_type` (tools/python/src/face_recognition.cpp) and the reader
  checks the file against it, layer by layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from numpy.typing import NDArray

from ..errors import EngineError

__all__ = [
    "AddPrev",
    "Affine",
    "Conv",
    "Dense",
    "Layer",
    "Network",
    "Pool",
    "Relu",
    "Skip",
    "Tag",
    "read_network",
]


@dataclass(frozen=True)
class Conv:
    """Cross-correlation, as dlib's `con_`: weights are (filters, channels, rows, columns)."""

    weights: NDArray[np.float32]
    bias: NDArray[np.float32] | None
    stride: int
    padding: int


@dataclass(frozen=True)
class Affine:
    """Per-channel `gamma * x + beta` (dlib's `affine_`, batch norm frozen for inference)."""

    gamma: NDArray[np.float32]
    beta: NDArray[np.float32]


@dataclass(frozen=True)
class Relu:
    """max(x, 0)."""


@dataclass(frozen=True)
class Pool:
    """Max or average pooling with a square window; `size` 0 pools the whole plane."""

    kind: str  # "max" or "avg"
    size: int
    stride: int
    padding: int


@dataclass(frozen=True)
class Tag:
    """Remembers the current output under `id` (dlib's `tagN`)."""

    id: int


@dataclass(frozen=True)
class Skip:
    """Continues from the output last tagged `id` (dlib's `skipN`)."""

    id: int


@dataclass(frozen=True)
class AddPrev:
    """Adds the output last tagged `id`; shapes that differ are zero-padded at the end (dlib's `add_prevN`)."""

    id: int


@dataclass(frozen=True)
class Dense:
    """Flattened input times `weights` (inputs, outputs), no bias (dlib's `fc_no_bias`)."""

    weights: NDArray[np.float32]


Layer = Union[Conv, Affine, Relu, Pool, Tag, Skip, AddPrev, Dense]


@dataclass(frozen=True)
class Network:
    """The network from input to output; input chips are `size` x `size` RGB, minus `mean_rgb`, over 256."""

    size: int
    mean_rgb: tuple[float, float, float]
    layers: tuple[Layer, ...]


# The architecture, from the output down, as dlib's template spells it. Each entry is a kind and
# its fixed arguments: ("con", filters, window, stride), ("pool", kind, window, stride), ...
_Spec = tuple[Union[str, int], ...]


def _block(filters: int, stride: int) -> list[_Spec]:
    # block = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>
    return [("affine",), ("con", filters, 3, 1), ("relu",), ("affine",), ("con", filters, 3, stride)]


def _ares(filters: int) -> list[_Spec]:
    # relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
    return [("relu",), ("add_prev", 1), *_block(filters, 1), ("tag", 1)]


def _ares_down(filters: int) -> list[_Spec]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
    return [
        ("relu",),
        ("add_prev", 2),
        ("pool", "avg", 2, 2),
        ("skip", 1),
        ("tag", 2),
        *_block(filters, 2),
        ("tag", 1),
    ]


NETWORK: tuple[_Spec, ...] = (
    ("fc", 128),
    ("pool", "avg", 0, 1),  # avg_pool_everything = avg_pool_<0,0,1,1>
    *_ares_down(256),
    *_ares(256),
    *_ares(256),
    *_ares_down(256),
    *_ares(128),
    *_ares(128),
    *_ares_down(128),
    *_ares(64),
    *_ares(64),
    *_ares(64),
    *_ares_down(64),
    *_ares(32),
    *_ares(32),
    *_ares(32),
    ("pool", "max", 3, 2),
    ("relu",),
    ("affine",),
    ("con", 32, 7, 2),
)
INPUT_SIZE = 150
_NO_DETAILS = ("tag", "skip")


class _Reader:
    """dlib's primitive encodings over a byte string, with the offset for error messages."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.pos = 0
        self.name = name

    def fail(self, what: str) -> EngineError:
        return EngineError(
            f"'{self.name}' is not dlib's face ResNet as expected ({what} at byte {self.pos}): "
            "reinstall face_recognition_models, or set CONSENTMATCH_ENCODER=dlib."
        )

    def take(self, count: int) -> bytes:
        if count < 0 or self.pos + count > len(self.data):
            raise self.fail("file ends early")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def integer(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte {control:#04x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def real(self) -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail("old text float format")
        mantissa, exponent = self.integer(), self.integer()
        if exponent >= 32000:  # float_details' is_inf, is_ninf, is_nan
            return {32000: math.inf, 32001: -math.inf}.get(exponent, math.nan)
        return math.ldexp(mantissa, exponent)

    def boolean(self) -> bool:
        byte = self.take(1)
        if byte not in (b"0", b"1"):
            self.pos -= 1
            raise self.fail(f"bad bool {byte!r}")
        return byte == b"1"

    def string(self) -> str:
        return self.take(self.integer()).decode("latin-1")

    def version(self, *allowed: str) -> str:
        start = self.pos
        version = self.string()
        if version not in allowed:
            self.pos = start
            raise self.fail(f"found {version!r} where {' or '.join(allowed)} was expected")
        return version

    def tensor(self) -> NDArray[np.float32]:
        if self.integer() != 2:
            raise self.fail("unknown tensor version")
        shape = tuple(self.integer() for _ in range(4))
        if min(shape) < 0:
            raise self.fail(f"bad tensor shape {shape}")
        count = math.prod(shape)
        return np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self) -> tuple[int, ...]:
        if self.integer() != 1:
            raise self.fail("unknown alias_tensor version")
        return tuple(self.integer() for _ in range(4))

    def expect(self, what: str, found: object, wanted: object) -> None:
        if found != wanted:
            raise self.fail(f"{what} is {found}, not {wanted}")


def read_network(path: Path) -> Network:
    """Read dlib's face ResNet from its `.dat` file.

    Raises:
        EngineError: the file cannot be read or is not that network.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EngineError(f"The face ResNet '{path}' cannot be read ({exc.strerror}): reinstall face_recognition_models.") from None
    reader = _Reader(data, path.name)
    reader.expect("loss layer version", reader.integer(), 1)
    if reader.version("loss_metric_", "loss_metric_2") == "loss_metric_2":
        reader.real(), reader.real()  # margin, distance threshold: training only
    bottom = len(NETWORK) - 1  # the layer on the input, an add_layer of its own kind
    versions = [reader.integer() for _ in NETWORK]  # from the output down
    for i, (spec, version) in enumerate(zip(NETWORK, versions)):
        allowed = (1,) if spec[0] in _NO_DETAILS else (2, 3) if i == bottom else (1, 2)
        if version not in allowed:
            raise reader.fail(f"{spec[0]} layer version {version}")
    size, mean_rgb = _read_input(reader)
    layers: list[Layer] = []
    for i in reversed(range(len(NETWORK))):  # details come from the input up
        spec, version = NETWORK[i], versions[i]
        if spec[0] in _NO_DETAILS:
            layers.append(Tag(int(spec[1])) if spec[0] == "tag" else Skip(int(spec[1])))
            continue
        layers.extend(_read_layer(reader, spec))
        # add_layer's training state: setup called, gradient stale, output disabled, x_grad, cached output
        reader.boolean(), reader.boolean(), reader.boolean(), reader.tensor(), reader.tensor()
        if i == bottom:
            reader.tensor()  # grad_final
            if version == 3:
                reader.integer()  # sample expansion factor
        elif version == 2:
            reader.tensor()  # params_grad
    if reader.pos != len(data):
        raise reader.fail("trailing bytes")
    return Network(size=size, mean_rgb=mean_rgb, layers=tuple(layers))


def _read_input(reader: _Reader) -> tuple[int, tuple[float, float, float]]:
    reader.version("input_rgb_image_sized")
    mean_rgb = (reader.real(), reader.real(), reader.real())
    rows, columns = reader.integer(), reader.integer()
    reader.expect("input size", (rows, columns), (INPUT_SIZE, INPUT_SIZE))
    return rows, mean_rgb


def _read_layer(reader: _Reader, spec: _Spec) -> Iterator[Layer]:
    kind = spec[0]
    if kind == "con":
        yield from _read_con(reader, int(spec[1]), int(spec[2]), int(spec[3]))
    elif kind == "affine":
        yield _read_affine(reader)
    elif kind == "relu":
        if reader.version("relu_", "relu_2") == "relu_2" and reader.boolean():
            return  # disabled: the identity
        yield Relu()
    elif kind == "pool":
        yield _read_pool(reader, str(spec[1]), int(spec[2]), int(spec[3]))
    elif kind == "add_prev":
        reader.version("add_prev_")
        yield AddPrev(int(spec[1]))
    elif kind == "fc":
        yield _read_fc(reader, int(spec[1]))
    else:  # pragma: no cover - NETWORK holds only the kinds above
        raise AssertionError(kind)


def _read_con(reader: _Reader, filters: int, window: int, stride: int) -> Iterator[Layer]:
    version = reader.version("con_4", "con_5", "con_6")
    params = reader.tensor().reshape(-1)
    reader.expect("filter count", reader.integer(), filters)
    reader.expect("window", (reader.integer(), reader.integer()), (window, window))
    reader.expect("stride", (reader.integer(), reader.integer()), (stride, stride))
    padding = window // 2 if stride == 1 else 0  # dlib's default padding
    reader.expect("padding", (reader.integer(), reader.integer()), (padding, padding))
    shape = reader.alias()
    bias_shape = reader.alias()
    for _ in range(4):
        reader.real()  # learning rate and weight decay multipliers
    use_bias = reader.boolean() if version in ("con_5", "con_6") else True
    use_relu = reader.boolean() if version == "con_6" else False
    count = math.prod(shape)
    reader.expect("filter shape", (shape[0], shape[2], shape[3]), (filters, window, window))
    reader.expect("parameter count", params.size, count + (filters if use_bias else 0))
    reader.expect("bias shape", bias_shape, (1, filters, 1, 1))
    weights = params[:count].reshape(shape)
    bias = params[count:].copy() if use_bias else None
    yield Conv(weights=weights, bias=bias, stride=stride, padding=padding)
    if use_relu:
        yield Relu()


def _read_affine(reader: _Reader) -> Affine:
    version = reader.version("affine_", "affine_2", "bn_con2")
    if version == "bn_con2":
        return _read_bn_as_affine(reader)
    params = reader.tensor().reshape(-1)
    gamma_shape = reader.alias()
    reader.alias()  # beta's shape, the same as gamma's
    reader.expect("affine mode (0 = per channel)", reader.integer(), 0)
    if version == "affine_2" and reader.boolean():
        raise reader.fail("disabled affine layer")
    channels = gamma_shape[1]
    reader.expect("affine parameter count", params.size, 2 * channels)
    return Affine(gamma=params[:channels].copy(), beta=params[channels:].copy())


def _read_bn_as_affine(reader: _Reader) -> Affine:
    """A batch norm layer frozen into an affine one, as dlib's `affine_(const bn_&)` does it in float."""
    params = reader.tensor().reshape(-1)
    reader.alias(), reader.alias()  # gamma, beta shapes
    reader.tensor(), reader.tensor()  # batch means and inverse deviations: training only
    means = reader.tensor().reshape(-1)
    variances = reader.tensor().reshape(-1)
    reader.integer(), reader.integer()  # update count, running stats window
    for _ in range(4):
        reader.real()
    eps = np.float32(reader.real())
    channels = means.size
    gamma = params[:channels] / np.sqrt(variances + eps)
    return Affine(gamma=gamma.astype(np.float32), beta=(params[channels:] - gamma * means).astype(np.float32))


def _read_pool(reader: _Reader, kind: str, window: int, stride: int) -> Pool:
    reader.version(f"{kind}_pool_2")
    reader.expect("pool window", (reader.integer(), reader.integer()), (window, window))
    reader.expect("pool stride", (reader.integer(), reader.integer()), (stride, stride))
    padding = window // 2 if stride == 1 else 0
    reader.expect("pool padding", (reader.integer(), reader.integer()), (padding, padding))
    return Pool(kind=kind, size=window, stride=stride, padding=padding)


def _read_fc(reader: _Reader, outputs: int) -> Dense:
    version = reader.version("fc_2", "fc_3")
    reader.expect("fc outputs", reader.integer(), outputs)
    inputs = reader.integer()
    params = reader.tensor().reshape(-1)
    reader.alias(), reader.alias()  # weights, biases shapes
    reader.expect("fc bias mode (1 = no bias)", reader.integer(), 1)
    for _ in range(4):
        reader.real()
    if version == "fc_3":
        reader.boolean()  # use_bias: moot without a bias
    reader.expect("fc parameter count", params.size, inputs * outputs)
    return Dense(weights=params.reshape(inputs, outputs))
