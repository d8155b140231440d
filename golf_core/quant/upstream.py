"""Upstream parameter-golf's int8 artifact (`*.int8.ptz`, format `int8_clean_per_row_v1`).

Follows `quantize_float_tensor`, `keep_float_tensor`, `quantize_state_dict_int8` and
`dequantize_state_dict_int8` of upstream `train_gpt.py` (baseline record) and its export:
torch.save of the object to a BytesIO, then zlib level 9. Same state dict -> same bytes
(checked against the fixture written by upstream itself). 2-D float tensors over 65,536
elements get per-row int8 with fp16 scales; smaller float tensors are kept (fp32 for control
tensors, else fp16 with the original dtype recorded); non-float tensors pass through.

The fp16/dtype helpers and the atomic writer here are shared with our container.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from golf_core.model import CONTROL_PATTERNS

# Float tensors with at most this many elements are kept (fp16, or fp32 for control tensors)
# instead of quantized: the scale overhead and the error are not worth it for small tensors.
INT8_KEEP_FLOAT_MAX_NUMEL = 65_536
INT8_KEEP_FLOAT_STORE_DTYPE = torch.float16
INT8_PER_ROW_SCALE_DTYPE = torch.float16
# Clip |w| at this row percentile: for rows shorter than ~600k elements it interpolates
# between the two largest |w|, i.e. essentially the row max with one outlier slightly trimmed.
INT8_CLIP_PERCENTILE = 99.99984
INT8_CLIP_Q = INT8_CLIP_PERCENTILE / 100.0
UPSTREAM_FORMAT = "int8_clean_per_row_v1"


# dtype names a file may name; anything else is refused (no getattr(torch, <file text>))
FLOAT_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def keep_float_tensor(name: str, t: Tensor, orig_dtypes: dict[str, str]) -> Tensor:
    """Upstream: control tensors stay fp32; other fp32/bf16 tensors are stored fp16 and their
    original dtype is recorded in `orig_dtypes`."""
    if any(pattern in name for pattern in CONTROL_PATTERNS):
        return t.float().contiguous()
    if t.dtype in (torch.float32, torch.bfloat16):
        orig_dtypes[name] = dtype_name(t.dtype)
        return t.to(dtype=INT8_KEEP_FLOAT_STORE_DTYPE).contiguous()
    return t


def quantize_float_tensor(t: Tensor) -> tuple[Tensor, Tensor]:
    """Upstream int8: per-row for 2-D (fp16 scales, scale >= 1/127), per-tensor otherwise."""
    t32 = t.float()
    if t32.ndim == 2:
        clip_abs = torch.quantile(t32.abs(), INT8_CLIP_Q, dim=1)  # (rows,)
        clipped = torch.maximum(torch.minimum(t32, clip_abs[:, None]), -clip_abs[:, None])
        scale = (clip_abs / 127.0).clamp_min(1.0 / 127.0)
        q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
        return q.contiguous(), scale.to(dtype=INT8_PER_ROW_SCALE_DTYPE).contiguous()
    flat = t32.abs().flatten()
    clip_abs = float(torch.quantile(flat, INT8_CLIP_Q).item()) if t32.numel() else 0.0
    scale = torch.tensor(clip_abs / 127.0 if clip_abs > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(t32, -clip_abs, clip_abs) / scale), -127, 127)
    return q.to(torch.int8).contiguous(), scale


def quantize_state_dict_int8(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Upstream `quantize_state_dict_int8`: the `int8_clean_per_row_v1` object (keys in
    upstream's insertion order, so torch.save gives upstream's bytes)."""
    quantized: dict[str, Tensor] = {}
    scales: dict[str, Tensor] = {}
    dtypes: dict[str, str] = {}
    passthrough: dict[str, Tensor] = {}
    orig_dtypes: dict[str, str] = {}
    qmeta: dict[str, dict[str, Any]] = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        if not t.is_floating_point():
            passthrough[name] = t
        elif t.numel() <= INT8_KEEP_FLOAT_MAX_NUMEL:
            passthrough[name] = keep_float_tensor(name, t, orig_dtypes)
        else:
            q, s = quantize_float_tensor(t)
            if s.ndim > 0:
                qmeta[name] = {"scheme": "per_row", "axis": 0}
            quantized[name], scales[name], dtypes[name] = q, s, dtype_name(t.dtype)
    obj: dict[str, Any] = {
        "__quant_format__": UPSTREAM_FORMAT,
        "quantized": quantized,
        "scales": scales,
        "dtypes": dtypes,
        "passthrough": passthrough,
    }
    if qmeta:
        obj["qmeta"] = qmeta
    if orig_dtypes:
        obj["passthrough_orig_dtypes"] = orig_dtypes
    return obj


def upstream_int8_bytes(state_dict: Mapping[str, Tensor]) -> bytes:
    """The bytes of upstream's `.int8.ptz`: torch.save to a BytesIO (the zip's record prefix
    is then `archive/`), zlib level 9."""
    buf = io.BytesIO()
    torch.save(quantize_state_dict_int8(state_dict), buf)
    return zlib.compress(buf.getvalue(), level=9)


def save_upstream_int8(state_dict: Mapping[str, Tensor], path: str | Path) -> int:
    """Write upstream's `.int8.ptz` for `state_dict` (atomically); returns its size in bytes."""
    return atomic_write(Path(path), upstream_int8_bytes(state_dict))


def dequantize_upstream(obj: dict[str, Any], source: str) -> dict[str, Tensor]:
    """Upstream `dequantize_state_dict_int8`, with every field checked first."""
    for key in ("quantized", "scales", "dtypes", "passthrough"):
        if not isinstance(obj.get(key), dict):
            raise ValueError(f"{source}: upstream artifact lacks a {key!r} dict")
    qmeta = obj.get("qmeta", {})
    orig_dtypes = obj.get("passthrough_orig_dtypes", {})
    out: dict[str, Tensor] = {}
    for name, q in obj["quantized"].items():
        dtype = float_dtype(obj["dtypes"].get(name), f"{source}: tensor {name!r}")
        s = obj["scales"].get(name)
        if not isinstance(q, Tensor) or not isinstance(s, Tensor) or q.dtype != torch.int8:
            raise ValueError(f"{source}: tensor {name!r} lacks int8 values or a scale")
        if qmeta.get(name, {}).get("scheme") == "per_row" or s.ndim > 0:
            if s.numel() != q.shape[0]:
                raise ValueError(f"{source}: tensor {name!r} has {s.numel()} scales for "
                                 f"{q.shape[0]} rows")
            s = s.to(dtype=torch.float32).view(q.shape[0], *([1] * (q.ndim - 1)))
            out[name] = (q.float() * s).to(dtype=dtype).contiguous()
        else:
            out[name] = (q.float() * float(s.item())).to(dtype=dtype).contiguous()
    for name, t in obj["passthrough"].items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{source}: passthrough {name!r} is not a tensor")
        t = t.detach().to("cpu").contiguous()
        if name in orig_dtypes:
            t = t.to(dtype=float_dtype(orig_dtypes[name], f"{source}: tensor {name!r}"))
        out[name] = t.contiguous()
    return out


def float_dtype(name: Any, where: str) -> torch.dtype:
    if name not in FLOAT_DTYPES:
        raise ValueError(f"{where}: unsupported dtype {name!r}")
    return FLOAT_DTYPES[name]




def atomic_write(path: Path, data: bytes) -> int:
    """Write `data` to a temporary name beside `path`, then rename; returns the byte count."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)
