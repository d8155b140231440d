"""Our per-row quantizer: int8/int6/int5 by a name-based policy, and dequantization of both
formats (ours and upstream's).

A `b`-bit scheme stores values in int8 within the symmetric range ±(2^(b-1) - 1): int8 ±127,
int6 ±31, int5 ±15 (the -2^(b-1) code is unused, as in upstream's ±127). Rows are clipped at a
quantile of |w| (upstream's 0.9999984 by default) or at k·std of the row; scales are fp16 and
are rounded to fp16 *before* quantizing, so every unclipped element is within half a step of
its dequantized value. Unlike upstream's int8 there is no 1/qmax scale floor (upstream's
`clamp_min(1/127)` makes the step at least 1/127 for every row whose |w| max is below 1; the
"upstream-int8" scheme keeps it, for like-for-like container comparisons). Mixed precision
(e.g. int6 matrices with an int8 embedding, scheme "mixed") is chosen per tensor by name
pattern. Control and small tensors are kept exactly as upstream keeps them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from golf_core.model import CONTROL_PATTERNS
from golf_core.quant.upstream import (
    INT8_CLIP_Q,
    INT8_KEEP_FLOAT_MAX_NUMEL,
    UPSTREAM_FORMAT,
    dequantize_upstream,
    dtype_name,
    float_dtype,
    keep_float_tensor,
)

GOLF_FORMAT = "golf_quant_per_row"  # the container's format tag
GOLF_VERSION = 1


def qmax_for(bits: int) -> int:
    """Largest code of the symmetric `bits`-bit range (int8 127, int6 31, int5 15)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8 (values are stored in int8), got {bits}")
    return 2 ** (bits - 1) - 1


@dataclass(frozen=True)
class QuantPolicy:
    """Which tensors are quantized and how.

    A float tensor is quantized when it has more than `keep_float_max_numel` elements and its
    name matches no control pattern; its bits are those of the first `rules` entry whose
    regex is found in the name, else `bits`. Clip per row: "quantile" (at `clip_q`) or "std"
    (`clip_k` times the row's std, at most the row max). Scale = clip/qmax, at least
    `scale_floor` (upstream's int8 uses 1/127) and at least the smallest normal fp16.
    """

    bits: int = 8
    rules: tuple[tuple[str, int], ...] = ()
    clip: str = "quantile"
    clip_q: float = INT8_CLIP_Q
    # 4 sigma: near the MSE-optimal clip of a Gaussian at 6-8 bits (ACIQ, Banner et al. 2019:
    # 3.3-3.9 sigma); trained rows have heavier tails, so a little wider
    clip_k: float = 4.0
    scale_floor: float = 0.0
    keep_float_max_numel: int = INT8_KEEP_FLOAT_MAX_NUMEL

    def __post_init__(self) -> None:
        for b in (self.bits, *(b for _, b in self.rules)):
            qmax_for(b)
        if self.clip not in ("quantile", "std"):
            raise ValueError(f"clip must be 'quantile' or 'std', got {self.clip!r}")

    def bits_for(self, name: str) -> int:
        return next((b for pattern, b in self.rules if re.search(pattern, name)), self.bits)

    def quantizes(self, name: str, t: Tensor) -> bool:
        return (t.is_floating_point() and t.numel() > self.keep_float_max_numel
                and not any(p in name for p in CONTROL_PATTERNS))

    def describe(self) -> str:
        return f"q{self.clip_q}" if self.clip == "quantile" else f"{self.clip_k}std"


SCHEMES: dict[str, QuantPolicy] = {
    "int8": QuantPolicy(bits=8),
    "int6": QuantPolicy(bits=6),
    "int5": QuantPolicy(bits=5),
    # embedding/head carry every token's row and are hit hardest by coarse steps: keep int8
    "mixed": QuantPolicy(bits=6, rules=((r"tok_emb|lm_head", 8),)),
    # upstream's int8 values (1/127 scale floor) in our container, to compare containers
    "upstream-int8": QuantPolicy(bits=8, scale_floor=1.0 / 127.0),
}


