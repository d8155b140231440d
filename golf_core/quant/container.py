"""The container file and the one reader for both formats (`load_artifact`).

File layout: `MAGIC | version u8 | compressor u8 | raw length u64 | crc32(raw) u32 | compressed`
where raw is the torch.save of the container object (so it loads with `weights_only=True`).
The header lets the reader tell truncation and corruption apart from a format problem and
sniff our files from upstream's zlib `.ptz` without decompressing.

Byte shuffle: every multi-byte payload (fp16 scales, fp16/fp32 kept tensors) is stored as its
bytes grouped by significance (all low bytes, then all high bytes: the blosc/HDF5 "shuffle"
filter), so the slowly varying sign/exponent bytes sit together and compress well. int8
payloads are one byte per value and stored as they are. Then brotli quality 11 with a 16 MiB
window (zlib level 9 and lzma preset 9e are the options).
"""

from __future__ import annotations

import io
import lzma
import struct
import sys
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import brotli
import torch
from torch import Tensor

from golf_core.quant import pr325, pr363, pr1204
from golf_core.quant.codec import (
    GOLF_VERSION,
    QuantPolicy,
    dequantize_state_dict,
    is_shape,
    quantize_state_dict,
)
from golf_core.quant.upstream import FLOAT_DTYPES, atomic_write, dtype_name

# The published families' own artifact formats, asked in this order when a file is neither our
# container nor an upstream zlib .ptz; each reader returns None for a file not in its format.
FAMILY_READERS = {
    "pr1204": pr1204.read_int6_artifact,
    "pr363": pr363.read_artifact,
    "pr325": pr325.read_artifact,
}

MAGIC = b"GOLFQNT"
_HEADER = struct.Struct("<7sBBQI")  # magic, version, compressor id, raw length, crc32(raw)
COMPRESSORS = {"brotli": 1, "zlib": 2, "lzma": 3}


def _compress(raw: bytes, compressor: str) -> bytes:
    if compressor == "brotli":
        return brotli.compress(raw, quality=11, lgwin=24)  # 16 MiB window: the whole budget
    if compressor == "zlib":
        return zlib.compress(raw, level=9)
    if compressor == "lzma":
        return lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
    raise ValueError(f"unknown compressor {compressor!r}; known: {', '.join(COMPRESSORS)}")


def _decompress(data: bytes, compressor: str) -> bytes:
    if compressor == "brotli":
        return brotli.decompress(data)
    if compressor == "zlib":
        return zlib.decompress(data)
    return lzma.decompress(data)


def _shuffle(t: Tensor) -> Tensor:
    """1-D uint8 of t's bytes, grouped by significance: (numel, itemsize) -> (itemsize, numel)."""
    b = t.contiguous().reshape(-1).view(torch.uint8).reshape(t.numel(), t.element_size())
    return b.T.contiguous().reshape(-1)


def _unshuffle(b: Tensor, dtype: torch.dtype, shape: list[int], where: str) -> Tensor:
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = torch.Size(shape).numel()
    if b.dtype != torch.uint8 or b.numel() != numel * itemsize:
        raise ValueError(f"{where}: {b.numel()} stored bytes for shape {shape} of {dtype}")
    return b.reshape(itemsize, numel).T.contiguous().reshape(-1).view(dtype).reshape(shape)


_STORE_DTYPES = {**FLOAT_DTYPES, "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16,
                 "int32": torch.int32, "int64": torch.int64, "bool": torch.bool}


def _pack(obj: dict[str, Any], shuffle: bool) -> dict[str, Any]:
    """The serialized form: each payload as shuffled uint8 bytes + its dtype and shape."""
    if not shuffle:
        return {**obj, "shuffled": False}
    layout = {}
    packed: dict[str, dict[str, Tensor]] = {"tensors": {}, "scales": {}}
    for part in ("tensors", "scales"):
        for name, t in obj[part].items():
            layout[f"{part}/{name}"] = [dtype_name(t.dtype), list(t.shape)]
            packed[part][name] = _shuffle(t)
    return {**obj, **packed, "shuffled": True, "byteorder": sys.byteorder, "layout": layout}


def _unpack(obj: dict[str, Any], source: str) -> dict[str, Any]:
    if not obj.get("shuffled"):
        return obj
    if obj.get("byteorder") != sys.byteorder:
        raise ValueError(f"{source}: written on a {obj.get('byteorder')}-endian machine")
    layout = obj.get("layout")
    if not isinstance(layout, dict):
        raise ValueError(f"{source}: shuffled container lacks its layout")
    out = dict(obj)
    for part in ("tensors", "scales"):
        if not isinstance(obj.get(part), dict):
            raise ValueError(f"{source}: container lacks its {part!r} dict")
        out[part] = {}
        for name, b in obj[part].items():
            where = f"{source}: tensor {name!r}"
            spec = layout.get(f"{part}/{name}")
            valid = (isinstance(spec, list) and len(spec) == 2 and spec[0] in _STORE_DTYPES
                     and is_shape(spec[1]))
            if not valid or not isinstance(b, Tensor):
                raise ValueError(f"{where}: no valid layout for the stored bytes")
            out[part][name] = _unshuffle(b, _STORE_DTYPES[spec[0]], spec[1], where)
    return out


