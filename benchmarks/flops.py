"""Model FLOPs per token and the peak they are measured against (for MFU).

FLOPs count the matrix multiplies of one training step (forward + backward = 3x forward),
in the convention of the PaLM paper (appendix B), which nanoGPT's `estimate_mfu` and
modded-nanogpt use:

    6 * N_matmul                      N_matmul = weights of every matmul touched per token:
                                      each CastedLinear of each *virtual* layer (a shared,
                                      looped block counts once per use), plus the LM head
                                      (vocab x d, tied or not)
  + 12 * sum over attention layers of (d * T)
                                      QK^T and AV: 2 products x 2 FLOPs x T keys x d per
                                      token forward, x3 for forward + backward, no discount
                                      for the causal mask (PaLM's convention)

Not counted: the embedding lookup (not a matmul), norms, rotary, softcap, softmax and every
elementwise op, and control tensors (vectors). Virtual layers that skip attention add no
attention term. So a looped model has more FLOPs per token than its stored parameters suggest.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from golf_core.model import GPT, layer_params_unique

# Dense bf16 tensor-core peak from NVIDIA's datasheets (SXM parts, no sparsity), FLOP/s.
# The H200 has the H100's compute (only memory differs). Used for GPU MFU.
DATASHEET_BF16_PEAK = {
    "H100": 989.4e12,
    "H200": 989.4e12,
    "A100": 312e12,
}


def matmul_params_per_token(model: GPT) -> int:
    """N_matmul of the module docstring, over the training-time schedule."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    n = 0
    for layer in model.full_schedule.layers:
        n += sum(p.numel() for p in layer_params_unique(model, layer) if id(p) in linear)
    return n + model.cfg.vocab_size * model.cfg.model_dim  # the LM head (tied or untied)


def matmul_flops_per_token(model: GPT, seq_len: int) -> float:
    """Forward+backward matmul FLOPs per trained token (see module docstring)."""
    attn_layers = sum(1 for layer in model.full_schedule.layers if layer.attn)
    return 6.0 * matmul_params_per_token(model) + 12.0 * attn_layers * model.cfg.model_dim * seq_len


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
