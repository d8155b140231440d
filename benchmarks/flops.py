"""Model FLOPs per token and the peak they are measured against (for MFU).

The FLOP count itself lives in golf_core/flops.py (`flops_per_token`, re-exported here as
`matmul_flops_per_token` with `matmul_params_per_token`): the one function the benchmarks'
MFU and the report's equal-FLOPs budgets share, so nothing is counted twice. Its docstring
states the convention (PaLM appendix B: 6 * N_matmul + 12 * attention layers * d * T).
"""

from __future__ import annotations

import time

import torch

from golf_core.flops import flops_per_token, matmul_flops_per_token, matmul_params_per_token

__all__ = ["BF16_EMULATED_BELOW", "DATASHEET_BF16_PEAK", "bf16_skip_reason", "datasheet_peak",
           "flops_per_token", "matmul_flops_per_token", "matmul_params_per_token",
           "measured_matmul_peak"]

# Dense bf16 tensor-core peak from NVIDIA's datasheets (SXM parts, no sparsity), FLOP/s.
# The H200 has the H100's compute (only memory differs). Used for GPU MFU.
DATASHEET_BF16_PEAK = {
    "H100": 989.4e12,
    "H200": 989.4e12,
    "A100": 312e12,
}


def datasheet_peak(device_name: str) -> float | None:
    """The bf16 datasheet peak of a known GPU named in `device_name`, else None."""
    for key, peak in DATASHEET_BF16_PEAK.items():
        if key in device_name:
            return peak
    return None


def measured_matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 1024,
                         repeat: int = 10) -> float:
    """Best FLOP/s of an n x n matmul over `repeat` tries (the practical ceiling on a CPU,
    where no datasheet figure applies: the best try is the one least disturbed by other load)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeat + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


# A CPU whose bf16 matmul peak is below this share of its fp32 peak has no bf16 instructions
# and emulates them (an AVX2-only CPU, or `make ... CPU_ISA=avx2`: 0.6 vs 114 GFLOP/s, 0.005x,
# on the Intel Xeon capped at AVX2). Every dtype probe picks fp32 there, so a bf16 case would
# time a path no run takes, at ~100x the fp32 step: hours of `make bench` for nothing.
BF16_EMULATED_BELOW = 0.5


def bf16_skip_reason(device: torch.device, fp32_peak: float, bf16_peak: float) -> str:
    """"" where bf16 cases are worth timing (always on CUDA), else why they are left out."""
    if device.type == "cuda" or bf16_peak >= BF16_EMULATED_BELOW * fp32_peak:
        return ""
    return (f"bf16 cases left out: the bf16 matmul peak ({bf16_peak / 1e9:.1f} GFLOP/s) is "
            f"{bf16_peak / fp32_peak:.3f}x the fp32 one ({fp32_peak / 1e9:.1f} GFLOP/s), below "
            f"{BF16_EMULATED_BELOW}x: bf16 is emulated on this CPU and every dtype probe picks "
            "fp32")