def artifact_bytes(
    state_dict: Mapping[str, Tensor],
    scheme: str | QuantPolicy = "int8",
    compressor: str = "brotli",
    *,
    shuffle: bool = True,
) -> bytes:
    """The bytes `save_artifact` writes."""
    return encode_container(quantize_state_dict(state_dict, scheme), compressor, shuffle=shuffle)


def encode_container(obj: Any, compressor: str = "brotli", *, shuffle: bool = True) -> bytes:
    """Header + compressed torch.save of a container object (`quantize_state_dict`'s; any
    other object is written as it is, which the tests use to build malformed files)."""
    if compressor not in COMPRESSORS:
        raise ValueError(f"unknown compressor {compressor!r}; known: {', '.join(COMPRESSORS)}")
    buf = io.BytesIO()
    is_container = isinstance(obj, dict) and "entries" in obj
    torch.save(_pack(obj, shuffle) if is_container else obj, buf)
    raw = buf.getvalue()
    header = _HEADER.pack(MAGIC, GOLF_VERSION, COMPRESSORS[compressor], len(raw), zlib.crc32(raw))
    return header + _compress(raw, compressor)


def save_artifact(
    state_dict: Mapping[str, Tensor],
    path: str | Path,
    scheme: str | QuantPolicy = "int8",
    compressor: str = "brotli",
    *,
    shuffle: bool = True,
) -> int:
    """Quantize, shuffle, compress and write (atomically) our container; returns its bytes."""
    return atomic_write(Path(path), artifact_bytes(state_dict, scheme, compressor,
                                                     shuffle=shuffle))


def _torch_load(raw: bytes, source: str) -> dict[str, Any]:
    """torch.load(weights_only=True) of an in-memory archive; every fault a ValueError."""
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # a hostile or corrupt archive may fail in many ways
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{source}: torch.load(weights_only=True) refused the payload "
                         f"({type(e).__name__}: {first})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: payload is a {type(obj).__name__}, expected a dict")
    return obj


def _read_golf(data: bytes, source: str) -> dict[str, Any]:
    if len(data) < _HEADER.size:
        raise ValueError(f"{source}: truncated (header needs {_HEADER.size} bytes)")
    _, version, comp_id, raw_len, crc = _HEADER.unpack_from(data)
    if version != GOLF_VERSION:
        raise ValueError(f"{source}: container version {version} is not supported "
                         f"(this reader knows {GOLF_VERSION})")
    names = {v: k for k, v in COMPRESSORS.items()}
    if comp_id not in names:
        raise ValueError(f"{source}: unknown compressor id {comp_id}")
    try:
        raw = _decompress(data[_HEADER.size:], names[comp_id])
    except Exception as e:  # brotli.error, zlib.error, lzma.LZMAError
        raise ValueError(f"{source}: {names[comp_id]} decompression failed, the file is "
                         f"truncated or corrupt ({e})") from None
    if len(raw) != raw_len or zlib.crc32(raw) != crc:
        raise ValueError(f"{source}: payload is {len(raw)} bytes with crc32 {zlib.crc32(raw)}, "
                         f"header says {raw_len} bytes with crc32 {crc} (truncated or corrupt)")
    return _unpack(_torch_load(raw, source), source)


def read_artifact_object(path: str | Path) -> dict[str, Any]:
    """The stored object of either format (upstream dict or our unshuffled container)."""
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(MAGIC):
        return _read_golf(data, str(path))
    if data[:1] != b"\x78":  # every zlib stream starts with 0x78 (deflate, 32K window)
        raise ValueError(f"{path}: not a quantized artifact (neither the {MAGIC.decode()} "
                         "container nor an upstream zlib .ptz)")
    try:
        raw = zlib.decompress(data)
    except zlib.error as e:
        raise ValueError(f"{path}: zlib decompression failed, the file is truncated or "
                         f"corrupt ({e})") from None
    return _torch_load(raw, str(path))


def load_artifact(path: str | Path) -> dict[str, Tensor]:
    """Float state dict from an upstream `.int8.ptz`, our container, or a published family's
    own format (PR #363's `ZLIB`/`ZSTD` int8 file, PR #1204's int6 brotli file), sniffed by
    content. Always `weights_only=True`; malformed or hostile files raise ValueError naming
    the file."""
    path = Path(path)
    head = path.read_bytes()[:8]
    if not head.startswith(MAGIC) and head[:1] != b"\x78":
        for reader in FAMILY_READERS.values():
            sd = reader(path)
            if sd is not None:
                return sd
        raise ValueError(f"{path}: not a quantized artifact (neither the {MAGIC.decode()} "
                         "container, an upstream zlib .ptz, PR #363's ZLIB/ZSTD file nor PR "
                         "#1204's int6 brotli file)")
    return dequantize_state_dict(read_artifact_object(path), source=str(path))
