"""PR #325's own artifact, `final_model.int6.ptz`: zstd (zlib where zstandard was missing) of
torch.save({"w": tensors, "m": meta}), read back to a float state dict with the script's
names (golf_core/model/pr325.py builds the model that loads it).
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import torch
from torch import Tensor

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def read_artifact(path: str | Path) -> dict[str, Tensor] | None:
    """The dequantized (float32) state dict of the script's `final_model.int6.ptz`: zstd (zlib
    where zstandard was missing) of torch.save({"w": tensors, "m": meta}); None for any other
    format. meta[name] is "passthrough"/"passthrough_ctrl" (stored as is, small floats fp16)
    or {"type": "int6"|"int8"}: int8 codes `name.q` times `name.scale` (per row if a vector)."""
    blob = Path(path).read_bytes()
    try:
        if blob[:4] == _ZSTD_MAGIC:
            import zstandard

            raw = zstandard.ZstdDecompressor().decompress(blob)
        else:
            raw = zlib.decompress(blob)
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception:  # not compressed the script's way, or no torch.save inside
        return None
    if not isinstance(obj, dict) or set(obj) != {"w", "m"}:
        return None
    out: dict[str, Tensor] = {}
    for name, info in obj["m"].items():
        if isinstance(info, str):  # passthrough
            t = obj["w"][name]
            out[name] = t.float() if t.is_floating_point() else t
        else:
            q, s = obj["w"][name + ".q"].float(), obj["w"][name + ".scale"].float()
            out[name] = q * (s.view(-1, *([1] * (q.ndim - 1))) if s.ndim else s)
    return out
