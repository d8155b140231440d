"""Reader of PR #363's artifact (`final_model_submission.ptz`, the fixture's `model.int8.ptz`).

Follows `compress_bytes` / `decompress_bytes` and `dequantize_state_dict_int6` (= its
`dequantize_state_dict_int8`) of PR #363's train_gpt.py (
pr363_depth_recurrence_train_gpt.py). The file is a 4-byte tag, `ZSTD` (zstandard level 22,
when installed at export) or `ZLIB` (level 9), then the compressed torch.save of upstream's
quantized dict: `__quant_format__` "mixed_int8_int6_v1" (its final export: despite the name,
every quantized tensor is int8, per-row for matrices, because int6 error compounds through the
cycles) or "int8_clean_per_row_v1" (its int8 helper). Both dequantize the same way, upstream's:
q * scale per row (fp16 scales) or per tensor, small tensors passed through, original dtypes
restored.

The script also decodes an untagged stream as zlib; that is upstream's own `.int8.ptz`, which
`golf_core.quant.load_artifact` reads, so here it is "not this format" (None).
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any

import torch
import zstandard
from torch import Tensor

from golf_core.quant.upstream import dequantize_upstream

TAGS = (b"ZSTD", b"ZLIB")
FORMATS = ("mixed_int8_int6_v1", "int8_clean_per_row_v1")


def is_pr363_artifact(data: bytes) -> bool:
    """Whether `data` starts with one of PR #363's compressor tags."""
    return data[:4] in TAGS


def decompress_payload(data: bytes, source: str) -> bytes:
    """The raw torch.save bytes of a tagged file; ValueError naming `source` on any fault."""
    tag, body = data[:4], data[4:]
    if tag not in TAGS:
        raise ValueError(f"{source}: no ZSTD/ZLIB tag, not a PR #363 artifact")
    codec = tag.decode()
    if not body:
        raise ValueError(f"{source}: {codec} tag but no payload (truncated)")
    try:
        if tag == b"ZLIB":
            return zlib.decompress(body)
        return zstandard.ZstdDecompressor().decompress(body)
    except (zlib.error, zstandard.ZstdError) as e:
        msg = " ".join(str(e).split())  # one line
        raise ValueError(
            f"{source}: {codec} decompression failed, the file is truncated or corrupt ({msg})"
        ) from None


def _load_object(raw: bytes, source: str) -> dict[str, Any]:
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or hostile archive fails in many ways
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"{source}: torch.load(weights_only=True) refused the payload "
            f"({type(e).__name__}: {first})"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: payload is a {type(obj).__name__}, expected a dict")
    fmt = obj.get("__quant_format__")
    if fmt not in FORMATS:
        raise ValueError(f"{source}: __quant_format__ {fmt!r} is not one of {', '.join(FORMATS)}")
    return obj


def read_artifact(path: str | Path) -> dict[str, Tensor] | None:
    """The dequantized state dict of a PR #363 artifact; None when the file has no ZSTD/ZLIB
    tag. A tagged file that is truncated or corrupt raises ValueError naming it."""
    data = Path(path).read_bytes()
    if not is_pr363_artifact(data):
        return None
    source = str(path)
    return dequantize_upstream(_load_object(decompress_payload(data, source), source), source)
