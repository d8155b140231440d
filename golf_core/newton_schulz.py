"""Newton-Schulz orthogonalization, the heart of Muon (golf_core.optim), here on its own so
the dtype probe (golf_core.precision) can time it without importing the optimizer.

`newton_schulz5(G)` is upstream's `zeropower_via_newtonschulz5`; `newton_schulz5_batched(Gs)`
stacks same-shape matrices into one batch of matmuls, bit-identical to the one-at-a-time loop.
Both are also importable from golf_core.optim.
"""

from __future__ import annotations

import torch
from torch import Tensor

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz5(
    G: Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16
) -> Tensor:
    """Approximately orthogonalize a 2-D matrix (the nearest semi-orthogonal U V^T), in bf16
    (upstream) or, with `dtype=torch.float32`, in fp32 (golf_core.precision picks it where
    bf16 matmuls are slow).

    Upstream `zeropower_via_newtonschulz5`: normalize by the Frobenius norm (+eps so a zero
    gradient stays zero), work on the wide orientation so X @ X.T is the small Gram matrix,
    iterate X <- a X + (b A + c A^2) X with A = X X^T. Returns a `dtype` tensor shaped like G.
    """
    if G.ndim != 2:
        raise ValueError(f"newton_schulz5: expected a 2-D matrix, got shape {tuple(G.shape)}")
    transposed = G.size(0) > G.size(1)
    X = _newton_schulz_wide((G.T if transposed else G).to(dtype)[None], steps, eps)[0]
    return X.T if transposed else X


def newton_schulz5_batched(
    Gs: list[Tensor], steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16
) -> list[Tensor]:
    """`newton_schulz5` of each matrix, the same-shape ones (up to transposition) stacked and
    iterated as one batch of matmuls: bit-identical to the one-at-a-time loop here (same ops in
    the same order, per-matrix norms), and on a CPU or GPU a few large matmuls instead of many
    small ones (benchmarks/results/optimizations.md has the measurement)."""
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, G in enumerate(Gs):
        if G.ndim != 2:
            raise ValueError(f"newton_schulz5: expected a 2-D matrix, got shape {tuple(G.shape)}")
        buckets.setdefault((min(G.shape), max(G.shape)), []).append(i)
    out: list[Tensor] = [torch.empty(0)] * len(Gs)
    for idx in buckets.values():
        wide = [Gs[i].T if Gs[i].size(0) > Gs[i].size(1) else Gs[i] for i in idx]
        X = _newton_schulz_wide(torch.stack(wide).to(dtype), steps, eps)  # (N, rows, cols)
        for j, i in enumerate(idx):
            out[i] = X[j].T if Gs[i].size(0) > Gs[i].size(1) else X[j]
    return out


def _newton_schulz_wide(X: Tensor, steps: int, eps: float) -> Tensor:
    """The iteration on a (N, rows, cols) batch with rows <= cols, in the batch's dtype."""
    a, b, c = NS_COEFFS
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)  # per-matrix Frobenius norm
    for _ in range(steps):
        A = X @ X.mT  # (N, rows, rows): the small Gram matrix
        B = b * A + c * A @ A  # upstream's op order, so the bf16 roundings match it exactly
        X = a * X + B @ X
    return X