def resolve_policy(
    scheme: str | QuantPolicy, *, keep_float_max_numel: int | None = None
) -> QuantPolicy:
    """The policy of a scheme name (or the policy itself); `keep_float_max_numel` replaces
    its small-tensor threshold (None keeps it)."""
    if isinstance(scheme, QuantPolicy):
        policy = scheme
    elif scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    else:
        policy = SCHEMES[scheme]
    if keep_float_max_numel is None:
        return policy
    return dataclasses.replace(policy, keep_float_max_numel=keep_float_max_numel)


def _rows(t: Tensor) -> Tensor:
    """2-D view for per-row work: matrices as they are, anything else as one row."""
    return t.reshape(t.shape[0], -1) if t.ndim >= 2 else t.reshape(1, -1)


def row_scales(w: Tensor, bits: int, policy: QuantPolicy) -> Tensor:
    """Per-row scales (rows,) as float32 values exactly representable in fp16, so that
    quantizing with them and dequantizing with the stored fp16 copy agree."""
    w32 = _rows(w).float()  # (rows, cols)
    if policy.clip == "quantile":
        clip = torch.quantile(w32.abs(), policy.clip_q, dim=1)
    else:
        clip = torch.minimum(policy.clip_k * w32.std(dim=1, correction=0), w32.abs().amax(dim=1))
    floor = max(policy.scale_floor, torch.finfo(torch.float16).tiny)  # no subnormal scales
    return (clip / qmax_for(bits)).clamp_min(floor).to(torch.float16).float()


def quantize_rows(w: Tensor, bits: int, policy: QuantPolicy) -> tuple[Tensor, Tensor]:
    """(q int8 (rows, cols) in [-qmax, qmax], fp16 scales (rows,)). Elements beyond the clip
    saturate at ±qmax; every other element is within half a step of q*scale."""
    qmax = qmax_for(bits)
    scale = row_scales(w, bits, policy)  # (rows,)
    q = torch.clamp(torch.round(_rows(w).float() / scale[:, None]), -qmax, qmax)
    return q.to(torch.int8).contiguous(), scale.to(torch.float16).contiguous()


def fake_quantize(w: Tensor, bits: int, policy: QuantPolicy) -> Tensor:
    """w after the export's quantize + dequantize (same shape and dtype)."""
    q, s = quantize_rows(w, bits, policy)
    return (q.float() * s.float()[:, None]).reshape(w.shape).to(w.dtype)


def is_shape(x: Any) -> bool:
    """A list of non-negative ints (a shape read from a file, checked before use)."""
    return isinstance(x, list) and all(type(d) is int and d >= 0 for d in x)


def _storage_key(t: Tensor) -> tuple | None:
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
            tuple(t.stride()), t.dtype)


def quantize_state_dict(
    state_dict: Mapping[str, Tensor], scheme: str | QuantPolicy = "int8"
) -> dict[str, Any]:
    """Our container object (before serialization). `entries[name]["kind"]` is "quant"
    (int8 codes + fp16 row scales), "float" (kept as upstream keeps it), "raw" (non-float) or
    "alias" (a second name for a tensor already stored: shared storage is stored once)."""
    policy = resolve_policy(scheme)
    entries: dict[str, dict[str, Any]] = {}
    tensors: dict[str, Tensor] = {}
    scales: dict[str, Tensor] = {}
    first_name: dict[tuple, str] = {}
    for name, tensor in state_dict.items():
        key = _storage_key(tensor.detach())
        if key is not None and key in first_name:
            entries[name] = {"kind": "alias", "of": first_name[key]}
            continue
        if key is not None:
            first_name[key] = name
        t = tensor.detach().to("cpu").contiguous()
        if not t.is_floating_point():
            entries[name], tensors[name] = {"kind": "raw"}, t
        elif not policy.quantizes(name, t):
            orig: dict[str, str] = {}
            tensors[name] = keep_float_tensor(name, t, orig)
            entries[name] = {"kind": "float", "dtype": dtype_name(t.dtype)}
        else:
            if not torch.isfinite(t).all():
                raise ValueError(f"quantize_state_dict: tensor {name!r} has inf/nan values")
            bits = policy.bits_for(name)
            tensors[name], scales[name] = quantize_rows(t, bits, policy)
            entries[name] = {"kind": "quant", "bits": bits, "dtype": dtype_name(t.dtype),
                             "shape": list(t.shape), "clip": policy.describe()}
    return {"__golf_format__": GOLF_FORMAT, "version": GOLF_VERSION,
            "entries": entries, "tensors": tensors, "scales": scales}


