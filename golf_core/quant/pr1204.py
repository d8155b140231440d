"""PR #1204's artifact, `final_model.int6.ptz`: reader -> dequantized, re-banked state dict.

What the record's script (pr1204_parallel_resid_mini_recur_train_gpt.py,
`main` after GPTQ) writes:

1. the state dict un-banked into per-layer matrices: `blocks.{p}.attn.c_q/proj.weight` =
   `qo_bank[p]` / `qo_bank[L + p]`, `blocks.{p}.attn.c_k/c_v.weight` = `kv_bank[p]` /
   `kv_bank[L + p]`, `blocks.{p}.mlp.fc/proj.weight` = `mlp_up_bank[p]` / `mlp_down_bank[p]`;
   with DISABLE_LAYER0_ATTN block 0's four attention matrices are dropped (never used);
2. `mixed_quantize_int6` into `w` (tensors) and `m` (meta per name): non-float tensors and
   floats of <= 65,536 elements as they are, floats as fp16 ("passthrough"); its control
   tensors as fp32 ("passthrough_ctrl"); attention / MLP matrices as int6 or int5 codes in
   int8 (`name.q`) with fp16 per-row scales (`name.scale`), {"type": "int6" | "int5"}; the
   rest (token / bigram / value embeddings) upstream's int8 with per-row fp16 scales or one
   fp32 scale, {"type": "int8"};
3. `torch.save({"w": w, "m": m})`, byte-shuffled (b"BSHF", u16 little-endian stride, then
   the bytes at s, s + stride, ... for each s < stride), then `brotli.compress(quality=11)`.

Reading is `dequantize_mixed_int6` (q * scale per row, or times the one scale; fp16 back to
float) and `_rebank_state_dict`. The script takes dtypes and block 0's dropped matrices from
its freshly built model (`template`); without one, tensors come back float32 (as this repo's
models hold them; the golden fixture's roundtrip loss is float32's) and the dropped matrices
zero. There is no magic number: a file is taken for this format when it carries none of the
other formats' signatures and starts like the script's brotli stream (4 MiB window: first
byte 0x?b); from then on every fault is a ValueError naming the file.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import brotli
import torch
from torch import Tensor

SHUFFLE_MAGIC = b"BSHF"
# formats this file is not: our container, zlib (.int8.ptz), PR #363's tags, zstd, a zip (a
# plain torch.save, e.g. final_model.pt), gzip, xz
_OTHER_SIGNATURES = (b"GOLFQNT", b"\x78", b"ZLIB", b"ZSTD", b"\x28\xb5\x2f\xfd", b"PK",
                     b"\x1f\x8b", b"\xfd7zXZ")
_PASSTHROUGH = ("passthrough", "passthrough_ctrl", "passthrough_fp16")
_QUANTIZED = ("int6", "int5", "int8")
# un-banked name -> (bank, offset in units of L)
_UNBANKED = {"attn.c_q.weight": ("qo_bank", 0), "attn.proj.weight": ("qo_bank", 1),
             "attn.c_k.weight": ("kv_bank", 0), "attn.c_v.weight": ("kv_bank", 1),
             "mlp.fc.weight": ("mlp_up_bank", 0), "mlp.proj.weight": ("mlp_down_bank", 0)}
_NAME = re.compile(r"^blocks\.(\d+)\.(attn\.(?:c_q|c_k|c_v|proj)|mlp\.(?:fc|proj))\.weight$")
_LAYER0_ATTN = ("attn.c_q.weight", "attn.proj.weight", "attn.c_k.weight", "attn.c_v.weight")


def byte_unshuffle(data: bytes, source: str = "payload") -> bytes:
    """The script's `_byte_unshuffle`: undo the b"BSHF" grouping (data without it unchanged)."""
    if not data.startswith(SHUFFLE_MAGIC):
        return data
    if len(data) < 6:
        raise ValueError(f"{source}: truncated byte-shuffle header")
    stride, payload = int.from_bytes(data[4:6], "little"), data[6:]
    if stride < 1:
        raise ValueError(f"{source}: byte-shuffle stride {stride} must be >= 1")
    out, src = bytearray(len(payload)), 0
    for s in range(stride):
        count = len(range(s, len(payload), stride))
        out[s::stride] = payload[src : src + count]
        src += count
    return bytes(out)


def _decompress(data: bytes, source: str) -> bytes:
    d = brotli.Decompressor()
    try:
        raw = d.process(data)
    except brotli.error as e:
        raise ValueError(f"{source}: brotli decoding failed, the file is corrupt or has "
                         f"trailing bytes ({e})") from None
    if not d.is_finished():
        raise ValueError(f"{source}: the brotli stream ends early ({len(data)} bytes read, "
                         f"{len(raw)} decoded): the file is truncated")
    return raw


