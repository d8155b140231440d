"""Quantize -> compress -> decompress -> dequantize: the artifact the parameter-golf score is on.

Upstream parameter-golf `train_gpt.py` scores a model after its int8 + zlib export; the depth
recurrence records (PR #363) found that quantization error grows through loop cycles. This
package makes both first-class:

* `upstream`    upstream's `.int8.ptz` (`int8_clean_per_row_v1`), written byte for byte.
* `codec`       our per-row int8/int6/int5 quantizer with a name-based mixed policy; the
                dequantizer for both formats.
* `container`   our self-describing file (byte shuffle + brotli 11, or zlib/lzma) and
                `load_artifact`, the one reader for both formats (sniffed by content,
                `weights_only=True`, every malformed file a ValueError naming it).
* `qat`         noisy (PR #363) and STE quantization-aware training hooks.
* `diagnostics` the 16,000,000-byte budget report, roundtrip scoring, error through
                recurrence.

Everything public is importable from `golf_core.quant` directly.
"""

from golf_core.quant.codec import (
    GOLF_FORMAT,
    GOLF_VERSION,
    SCHEMES,
    QuantPolicy,
    dequantize_state_dict,
    fake_quantize,
    qmax_for,
    quantize_rows,
    quantize_state_dict,
    resolve_policy,
)
from golf_core.quant.container import (
    COMPRESSORS,
    MAGIC,
    artifact_bytes,
    encode_container,
    load_artifact,
    read_artifact_object,
    save_artifact,
)
from golf_core.quant.diagnostics import (
    BUDGET_BYTES,
    CODE_FILES,
    artifact_report,
    code_bytes,
    dequantized_copy,
    group_bytes,
    recurrence_error,
    roundtrip_bpb,
    tensor_group,
)
from golf_core.quant.qat import QATHook, disable_qat, enable_qat, noisy_weight, ste_weight
from golf_core.quant.upstream import (
    INT8_CLIP_Q,
    INT8_KEEP_FLOAT_MAX_NUMEL,
    UPSTREAM_FORMAT,
    dequantize_upstream,
    quantize_float_tensor,
    quantize_state_dict_int8,
    save_upstream_int8,
    upstream_int8_bytes,
)

__all__ = [
    "BUDGET_BYTES", "CODE_FILES", "COMPRESSORS", "GOLF_FORMAT", "GOLF_VERSION", "INT8_CLIP_Q",
    "INT8_KEEP_FLOAT_MAX_NUMEL", "MAGIC", "QATHook", "QuantPolicy", "SCHEMES",
    "UPSTREAM_FORMAT", "artifact_bytes", "artifact_report", "code_bytes",
    "dequantize_state_dict", "dequantize_upstream", "dequantized_copy", "disable_qat",
    "enable_qat", "encode_container", "fake_quantize", "group_bytes", "load_artifact",
    "noisy_weight", "qmax_for", "quantize_float_tensor", "quantize_rows",
    "quantize_state_dict", "quantize_state_dict_int8", "read_artifact_object",
    "recurrence_error", "resolve_policy", "roundtrip_bpb", "save_artifact",
    "save_upstream_int8", "ste_weight", "tensor_group", "upstream_int8_bytes",
]  # fmt: skip