def _dequantize_golf(obj: dict[str, Any], source: str) -> dict[str, Tensor]:
    entries, tensors, scales = obj.get("entries"), obj.get("tensors"), obj.get("scales")
    if not all(isinstance(x, dict) for x in (entries, tensors, scales)):
        raise ValueError(f"{source}: container lacks its entries/tensors/scales dicts")
    out: dict[str, Tensor] = {}
    for name, entry in entries.items():
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if kind == "alias":
            if entry.get("of") not in out:
                raise ValueError(f"{source}: tensor {name!r} aliases unknown {entry.get('of')!r}")
            out[name] = out[entry["of"]]
            continue
        t = tensors.get(name)
        if not isinstance(t, Tensor):
            raise ValueError(f"{source}: tensor {name!r} has no stored values")
        if kind == "raw":
            out[name] = t
        elif kind == "float":
            out[name] = t.to(float_dtype(entry.get("dtype"), f"{source}: tensor {name!r}"))
        elif kind == "quant":
            out[name] = _dequantize_entry(name, entry, t, scales.get(name), source)
        else:
            raise ValueError(f"{source}: tensor {name!r} has unknown kind {kind!r}")
    return out


def _dequantize_entry(name: str, entry: dict, q: Tensor, s: Any, source: str) -> Tensor:
    dtype = float_dtype(entry.get("dtype"), f"{source}: tensor {name!r}")
    qmax = qmax_for(int(entry.get("bits", 0))) if entry.get("bits") in range(2, 9) else None
    if qmax is None or q.dtype != torch.int8 or q.ndim != 2:
        raise ValueError(f"{source}: tensor {name!r} is not a valid quantized entry")
    if not isinstance(s, Tensor) or s.shape != (q.shape[0],):
        raise ValueError(f"{source}: tensor {name!r} needs {q.shape[0]} row scales")
    shape = entry.get("shape")
    if not is_shape(shape) or torch.Size(shape).numel() != q.numel():
        raise ValueError(f"{source}: tensor {name!r} shape {shape!r} does not fit its values")
    return (q.float() * s.float()[:, None]).reshape(shape).to(dtype).contiguous()


def dequantize_state_dict(obj: Mapping[str, Any], source: str = "artifact") -> dict[str, Tensor]:
    """Float state dict from an upstream `int8_clean_per_row_v1` object or our container."""
    if "__quant_format__" in obj:
        if obj["__quant_format__"] != UPSTREAM_FORMAT:
            raise ValueError(f"{source}: unknown format tag {obj['__quant_format__']!r} "
                             f"(expected {UPSTREAM_FORMAT!r})")
        return dequantize_upstream(dict(obj), source)
    if "__golf_format__" in obj:
        if obj["__golf_format__"] != GOLF_FORMAT:
            raise ValueError(f"{source}: unknown format tag {obj['__golf_format__']!r} "
                             f"(expected {GOLF_FORMAT!r})")
        if obj.get("version") != GOLF_VERSION:
            raise ValueError(f"{source}: container version {obj.get('version')!r} is not "
                             f"supported (this reader knows {GOLF_VERSION})")
        return _dequantize_golf(dict(obj), source)
    raise ValueError(f"{source}: no format tag (__quant_format__ or __golf_format__)")