def read_int6_object(path: str | Path) -> dict[str, Any] | None:
    """The stored {"w": ..., "m": ...} of `path` (weights_only=True), or None when the file
    is in another format."""
    path = Path(path)
    data = path.read_bytes()
    if not data or data.startswith(_OTHER_SIGNATURES) or data[0] & 0x0F != 0x0B:
        return None
    raw = byte_unshuffle(_decompress(data, str(path)), str(path))
    if not raw.startswith(b"PK"):
        raise ValueError(f"{path}: the decompressed payload is not a torch.save archive")
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or hostile archive fails in many ways
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: torch.load(weights_only=True) refused the payload "
                         f"({type(e).__name__}: {first})") from None
    if not isinstance(obj, dict) or set(obj) != {"w", "m"} or not all(
        isinstance(obj[k], dict) for k in ("w", "m")
    ):
        raise ValueError(f"{path}: payload is not the script's {{'w': ..., 'm': ...}} dict")
    return obj


def _template_dtype(name: str, template: Mapping[str, Tensor] | None) -> torch.dtype | None:
    """The dtype the script's model holds `name` (un-banked) in; None: not in the template."""
    if template is None:
        return torch.float32
    m = _NAME.match(name)
    if m and f"{m.group(2)}.weight" in _UNBANKED:
        return template[_UNBANKED[f"{m.group(2)}.weight"][0]].dtype
    return template[name].dtype if name in template else None


def dequantize_int6(
    w: Mapping[str, Any], m: Mapping[str, Any], source: str,
    template: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """The script's `dequantize_mixed_int6`, every entry checked: un-banked float tensors."""
    out: dict[str, Tensor] = {}
    for name, info in m.items():
        dtype = _template_dtype(name, template)
        if dtype is None:
            continue  # the script iterates its template's names
        if info in _PASSTHROUGH:
            t = w.get(name)
            if not isinstance(t, Tensor):
                raise ValueError(f"{source}: passthrough {name!r} is missing or not a tensor")
            if t.dtype == torch.float16 and dtype in (torch.float32, torch.bfloat16):
                t = t.to(dtype)
            out[name] = t.contiguous()
            continue
        if not isinstance(info, dict) or info.get("type") not in _QUANTIZED:
            raise ValueError(f"{source}: tensor {name!r} has unknown meta {info!r}")
        q, s = w.get(f"{name}.q"), w.get(f"{name}.scale")
        if not isinstance(q, Tensor) or not isinstance(s, Tensor) or q.dtype != torch.int8:
            raise ValueError(f"{source}: {info['type']} tensor {name!r} lacks int8 codes "
                             f"({name}.q) or a scale ({name}.scale)")
        if s.ndim > 0:
            if q.ndim == 0 or s.numel() != q.shape[0]:
                raise ValueError(f"{source}: tensor {name!r} has {s.numel()} scales for "
                                 f"{q.shape[0] if q.ndim else 0} rows")
            t = q.float() * s.float().view(q.shape[0], *([1] * (q.ndim - 1)))
        else:
            t = q.float() * float(s.item())
        out[name] = t.to(dtype)
    return out


def rebank(
    unbanked: Mapping[str, Tensor], source: str, template: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """The script's `_rebank_state_dict`: per-layer matrices back into the four banks. A
    matrix the file lacks comes from `template`; without one only block 0's attention (the
    DISABLE_LAYER0_ATTN drop) may be absent, and is zero."""
    layers = {int(m.group(1)) for k in unbanked if (m := _NAME.match(k)) and "mlp" in k}
    if template is not None:
        L = template["mlp_up_bank"].shape[0]
    elif layers:
        L = max(layers) + 1
    else:
        raise ValueError(f"{source}: no blocks.*.mlp.fc.weight in the artifact")
    slices: dict[str, list[Tensor | None]] = {
        "qo_bank": [None] * (2 * L), "kv_bank": [None] * (2 * L),
        "mlp_up_bank": [None] * L, "mlp_down_bank": [None] * L,
    }  # fmt: skip
    rest: dict[str, Tensor] = {}
    for name, t in unbanked.items():
        m = _NAME.match(name)
        if m is None or int(m.group(1)) >= L:
            rest[name] = t
            continue
        bank, half = _UNBANKED[f"{m.group(2)}.weight"]
        slices[bank][half * L + int(m.group(1))] = t
    for bank, parts in slices.items():
        for k, t in enumerate(parts):
            if t is not None:
                continue
            p, kind = k % L, [n for n, (b, h) in _UNBANKED.items() if b == bank and h == k // L][0]
            if template is not None:
                parts[k] = template[bank][k]
            elif p == 0 and kind in _LAYER0_ATTN and any(x is not None for x in parts):
                parts[k] = torch.zeros_like(next(x for x in parts if x is not None))
            else:
                raise ValueError(f"{source}: artifact lacks blocks.{p}.{kind}")
        dtype = template[bank].dtype if template is not None else torch.float32
        rest[bank] = torch.stack(parts).to(dtype)
    return rest


def read_int6_artifact(
    path: str | Path, template: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor] | None:
    """The state dict (the script's names, banks included) of the script's
    `final_model.int6.ptz`, or None when `path` is in another format. `template` (a state dict
    of the model to load into) supplies dtypes and the dropped block-0 matrices as the script
    does; without it, float32 and zeros."""
    obj = read_int6_object(path)
    if obj is None:
        return None
    source = str(path)
    return rebank(dequantize_int6(obj["w"], obj["m"], source, template), source, template)
