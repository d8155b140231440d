"""Which dtype is fast on this machine: decided by measuring, once per process.

On CPUs the answer differs by orders of magnitude. With native bf16 (AVX-512 BF16 / AMX) a
bf16 matmul beats fp32; without it (e.g. AVX2-only AMD Zen 3) torch emulates bf16 and a
256 x 256 bf16 matmul was measured 77x slower than fp32, which made bf16 autocast and bf16
Newton-Schulz the bulk of a training step there (issue: 630 vs 84 ms/step). So `auto` never
assumes: `probe()` times one small matmul shape in both dtypes (a few ms on a machine with
native bf16; it stops early once bf16 is clearly slower) and every `auto` choice
(autocast, Muon's Newton-Schulz) reads the same cached result. CUDA keeps bf16 (upstream).
The run header and env.json record the probe's numbers and what they decided.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch

from golf_core.config import ConfigError

# The shape: a (tokens x width) activation times a (width x width) weight at the report's
# widths, large enough that kernel choice dominates call overhead.
PROBE_M, PROBE_K, PROBE_N = 1024, 256, 256
# bf16 must be at least this much faster to be picked: a near tie goes to fp32, which is
# exact, casts nothing and is what the tests compare against.
BF16_MIN_SPEEDUP = 1.15


@dataclass(frozen=True)
class MatmulProbe:
    """Best-of-N milliseconds of one (M x K) @ (K x N) matmul per dtype, and the verdict."""

    fp32_ms: float
    bf16_ms: float
    threads: int
    shape: tuple[int, int, int] = (PROBE_M, PROBE_K, PROBE_N)

    @property
    def bf16_speedup(self) -> float:
        return self.fp32_ms / self.bf16_ms if self.bf16_ms > 0 else 0.0

    @property
    def bf16_faster(self) -> bool:
        return self.bf16_speedup >= BF16_MIN_SPEEDUP

    def describe(self) -> str:
        m, k, n = self.shape
        return (f"measured {m}x{k}@{k}x{n} matmul: fp32 {self.fp32_ms:.3f} ms, bf16 "
                f"{self.bf16_ms:.3f} ms ({self.bf16_speedup:.2f}x; bf16 needs "
                f">= {BF16_MIN_SPEEDUP}x), {self.threads} threads")

    def to_dict(self) -> dict:
        return {**asdict(self), "bf16_speedup": self.bf16_speedup, "bf16_faster": self.bf16_faster}


def _best_ms(a: torch.Tensor, b: torch.Tensor, repeats: int, budget_s: float) -> float:
    torch.mm(a, b)  # first call: kernel selection / primitive creation
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent > budget_s:
            break
    return 1000.0 * best


@lru_cache(maxsize=8)
def _probe(threads: int) -> MatmulProbe:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(PROBE_M, PROBE_K, generator=gen)
    b = torch.randn(PROBE_K, PROBE_N, generator=gen)
    fp32 = _best_ms(a, b, repeats=9, budget_s=0.05)
    # a slow emulated bf16 shows itself in a call or two: cap its time at ~20 fp32 calls
    bf16 = _best_ms(a.bfloat16(), b.bfloat16(), repeats=9, budget_s=max(0.02, 0.02 * fp32))
    return MatmulProbe(fp32_ms=fp32, bf16_ms=bf16, threads=threads)


_adopted: MatmulProbe | None = None


def probe() -> MatmulProbe:
    """The CPU matmul probe for the current torch thread count (cached per process), or the
    one `adopt` installed (every rank of a multi-process run uses rank 0's)."""
    return _adopted if _adopted is not None else _probe(torch.get_num_threads())


def adopt(result: MatmulProbe | None) -> None:
    """Make `result` what `probe()` returns in this process (None: measure again)."""
    global _adopted
    _adopted = result


def cpu_prefers_bf16() -> tuple[bool, str]:
    """(bf16 is faster here, the measurement that says so)."""
    p = probe()
    return p.bf16_faster, p.describe()


NS_DTYPES = ("auto", "bf16", "fp32")


def pick_ns_dtype(preference: str, device: torch.device) -> tuple[torch.dtype, str]:
    """Muon's Newton-Schulz dtype: bf16 (upstream, what the Muon fixture checks) or fp32;
    `auto` = bf16 on CUDA, and on CPU whichever the probe measured faster."""
    if preference not in NS_DTYPES:
        raise ConfigError(f"muon_ns_dtype: {preference!r} is not one of {', '.join(NS_DTYPES)}")
    if preference == "bf16":
        return torch.bfloat16, "muon_ns_dtype=bf16 requested (upstream)"
    if preference == "fp32":
        return torch.float32, "muon_ns_dtype=fp32 requested"
    if device.type == "cuda":
        return torch.bfloat16, "auto on CUDA: bf16 (upstream)"
    fast, why = cpu_prefers_bf16()
    return (torch.bfloat16, f"auto on CPU: bf16 ({why})") if fast else (
        torch.float32, f"auto on CPU: fp32 ({why})")
